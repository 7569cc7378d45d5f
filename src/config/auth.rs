//! `auth`: who may call, proven by a JWT or an API key.

use serde::Deserialize;

use super::{ApiKeys, ClientAuth, Jwt, MethodPattern, Problem, Tls, parse_all};

/// `auth`: who may call, proven by a JWT or an API key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Methods callable without credentials: exact paths or `/pkg.Service/*`.
    #[serde(default = "Auth::default_public_methods")]
    pub public_methods: Vec<String>,
    #[serde(default)]
    pub jwt: Option<Jwt>,
    #[serde(default)]
    pub api_keys: Option<ApiKeys>,
    /// Ends an open call with UNAUTHENTICATED when its token expires (plus leeway), or
    /// its API key is revoked or expires, while the call is still open.
    #[serde(default = "Auth::default_expire_open_calls")]
    pub expire_open_calls: bool,
}

impl Auth {
    fn default_expire_open_calls() -> bool {
        true
    }

    fn default_public_methods() -> Vec<String> {
        vec![
            "/grpc.health.v1.Health/Check".to_owned(),
            "/grpc.health.v1.Health/Watch".to_owned(),
        ]
    }

    /// The public methods parse, at least one credential is configured and each is
    /// complete; `tls` says whether callers can present the certificates a bound token
    /// needs.
    pub(super) fn validate(&self, tls: &Tls, problems: &mut Vec<Problem>) {
        parse_all(
            &self.public_methods,
            "auth.public_methods",
            MethodPattern::parse,
            problems,
        );
        if self.jwt.is_none() && self.api_keys.is_none() {
            problems.push(Problem::new(
                "auth",
                "configure jwt, api_keys or both (or leave auth out for mTLS only)",
            ));
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate(problems);
        }
        if let Some(api_keys) = &self.api_keys {
            api_keys.validate(problems);
        }
        // A provider that requires bound tokens on a listener that never sees a client
        // certificate would refuse every token it issues.
        let no_client_certs = !tls.enabled || tls.client_auth == ClientAuth::None;
        let providers = self.jwt.iter().flat_map(|jwt| jwt.providers.iter());
        for (i, provider) in providers.enumerate() {
            if provider.require_cert_binding && no_client_certs {
                problems.push(Problem::new(
                    format!("auth.jwt.providers[{i}].require_cert_binding"),
                    "needs client certificates: tls.enabled true and tls.client_auth require or optional",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MINIMAL};

    #[test]
    fn open_calls_end_with_their_credentials_unless_turned_off() {
        let auth = |extra: &str| {
            Config::from_yaml(&format!("{MINIMAL}auth: {{ public_methods: []{extra} }}\n"))
                .unwrap()
                .auth
                .unwrap()
        };
        assert!(auth("").expire_open_calls);
        assert!(!auth(", expire_open_calls: false").expire_open_calls);
    }
}
