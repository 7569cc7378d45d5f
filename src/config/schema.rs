//! `schema`: where gatehouse learns the app's methods and request messages, and what it
//! does with calls the app's schema does not have.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Authorization, ByteSize, Duration, Problem};

/// Request bytes held per call besides the message itself: the rest of the HTTP/2 DATA
/// frame that completed it (16 KiB, the largest frame gatehouse accepts) and its prefix.
const FRAME_AND_PREFIX: u64 = 16 * 1024 + 5;

/// `schema`: where the app's schema comes from; absent or `source: none`, gatehouse
/// treats every call as an opaque POST, as it always did.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Schema {
    pub source: SchemaSource,
    /// `source: descriptor_set`: a `FileDescriptorSet` file (`protoc
    /// --include_imports --descriptor_set_out`).
    pub descriptor_set: Option<PathBuf>,
    /// Calls to methods the schema does not have.
    pub unknown_methods: UnknownMethods,
    /// Whether callers may reach the app's own reflection service.
    pub expose_reflection: bool,
    /// Largest request message of a method with field rules: such messages are held
    /// whole before any of their bytes go on, and larger ones are refused.
    pub max_message_size: ByteSize,
    /// How often the app is asked again, besides at start and when it restarts.
    pub refresh_interval: Duration,
}

/// `schema.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaSource {
    /// No schema: every method is forwarded, `grpc_type` is `unknown`.
    #[default]
    None,
    /// The app's server reflection (`grpc.reflection.v1`, then `v1alpha`).
    Reflection,
    /// `schema.descriptor_set`, read at start and on reload.
    DescriptorSet,
}

/// `schema.unknown_methods`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownMethods {
    /// UNIMPLEMENTED (UNKNOWN_METHOD), and SCHEMA_UNKNOWN while there is no schema.
    #[default]
    Refuse,
    /// Forwarded as without a schema; field rules still hold where the schema has them.
    Forward,
}

impl Default for Schema {
    fn default() -> Self {
        Schema {
            source: SchemaSource::None,
            descriptor_set: None,
            unknown_methods: UnknownMethods::Refuse,
            expose_reflection: false,
            max_message_size: ByteSize(64 * 1024),
            refresh_interval: Duration::from_secs(300),
        }
    }
}

impl Schema {
    /// Whether gatehouse learns a schema at all.
    pub fn is_on(&self) -> bool {
        self.source != SchemaSource::None
    }

    /// Request bytes a call may make gatehouse hold for its field rules: none unless a
    /// rule has `fields` and there is a schema to check them with.
    pub fn held_per_call(&self, authorization: Option<&Authorization>) -> u64 {
        let checked =
            authorization.is_some_and(|a| a.rules.iter().any(|rule| !rule.fields.is_empty()));
        if self.is_on() && checked {
            self.max_message_size.0 + FRAME_AND_PREFIX
        } else {
            0
        }
    }

    pub(super) fn validate(
        &self,
        authorization: Option<&Authorization>,
        problems: &mut Vec<Problem>,
    ) {
        match (self.source, &self.descriptor_set) {
            (SchemaSource::DescriptorSet, None) => problems.push(Problem::new(
                "schema.descriptor_set",
                "required with source: descriptor_set",
            )),
            (SchemaSource::DescriptorSet, Some(path)) if !path.is_absolute() => {
                problems.push(Problem::new("schema.descriptor_set", "an absolute path"))
            }
            (SchemaSource::None | SchemaSource::Reflection, Some(_)) => {
                problems.push(Problem::new(
                    "schema.descriptor_set",
                    "only read with source: descriptor_set",
                ))
            }
            _ => {}
        }
        let size = self.max_message_size.0;
        if !(1024..=16 << 20).contains(&size) {
            problems.push(Problem::new(
                "schema.max_message_size",
                "between 1KiB and 16MiB",
            ));
        }
        if self.refresh_interval.get() < std::time::Duration::from_secs(1) {
            problems.push(Problem::new("schema.refresh_interval", "at least 1s"));
        }
        if self.is_on() {
            return;
        }
        for (i, rule) in authorization
            .iter()
            .flat_map(|a| a.rules.iter())
            .enumerate()
        {
            if !rule.fields.is_empty() {
                problems.push(Problem::new(
                    format!("authorization.rules[{i}].fields"),
                    "needs a schema to find the fields in: set schema.source to reflection or descriptor_set",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, MINIMAL};

    fn problems(extra: &str) -> Vec<String> {
        Config::from_yaml(&format!("{MINIMAL}{extra}"))
            .unwrap()
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn off_by_default_and_costs_nothing() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert!(!config.schema.is_on());
        assert_eq!(config.schema.held_per_call(None), 0);
    }

    #[test]
    fn field_rules_need_a_schema_and_count_a_message_per_call() {
        let rules = "authorization:\n  rules:\n    - { methods: ['/o.v1.Orders/*'], allow_roles: [a], fields: { tenant_id: '{tenant}' } }\n";
        assert_eq!(
            problems(rules),
            [
                "authorization.rules[0].fields: needs a schema to find the fields in: set schema.source to reflection or descriptor_set"
            ]
        );
        let on = format!("{rules}schema: {{ source: reflection, max_message_size: 4KiB }}\n");
        assert_eq!(problems(&on), Vec::<String>::new());
        let config = Config::from_yaml(&format!("{MINIMAL}{on}")).unwrap();
        assert_eq!(
            config.schema.held_per_call(config.authorization.as_ref()),
            4096 + 16 * 1024 + 5
        );
        assert_eq!(config.limits.held_per_call, 4096 + 16 * 1024 + 5);
    }

    #[test]
    fn names_each_bad_setting() {
        assert_eq!(
            problems(
                "schema: { source: descriptor_set, max_message_size: 10, refresh_interval: 0s }\n"
            ),
            [
                "schema.descriptor_set: required with source: descriptor_set",
                "schema.max_message_size: between 1KiB and 16MiB",
                "schema.refresh_interval: at least 1s",
            ]
        );
        assert_eq!(
            problems("schema: { source: reflection, descriptor_set: /x.pb }\n"),
            ["schema.descriptor_set: only read with source: descriptor_set"]
        );
        let unknown =
            Config::from_yaml(&format!("{MINIMAL}schema: {{ source: grpc }}\n")).unwrap_err();
        assert_eq!(unknown.field, "schema.source");
    }
}
