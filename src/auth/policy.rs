//! Who may call what: method patterns, the peer allow-list and authorization rules.
//!
//! With `authorization.dry_run` the rules are evaluated as usual but a refusal only says
//! which rule would have refused; the peer allow-list is always enforced.

use crate::auth::outcome::{DecidingRule, Refusal};
use crate::config::{self, DefaultDecision, MethodPattern, PeerPattern, Problem, parse_all};
use crate::grpc::Reason;
use crate::identity::Principal;
use crate::tls::PeerIdentity;

pub fn any_matches(patterns: &[MethodPattern], path: &str) -> bool {
    patterns.iter().any(|pattern| pattern.matches(path))
}

/// Whether any of the peer's names matches any pattern (each of its own kind).
pub fn peer_matches(patterns: &[PeerPattern], peer: &PeerIdentity) -> bool {
    let names = peer.names();
    patterns.iter().any(|pattern| pattern.matches(&names))
}

struct Rule {
    methods: Vec<MethodPattern>,
    allow_roles: Vec<String>,
    allow_api_keys: Vec<String>,
    allow_peers: Vec<PeerPattern>,
}

/// The peer allow-list and the authorization rules.
pub struct Policy {
    allowed_peers: Vec<PeerPattern>,
    rules: Vec<Rule>,
    /// `authorization.default`: what a call that no rule matches gets.
    default: DefaultDecision,
    /// `authorization.dry_run`: rules report refusals instead of enforcing them.
    dry_run: bool,
}

