//! What authentication and authorization decide about a call: admitted (with the verified
//! caller) or refused (with the status that says why), and the part of the policy that
//! decided.

use std::borrow::Cow;
use std::sync::Arc;

use http::Response;

use crate::grpc::{self, Code, Reason};
use crate::identity::{AuthMethod, BadIdentity, Principal};

/// What Auth decided about a call, for the layers that log and count it.
#[derive(Clone, Debug)]
pub enum AuthOutcome {
    Admitted {
        principal: Arc<Principal>,
        /// `authorization.dry_run`: the part of the policy that would have refused this
        /// call.
        would_refuse: Option<DecidingRule>,
    },
    Refused {
        /// How the caller tried to authenticate.
        attempted: AuthMethod,
        reason: Reason,
    },
}

impl AuthOutcome {
    /// How the caller authenticated, or tried to.
    pub fn method(&self) -> AuthMethod {
        match self {
            AuthOutcome::Admitted { principal, .. } => principal.method,
            AuthOutcome::Refused { attempted, .. } => *attempted,
        }
    }

    /// The verified caller, when admitted.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            AuthOutcome::Admitted { principal, .. } => Some(principal),
            AuthOutcome::Refused { .. } => None,
        }
    }

    /// The refusal's lower-case reason, as logs and metrics name it.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            AuthOutcome::Admitted { .. } => None,
            AuthOutcome::Refused { reason, .. } => Some(reason.label()),
        }
    }

    /// `authorization.dry_run`: what would have refused this admitted call.
    pub fn would_refuse(&self) -> Option<DecidingRule> {
        match self {
            AuthOutcome::Admitted { would_refuse, .. } => *would_refuse,
            AuthOutcome::Refused { .. } => None,
        }
    }
}

/// The part of the authorization policy that decided a call: a rule, by its index in
/// `authorization.rules`, or `authorization.default` when no rule matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidingRule {
    Rule(usize),
    Default,
}

impl std::fmt::Display for DecidingRule {
    /// `0`, `1`… or `default`, as the access log writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecidingRule::Rule(index) => write!(f, "{index}"),
            DecidingRule::Default => f.write_str("default"),
        }
    }
}

/// Why a call was refused: the status, a message that says why without revealing any
/// secret, and the reason from gatehouse's one table (its lower-case [`Reason::label`] in
/// logs and metrics, its UPPER_SNAKE name in the status details).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: Cow<'static, str>,
    pub reason: Reason,
    /// The part of the authorization policy that refused, for the status details.
    pub rule: Option<DecidingRule>,
}

impl Refusal {
    /// A refusal for `reason`, with the code the reason carries.
    pub fn new(reason: Reason, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            code: reason.code(),
            message: message.into(),
            reason,
            rule: None,
        }
    }

    pub fn unauthenticated(reason: Reason, message: impl Into<Cow<'static, str>>) -> Refusal {
        debug_assert_eq!(reason.code(), Code::Unauthenticated, "{reason:?}");
        Refusal::new(reason, message)
    }

    pub fn permission_denied(reason: Reason, message: impl Into<Cow<'static, str>>) -> Refusal {
        debug_assert_eq!(reason.code(), Code::PermissionDenied, "{reason:?}");
        Refusal::new(reason, message)
    }

    /// Names the rule (or the default) that refused, in the status details.
    pub fn by(mut self, rule: DecidingRule) -> Refusal {
        self.rule = Some(rule);
        self
    }

    /// A `:path` outside gRPC's `/Service/Method` grammar: refused before authentication
    /// and never forwarded (see [`grpc::is_method_path`]).
    pub fn invalid_method_path() -> Refusal {
        Refusal::new(
            Reason::InvalidMethodPath,
            "not a gRPC method path: expected /Service/Method",
        )
    }

    /// The status the caller receives; `method` is the call's path when it is one.
    pub fn status(&self, method: Option<&str>) -> grpc::Status {
        let mut status = grpc::Status::new(self.reason, self.message.clone());
        if let Some(method) = method {
            status = status.with("method", method);
        }
        if let Some(rule) = self.rule {
            status = status.with("rule", rule.to_string());
        }
        status
    }

    /// The refusal as a trailers-only response (see [`grpc::Status::response`]).
    pub fn response<B: Default>(&self, method: Option<&str>) -> Response<B> {
        self.status(method).response()
    }
}

/// An identity value the app cannot be handed refuses the credential that carried it.
impl From<BadIdentity> for Refusal {
    fn from(bad: BadIdentity) -> Refusal {
        Refusal::unauthenticated(Reason::BadClaim, bad.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_its_reason_rule_and_method_in_the_details() {
        let refusal = Refusal::permission_denied(Reason::DeniedByRule, "permission denied")
            .by(DecidingRule::Rule(2));
        let status = refusal.status(Some("/pkg.Svc/Get"));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.reason(), Reason::DeniedByRule);
        let expected = grpc::Status::new(Reason::DeniedByRule, "permission denied")
            .with("method", "/pkg.Svc/Get")
            .with("rule", "2");
        assert_eq!(status, expected);
        // The log and metric name stays what it was.
        assert_eq!(refusal.reason.label(), "rule_denied");

        let invalid = Refusal::invalid_method_path().status(None);
        assert_eq!(
            invalid,
            grpc::Status::new(
                Reason::InvalidMethodPath,
                "not a gRPC method path: expected /Service/Method"
            )
        );
        assert_eq!(invalid.code(), Code::Unimplemented);
    }

    #[test]
    fn an_identity_value_the_app_cannot_take_is_unauthenticated_naming_its_claim() {
        let refusal = Refusal::from(BadIdentity("claim sub is empty".into()));
        assert_eq!(refusal.code, Code::Unauthenticated);
        assert_eq!(refusal.reason, Reason::BadClaim);
        assert_eq!(refusal.message, "claim sub is empty");
    }
}
