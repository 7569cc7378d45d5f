//! The schema as calls meet it: each method's stream kind and the field rules that hold
//! for it, compiled once per schema (and per configuration) against its request message,
//! so a call costs one lookup and a message one scan.
//!
//! A method's field rules are those of the first authorization rule whose `methods`
//! match it, the rule that decides the call. A path that does not resolve in the
//! method's request message makes every call of that method fail its check: a rule
//! that cannot be checked never lets a call through unchecked.

use std::collections::HashMap;
use std::sync::Arc;

use super::{FieldPath, Malformed, Reader, Schema, StreamKind};
use crate::config::{self, FieldValue, MethodPattern};

/// The values a caller's field rules compare with, as Auth verified them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    pub tenant: Option<&'a str>,
    pub user: Option<&'a str>,
    pub key: Option<&'a str>,
    pub peer: Option<&'a str>,
}

/// One field rule: the path as written, and what it must hold.
#[derive(Clone, Debug)]
struct Check {
    field: Box<str>,
    value: FieldValue,
}

/// The field rules of one method.
#[derive(Clone, Debug)]
pub struct MethodRules {
    /// The index of the authorization rule they come from.
    pub rule: usize,
    checks: Vec<Check>,
    /// `None` when a path did not resolve: the first such field, and why.
    reader: Result<Reader, (Box<str>, String)>,
}

/// Why a request message did not pass its method's field rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation<'r> {
    /// The field (its path as the rule writes it) does not hold the caller's value.
    Mismatch(&'r str),
    /// The field's path does not resolve in the schema: `(field, why)`.
    Unresolved(&'r str, &'r str),
    Malformed(Malformed),
}

impl MethodRules {
    fn compile(
        rule: usize,
        fields: &[(String, FieldValue)],
        schema: &Schema,
        input: &str,
    ) -> MethodRules {
        let mut paths = Vec::with_capacity(fields.len());
        let mut failed = None;
        for (field, _) in fields {
            match schema.resolve(input, field) {
                Ok(path) => paths.push(path),
                Err(error) => {
                    failed.get_or_insert_with(|| (field.as_str().into(), error.to_string()));
                }
            }
        }
        let paths: Vec<&FieldPath> = paths.iter().collect();
        MethodRules {
            rule,
            checks: fields
                .iter()
                .map(|(field, value)| Check {
                    field: field.as_str().into(),
                    value: value.clone(),
                })
                .collect(),
            reader: match failed {
                Some(failed) => Err(failed),
                None => Ok(Reader::new(&paths)),
            },
        }
    }

    /// The first path that does not resolve, and why.
    pub fn unresolved(&self) -> Option<(&str, &str)> {
        self.reader
            .as_ref()
            .err()
            .map(|(field, why)| (&**field, why.as_str()))
    }

    /// Checks one encoded request message against every field rule.
    pub fn check<'r>(&'r self, message: &[u8], caller: &Caller<'_>) -> Result<(), Violation<'r>> {
        let reader = match &self.reader {
            Ok(reader) => reader,
            Err((field, why)) => return Err(Violation::Unresolved(field, why)),
        };
        let mut values = [None; config::MAX_FIELDS];
        let values = &mut values[..reader.len()];
        reader.read(message, values).map_err(Violation::Malformed)?;
        for (check, found) in self.checks.iter().zip(values.iter()) {
            let expected = match &check.value {
                FieldValue::Tenant => caller.tenant,
                FieldValue::User => caller.user,
                FieldValue::Key => caller.key,
                FieldValue::Peer => caller.peer,
                FieldValue::Literal(literal) => Some(literal.as_str()),
            };
            // An absent field is proto3's default, the empty string, which no caller
            // value and no literal is; a caller without the value matches nothing.
            let holds = matches!((expected, found), (Some(expected), Some(found)) if expected.as_bytes() == *found);
            if !holds {
                return Err(Violation::Mismatch(&check.field));
            }
        }
        Ok(())
    }
}

/// One method of the table.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: StreamKind,
    pub rules: Option<Arc<MethodRules>>,
}

/// An authorization rule's methods, and whether it has field rules.
#[derive(Clone, Debug)]
struct RuleMethods {
    methods: Vec<MethodPattern>,
    fields: Vec<(String, FieldValue)>,
}

/// Every method of a schema with its kind and field rules.
#[derive(Clone, Debug, Default)]
pub struct Table {
    schema: Arc<Schema>,
    entries: HashMap<Box<str>, Entry>,
    rules: Vec<RuleMethods>,
}

