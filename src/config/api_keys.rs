//! `auth.api_keys`: pre-provisioned keys for callers with no user, stored as SHA-256.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Problem, parse_timestamp};

/// `auth.api_keys`: pre-provisioned keys for callers with no user.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    #[serde(default = "ApiKeys::default_header")]
    pub header: String,
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// A YAML file `keys: [...]` with more entries, re-read when it changes.
    pub keys_file: Option<PathBuf>,
}

impl ApiKeys {
    fn default_header() -> String {
        "x-api-key".to_owned()
    }

    /// The header is one gatehouse can read, and every configured key is well formed.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err()
            || self.header != self.header.to_ascii_lowercase()
        {
            problems.push(Problem::new(
                "auth.api_keys.header",
                format!("{:?} is not a lowercase header name", self.header),
            ));
        }
        if self.keys.is_empty() && self.keys_file.is_none() {
            problems.push(Problem::new("auth.api_keys", "set keys, keys_file or both"));
        }
        problems.extend(validate_api_keys(&self.keys, "auth.api_keys.keys"));
    }
}

/// One API key, stored only as the SHA-256 of the key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// 64 hex characters, as printed by `gatehouse hash-key`.
    pub sha256: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// `2027-01-31` or `2027-01-31T12:00:00Z`: the key is refused from then on.
    pub not_after: Option<String>,
}

/// The file named by `auth.api_keys.keys_file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub keys: Vec<ApiKey>,
}

/// Problems in a list of API keys, each under `prefix[i]`.
pub fn validate_api_keys(keys: &[ApiKey], prefix: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        if key.name.is_empty() || !names.insert(key.name.as_str()) {
            problems.push(Problem::new(
                format!("{prefix}[{i}].name"),
                "required, and unique",
            ));
        }
        if crate::sha256::parse_sha256(&key.sha256).is_none() {
            problems.push(Problem::new(
                format!("{prefix}[{i}].sha256"),
                "64 hex characters, as printed by `gatehouse hash-key`",
            ));
        }
        // Values that become identity headers: a role with `,` would read as two roles in
        // `x-user-roles`, and an empty id as no id at all.
        for (field, value) in [("tenant_id", &key.tenant_id), ("user_id", &key.user_id)] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                problems.push(Problem::new(
                    format!("{prefix}[{i}].{field}"),
                    "empty: leave it out instead",
                ));
            }
        }
        for (j, role) in key.roles.iter().enumerate() {
            if role.is_empty() || role.contains(|c: char| c == ',' || c.is_whitespace()) {
                problems.push(Problem::new(
                    format!("{prefix}[{i}].roles[{j}]"),
                    format!("{role:?}: a role is one non-empty name without ',' or whitespace"),
                ));
            }
        }
        if let Some(not_after) = &key.not_after
            && parse_timestamp(not_after).is_none()
        {
            problems.push(Problem::new(
                format!("{prefix}[{i}].not_after"),
                format!("{not_after:?}: write 2027-01-31 or 2027-01-31T12:00:00Z"),
            ));
        }
    }
    problems
}
