//! The machine-readable half of every status gatehouse generates: one table of reasons,
//! and the `google.rpc.Status` that carries the reason to the caller in
//! `grpc-status-details-bin`.
//!
//! A client tells gatehouse's refusals from the app's own statuses by the details: only
//! statuses built here carry a `google.rpc.ErrorInfo` with `domain: "gatehouse"`, and its
//! `reason` is one of the UPPER_SNAKE constants of [`Reason`], which the documentation
//! lists as the same table (docs/statuses.md; a test keeps the two equal).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response};
use prost::Message as _;

use super::{APPLICATION_GRPC, AnsweredHere, Code, GRPC_MESSAGE, GRPC_STATUS, encode_message};

/// `grpc-status-details-bin`: a serialized `google.rpc.Status`, base64 without padding as
/// gRPC writes every `-bin` value.
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// `ErrorInfo.domain` of every status gatehouse generates.
pub const DOMAIN: &str = "gatehouse";

/// `Any.type_url` of a packed `google.rpc.ErrorInfo`.
pub const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// `Any.type_url` of a packed `google.rpc.RetryInfo`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Declares the reason table once: the enum, its wire name, the lower-case label that
/// logs and `gatehouse_auth_total{reason}` have always used, and the code it goes with.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal, $label:literal, $code:ident;)*) => {
        /// Why gatehouse generated a status: `ErrorInfo.reason` on the wire.
        ///
        /// Each reason goes with one code ([`Reason::code`]); only the reasons for a
        /// reset stream ([`Reason::AppResetStream`], [`Reason::DestinationResetStream`])
        /// may carry another, the one gRPC's HTTP/2 mapping gives the reset.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order of the documented table.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The UPPER_SNAKE constant sent as `ErrorInfo.reason`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// The lower-case name used in logs and metric labels; unchanged from the
            /// names those carried before the reasons reached the wire.
            pub fn label(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }

            /// The status code a refusal for this reason carries.
            pub fn code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)*
                }
            }
        }
    };
}