impl Policy {
    /// Builds from the config; every pattern that does not parse is a problem on its field.
    pub fn new(
        tls: &config::Tls,
        authorization: Option<&config::Authorization>,
    ) -> Result<Policy, Vec<Problem>> {
        let mut problems = Vec::new();
        let allowed_peers = parse_all(
            &tls.allowed_peers,
            "tls.allowed_peers",
            PeerPattern::parse,
            &mut problems,
        );
        let rules = authorization
            .map(|authorization| {
                authorization
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| Rule {
                        methods: parse_all(
                            &rule.methods,
                            &format!("authorization.rules[{i}].methods"),
                            MethodPattern::parse,
                            &mut problems,
                        ),
                        allow_roles: rule.allow_roles.clone(),
                        allow_api_keys: rule.allow_api_keys.clone(),
                        allow_peers: parse_all(
                            &rule.allow_peers,
                            &format!("authorization.rules[{i}].allow_peers"),
                            PeerPattern::parse,
                            &mut problems,
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            allowed_peers,
            rules,
            default: authorization.map_or(DefaultDecision::Allow, |a| a.default),
            dry_run: authorization.is_some_and(|a| a.dry_run),
        })
    }

    /// `tls.allowed_peers`: which certificates may call at all.
    pub fn admit_peer(&self, peer: Option<&PeerIdentity>) -> Result<(), Refusal> {
        // A connection can outlive its certificate; the identity it stated cannot.
        if peer.is_some_and(PeerIdentity::expired) {
            return Err(Refusal::unauthenticated(
                Reason::PeerCertificateExpired,
                "the client certificate of this connection has expired: reconnect with a current one",
            ));
        }
        if self.allowed_peers.is_empty() {
            return Ok(());
        }
        match peer {
            Some(peer) if peer_matches(&self.allowed_peers, peer) => Ok(()),
            Some(_) => Err(Refusal::permission_denied(
                Reason::PeerNotAllowed,
                "client certificate not in tls.allowed_peers",
            )),
            None => Err(Refusal::permission_denied(
                Reason::PeerNotAllowed,
                "a client certificate in tls.allowed_peers is required",
            )),
        }
    }

    /// The first rule whose methods match decides; when none matches,
    /// `authorization.default` does. In dry run a call the policy refuses is let through:
    /// `Ok(Some(rule))` names the part that would have refused it.
    pub fn authorize(
        &self,
        path: &str,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
    ) -> Result<Option<DecidingRule>, Refusal> {
        match self.evaluate(path, principal, peer) {
            Ok(()) => Ok(None),
            Err((rule, _)) if self.dry_run => Ok(Some(rule)),
            Err((_, refusal)) => Err(refusal),
        }
    }

    /// Like [`Policy::authorize`], but refuses even in dry run: for callers that did not
    /// authenticate at all, whom dry run must never let through.
    pub fn enforce(
        &self,
        path: &str,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), Refusal> {
        self.evaluate(path, principal, peer)
            .map_err(|(_, refusal)| refusal)
    }

    fn evaluate(
        &self,
        path: &str,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), (DecidingRule, Refusal)> {
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            // In any case: an app server that looks methods up case-insensitively would
            // run the rule's method for a path that differs only by case.
            .find(|(_, rule)| rule.methods.iter().any(|m| m.matches_any_case(path)))
        else {
            return match self.default {
                DefaultDecision::Allow => Ok(()),
                DefaultDecision::Deny => Err((
                    DecidingRule::Default,
                    Refusal::permission_denied(
                        Reason::DeniedByDefault,
                        format!("permission denied for {path}: no authorization rule allows it"),
                    )
                    .by(DecidingRule::Default),
                )),
            };
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
            Err((
                DecidingRule::Rule(index),
                Refusal::permission_denied(
                    Reason::DeniedByRule,
                    format!("permission denied for {path}"),
                )
                .by(DecidingRule::Rule(index)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AuthMethod, Claims};

    fn policy(rules: &str) -> Policy {
        policy_with("", rules)
    }

    fn policy_with(settings: &str, rules: &str) -> Policy {
        let yaml = format!(
            "listen: {{ address: 127.0.0.1:1 }}\ntls: {{ enabled: false }}\nupstream: {{ address: 127.0.0.1:2 }}\nauthorization:\n{settings}  rules:\n{rules}"
        );
        let config = config::Config::from_yaml(&yaml).unwrap();
        Policy::new(&config.tls, config.authorization.as_ref()).unwrap()
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
        let admin = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec!["admin".into()],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        let user = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec!["user".into()],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        let scanner = Principal::new(
            AuthMethod::ApiKey,
            Claims {
                roles: vec![],
                api_key_name: Some("scanner".into()),
                ..Claims::default()
            },
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
        let user = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec![],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        assert!(policy.authorize("/other.Svc/Get", &user, None).is_ok());
    }

    #[test]
    fn with_default_deny_no_matching_rule_refuses() {
        let policy = policy_with(
            "  default: deny\n",
            "    - methods: [/c.v1.Compliance/*]\n      allow_roles: [admin]\n",
        );
        let admin = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec!["admin".into()],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        assert!(
            policy
                .authorize("/c.v1.Compliance/Scan", &admin, None)
                .is_ok()
        );
        let refused = policy
            .authorize("/other.Svc/Get", &admin, None)
            .unwrap_err();
        assert_eq!(refused.code, crate::grpc::Code::PermissionDenied);
        assert_eq!(
            refused.message,
            "permission denied for /other.Svc/Get: no authorization rule allows it"
        );
    }

    #[test]
    fn dry_run_names_the_rule_that_would_refuse_and_lets_the_call_through() {
        let rules = "    - methods: [/c.v1.Compliance/Scan]\n      allow_roles: [admin]\n    - methods: [/c.v1.Compliance/*]\n      allow_roles: [auditor]\n";
        let dry = policy_with("  default: deny\n  dry_run: true\n", rules);
        let enforcing = policy_with("  default: deny\n", rules);
        let admin = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec!["admin".into()],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        let user = Principal::new(
            AuthMethod::Jwt,
            Claims {
                roles: vec!["user".into()],
                api_key_name: None,
                ..Claims::default()
            },
        )
        .unwrap();
        for (path, rule) in [
            ("/c.v1.Compliance/Scan", DecidingRule::Rule(0)),
            ("/c.v1.Compliance/List", DecidingRule::Rule(1)),
            ("/other.Svc/Get", DecidingRule::Default),
        ] {
            assert_eq!(dry.authorize(path, &user, None), Ok(Some(rule)), "{path}");
            let refused = enforcing.authorize(path, &user, None).unwrap_err();
            assert_eq!(refused.code, crate::grpc::Code::PermissionDenied, "{path}");
        }
        assert_eq!(
            dry.authorize("/c.v1.Compliance/Scan", &admin, None),
            Ok(None)
        );
        assert_eq!(DecidingRule::Rule(1).to_string(), "1");
        assert_eq!(DecidingRule::Default.to_string(), "default");
    }

    #[test]
    fn dry_run_never_relaxes_the_peer_allow_list() {
        let yaml = "listen: { address: 127.0.0.1:1 }
tls: { enabled: false, allowed_peers: [spiffe://td/sa/gateway] }
upstream: { address: 127.0.0.1:2 }
authorization:
  dry_run: true
  rules: []
";
        let config = config::Config::from_yaml(yaml).unwrap();
        let policy = Policy::new(&config.tls, config.authorization.as_ref()).unwrap();
        assert!(
            policy
                .admit_peer(Some(&peer("spiffe://td/sa/gateway")))
                .is_ok()
        );
        let refused = policy
            .admit_peer(Some(&peer("spiffe://td/sa/other")))
            .unwrap_err();
        assert_eq!(refused.code, crate::grpc::Code::PermissionDenied);
        assert!(policy.admit_peer(None).is_err());
    }

    #[test]
    fn every_bad_pattern_is_a_problem_on_its_field() {
        let yaml = "listen: { address: 127.0.0.1:1 }
tls: { enabled: false, allowed_peers: [gateway] }
upstream: { address: 127.0.0.1:2 }
authorization:
  rules:
    - methods: [/ok.Svc/Get, /pkg.*/Get]
      allow_peers: [spiffe://td/sa/x, 'cn:']
";
        let config = config::Config::from_yaml(yaml).unwrap();
        let fields: Vec<String> = Policy::new(&config.tls, config.authorization.as_ref())
            .err()
            .unwrap()
            .into_iter()
            .map(|problem| problem.field)
            .collect();
        assert_eq!(
            fields,
            [
                "tls.allowed_peers[0]",
                "authorization.rules[0].methods[1]",
                "authorization.rules[0].allow_peers[1]"
            ]
        );
    }
}
