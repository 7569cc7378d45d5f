//! `authorization`: which authenticated callers may call which methods.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{MethodPattern, PeerPattern, Problem, parse_all};

/// Names in one field path at most (`owner.user_id` has two).
pub const MAX_FIELD_DEPTH: usize = 8;
/// Field rules in one authorization rule at most.
pub const MAX_FIELDS: usize = 16;

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
    /// Dotted paths in the request message, each with the value it must have in every
    /// request message of the call: `{tenant}`, `{user}`, `{key}`, `{peer}` or a literal.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// What a field rule compares a request field with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// `{tenant}`: the caller's tenant (token claim or API key's `tenant_id`).
    Tenant,
    /// `{user}`: the caller's user id.
    User,
    /// `{key}`: the name of the API key the caller presented.
    Key,
    /// `{peer}`: the caller's certificate identity (SPIFFE ID, else first SAN or CN).
    Peer,
    Literal(String),
}

impl FieldValue {
    pub fn parse(text: &str) -> Result<FieldValue, String> {
        match text {
            "{tenant}" => Ok(FieldValue::Tenant),
            "{user}" => Ok(FieldValue::User),
            "{key}" => Ok(FieldValue::Key),
            "{peer}" => Ok(FieldValue::Peer),
            "" => Err("empty: write {tenant}, {user}, {key}, {peer} or a literal".to_owned()),
            placeholder if placeholder.starts_with('{') && placeholder.ends_with('}') => Err(
                format!("{placeholder:?} is not {{tenant}}, {{user}}, {{key}} or {{peer}}"),
            ),
            literal => Ok(FieldValue::Literal(literal.to_owned())),
        }
    }
}

/// Whether `path` is dotted protobuf field names, at most [`MAX_FIELD_DEPTH`] of them.
pub fn is_field_path(path: &str) -> bool {
    let names: Vec<&str> = path.split('.').collect();
    names.len() <= MAX_FIELD_DEPTH
        && names.iter().all(|name| {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
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
            if rule.fields.len() > MAX_FIELDS {
                problems.push(Problem::new(
                    format!("authorization.rules[{i}].fields"),
                    format!("at most {MAX_FIELDS} fields"),
                ));
            }
            for (path, value) in &rule.fields {
                let field = format!("authorization.rules[{i}].fields.{path}");
                if !is_field_path(path) {
                    problems.push(Problem::new(
                        &field,
                        format!(
                            "write a field name or a dotted path of at most {MAX_FIELD_DEPTH} names (owner.user_id)"
                        ),
                    ));
                }
                if let Err(message) = FieldValue::parse(value) {
                    problems.push(Problem::new(&field, message));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_are_placeholders_or_literals() {
        assert_eq!(FieldValue::parse("{tenant}"), Ok(FieldValue::Tenant));
        assert_eq!(FieldValue::parse("{peer}"), Ok(FieldValue::Peer));
        assert_eq!(
            FieldValue::parse("eu-west"),
            Ok(FieldValue::Literal("eu-west".into()))
        );
        assert_eq!(
            FieldValue::parse("{tenant_id}").unwrap_err(),
            "\"{tenant_id}\" is not {tenant}, {user}, {key} or {peer}"
        );
        assert!(FieldValue::parse("").is_err());
    }

    #[test]
    fn field_paths_are_dotted_names() {
        assert!(is_field_path("tenant_id"));
        assert!(is_field_path("owner.user_id"));
        for bad in [
            "",
            "owner.",
            ".x",
            "a..b",
            "1st",
            "a-b",
            "a.b.c.d.e.f.g.h.i",
        ] {
            assert!(!is_field_path(bad), "{bad}");
        }
    }
}
