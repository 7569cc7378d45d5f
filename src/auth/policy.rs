//! Who may call what: method patterns, the peer allow-list and authorization rules.

use crate::auth::principal::{Principal, Refusal};
use crate::config;
use crate::tls::PeerIdentity;

/// A method pattern from the config: `*`, `/pkg.Service/*` or an exact path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodPattern {
    Any,
    /// Holds `/pkg.Service/`.
    Service(String),
    Exact(String),
}

impl MethodPattern {
    /// Parses a pattern already checked by `Config::validate`.
    pub fn parse(pattern: &str) -> MethodPattern {
        match pattern {
            "*" => MethodPattern::Any,
            _ => match pattern.strip_suffix('*') {
                Some(service) => MethodPattern::Service(service.to_owned()),
                None => MethodPattern::Exact(pattern.to_owned()),
            },
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            MethodPattern::Any => true,
            MethodPattern::Service(prefix) => {
                path.starts_with(prefix.as_str()) && !path[prefix.len()..].contains('/')
            }
            MethodPattern::Exact(exact) => path == exact,
        }
    }
}

pub fn any_matches(patterns: &[MethodPattern], path: &str) -> bool {
    patterns.iter().any(|pattern| pattern.matches(path))
}

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether any of the peer's names (URI SANs, DNS SANs, CN) matches any pattern.
pub fn peer_matches(patterns: &[String], peer: &PeerIdentity) -> bool {
    let names = peer
        .uris
        .iter()
        .chain(&peer.dns_names)
        .chain(&peer.common_name);
    names
        .into_iter()
        .any(|name| patterns.iter().any(|pattern| glob(pattern, name)))
}

struct Rule {
    methods: Vec<MethodPattern>,
    allow_roles: Vec<String>,
    allow_api_keys: Vec<String>,
    allow_peers: Vec<String>,
}

/// The peer allow-list and the authorization rules.
pub struct Policy {
    allowed_peers: Vec<String>,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(tls: &config::Tls, authorization: Option<&config::Authorization>) -> Policy {
        let rules = authorization
            .map(|authorization| {
                authorization
                    .rules
                    .iter()
                    .map(|rule| Rule {
                        methods: rule
                            .methods
                            .iter()
                            .map(|m| MethodPattern::parse(m))
                            .collect(),
                        allow_roles: rule.allow_roles.clone(),
                        allow_api_keys: rule.allow_api_keys.clone(),
                        allow_peers: rule.allow_peers.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Policy {
            allowed_peers: tls.allowed_peers.clone(),
            rules,
        }
    }

    /// `tls.allowed_peers`: which certificates may call at all.
    pub fn admit_peer(&self, peer: Option<&PeerIdentity>) -> Result<(), Refusal> {
        if self.allowed_peers.is_empty() {
            return Ok(());
        }
        match peer {
            Some(peer) if peer_matches(&self.allowed_peers, peer) => Ok(()),
            Some(_) => Err(Refusal::permission_denied(
                "peer_not_allowed",
                "client certificate not in tls.allowed_peers",
            )),
            None => Err(Refusal::permission_denied(
                "peer_not_allowed",
                "a client certificate in tls.allowed_peers is required",
            )),
        }
    }

    /// The first rule whose methods match decides; no match allows.
    pub fn authorize(
        &self,
        path: &str,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), Refusal> {
        let Some(rule) = self
            .rules
            .iter()
            .find(|rule| any_matches(&rule.methods, path))
        else {
            return Ok(());
        };
        let by_role = principal
            .roles
            .iter()
            .any(|role| rule.allow_roles.contains(role));
        let by_key = principal
            .api_key_name
            .as_ref()
            .is_some_and(|name| rule.allow_api_keys.contains(name));
        let by_peer = peer.is_some_and(|peer| peer_matches(&rule.allow_peers, peer));
        if by_role || by_key || by_peer {
            Ok(())
        } else {
            Err(Refusal::permission_denied(
                "rule_denied",
                format!("permission denied for {path}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::AuthMethod;

    #[test]
    fn globs_match_spiffe_ids_and_names() {
        assert!(glob(
            "spiffe://cluster.local/ns/prod/sa/*",
            "spiffe://cluster.local/ns/prod/sa/gateway"
        ));
        assert!(!glob(
            "spiffe://cluster.local/ns/prod/sa/*",
            "spiffe://cluster.local/ns/dev/sa/gateway"
        ));
        assert!(glob("*.svc.cluster.local", "api.prod.svc.cluster.local"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c"));
        assert!(glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn method_patterns_match_exact_service_and_any() {
        let service = MethodPattern::parse("/pkg.Svc/*");
        assert!(service.matches("/pkg.Svc/Get"));
        assert!(!service.matches("/pkg.SvcOther/Get"));
        assert!(!service.matches("/pkg.Svc/Get/extra"));
        assert!(MethodPattern::parse("/pkg.Svc/Get").matches("/pkg.Svc/Get"));
        assert!(!MethodPattern::parse("/pkg.Svc/Get").matches("/pkg.Svc/GetAll"));
        assert!(MethodPattern::parse("*").matches("/anything/At"));
    }

    fn policy(rules: &str) -> Policy {
        let yaml = format!(
            "listen: {{ address: 127.0.0.1:1 }}\ntls: {{ enabled: false }}\nupstream: {{ address: 127.0.0.1:2 }}\nauthorization:\n  rules:\n{rules}"
        );
        let config = config::Config::from_yaml(&yaml).unwrap();
        Policy::new(&config.tls, config.authorization.as_ref())
    }

    fn peer(uri: &str) -> PeerIdentity {
        PeerIdentity {
            uris: vec![uri.into()],
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn first_matching_rule_decides_by_role_key_or_peer() {
        let policy = policy(
            "    - methods: [/c.v1.Compliance/*]
      allow_roles: [admin]
      allow_api_keys: [scanner]
      allow_peers: [spiffe://td/sa/gateway]
    - methods: ['*']
      allow_roles: [nobody]
",
        );
        let admin =
            Principal::new(AuthMethod::Jwt, None, None, vec!["admin".into()], None).unwrap();
        let user = Principal::new(AuthMethod::Jwt, None, None, vec!["user".into()], None).unwrap();
        let scanner = Principal::new(
            AuthMethod::ApiKey,
            None,
            None,
            vec![],
            Some("scanner".into()),
        )
        .unwrap();
        let path = "/c.v1.Compliance/Scan";
        assert!(policy.authorize(path, &admin, None).is_ok());
        assert!(policy.authorize(path, &scanner, None).is_ok());
        assert!(
            policy
                .authorize(path, &user, Some(&peer("spiffe://td/sa/gateway")))
                .is_ok()
        );
        let refused = policy
            .authorize(path, &user, Some(&peer("spiffe://td/sa/other")))
            .unwrap_err();
        assert_eq!(refused.code, crate::grpc::Code::PermissionDenied);
        assert!(refused.message.contains(path));
        assert!(
            policy.authorize("/other.Svc/Get", &admin, None).is_err(),
            "the catch-all rule decides"
        );
    }

    #[test]
    fn no_matching_rule_allows() {
        let policy = policy("    - methods: [/c.v1.Compliance/*]\n      allow_roles: [admin]\n");
        let user = Principal::new(AuthMethod::Jwt, None, None, vec![], None).unwrap();
        assert!(policy.authorize("/other.Svc/Get", &user, None).is_ok());
    }
}
