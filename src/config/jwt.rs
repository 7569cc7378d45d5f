//! `auth.jwt`: bearer tokens and the issuers that sign them, with the algorithm families
//! a provider may name.

use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{Duration, Problem, enabled};

/// `auth.jwt`: bearer tokens, checked against one or more issuers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    pub providers: Vec<JwtProvider>,
    /// Verified tokens remembered until they expire; 0 turns the cache off.
    #[serde(default = "Jwt::default_cache_size")]
    pub cache_size: usize,
}

impl Jwt {
    fn default_cache_size() -> usize {
        10_000
    }

    /// Every provider is complete, unique and consistent in what verifies its tokens.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.providers.is_empty() {
            problems.push(Problem::new(
                "auth.jwt.providers",
                "name at least one provider",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            provider.validate(&format!("auth.jwt.providers[{i}]"), &mut names, problems);
        }
    }
}

/// `auth.jwt.providers[]`: one token issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// One family: RS256/384/512, PS256/384/512, ES256/384, EdDSA, or HS256/384/512.
    pub algorithms: Vec<String>,
    pub jwks_file: Option<PathBuf>,
    /// HTTPS address of the issuer's key set, fetched in the background.
    pub jwks_url: Option<String>,
    /// Extra trust roots (PEM) for `jwks_url`, added to the public web roots.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "JwtProvider::default_refresh_interval")]
    pub refresh_interval: Duration,
    /// Least time between two fetches of `jwks_url`, however many unknown key ids arrive.
    #[serde(default = "JwtProvider::default_min_refresh_interval")]
    pub min_refresh_interval: Duration,
    /// The shared secret for HS* algorithms.
    pub secret_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "JwtProvider::default_leeway")]
    pub leeway: Duration,
    #[serde(default)]
    pub claims: ClaimNames,
    /// A token without the tenant claim is refused unless this is true.
    #[serde(default)]
    pub tenant_optional: bool,
    /// Keep `authorization` on the forwarded request, so the app can pass it on.
    #[serde(default = "enabled")]
    pub forward_token: bool,
    /// Refuse tokens without `cnf.x5t#S256` (RFC 8705). A token that carries it is checked
    /// against the caller's certificate whatever this says.
    #[serde(default)]
    pub require_cert_binding: bool,
}

/// The largest `leeway` a provider may allow on `exp` and `nbf`.
pub const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl JwtProvider {
    /// The problems of the provider at `path`; `names` holds the names of the providers
    /// before it, which it must not repeat.
    fn validate(
        &self,
        path: &str,
        names: &mut std::collections::HashSet<String>,
        problems: &mut Vec<Problem>,
    ) {
        let at = |field: &str| format!("{path}.{field}");
        if !names.insert(self.name.to_owned()) {
            problems.push(Problem::new(
                at("name"),
                format!("{:?} is used by another provider", self.name),
            ));
        }
        if self.issuer.is_empty() {
            problems.push(Problem::new(at("issuer"), "required"));
        }
        if self.audiences.is_empty() {
            problems.push(Problem::new(at("audiences"), "name at least one audience"));
        }
        if self.leeway.get() > MAX_LEEWAY {
            problems.push(Problem::new(
                at("leeway"),
                format!(
                    "at most {}m: clock skew beyond that is a broken clock, and a larger leeway keeps expired tokens working",
                    MAX_LEEWAY.as_secs() / 60
                ),
            ));
        }
        let family = match Family::of(&self.algorithms) {
            Ok(family) => Some(family),
            Err(message) => {
                problems.push(Problem::new(at("algorithms"), message));
                None
            }
        };
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.secret_file.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            problems.push(Problem::new(
                at("jwks_file"),
                "set exactly one of jwks_file, jwks_url or secret_file",
            ));
        }
        let hmac = family == Some(Family::Hmac);
        if hmac && self.secret_file.is_none() {
            problems.push(Problem::new(
                at("secret_file"),
                "HS* algorithms need secret_file",
            ));
        }
        if !hmac && family.is_some() && self.secret_file.is_some() {
            problems.push(Problem::new(
                at("secret_file"),
                "only HS* algorithms use a shared secret",
            ));
        }
        if let Some(url) = &self.jwks_url
            && !url.starts_with("https://")
        {
            problems.push(Problem::new(
                at("jwks_url"),
                format!("{url:?}: must be an https:// address"),
            ));
        }
        for (field, claim) in [
            ("user_id", &self.claims.user_id),
            ("tenant_id", &self.claims.tenant_id),
            ("roles", &self.claims.roles),
        ] {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                problems.push(Problem::new(
                    at(&format!("claims.{field}")),
                    "a claim name or dotted path",
                ));
            }
        }
    }

    fn default_refresh_interval() -> Duration {
        Duration::from_secs(300)
    }
    fn default_min_refresh_interval() -> Duration {
        Duration::from_secs(30)
    }
    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }
}

