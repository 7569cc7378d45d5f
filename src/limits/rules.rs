//! Which global rules apply to a call, and the bucket each counts it in.
//!
//! A bucket is named by the rule's position and what the rule counts: the verified tenant,
//! the verified caller (JWT provider and user, API key name, certificate identity), the
//! method, or tenant and method. Every value is written with its length in front, so no
//! two callers can ever share a name, whatever characters their ids hold. The same name
//! keys the local table and, after `key_prefix`, the store. A name longer than
//! [`MAX_NAME_BYTES`] (ids and method paths come from callers, up to a header list long)
//! is replaced by its SHA-256, so every bucket's size is bounded.

use std::fmt::Write as _;

use crate::config::{GlobalRule, MethodSelector, Per};
use crate::identity::{AuthMethod, Principal};
use crate::tls::PeerIdentity;

/// Calls to these never touch the store: load balancers and Kubernetes probe them.
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";

/// Bucket names longer than this are replaced by a hash of the name, in the local table
/// and the store alike.
pub const MAX_NAME_BYTES: usize = 200;

/// One rule of `limits.global.rules`, ready to apply.
pub struct Rule {
    /// Its index in `limits.global.rules`, as the metric label and status metadata show it.
    pub label: String,
    pub per: Per,
    /// Empty: every method.
    selectors: Vec<MethodSelector>,
    /// Calls per second (a fraction for per-minute rules).
    pub per_second: f64,
    /// Microseconds between two calls at the rule's rate.
    pub interval_us: f64,
    pub burst: u32,
    pub lease: u32,
    /// What a refused caller reads: the rule, its rate and what it counts.
    pub message: String,
}

impl Rule {
    pub fn new(index: usize, rule: &GlobalRule) -> Rule {
        let per_second = rule.per_second();
        let rate = match rule.rate() {
            Some((calls, period)) => format!(
                "{calls} call{} a {}",
                if calls == 1 { "" } else { "s" },
                if period.as_secs() == 60 {
                    "minute"
                } else {
                    "second"
                }
            ),
            None => "no calls".to_owned(),
        };
        Rule {
            label: index.to_string(),
            per: rule.per,
            selectors: rule.method_selectors(),
            per_second,
            interval_us: 1e6 / per_second,
            burst: rule.burst(),
            lease: rule.lease(),
            message: format!(
                "GLOBAL_RATE_LIMITED: limits.global.rules[{index}] allows {rate} per {} \
                 across every replica",
                rule.per.as_str().replace('_', " and ")
            ),
        }
    }

    pub fn applies_to(&self, path: &str) -> bool {
        self.selectors.is_empty() || self.selectors.iter().any(|s| s.matches(path))
    }
}

/// What a call is counted by: the verified principal and certificate, and its method.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub principal: &'a Principal,
    /// The verified client certificate, if any: counted by [`PeerIdentity::key`], as the
    /// per-pod limits count it.
    pub peer: Option<&'a PeerIdentity>,
    pub path: &'a str,
}

impl Call<'_> {
    /// Public methods (no credential asked for) and health checks are never counted.
    pub fn exempt(method: AuthMethod, path: &str) -> bool {
        method == AuthMethod::None || path.starts_with(HEALTH_SERVICE)
    }
}

/// Writes the name of the bucket `rule` (at `index`) counts `call` in, into `out`
/// (cleared first); false when the rule does not count this call (a tenant rule and a
/// call without a tenant, an identity rule and a caller without a verified name).
pub fn bucket_name(out: &mut String, index: usize, rule: &Rule, call: Call<'_>) -> bool {
    out.clear();
    let _ = write!(out, "{index}:{}", rule.per.as_str());
    let head = out.len();
    let tenant = call.principal.tenant_id.as_deref();
    let counted = match rule.per {
        Per::Tenant => tenant.is_some_and(|tenant| part(out, "t", tenant)),
        Per::Method => part(out, "m", call.path),
        Per::TenantMethod => {
            tenant.is_some_and(|tenant| part(out, "t", tenant)) && part(out, "m", call.path)
        }
        Per::Identity => identity(out, call),
    };
    if counted && out.len() > MAX_NAME_BYTES {
        let digest = crate::sha256::sha256(out.as_bytes());
        out.truncate(head);
        out.push_str(":sha256:");
        for byte in digest {
            let _ = write!(out, "{byte:02x}");
        }
    }
    counted
}

/// The verified caller: JWT provider and user, API key name, else the certificate.
fn identity(out: &mut String, call: Call<'_>) -> bool {
    let principal = call.principal;
    match (principal.method, &principal.provider, &principal.user_id) {
        (AuthMethod::Jwt, Some(provider), Some(user)) => {
            return part(out, "jwt", provider) && part(out, "u", user);
        }
        (AuthMethod::ApiKey, _, _) => {
            if let Some(name) = &principal.api_key_name {
                return part(out, "key", name);
            }
        }
        _ => {}
    }
    call.peer.is_some_and(|peer| {
        let (kind, name) = peer.key_parts();
        let _ = write!(out, ":peer{}:{kind}:{name}", kind.len() + 1 + name.len());
        true
    })
}

/// `:kind<len>:value`; always true, for chaining.
fn part(out: &mut String, kind: &str, value: &str) -> bool {
    let _ = write!(out, ":{kind}{}:{value}", value.len());
    true
}

