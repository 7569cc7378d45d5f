//! The caller's verified identity, the refusals that stand in for one, and the metadata
//! that carries it to the app.
//!
//! Strip, then set: every request loses whatever copies of the identity headers the
//! caller sent (any spelling: `-bin` forms, underscores), and only then are the verified
//! values inserted. Values are built into `HeaderValue`s once per identity, so a cached
//! identity costs no formatting per call.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::grpc::{self, Code, Reason};

pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub const X_USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub const X_API_KEY_NAME: HeaderName = HeaderName::from_static("x-api-key-name");
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The header API keys are sent in unless `auth.api_keys.header` says otherwise; never
/// forwarded, whatever is configured.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Every header gatehouse sets; callers can never send any of them.
const IDENTITY_HEADERS: [&str; 6] = [
    "x-user-id",
    "x-tenant-id",
    "x-user-roles",
    "x-auth-method",
    "x-api-key-name",
    "x-forwarded-client-cert",
];

/// Whether `name` is an identity header in any spelling: `x_user_id`, `x-user-id-bin`…
pub fn is_identity_header(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.len() < 9 || bytes[0] != b'x' || (bytes[1] != b'-' && bytes[1] != b'_') {
        return false;
    }
    let base = name
        .strip_suffix("-bin")
        .or_else(|| name.strip_suffix("_bin"))
        .unwrap_or(name);
    IDENTITY_HEADERS.iter().any(|identity| {
        base.len() == identity.len()
            && base
                .bytes()
                .zip(identity.bytes())
                .all(|(sent, ours)| sent == ours || (sent == b'_' && ours == b'-'))
    })
}

/// Removes every caller-sent identity header. Allocates only when there is one.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Removes from request trailers what a caller may not hand the app there: identity
/// headers, and credentials (`authorization`, `x-api-key`), which gatehouse reads and
/// verifies only in the request headers, so in trailers they would reach the app
/// unverified.
pub fn strip_request_trailers(trailers: &mut HeaderMap) {
    strip_identity_headers(trailers);
    trailers.remove(AUTHORIZATION);
    trailers.remove(X_API_KEY);
}

/// How the caller proved who it is; sent to the app as `x-auth-method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    /// The client certificate is the only credential: no `auth` section is configured.
    Mtls,
    /// A public method: no credentials were asked for.
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
            AuthMethod::None => "none",
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub method: AuthMethod,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub roles: Vec<String>,
    pub api_key_name: Option<String>,
    headers: [Option<HeaderValue>; 4],
}

/// Where the identity values came from (the claims a JWT provider maps, or the fields of
/// an API key entry), so that a refusal names the one at fault.
#[derive(Clone, Copy, Debug)]
pub struct Sources<'a> {
    pub user_id: &'a str,
    pub tenant_id: &'a str,
    pub roles: &'a str,
}

impl Sources<'static> {
    /// The identity's own field names.
    pub const FIELDS: Sources<'static> = Sources {
        user_id: "user_id",
        tenant_id: "tenant_id",
        roles: "roles",
    };
}

impl Principal {
    /// Builds a principal; refused if a value cannot travel as a header (control
    /// characters, say) or would smuggle something into one (see [`Principal::from_sources`]).
    pub fn new(
        method: AuthMethod,
        user_id: Option<String>,
        tenant_id: Option<String>,
        roles: Vec<String>,
        api_key_name: Option<String>,
    ) -> Result<Principal, Refusal> {
        Principal::from_sources(
            Sources::FIELDS,
            method,
            user_id,
            tenant_id,
            roles,
            api_key_name,
        )
    }