reasons! {
    /// No bearer token and no API key on a method that is not public.
    MissingCredentials => "MISSING_CREDENTIALS", "missing_credentials", Unauthenticated;
    /// More than one `authorization` or key header, or a token and a key together.
    AmbiguousCredentials => "AMBIGUOUS_CREDENTIALS", "ambiguous_credentials", Unauthenticated;
    /// `authorization` is not a bearer token, or the token is not a JWT.
    MalformedToken => "MALFORMED_TOKEN", "malformed_token", Unauthenticated;
    /// The token is longer than gatehouse reads.
    TokenTooLarge => "TOKEN_TOO_LARGE", "token_too_large", Unauthenticated;
    /// The token's `alg` is not one its provider allows.
    BadAlgorithm => "BAD_ALGORITHM", "bad_algorithm", Unauthenticated;
    /// The token has `crit` header parameters, which gatehouse does not understand.
    CriticalHeader => "UNSUPPORTED_CRITICAL_HEADER", "crit_header", Unauthenticated;
    /// No provider has the token's issuer.
    WrongIssuer => "WRONG_ISSUER", "wrong_issuer", Unauthenticated;
    /// The token's `kid` is in none of its provider's keys.
    UnknownKeyId => "UNKNOWN_KEY_ID", "unknown_kid", Unauthenticated;
    /// The token's signature does not verify.
    BadSignature => "BAD_SIGNATURE", "bad_signature", Unauthenticated;
    /// The token's `exp` has passed (plus leeway).
    TokenExpired => "TOKEN_EXPIRED", "token_expired", Unauthenticated;
    /// The token's `nbf` is still to come.
    TokenNotYetValid => "TOKEN_NOT_YET_VALID", "token_not_yet_valid", Unauthenticated;
    /// The token's `aud` names none of its provider's audiences.
    WrongAudience => "WRONG_AUDIENCE", "wrong_audience", Unauthenticated;
    /// A claim the token must carry is absent.
    MissingClaim => "MISSING_CLAIM", "missing_claim", Unauthenticated;
    /// A claim has the wrong type or form.
    MalformedClaim => "MALFORMED_CLAIM", "malformed_claim", Unauthenticated;
    /// An identity claim cannot be passed on to the app (empty, or not valid metadata).
    BadClaim => "BAD_CLAIM", "bad_claim", Unauthenticated;
    /// The token has no tenant claim and its provider requires one.
    MissingTenant => "MISSING_TENANT", "missing_tenant", Unauthenticated;
    /// The token is bound (`cnf.x5t#S256`) to another certificate than the caller's.
    CertBindingMismatch => "CERT_BINDING_MISMATCH", "cert_binding_mismatch", Unauthenticated;
    /// The token is not bound to a certificate and its provider requires it.
    CertBindingRequired => "CERT_BINDING_REQUIRED", "cert_binding_required", Unauthenticated;
    /// The API key matches no configured key.
    UnknownApiKey => "UNKNOWN_API_KEY", "unknown_api_key", Unauthenticated;
    /// The API key is past its `not_after`.
    ApiKeyExpired => "API_KEY_EXPIRED", "expired_api_key", Unauthenticated;
    /// The API key left `keys_file` or the configuration while a call it admitted was
    /// open (`auth.expire_open_calls`); the call ends with this status.
    KeyRevoked => "KEY_REVOKED", "key_revoked", Unauthenticated;
    /// The connection's client certificate passed its `notAfter` while the connection
    /// was open.
    PeerCertificateExpired => "PEER_CERTIFICATE_EXPIRED", "peer_certificate_expired", Unauthenticated;
    /// The client certificate is not in `tls.allowed_peers`.
    PeerNotAllowed => "PEER_NOT_ALLOWED", "peer_not_allowed", PermissionDenied;
    /// An authorization rule matched the method and does not allow the caller.
    DeniedByRule => "PERMISSION_DENIED_BY_RULE", "rule_denied", PermissionDenied;
    /// No rule matched the method and `authorization.default` is `deny`.
    DeniedByDefault => "PERMISSION_DENIED_BY_DEFAULT", "default_deny", PermissionDenied;
    /// `:path` is outside gRPC's `/Service/Method` grammar; never forwarded.
    InvalidMethodPath => "INVALID_METHOD_PATH", "invalid_method_path", Unimplemented;
    /// `schema`: the app's schema has no such method (or it is the app's reflection
    /// service and `schema.expose_reflection` is off); never forwarded.
    UnknownMethod => "UNKNOWN_METHOD", "unknown_method", Unimplemented;
    /// `schema`: the app's schema is not known yet (the app has not answered reflection,
    /// or the descriptor set did not load) and `schema.unknown_methods` is `refuse`.
    SchemaUnknown => "SCHEMA_UNKNOWN", "schema_unknown", Unavailable;
    /// A request message's field does not hold the value an authorization rule's
    /// `fields` requires; that message never reaches the app and the call ends.
    FieldMismatch => "FIELD_MISMATCH", "field_mismatch", PermissionDenied;
    /// A request message of a method with field rules does not decode (or is
    /// compressed, which gatehouse does not read); it never reaches the app.
    MalformedMessage => "MALFORMED_MESSAGE", "malformed_message", InvalidArgument;
    /// A request message of a method with field rules is larger than
    /// `schema.max_message_size`; it never reaches the app.
    MessageTooLarge => "MESSAGE_TOO_LARGE", "message_too_large", ResourceExhausted;
    /// The caller has `limits.per_identity.max_concurrent_calls` calls open.
    ConcurrencyLimit => "CONCURRENCY_LIMIT", "concurrency_limit", ResourceExhausted;
    /// The caller is over `limits.per_identity.calls_per_second`.
    RateLimited => "RATE_LIMITED", "rate_limited", ResourceExhausted;
    /// A `limits.global` rule's budget, shared by every replica, is spent; the details
    /// carry a `google.rpc.RetryInfo`.
    GlobalRateLimited => "GLOBAL_RATE_LIMITED", "global_rate_limited", ResourceExhausted;
    /// The store of `limits.global` cannot be reached and `on_store_failure` is `deny`.
    GlobalLimitUnavailable => "GLOBAL_LIMIT_UNAVAILABLE", "global_limit_unavailable", Unavailable;
    /// The app cannot be reached, or its connection was lost during the call.
    AppUnavailable => "APP_UNAVAILABLE", "app_unavailable", Unavailable;
    /// Every connection to the app is at its stream limit and `limits.upstream_queue`
    /// calls already wait for a stream.
    AppQueueFull => "APP_QUEUE_FULL", "app_queue_full", ResourceExhausted;
    /// No stream to the app became free within `limits.upstream_queue_timeout`.
    AppQueueTimeout => "APP_QUEUE_TIMEOUT", "app_queue_timeout", ResourceExhausted;
    /// The app reset the call's stream; the code follows gRPC's HTTP/2 mapping.
    AppResetStream => "APP_RESET_STREAM", "app_reset_stream", Unavailable;
    /// The call's `grpc-timeout` (outbound: or the destination's `timeout`) ran out
    /// inside gatehouse; the peer's stream is reset.
    Deadline => "DEADLINE", "deadline", DeadlineExceeded;
    /// Outbound: `:authority` names no configured destination.
    UnknownDestination => "UNKNOWN_DESTINATION", "unknown_destination", Unimplemented;
    /// Outbound: the destination's certificate chain, dates or name did not verify, or it
    /// spoke no TLS or no HTTP/2.
    UpstreamTls => "UPSTREAM_TLS", "upstream_tls", Unavailable;
    /// Outbound: the destination's certificate verified but carries none of its
    /// `identity` entries.
    IdentityMismatch => "IDENTITY_MISMATCH", "identity_mismatch", Unavailable;
    /// Outbound: the destination's address did not resolve, or no address accepted a
    /// connection.
    NoEndpoint => "NO_ENDPOINT", "no_endpoint", Unavailable;
    /// Outbound: every connection to the destination is at its stream limit and the wait
    /// for a stream is full or took too long, or the app has as many calls out open as
    /// gatehouse carries.
    DestinationBusy => "DESTINATION_BUSY", "destination_busy", ResourceExhausted;
    /// Outbound: the connection to the destination was lost during the call.
    DestinationUnavailable => "DESTINATION_UNAVAILABLE", "destination_unavailable", Unavailable;
    /// Outbound: the destination reset the call's stream; the code follows gRPC's HTTP/2
    /// mapping.
    DestinationResetStream => "DESTINATION_RESET_STREAM", "destination_reset_stream", Unavailable;
    /// The app (or outbound destination) read nothing of the call's request for a
    /// second while other calls waited for a stream; its stream was reset so they could
    /// go on.
    RequestNotRead => "REQUEST_NOT_READ", "request_not_read", ResourceExhausted;
    /// The app (or outbound destination) stopped reading the call's request while it was
    /// already not reading two other calls of the same caller; its stream was reset.
    StalledCallsLimit => "STALLED_CALLS_LIMIT", "stalled_calls_limit", ResourceExhausted;
    /// Outbound `credentials: relay`: the app's token does not name the destination's
    /// `audience`.
    AudienceMismatch => "AUDIENCE_MISMATCH", "audience_mismatch", PermissionDenied;
    /// Outbound `credentials: context`: the call carries no handle, or one that names no
    /// inbound call open or ended less than `outbound.context_grace` ago.
    NoCallContext => "NO_CALL_CONTEXT", "no_call_context", Unauthenticated;
    /// The app's or the destination's response headers or trailers were larger than
    /// gatehouse reads (twice `limits.max_header_list_size`); the peer's stream is reset.
    ResponseHeadersTooLarge => "RESPONSE_HEADERS_TOO_LARGE", "response_headers_too_large", Internal;
    /// Outbound `credentials: context`: the inbound call this call serves has ended (or,
    /// for a call made in the grace after it, the grace has run out); the destination's
    /// stream is reset.
    InboundCallEnded => "INBOUND_CALL_ENDED", "inbound_call_ended", Cancelled;
    /// gatehouse is shutting down and the drain timeout ended the call.
    ShuttingDown => "SHUTTING_DOWN", "shutting_down", Unavailable;
    /// A bug in gatehouse (a panic, a request it could not forward); it keeps serving.
    Internal => "INTERNAL", "internal", Internal;
}