impl Table {
    /// Compiles `authorization`'s field rules against `schema` (the configuration has been
    /// validated: patterns and values that do not parse are left out here).
    pub fn new(schema: Arc<Schema>, authorization: Option<&config::Authorization>) -> Table {
        let rules: Vec<RuleMethods> = authorization
            .map(|authorization| {
                authorization
                    .rules
                    .iter()
                    .map(|rule| RuleMethods {
                        methods: rule
                            .methods
                            .iter()
                            .filter_map(|p| MethodPattern::parse(p).ok())
                            .collect(),
                        fields: rule
                            .fields
                            .iter()
                            .filter_map(|(path, value)| {
                                Some((path.clone(), FieldValue::parse(value).ok()?))
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let entries = schema
            .methods()
            .into_iter()
            .map(|(path, method)| {
                let deciding = rules
                    .iter()
                    .enumerate()
                    .find(|(_, rule)| rule.methods.iter().any(|p| p.matches_any_case(path)));
                let rules =
                    deciding
                        .filter(|(_, rule)| !rule.fields.is_empty())
                        .map(|(index, rule)| {
                            Arc::new(MethodRules::compile(
                                index,
                                &rule.fields,
                                &schema,
                                &method.input,
                            ))
                        });
                (
                    path.into(),
                    Entry {
                        kind: method.kind,
                        rules,
                    },
                )
            })
            .collect();
        Table {
            schema,
            entries,
            rules,
        }
    }

    /// The method at `path`, if the schema has it.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Whether the rule that decides calls to `path` has field rules: such a call cannot
    /// be checked without the schema, so it is never forwarded without one.
    pub fn needs_fields(&self, path: &str) -> bool {
        needs_fields(&self.rules, path)
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Every method whose field rules do not resolve: `(method, rule, field, why)`.
    pub fn unresolved(&self) -> Vec<(&str, usize, &str, &str)> {
        let mut found: Vec<_> = self
            .entries
            .iter()
            .filter_map(|(path, entry)| {
                let rules = entry.rules.as_ref()?;
                let (field, why) = rules.unresolved()?;
                Some((&**path, rules.rule, field, why))
            })
            .collect();
        found.sort_unstable();
        found
    }
}

fn needs_fields(rules: &[RuleMethods], path: &str) -> bool {
    rules
        .iter()
        .find(|rule| rule.methods.iter().any(|p| p.matches_any_case(path)))
        .is_some_and(|rule| !rule.fields.is_empty())
}

#[cfg(test)]
mod tests {
    use prost::encoding::{WireType, encode_key, encode_varint};

    use super::super::tests::orders;
    use super::*;

    fn text(out: &mut Vec<u8>, number: u32, value: &[u8]) {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    fn table(rules: &str) -> Table {
        let yaml = format!(
            "listen: {{ address: 127.0.0.1:1 }}\ntls: {{ enabled: false }}\nupstream: {{ address: 127.0.0.1:2 }}\nschema: {{ source: reflection }}\nauthorization:\n  rules:\n{rules}"
        );
        let config = config::Config::from_yaml(&yaml).unwrap();
        let schema = Arc::new(Schema::from_files(&[orders()]).unwrap());
        Table::new(schema, config.authorization.as_ref())
    }

    fn request(tenant: &[u8], user: &[u8]) -> Vec<u8> {
        let mut owner = Vec::new();
        text(&mut owner, 1, user);
        let mut message = Vec::new();
        text(&mut message, 1, tenant);
        text(&mut message, 2, &owner);
        message
    }

    const ACME_U1: Caller<'static> = Caller {
        tenant: Some("acme"),
        user: Some("u1"),
        key: None,
        peer: None,
    };

    #[test]
    fn the_deciding_rule_binds_fields_to_the_caller() {
        let table = table(
            "    - { methods: ['/orders.v1.Orders/Get'], allow_roles: [a] }\n    - { methods: ['/orders.v1.Orders/*'], allow_roles: [a], fields: { tenant_id: '{tenant}', owner.user_id: '{user}' } }\n",
        );
        assert!(table.get("/orders.v1.Orders/Get").unwrap().rules.is_none());
        let upload = table.get("/orders.v1.Orders/Upload").unwrap();
        assert_eq!(upload.kind, StreamKind::ClientStream);
        let rules = upload.rules.as_ref().unwrap();
        assert_eq!(rules.rule, 1);
        assert_eq!(rules.check(&request(b"acme", b"u1"), &ACME_U1), Ok(()));
        assert_eq!(
            rules.check(&request(b"other", b"u1"), &ACME_U1),
            Err(Violation::Mismatch("tenant_id"))
        );
        assert_eq!(
            rules.check(&request(b"acme", b"u2"), &ACME_U1),
            Err(Violation::Mismatch("owner.user_id"))
        );
        assert_eq!(
            rules.check(&[], &ACME_U1),
            Err(Violation::Mismatch("owner.user_id")),
            "absent fields hold nobody's value"
        );
        let anonymous = Caller::default();
        assert!(rules.check(&request(b"", b""), &anonymous).is_err());
        assert_eq!(
            rules.check(&[0x0a, 0x09], &ACME_U1),
            Err(Violation::Malformed(Malformed::Length))
        );
        assert!(table.needs_fields("/orders.v1.Orders/Delete"));
        assert!(!table.needs_fields("/orders.v1.Orders/Get"));
        // Rules decide in any case, as Auth's do: a spelling the app may look up
        // case-insensitively is never forwarded unchecked.
        assert!(table.needs_fields("/orders.v1.orders/delete"));
    }

    #[test]
    fn a_rule_decides_the_schemas_methods_in_any_case() {
        let table = table(
            "    - { methods: ['/Orders.V1.orders/*'], allow_roles: [a], fields: { tenant_id: '{tenant}' } }\n",
        );
        let rules = table.get("/orders.v1.Orders/Upload").unwrap().rules.clone();
        assert_eq!(rules.expect("the rule decides Upload").rule, 0);
    }

    #[test]
    fn a_path_that_does_not_resolve_fails_every_call() {
        let table = table(
            "    - { methods: ['*'], allow_roles: [a], fields: { tenant: '{tenant}', owner.user_id: literal } }\n",
        );
        let rules = table
            .get("/orders.v1.Orders/Get")
            .unwrap()
            .rules
            .clone()
            .unwrap();
        assert_eq!(
            rules.check(&request(b"acme", b"literal"), &ACME_U1),
            Err(Violation::Unresolved(
                "tenant",
                "orders.v1.OrderRequest has no field tenant"
            ))
        );
        assert_eq!(table.unresolved().len(), 4);
        assert_eq!(table.unresolved()[0].0, "/orders.v1.Orders/Get");
    }
}