    /// Builds a principal from values taken from `sources`, refusing with
    /// UNAUTHENTICATED and a message naming the source: an empty user or tenant id (the
    /// app would see an id that names nobody), a role that is empty or holds `,` or
    /// whitespace (`x-user-roles` is comma-separated, so `viewer,admin` would read as
    /// two roles), and any value that cannot be sent as metadata.
    pub fn from_sources(
        sources: Sources<'_>,
        method: AuthMethod,
        user_id: Option<String>,
        tenant_id: Option<String>,
        roles: Vec<String>,
        api_key_name: Option<String>,
    ) -> Result<Principal, Refusal> {
        let bad = |message: String| Refusal::unauthenticated(Reason::BadClaim, message);
        for (source, value) in [(sources.user_id, &user_id), (sources.tenant_id, &tenant_id)] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                return Err(bad(format!("claim {source} is empty")));
            }
        }
        if roles
            .iter()
            .any(|role| role.is_empty() || role.contains(|c: char| c == ',' || c.is_whitespace()))
        {
            return Err(bad(format!(
                "claim {}: a role is empty or contains ',' or whitespace",
                sources.roles
            )));
        }
        let value = |source: &str, text: &Option<String>| -> Result<Option<HeaderValue>, Refusal> {
            text.as_deref()
                .map(|text| {
                    HeaderValue::from_str(text)
                        .map_err(|_| bad(format!("claim {source} cannot be sent as metadata")))
                })
                .transpose()
        };
        let joined = (!roles.is_empty()).then(|| roles.join(","));
        let headers = [
            value(sources.user_id, &user_id)?,
            value(sources.tenant_id, &tenant_id)?,
            value(sources.roles, &joined)?,
            value("api key name", &api_key_name)?,
        ];
        Ok(Principal {
            method,
            user_id,
            tenant_id,
            roles,
            api_key_name,
            headers,
        })
    }

    /// The principal of a caller whose only credential is its certificate
    /// ([`AuthMethod::Mtls`]) or who called a public method ([`AuthMethod::None`]).
    pub fn anonymous(method: AuthMethod) -> Arc<Principal> {
        static MTLS: LazyLock<Arc<Principal>> =
            LazyLock::new(|| Arc::new(Principal::nobody(AuthMethod::Mtls)));
        static NONE: LazyLock<Arc<Principal>> =
            LazyLock::new(|| Arc::new(Principal::nobody(AuthMethod::None)));
        match method {
            AuthMethod::Mtls => MTLS.clone(),
            _ => NONE.clone(),
        }
    }

    fn nobody(method: AuthMethod) -> Principal {
        Principal {
            method,
            user_id: None,
            tenant_id: None,
            roles: Vec::new(),
            api_key_name: None,
            headers: Default::default(),
        }
    }

    /// Sets the verified identity headers (after [`strip_identity_headers`]).
    pub fn inject(&self, headers: &mut HeaderMap, client_cert: Option<&HeaderValue>) {
        let names = [X_USER_ID, X_TENANT_ID, X_USER_ROLES, X_API_KEY_NAME];
        for (name, value) in names.into_iter().zip(&self.headers) {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        headers.insert(X_AUTH_METHOD, self.method.header_value());
        if let Some(client_cert) = client_cert {
            headers.insert(X_FORWARDED_CLIENT_CERT, client_cert.clone());
        }
    }
}

/// What Auth decided, put in the response's extensions for the layers above it.
#[derive(Clone, Debug)]
pub struct AuthOutcome {
    /// How the caller authenticated, or tried to.
    pub method: AuthMethod,
    /// The verified caller, when admitted.
    pub principal: Option<Arc<Principal>>,
    /// The reason of a refusal.
    pub refusal: Option<&'static str>,
    /// `authorization.dry_run`: the part of the policy that would have refused this
    /// admitted call.
    pub would_refuse: Option<DecidingRule>,
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
    pub fn unauthenticated(reason: Reason, message: impl Into<Cow<'static, str>>) -> Refusal {
        debug_assert_eq!(reason.code(), Code::Unauthenticated, "{reason:?}");
        Refusal {
            code: Code::Unauthenticated,
            message: message.into(),
            reason,
            rule: None,
        }
    }

    pub fn permission_denied(reason: Reason, message: impl Into<Cow<'static, str>>) -> Refusal {
        debug_assert_eq!(reason.code(), Code::PermissionDenied, "{reason:?}");
        Refusal {
            code: Code::PermissionDenied,
            message: message.into(),
            reason,
            rule: None,
        }
    }

    /// Names the rule (or the default) that refused, in the status details.
    pub fn by(mut self, rule: DecidingRule) -> Refusal {
        self.rule = Some(rule);
        self
    }

