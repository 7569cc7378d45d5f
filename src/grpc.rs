//! The gRPC wire vocabulary gatehouse speaks: status codes, header names, trailers-only
//! refusals and `grpc-timeout`.
//!
//! Every refusal gatehouse makes on its own behalf is built here, as a [`Status`] with a
//! [`Reason`] from one table, so a caller always gets a gRPC status it can act on (HTTP
//! 200, `content-type: application/grpc`, `grpc-status`, a percent-encoded `grpc-message`
//! and the reason in `grpc-status-details-bin`) and never a bare HTTP error that gRPC
//! clients misreport.

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

pub mod deadline;
pub mod details;
pub mod failure;

pub use deadline::{Deadline, encode_timeout, parse_timeout};
pub use details::{GRPC_STATUS_DETAILS, Reason, Status};
pub use failure::{Far, code_for_reset, not_read, stream_failure};

/// `grpc-status`: the call's status code, in trailers or in a trailers-only response.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the human-readable reason, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the caller's deadline, relative to when the request was sent.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// The gRPC status codes, with the numbers the wire uses.
///
/// Which code gatehouse answers with for which situation is fixed by the design contract:
/// no or bad credentials are `Unauthenticated`, valid credentials that a rule refuses are
/// `PermissionDenied`, an app that cannot be reached or dies mid-call is `Unavailable`, a
/// deadline that runs out inside gatehouse is `DeadlineExceeded`, and a bug is `Internal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a `grpc-status` value; anything unparseable is `Unknown`, as the gRPC
    /// specification asks of clients.
    pub fn from_header(value: &HeaderValue) -> Code {
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .and_then(|n| Code::ALL.get(n).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The name used in logs and metric labels (`NotFound`, as go-grpc-prometheus writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }

    /// The `grpc-status` header value, pre-built so a refusal allocates nothing for it.
    pub fn header_value(self) -> HeaderValue {
        const VALUES: [HeaderValue; 17] = [
            HeaderValue::from_static("0"),
            HeaderValue::from_static("1"),
            HeaderValue::from_static("2"),
            HeaderValue::from_static("3"),
            HeaderValue::from_static("4"),
            HeaderValue::from_static("5"),
            HeaderValue::from_static("6"),
            HeaderValue::from_static("7"),
            HeaderValue::from_static("8"),
            HeaderValue::from_static("9"),
            HeaderValue::from_static("10"),
            HeaderValue::from_static("11"),
            HeaderValue::from_static("12"),
            HeaderValue::from_static("13"),
            HeaderValue::from_static("14"),
            HeaderValue::from_static("15"),
            HeaderValue::from_static("16"),
        ];
        VALUES[self as usize].clone()
    }
}

/// Bytes the gRPC specification requires to be percent-encoded in `grpc-message`:
/// everything outside printable ASCII (non-ASCII is always encoded) and `%` itself.
const GRPC_MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// Encodes a status message for the `grpc-message` header.
pub fn encode_message(message: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ESCAPES).to_string();
    HeaderValue::try_from(encoded).expect("percent-encoded text is visible ASCII")
}

/// The outbound destination a call was routed to, in its request's extensions: the
/// statuses gatehouse generates for the call name it.
#[derive(Clone, Debug)]
pub struct Destination(pub std::sync::Arc<str>);

/// In the extensions of a response that gatehouse generated without the app (a refusal,
/// an app that cannot be reached), so telemetry can tell it from the app's own answers.
#[derive(Clone, Copy, Debug)]
pub struct AnsweredHere;

/// Whether a request is a gRPC call: `POST` with `content-type: application/grpc`,
/// optionally followed by `+proto`, `+json` or parameters.
pub fn is_grpc_request(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::POST {
        return false;
    }
    let Some(content_type) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = content_type.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+') | Some(b';'))
}

/// Whether `path` (the request's `:path`, query included) is a gRPC method path:
/// `/` Service `/` Method, where the service is one or more dot-separated names and the
/// method one name, each name made of ASCII letters, digits and `_`.
///
/// gatehouse authorizes, logs and forwards only such paths. Anything else (a `%`-escape,
/// `//`, a `.` or `..` segment, a trailing `/`, `;`, a query) is refused before
/// authentication, because app servers that decode or normalise the path would run a
/// method that gatehouse's rules never saw.
pub fn is_method_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| is_service_name(service) && is_name(method))
}

/// Whether `service` is a gRPC service name (`pkg.v1.Service`): dot-separated names,
/// none of them empty. Method patterns in the config are checked with it too.
pub fn is_service_name(service: &str) -> bool {
    service.split('.').all(is_name)
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn status_codes_round_trip_through_the_header_table() {
        for (number, code) in Code::ALL.iter().enumerate() {
            assert_eq!(*code as usize, number);
            let value = code.header_value();
            assert_eq!(value.to_str().unwrap(), number.to_string());
            assert_eq!(Code::from_header(&value), *code);
        }
        assert_eq!(
            Code::from_header(&HeaderValue::from_static("17")),
            Code::Unknown
        );
        assert_eq!(
            Code::from_header(&HeaderValue::from_static("x")),
            Code::Unknown
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(encode_message("plain text"), "plain text");
        assert_eq!(encode_message("100% sure"), "100%25 sure");
        assert_eq!(encode_message("grüße\n"), "gr%C3%BC%C3%9Fe%0A");
    }

    #[test]
    fn recognises_grpc_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc_request(&Method::POST, &headers));
        for (value, expected) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/GRPC; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(
                is_grpc_request(&Method::POST, &headers),
                expected,
                "{value}"
            );
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        assert!(!is_grpc_request(&Method::GET, &headers));
    }

    #[test]
    fn accepts_only_paths_in_grpcs_method_grammar() {
        let table = [
            ("/probe.v1.Probe/Fail", true),
            ("/grpc.health.v1.Health/Check", true),
            ("/Svc/Get", true),
            ("/pkg_2.Svc_1/Get_all2", true),
            ("/probe.v1.Probe/%46ail", false),
            ("/probe.v1.%50robe/Fail", false),
            ("/probe.v1.Probe/Fail/", false),
            ("/probe.v1.Probe//Fail", false),
            ("/probe.v1.Probe/./Fail", false),
            ("/probe.v1.Probe/../Fail", false),
            ("/probe.v1.Probe/Fail;x", false),
            ("/probe.v1.Probe/Fail?x=1", false),
            ("/probe.v1.Probe/Fail#x", false),
            ("/probe.v1.Probe/Fa-il", false),
            ("/probe.v1.Probe/Fa il", false),
            ("/probe.v1.Probe/Fa\u{e9}il", false),
            ("/probe.v1.Probe/", false),
            ("/probe.v1.Probe", false),
            ("//Fail", false),
            ("/./Fail", false),
            ("/../Fail", false),
            ("/.probe.Probe/Fail", false),
            ("/probe..Probe/Fail", false),
            ("/probe.Probe./Fail", false),
            ("/probe.v1.Probe/*", false),
            ("probe.v1.Probe/Fail", false),
            ("/", false),
            ("*", false),
            ("", false),
        ];
        for (path, expected) in table {
            assert_eq!(is_method_path(path), expected, "{path:?}");
        }
    }
}
