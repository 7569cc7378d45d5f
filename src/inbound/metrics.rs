//! Metrics: counts every call by method and status code and times it to the end of
//! its response; counts authentication decisions and the refusals a dry run let through.
//! A call to a method without labels of its own yet is counted (started and handled)
//! when it ends, once it is known whether the app itself answered it (see
//! [`crate::metrics`]). With a schema, a method the app's schema has is labelled at
//! once, with the stream kind the Schema layer wrote into the call's facts.
//!
//! It sits above Auth so refusals are counted too, and below Logging so that what the
//! log says and what the counters say agree. The status is read at the end of the
//! response body (trailers), where gRPC puts it.

use std::sync::Arc;
use std::time::Instant;

use http::Request;

use crate::body::RequestBody;
use crate::grpc::Code;
use crate::layers::observe::{CallFacts, CallRecord, Observe, Observer};
use crate::layers::watch::{Completion, Outcome};
use crate::metrics::{MAX_METHOD_CHARS, MethodMetrics, Metrics as Registry};

/// The Metrics layer: an [`Observe`] that counts and times every call.
pub type Metrics<S> = Observe<S, CallCounter>;

/// What Metrics does for each call.
#[derive(Clone)]
pub struct CallCounter {
    registry: Arc<Registry>,
}

impl CallCounter {
    pub fn new(registry: Arc<Registry>) -> Self {
        CallCounter { registry }
    }
}

impl Observer for CallCounter {
    type Record = Recorder;

    fn start(&self, request: &mut Request<RequestBody>) -> Recorder {
        self.registry.in_flight.inc();
        Recorder {
            registry: self.registry.clone(),
            started: Instant::now(),
            uri: request.uri().clone(),
            facts: CallFacts::of(request),
            method: None,
            unknown: false,
            dry_run_refused: false,
        }
    }
}

/// Records one call when it ends.
pub struct Recorder {
    registry: Arc<Registry>,
    started: Instant,
    facts: Arc<CallFacts>,
    /// Shares the request's bytes: no copy per call.
    uri: http::Uri,
    method: Option<Arc<MethodMetrics>>,
    /// The path names a method without labels yet, and the app answered it.
    unknown: bool,
    /// `authorization.dry_run` let a call to a method without labels yet through
    /// although the rules refuse it: counted once its labels are decided.
    dry_run_refused: bool,
}

impl Recorder {
    /// The call's path, with the query: a refused `/pkg.Svc/Get?x` is not a call of
    /// `Get` and must not be counted as one.
    fn path(&self) -> &str {
        self.uri
            .path_and_query()
            .map_or(self.uri.path(), |path| path.as_str())
    }
}

impl CallRecord for Recorder {
    /// Counts the authentication decision and the call's method, once it is known
    /// whether the app itself answered (see [`crate::metrics`]).
    fn answered(&mut self, answered_here: bool) {
        let outcome = self.facts.auth();
        if let Some(outcome) = outcome {
            match outcome.refusal() {
                None => self
                    .registry
                    .auth(outcome.method().as_str(), "allowed", "ok"),
                Some(reason) => self
                    .registry
                    .auth(outcome.method().as_str(), "refused", reason),
            }
        }
        let dry_run_refused = outcome.is_some_and(|outcome| outcome.would_refuse().is_some());
        // A method in the app's schema is the app's own, and its kind is exact.
        let method = match self.facts.stream_kind() {
            Some(kind) => Some(self.registry.schema_method(self.path(), kind.label())),
            None => self.registry.known_method(self.path()),
        };
        match method {
            Some(method) => {
                method.started.inc();
                if dry_run_refused {
                    self.registry.dry_run_refusal(&method);
                }
                self.method = Some(method);
            }
            None => {
                self.unknown = !answered_here && self.path().len() <= MAX_METHOD_CHARS;
                self.dry_run_refused = dry_run_refused;
            }
        }
    }
}

impl Completion for Recorder {
    fn complete(self, outcome: Outcome) {
        self.registry.in_flight.dec();
        let method = match self.method {
            Some(method) => method,
            // UNIMPLEMENTED: the app does not have it, whatever the caller made up.
            None if self.unknown && outcome.code != Code::Unimplemented => {
                let method = self.registry.answered_method(self.path());
                method.started.inc();
                method
            }
            None => {
                let method = self.registry.other_method();
                method.started.inc();
                method
            }
        };
        if self.dry_run_refused {
            self.registry.dry_run_refusal(&method);
        }
        if let (Some(outcome), Some(end)) =
            (self.facts.auth(), self.facts.credentials_ended().get())
        {
            self.registry
                .auth(outcome.method().as_str(), "ended_in_call", end.label());
        }
        self.registry
            .handled(&method, outcome.code, self.started.elapsed().as_secs_f64());
    }
}