    /// A `:path` outside gRPC's `/Service/Method` grammar: refused before authentication
    /// and never forwarded (see [`grpc::is_method_path`]).
    pub fn invalid_method_path() -> Refusal {
        Refusal {
            code: Code::Unimplemented,
            message: Cow::Borrowed("not a gRPC method path: expected /Service/Method"),
            reason: Reason::InvalidMethodPath,
            rule: None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_spelling_of_identity_headers() {
        for forged in [
            "x-tenant-id",
            "x_tenant_id",
            "x-tenant_id",
            "x-tenant-id-bin",
            "x_tenant_id_bin",
            "x-user-id",
            "x-user-roles",
            "x-auth-method",
            "x-api-key-name",
            "x-forwarded-client-cert",
        ] {
            assert!(is_identity_header(forged), "{forged}");
        }
        for innocent in [
            "x-tenant",
            "x-tenant-ids",
            "tenant-id",
            "x-request-id",
            "authorization",
            "x-api-key",
        ] {
            assert!(!is_identity_header(innocent), "{innocent}");
        }
    }

    #[test]
    fn strips_caller_sent_tenant_header_then_sets_the_verified_one() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant-id", HeaderValue::from_static("forged"));
        headers.insert("x_tenant_id", HeaderValue::from_static("forged"));
        headers.insert("x-tenant-id-bin", HeaderValue::from_static("Zm9yZ2Vk"));
        headers.insert("x-custom", HeaderValue::from_static("kept"));
        strip_identity_headers(&mut headers);
        assert_eq!(headers.len(), 1);

        let principal = Principal::new(
            AuthMethod::Jwt,
            Some("u1".into()),
            Some("acme".into()),
            vec!["a".into(), "b".into()],
            None,
        )
        .unwrap();
        principal.inject(&mut headers, None);
        assert_eq!(headers["x-tenant-id"], "acme");
        assert_eq!(headers["x-user-id"], "u1");
        assert_eq!(headers["x-user-roles"], "a,b");
        assert_eq!(headers["x-auth-method"], "jwt");
        assert!(headers.get("x-api-key-name").is_none());
    }

    #[test]
    fn request_trailers_lose_identity_headers_and_credentials() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-user-id", HeaderValue::from_static("forged"));
        trailers.insert("authorization", HeaderValue::from_static("Bearer forged"));
        trailers.insert("x-api-key", HeaderValue::from_static("forged"));
        trailers.insert("x-custom", HeaderValue::from_static("kept"));
        strip_request_trailers(&mut trailers);
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["x-custom"], "kept");
    }

    #[test]
    fn refuses_claims_that_would_smuggle_values_into_identity_headers() {
        let sources = Sources {
            user_id: "sub",
            tenant_id: "realm.tenant",
            roles: "groups",
        };
        let build = |user: &str, tenant: &str, roles: &[&str]| {
            Principal::from_sources(
                sources,
                AuthMethod::Jwt,
                Some(user.into()),
                Some(tenant.into()),
                roles.iter().map(|role| role.to_string()).collect(),
                None,
            )
        };
        let table = [
            (build("", "acme", &[]), "claim sub is empty"),
            (build(" ", "acme", &[]), "claim sub is empty"),
            (build("u1", "", &[]), "claim realm.tenant is empty"),
            (
                build("u1", "acme", &["viewer,admin"]),
                "claim groups: a role is empty or contains ',' or whitespace",
            ),
            (
                build("u1", "acme", &["viewer admin"]),
                "claim groups: a role is empty or contains ',' or whitespace",
            ),
            (
                build("u1", "acme", &["viewer", ""]),
                "claim groups: a role is empty or contains ',' or whitespace",
            ),
            (
                build("u1\n", "acme", &[]),
                "claim sub cannot be sent as metadata",
            ),
        ];
        for (built, message) in table {
            let refusal = built.unwrap_err();
            assert_eq!(refusal.code, Code::Unauthenticated);
            assert_eq!(refusal.message, message);
        }
        let principal = build("u1", "acme", &["viewer", "admin"]).unwrap();
        assert_eq!(principal.roles, ["viewer", "admin"]);
    }

    #[test]
    fn refuses_identity_values_that_cannot_be_headers() {
        let refusal = Principal::new(
            AuthMethod::Jwt,
            Some("evil\nvalue".into()),
            None,
            vec![],
            None,
        )
        .unwrap_err();
        assert_eq!(refusal.code, Code::Unauthenticated);
    }

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
}
