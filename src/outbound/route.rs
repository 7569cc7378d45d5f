//! Routing: the app names the destination in `:authority` (`grpc.WithAuthority` in Go,
//! `-authority` in grpcurl), and the host part of it, port ignored and case folded, picks
//! the destination by `name`. An authority that names none is refused with
//! UNIMPLEMENTED before anything leaves the pod.

use http::{HeaderMap, Response, Uri};

use crate::body::ResponseBody;
use crate::grpc::{self, Reason};

/// Why a call has no destination, for logs and metrics.
pub const UNKNOWN_DESTINATION: &str = "UNKNOWN_DESTINATION";

/// The host part of the call's authority: `:authority`, else `host`; brackets of an
/// IPv6 literal and the port removed.
pub fn authority_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map(|(host, _)| host);
    }
    Some(
        authority
            .split_once(':')
            .map_or(authority, |(host, _)| host),
    )
}

/// Finds the entry whose name equals `host` (ASCII case-insensitively); there are few
/// destinations, so a scan beats hashing a lowercased copy.
pub fn find<'a, T>(entries: &'a [T], name: impl Fn(&T) -> &str, host: &str) -> Option<&'a T> {
    entries
        .iter()
        .find(|entry| name(entry).eq_ignore_ascii_case(host))
}

/// The refusal for an authority that names no destination.
pub fn unknown_destination(host: Option<&str>, known: &[&str]) -> Response<ResponseBody> {
    let named = match host {
        Some(host) => format!("the authority {host:?} names no outbound destination"),
        None => "the call has no authority, so it names no outbound destination".to_owned(),
    };
    let status = grpc::Status::new(
        Reason::UnknownDestination,
        format!(
            "{UNKNOWN_DESTINATION}: {named}; set the authority to one of [{}] (Go: grpc.WithAuthority(\"NAME\"), grpcurl: -authority NAME)",
            known.join(", ")
        ),
    );
    match host {
        Some(host) => status.with("authority", host),
        None => status,
    }
    .response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_host_of_the_authority_without_port() {
        let table = [
            (
                "http://identity-service:12018/a/b",
                Some("identity-service"),
            ),
            ("http://Identity-Service/a/b", Some("Identity-Service")),
            ("http://[::1]:15001/a/b", Some("::1")),
            ("/a/b", None),
        ];
        for (uri, expected) in table {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(authority_host(&uri, &HeaderMap::new()), expected, "{uri}");
        }
        let names = ["identity-service", "profile"];
        assert_eq!(
            find(&names, |n| n, "IDENTITY-service"),
            Some(&"identity-service")
        );
        assert_eq!(find(&names, |n| n, "identity"), None);
    }
}