/// A status generated by gatehouse: the code, the reason from the table, a human-readable
/// message and metadata (`method`, `rule`, `limit`…) that say where it applied.
///
/// Every `grpc-status` gatehouse writes itself comes from one of these, through
/// [`Status::response`] (trailers-only) or [`Status::trailers`] (ending a stream), so each
/// carries `grpc-status-details-bin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    reason: Reason,
    message: Cow<'static, str>,
    metadata: BTreeMap<String, String>,
    /// Sent as a `google.rpc.RetryInfo` after the `ErrorInfo`.
    retry_delay: Option<std::time::Duration>,
}

impl Status {
    /// A status for `reason`, with the code the table gives it.
    pub fn new(reason: Reason, message: impl Into<Cow<'static, str>>) -> Status {
        Status {
            code: reason.code(),
            reason,
            message: message.into(),
            metadata: BTreeMap::new(),
            retry_delay: None,
        }
    }

    /// The peer (the app, a destination) reset the call's stream with `reset`: the code
    /// is the one gRPC's HTTP/2 mapping gives that reset, not `reason`'s own.
    pub fn reset(
        reason: Reason,
        reset: h2::Reason,
        message: impl Into<Cow<'static, str>>,
    ) -> Status {
        Status {
            code: super::code_for_reset(reset),
            ..Status::new(reason, message)
        }
    }

