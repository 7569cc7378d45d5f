//! Route: the app names the destination in `:authority` (`grpc.WithAuthority` in Go,
//! `-authority` in grpcurl), and the host part of it, port ignored and case folded, picks
//! the destination by `name`. Route puts what it found in the request's extensions
//! ([`Routed`]) for every layer below, and gives the call the destination's `timeout`
//! as its deadline unless the app's is sooner. An authority that names none is refused
//! with UNIMPLEMENTED by the Endpoint, after Record has seen it, before anything leaves
//! the pod.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, Uri};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Destination, Destinations};
use crate::body::{RequestBody, ResponseBody};
use crate::grpc::{self, Deadline, Reason};

/// Where Route sent a call, in its request's extensions.
#[derive(Clone)]
pub enum Routed {
    To(Arc<Destination>),
    /// The authority named no destination (its host, if it had one).
    Nowhere(Option<Box<str>>),
}

impl Routed {
    /// The destination's name, as logs and metrics label the call.
    pub fn destination(&self) -> Option<&Arc<str>> {
        match self {
            Routed::To(destination) => Some(&destination.name),
            Routed::Nowhere(_) => None,
        }
    }
}

/// Wraps a service in [`Route`].
#[derive(Clone)]
pub struct RouteLayer {
    destinations: Arc<Destinations>,
}

impl RouteLayer {
    pub fn new(destinations: Arc<Destinations>) -> Self {
        RouteLayer { destinations }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            destinations: self.destinations.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    destinations: Arc<Destinations>,
}

impl<S> Service<Request<RequestBody>> for Route<S>
where
    S: Service<Request<RequestBody>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let host = authority_host(request.uri(), request.headers());
        let routed = match host.and_then(|host| self.destinations.find(host)) {
            Some(destination) => Routed::To(destination.clone()),
            None => Routed::Nowhere(host.map(Box::from)),
        };
        let extensions = request.extensions_mut();
        if let Routed::To(destination) = &routed {
            extensions.insert(grpc::Destination(destination.name.clone()));
            if let Some(at) = Instant::now().checked_add(destination.timeout) {
                Deadline::shorten(extensions, at, "the destination's timeout");
            }
        }
        extensions.insert(routed);
        self.inner.call(request)
    }
}

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
pub fn unknown_destination(host: Option<&str>, known: &[Arc<str>]) -> Response<ResponseBody> {
    let named = match host {
        Some(host) => format!("the authority {host:?} names no outbound destination"),
        None => "the call has no authority, so it names no outbound destination".to_owned(),
    };
    let status = grpc::Status::new(
        Reason::UnknownDestination,
        format!(
            "{UNKNOWN_DESTINATION}: {named}; set the authority to one of [{}] (Go: grpc.WithAuthority(\"NAME\"), grpcurl: -authority NAME)",
            known
                .iter()
                .map(|name| &**name)
                .collect::<Vec<_>>()
                .join(", ")
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
