//! Who a caller is, once verified, and the metadata that carries it to the app.
//!
//! Strip, then set: every request loses whatever copies of the identity headers the
//! caller sent (any spelling: `-bin` forms, underscores), and only then are the verified
//! values inserted. [`IDENTITY_HEADERS`] is the one table of those headers; stripping,
//! injecting and the outbound strip all read it. Values are built into `HeaderValue`s
//! once per identity, so a cached identity costs no formatting per call.

use std::sync::{Arc, LazyLock};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub const X_USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub const X_API_KEY_NAME: HeaderName = HeaderName::from_static("x-api-key-name");
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The header API keys are sent in unless `auth.api_keys.header` says otherwise; never
/// forwarded, whatever is configured.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Every header gatehouse sets to say who the caller is (DESIGN §3); callers can never
/// send any of them, in any spelling.
pub const IDENTITY_HEADERS: [HeaderName; 6] = [
    X_USER_ID,
    X_TENANT_ID,
    X_USER_ROLES,
    X_AUTH_METHOD,
    X_API_KEY_NAME,
    X_FORWARDED_CLIENT_CERT,
];

/// Whether `name` is `canonical` in any spelling a server might read as it: `_` for
/// `-`, and a `-bin` (or `_bin`) suffix.
pub fn is_spelling_of(name: &str, canonical: &HeaderName) -> bool {
    let canonical = canonical.as_str();
    let base = name
        .strip_suffix("-bin")
        .or_else(|| name.strip_suffix("_bin"))
        .unwrap_or(name);
    base.len() == canonical.len()
        && base
            .bytes()
            .zip(canonical.bytes())
            .all(|(sent, ours)| sent == ours || (sent == b'_' && ours == b'-'))
}

/// Whether `name` is an identity header in any spelling: `x_user_id`, `x-user-id-bin`…
pub fn is_identity_header(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.len() < 9 || bytes[0] != b'x' || (bytes[1] != b'-' && bytes[1] != b'_') {
        return false;
    }
    IDENTITY_HEADERS
        .iter()
        .any(|identity| is_spelling_of(name, identity))
}

/// Removes every header `matches` names. Allocates only when there is one.
pub fn strip_matching(headers: &mut HeaderMap, matches: impl Fn(&str) -> bool) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| matches(name.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Removes every caller-sent identity header. Allocates only when there is one.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    strip_matching(headers, is_identity_header);
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
    /// The JWT provider that verified the token, by its configured `name`: a user id
    /// means something only together with its issuer.
    pub provider: Option<Arc<str>>,
    headers: IdentityValues,
}

/// The identity headers' values, built once per identity.
#[derive(Clone, Debug, Default)]
struct IdentityValues {
    user_id: Option<HeaderValue>,
    tenant_id: Option<HeaderValue>,
    roles: Option<HeaderValue>,
    api_key_name: Option<HeaderValue>,
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

/// An identity value that cannot be handed to the app: which source, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadIdentity(pub String);

/// The values a principal is built from.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub roles: Vec<String>,
    pub api_key_name: Option<String>,
    pub provider: Option<Arc<str>>,
}

impl Principal {
    /// Builds a principal whose values come from the identity's own fields.
    pub fn new(method: AuthMethod, claims: Claims) -> Result<Principal, BadIdentity> {
        Principal::from_sources(Sources::FIELDS, method, claims)
    }

    /// Builds a principal from values taken from `sources`, refusing an empty user or
    /// tenant id (the app would see an id that names nobody), a role that is empty or
    /// holds `,` or whitespace (`x-user-roles` is comma-separated, so `viewer,admin`
    /// would read as two roles), and any value that cannot be sent as metadata; the
    /// error names the source.
    pub fn from_sources(
        sources: Sources<'_>,
        method: AuthMethod,
        claims: Claims,
    ) -> Result<Principal, BadIdentity> {
        let Claims {
            user_id,
            tenant_id,
            roles,
            api_key_name,
            provider,
        } = claims;
        for (source, value) in [(sources.user_id, &user_id), (sources.tenant_id, &tenant_id)] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                return Err(BadIdentity(format!("claim {source} is empty")));
            }
        }
        if roles
            .iter()
            .any(|role| role.is_empty() || role.contains(|c: char| c == ',' || c.is_whitespace()))
        {
            return Err(BadIdentity(format!(
                "claim {}: a role is empty or contains ',' or whitespace",
                sources.roles
            )));
        }
        let value =
            |source: &str, text: &Option<String>| -> Result<Option<HeaderValue>, BadIdentity> {
                text.as_deref()
                    .map(|text| {
                        HeaderValue::from_str(text).map_err(|_| {
                            BadIdentity(format!("claim {source} cannot be sent as metadata"))
                        })
                    })
                    .transpose()
            };
        let joined = (!roles.is_empty()).then(|| roles.join(","));
        let headers = IdentityValues {
            user_id: value(sources.user_id, &user_id)?,
            tenant_id: value(sources.tenant_id, &tenant_id)?,
            roles: value(sources.roles, &joined)?,
            api_key_name: value("api key name", &api_key_name)?,
        };
        Ok(Principal {
            method,
            user_id,
            tenant_id,
            roles,
            api_key_name,
            provider,
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
            provider: None,
            headers: IdentityValues::default(),
        }
    }

    /// Sets the verified identity headers (after [`strip_identity_headers`]).
    pub fn inject(&self, headers: &mut HeaderMap, client_cert: Option<&HeaderValue>) {
        let values = [
            (X_USER_ID, &self.headers.user_id),
            (X_TENANT_ID, &self.headers.tenant_id),
            (X_USER_ROLES, &self.headers.roles),
            (X_API_KEY_NAME, &self.headers.api_key_name),
        ];
        for (name, value) in values {
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
            Claims {
                user_id: Some("u1".into()),
                tenant_id: Some("acme".into()),
                roles: vec!["a".into(), "b".into()],
                ..Claims::default()
            },
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
                Claims {
                    user_id: Some(user.into()),
                    tenant_id: Some(tenant.into()),
                    roles: roles.iter().map(|role| role.to_string()).collect(),
                    ..Claims::default()
                },
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
            assert_eq!(built.unwrap_err().0, message);
        }
        let principal = build("u1", "acme", &["viewer", "admin"]).unwrap();
        assert_eq!(principal.roles, ["viewer", "admin"]);
    }
}