    /// Adds `ErrorInfo.metadata[key] = value`.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Status {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a `google.rpc.RetryInfo`: the caller should wait `delay` before trying again.
    pub fn with_retry_delay(mut self, delay: std::time::Duration) -> Status {
        self.retry_delay = Some(delay);
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        self.retry_delay
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The serialized `google.rpc.Status`, before base64.
    pub fn encode_details(&self) -> Vec<u8> {
        let info = ErrorInfo {
            reason: self.reason.as_str().to_owned(),
            domain: DOMAIN.to_owned(),
            metadata: self.metadata.clone(),
        };
        let mut details = vec![Any {
            type_url: ERROR_INFO_TYPE_URL.to_owned(),
            value: info.encode_to_vec(),
        }];
        if let Some(delay) = self.retry_delay {
            let retry = RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                    nanos: delay.subsec_nanos() as i32,
                }),
            };
            details.push(Any {
                type_url: RETRY_INFO_TYPE_URL.to_owned(),
                value: retry.encode_to_vec(),
            });
        }
        RpcStatus {
            code: self.code as i32,
            message: self.message.clone().into_owned(),
            details,
        }
        .encode_to_vec()
    }

    /// Writes `grpc-status`, `grpc-message` and `grpc-status-details-bin` into a header or
    /// trailer map.
    pub fn write_to(&self, map: &mut HeaderMap) {
        map.insert(GRPC_STATUS, self.code.header_value());
        if !self.message.is_empty() {
            map.insert(GRPC_MESSAGE, encode_message(&self.message));
        }
        let details = STANDARD_NO_PAD.encode(self.encode_details());
        map.insert(
            GRPC_STATUS_DETAILS,
            HeaderValue::try_from(details).expect("base64 is visible ASCII"),
        );
    }

    /// The trailers that end a stream gatehouse cuts short (a deadline, an app lost, a
    /// drain), after the app's own headers and messages.
    pub fn trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(3);
        self.write_to(&mut trailers);
        trailers
    }

    /// A trailers-only gRPC response: HTTP 200, status, message and details in the only
    /// HEADERS frame, no body. This is how every refusal made by gatehouse itself reaches
    /// the caller. The body type is the caller's: its default must be the empty body.
    pub fn response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, APPLICATION_GRPC);
        self.write_to(headers);
        response.extensions_mut().insert(AnsweredHere);
        response
    }
}

/// `google.rpc.Status` (google/rpc/status.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any` (google/protobuf/any.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.ErrorInfo` (google/rpc/error_details.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorInfo {
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub metadata: BTreeMap<String, String>,
}