/// The store key of the bucket named `name`: `prefix:name`.
pub fn store_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Claims;

    fn rule(yaml: &str) -> Rule {
        Rule::new(0, &serde_saphyr::from_str(yaml).unwrap())
    }

    fn principal(method: AuthMethod, user: Option<&str>, tenant: Option<&str>) -> Principal {
        let claims = Claims {
            user_id: user.map(str::to_owned),
            tenant_id: tenant.map(str::to_owned),
            api_key_name: (method == AuthMethod::ApiKey).then(|| "scanner".to_owned()),
            provider: (method == AuthMethod::Jwt).then(|| "gateway".into()),
            ..Claims::default()
        };
        Principal::new(method, claims).unwrap()
    }

    fn peer(uri: &str) -> PeerIdentity {
        PeerIdentity {
            uris: vec![uri.to_owned()],
            dns_names: vec!["a.internal".to_owned()],
            common_name: Some("a".to_owned()),
            ..PeerIdentity::default()
        }
    }

    fn name(
        rule: &Rule,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
        path: &str,
    ) -> Option<String> {
        let mut out = String::new();
        let call = Call {
            principal,
            peer,
            path,
        };
        bucket_name(&mut out, 0, rule, call).then_some(out)
    }

    #[test]
    fn buckets_are_named_by_what_the_rule_counts() {
        let jwt = principal(AuthMethod::Jwt, Some("u1"), Some("acme"));
        let path = "/pkg.Svc/Get";
        let tenant = rule("{ per: tenant, calls_per_second: 5 }");
        assert_eq!(name(&tenant, &jwt, None, path).unwrap(), "0:tenant:t4:acme");
        let both = rule("{ per: tenant_method, calls_per_second: 5 }");
        assert_eq!(
            name(&both, &jwt, None, path).unwrap(),
            "0:tenant_method:t4:acme:m12:/pkg.Svc/Get"
        );
        let method = rule("{ per: method, calls_per_second: 5 }");
        assert_eq!(
            name(&method, &jwt, None, path).unwrap(),
            "0:method:m12:/pkg.Svc/Get"
        );
        let identity = rule("{ per: identity, calls_per_second: 5 }");
        assert_eq!(
            name(&identity, &jwt, Some(&peer("spiffe://x")), path).unwrap(),
            "0:identity:jwt7:gateway:u2:u1"
        );
        let key = principal(AuthMethod::ApiKey, None, None);
        assert_eq!(
            name(&identity, &key, None, path).unwrap(),
            "0:identity:key7:scanner"
        );
        // A certificate counts by the key the per-pod limits count it by.
        let mtls = principal(AuthMethod::Mtls, None, None);
        let spiffe = peer("spiffe://td/sa/a");
        assert_eq!(spiffe.key(), "uri:spiffe://td/sa/a");
        assert_eq!(
            name(&identity, &mtls, Some(&spiffe), path).unwrap(),
            "0:identity:peer20:uri:spiffe://td/sa/a"
        );
        let dns_only = PeerIdentity {
            dns_names: vec!["b.internal".to_owned()],
            ..PeerIdentity::default()
        };
        assert_eq!(
            name(&identity, &mtls, Some(&dns_only), path).unwrap(),
            "0:identity:peer14:dns:b.internal"
        );
    }

    #[test]
    fn a_call_without_what_the_rule_counts_is_not_counted_by_it() {
        let no_tenant = principal(AuthMethod::Jwt, Some("u1"), None);
        let tenant = rule("{ per: tenant, calls_per_second: 5 }");
        assert_eq!(name(&tenant, &no_tenant, None, "/a.B/C"), None);
        let mtls = principal(AuthMethod::Mtls, None, None);
        let identity = rule("{ per: identity, calls_per_second: 5 }");
        assert_eq!(name(&identity, &mtls, None, "/a.B/C"), None);
    }

    #[test]
    fn ids_holding_separators_cannot_collide() {
        let tenant_method = rule("{ per: tenant_method, calls_per_second: 5 }");
        let a = principal(AuthMethod::Jwt, Some("u"), Some("a:m6:/x"));
        let b = principal(AuthMethod::Jwt, Some("u"), Some("a"));
        assert_ne!(
            name(&tenant_method, &a, None, "/p.S/M"),
            name(&tenant_method, &b, None, "/p.S/M")
        );
    }

    #[test]
    fn public_methods_and_health_checks_are_exempt() {
        assert!(Call::exempt(AuthMethod::None, "/pkg.Svc/Get"));
        assert!(Call::exempt(
            AuthMethod::Jwt,
            "/grpc.health.v1.Health/Check"
        ));
        assert!(!Call::exempt(AuthMethod::Jwt, "/pkg.Svc/Get"));
    }

    #[test]
    fn long_names_are_hashed_so_a_bucket_stays_small() {
        let method = rule("{ per: method, calls_per_second: 5 }");
        let jwt = principal(AuthMethod::Jwt, Some("u1"), Some("acme"));
        let short = name(&method, &jwt, None, "/pkg.Svc/Get").unwrap();
        assert_eq!(
            store_key("gh:orders", &short),
            "gh:orders:0:method:m12:/pkg.Svc/Get"
        );
        let long_path = format!("/pkg.Svc/{}", "X".repeat(300));
        let long = name(&method, &jwt, None, &long_path).unwrap();
        assert!(long.starts_with("0:method:sha256:"), "{long}");
        assert_eq!(long.len(), "0:method:sha256:".len() + 64);
        let other = name(&method, &jwt, None, &format!("{long_path}Y")).unwrap();
        assert_ne!(long, other, "different names, different hashes");
    }

    #[test]
    fn rules_match_their_methods_and_say_what_they_allow() {
        let export =
            rule("{ per: identity, methods: ['/o.v1.Orders/Export*'], calls_per_minute: 60 }");
        assert!(export.applies_to("/o.v1.Orders/ExportAll"));
        assert!(!export.applies_to("/o.v1.Orders/Get"));
        assert_eq!(export.interval_us, 1e6);
        assert_eq!(
            export.message,
            "GLOBAL_RATE_LIMITED: limits.global.rules[0] allows 60 calls a minute per identity across every replica"
        );
    }
}
