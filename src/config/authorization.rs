//! `authorization`: which authenticated callers may call which methods.

use serde::Deserialize;

use super::{MethodPattern, PeerPattern, Problem, parse_all};

/// `authorization`: which authenticated callers may call which methods.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// What a call that no rule matches gets.
    #[serde(default)]
    pub default: DefaultDecision,
    /// Log and count the calls the rules would refuse, and let them through.
    #[serde(default)]
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

/// `authorization.default`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    /// Any authenticated caller may call a method no rule matches.
    #[default]
    Allow,
    /// A method no rule matches is refused with PERMISSION_DENIED.
    Deny,
}

/// `authorization.rules[]`: the first rule whose `methods` match decides.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub methods: Vec<String>,
    #[serde(default)]
    pub allow_roles: Vec<String>,
    #[serde(default)]
    pub allow_api_keys: Vec<String>,
    #[serde(default)]
    pub allow_peers: Vec<String>,
}

impl Authorization {
    /// Every rule names methods, and every pattern parses.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("authorization.rules[{i}].methods");
            if rule.methods.is_empty() {
                problems.push(Problem::new(&field, "name at least one method pattern"));
            }
            parse_all(&rule.methods, &field, MethodPattern::parse, problems);
            parse_all(
                &rule.allow_peers,
                &format!("authorization.rules[{i}].allow_peers"),
                PeerPattern::parse,
                problems,
            );
        }
    }
}