/// `claims`: which claims carry the identity; dotted paths reach into objects.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub user_id: String,
    pub tenant_id: String,
    pub roles: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            user_id: "sub".to_owned(),
            tenant_id: "tenant_id".to_owned(),
            roles: "roles".to_owned(),
        }
    }
}

/// One algorithm family per provider, so a key of one kind can never verify a token
/// that claims another (the RSA-public-key-as-HMAC-secret confusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Rsa,
    RsaPss,
    Ec,
    Ed,
    Hmac,
}

impl Family {
    fn of_algorithm(algorithm: Algorithm) -> Option<Family> {
        match algorithm {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(Family::Rsa),
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => Some(Family::RsaPss),
            Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
            Algorithm::EdDSA => Some(Family::Ed),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Some(Family::Hmac),
            _ => None,
        }
    }

    /// The family of a provider's `algorithms`, or why they are not acceptable.
    pub fn of(names: &[String]) -> Result<Family, AlgorithmError> {
        let algorithms = parse_algorithms(names)?;
        let first = *algorithms.first().ok_or(AlgorithmError::NoneNamed)?;
        let first = Family::of_algorithm(first).ok_or(AlgorithmError::Unsupported(first))?;
        if algorithms
            .iter()
            .any(|a| Family::of_algorithm(*a) != Some(first))
        {
            return Err(AlgorithmError::MixedFamilies(names.to_vec()));
        }
        Ok(first)
    }
}

/// Why a provider's `algorithms` (or `gatehouse token --alg`) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    /// `none`, in any case: a token that claims it would verify without a key.
    #[error("\"none\" is never accepted")]
    Unsigned,
    /// A name that is no JWT algorithm.
    #[error("{0:?} is not a JWT algorithm (RS256, PS256, ES256, EdDSA, HS256…)")]
    Unknown(String),
    /// An empty list.
    #[error("name at least one algorithm")]
    NoneNamed,
    /// An algorithm with no family gatehouse verifies.
    #[error("{0:?} is not supported")]
    Unsupported(Algorithm),
    /// Algorithms of more than one family.
    #[error("{0:?} mixes algorithm families: one family per provider")]
    MixedFamilies(Vec<String>),
}

/// Parses algorithm names; `none` is never accepted.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, AlgorithmError> {
    names
        .iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("none") {
                return Err(AlgorithmError::Unsigned);
            }
            Algorithm::from_str(name).map_err(|_| AlgorithmError::Unknown(name.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MINIMAL};

    #[test]
    fn rejects_mixed_families_and_none() {
        assert_eq!(
            Family::of(&["RS256".into(), "RS512".into()]),
            Ok(Family::Rsa)
        );
        assert!(Family::of(&["RS256".into(), "HS256".into()]).is_err());
        assert_eq!(
            Family::of(&["none".into()]).unwrap_err().to_string(),
            "\"none\" is never accepted"
        );
        assert_eq!(
            Family::of(&["RS256".into(), "HS256".into()])
                .unwrap_err()
                .to_string(),
            "[\"RS256\", \"HS256\"] mixes algorithm families: one family per provider"
        );
        assert!(Family::of(&[]).is_err());
    }

    #[test]
    fn leeway_is_bounded_and_the_problem_names_the_field() {
        let provider = |leeway: &str| {
            format!(
                "{MINIMAL}auth:
  jwt:
    providers:
      - {{ name: p, issuer: https://i.test, audiences: [a], algorithms: [RS256], jwks_file: /x.json, leeway: {leeway} }}
"
            )
        };
        let problems = |leeway: &str| -> Vec<Problem> {
            Config::from_yaml(&provider(leeway))
                .unwrap()
                .validate()
                .into_iter()
                .filter(|p| p.field.ends_with("leeway"))
                .collect()
        };
        assert_eq!(problems("5m"), vec![]);
        assert_eq!(problems("300s"), vec![]);
        let refused = problems("301s");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].field, "auth.jwt.providers[0].leeway");
        assert!(refused[0].message.contains("at most 5m"), "{}", refused[0]);
        assert_eq!(problems("1h").len(), 1);
    }
}