/// `google.rpc.RetryInfo` (google/rpc/error_details.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration` (google/protobuf/duration.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(value: &HeaderValue) -> (RpcStatus, ErrorInfo) {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.as_bytes())
            .expect("unpadded standard base64");
        let status = RpcStatus::decode(bytes.as_slice()).expect("a google.rpc.Status");
        assert_eq!(status.details.len(), 1, "exactly one detail");
        assert_eq!(status.details[0].type_url, ERROR_INFO_TYPE_URL);
        let info = ErrorInfo::decode(status.details[0].value.as_slice()).expect("an ErrorInfo");
        (status, info)
    }

    #[test]
    fn every_reason_appears_once_in_upper_snake_with_its_own_label() {
        let mut names = HashSet::new();
        let mut labels = HashSet::new();
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert!(names.insert(name), "{name} twice");
            assert!(labels.insert(reason.label()), "{} twice", reason.label());
            assert!(
                !name.is_empty()
                    && !name.starts_with('_')
                    && !name.ends_with('_')
                    && !name.contains("__")
                    && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{name} is not UPPER_SNAKE"
            );
            assert!(
                reason
                    .label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                reason.label()
            );
            assert_ne!(reason.code(), Code::Ok, "{name}");
        }
    }

    #[test]
    fn existing_log_and_metric_labels_keep_their_names() {
        let table = [
            (Reason::TokenExpired, "token_expired", "TOKEN_EXPIRED"),
            (Reason::UnknownKeyId, "unknown_kid", "UNKNOWN_KEY_ID"),
            (Reason::BadSignature, "bad_signature", "BAD_SIGNATURE"),
            (Reason::WrongAudience, "wrong_audience", "WRONG_AUDIENCE"),
            (
                Reason::MissingCredentials,
                "missing_credentials",
                "MISSING_CREDENTIALS",
            ),
            (
                Reason::DeniedByRule,
                "rule_denied",
                "PERMISSION_DENIED_BY_RULE",
            ),
            (
                Reason::DeniedByDefault,
                "default_deny",
                "PERMISSION_DENIED_BY_DEFAULT",
            ),
            (Reason::ApiKeyExpired, "expired_api_key", "API_KEY_EXPIRED"),
            (
                Reason::InvalidMethodPath,
                "invalid_method_path",
                "INVALID_METHOD_PATH",
            ),
        ];
        for (reason, label, name) in table {
            assert_eq!((reason.label(), reason.as_str()), (label, name));
        }
    }

    #[test]
    fn every_reason_round_trips_through_the_details_header() {
        for &reason in Reason::ALL {
            let status = Status::new(reason, "why, 100% readable").with("method", "/pkg.Svc/Get");
            let trailers = status.trailers();
            assert_eq!(trailers[GRPC_STATUS], reason.code().header_value());
            let value = &trailers[GRPC_STATUS_DETAILS];
            assert!(!value.as_bytes().ends_with(b"="), "padded: {value:?}");
            let (decoded, info) = decode(value);
            assert_eq!(decoded.code, reason.code() as i32);
            assert_eq!(decoded.message, "why, 100% readable");
            assert_eq!(info.reason, reason.as_str());
            assert_eq!(info.domain, "gatehouse");
            assert_eq!(
                info.metadata,
                BTreeMap::from([("method".to_owned(), "/pkg.Svc/Get".to_owned())])
            );
        }
    }

    #[test]
    fn a_retry_delay_travels_as_retry_info_after_the_error_info() {
        let status = Status::new(Reason::GlobalRateLimited, "over the tenant's budget")
            .with_retry_delay(std::time::Duration::from_millis(1_250));
        let bytes = STANDARD_NO_PAD
            .decode(status.trailers()[GRPC_STATUS_DETAILS].as_bytes())
            .unwrap();
        let decoded = RpcStatus::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.code, Code::ResourceExhausted as i32);
        assert_eq!(decoded.details.len(), 2);
        assert_eq!(decoded.details[0].type_url, ERROR_INFO_TYPE_URL);
        assert_eq!(decoded.details[1].type_url, RETRY_INFO_TYPE_URL);
        let retry = RetryInfo::decode(decoded.details[1].value.as_slice()).unwrap();
        assert_eq!(
            retry.retry_delay,
            Some(ProtoDuration {
                seconds: 1,
                nanos: 250_000_000
            })
        );
    }

    #[test]
    fn an_app_reset_keeps_the_code_of_the_http2_mapping() {
        let status = Status::reset(
            Reason::AppResetStream,
            h2::Reason::CANCEL,
            "the app reset the stream",
        );
        assert_eq!(status.code(), Code::Cancelled);
        let (decoded, info) = decode(&status.trailers()[GRPC_STATUS_DETAILS]);
        assert_eq!(decoded.code, Code::Cancelled as i32);
        assert_eq!(info.reason, "APP_RESET_STREAM");
    }

    #[test]
    fn refusals_are_trailers_only_responses_with_details() {
        for &reason in Reason::ALL {
            let response: Response<http_body_util::Empty<bytes::Bytes>> =
                Status::new(reason, "refused").response();
            assert_eq!(response.status(), http::StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], "application/grpc");
            assert_eq!(headers[GRPC_STATUS], reason.code().header_value());
            assert_eq!(headers[GRPC_MESSAGE], "refused");
            assert_eq!(
                decode(&headers[GRPC_STATUS_DETAILS]).1.reason,
                reason.as_str()
            );
            assert!(http_body::Body::is_end_stream(response.body()));
            assert!(response.extensions().get::<AnsweredHere>().is_some());
        }
    }

    #[test]
    fn the_documented_table_lists_every_reason_with_its_code() {
        let doc = include_str!("../../docs/statuses.md");
        let rows: Vec<&str> = doc
            .lines()
            .filter(|line| {
                // Rows of the reason table: the first cell is an UPPER_SNAKE constant.
                line.strip_prefix("| `").is_some_and(|rest| {
                    rest.split('`').next().is_some_and(|name| {
                        name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                    })
                })
            })
            .collect();
        for reason in Reason::ALL {
            let cell = format!("| `{}` |", reason.as_str());
            let row = rows
                .iter()
                .find(|row| row.starts_with(&cell))
                .unwrap_or_else(|| panic!("docs/statuses.md has no row for {}", reason.as_str()));
            // The second cell: `16 UNAUTHENTICATED`.
            let code = row.split('|').nth(2).unwrap_or_default().trim();
            assert!(
                code.starts_with(&format!("{} ", reason.code() as u8)),
                "{}: expected code {} in {row}",
                reason.as_str(),
                reason.code() as u8
            );
        }
        assert_eq!(
            rows.len(),
            Reason::ALL.len(),
            "a documented reason the code never sends"
        );
    }
}
