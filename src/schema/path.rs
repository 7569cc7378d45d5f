//! Dotted field paths (`owner.user_id`) resolved against a message type: the field
//! numbers from the request message down to the string or bytes field a rule compares.

use super::{Schema, descriptor};

/// Segments in one path at most: the depth the wire scan descends to.
pub const MAX_DEPTH: usize = 8;

/// A field path resolved to field numbers, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    pub(super) numbers: Vec<u32>,
}

/// Why a path does not name a field a rule can compare.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the schema has no message {message}")]
    UnknownMessage { message: String },
    #[error("{message} has no field {field}")]
    NoSuchField { message: String, field: String },
    #[error("{field} in {message} is {kind}, not a message: only the last name may be a field")]
    NotAMessage {
        message: String,
        field: String,
        kind: &'static str,
    },
    #[error("{field} in {message} is repeated: a rule compares one value")]
    Repeated { message: String, field: String },
    #[error("{field} in {message} is {kind}: rules compare string and bytes fields")]
    NotText {
        message: String,
        field: String,
        kind: &'static str,
    },
    #[error("more than {MAX_DEPTH} names")]
    TooDeep,
}

/// The name `descriptor.proto` gives a field type.
fn type_name(kind: i32) -> &'static str {
    const NAMES: [&str; 19] = [
        "of no known type",
        "double",
        "float",
        "int64",
        "uint64",
        "int32",
        "fixed64",
        "fixed32",
        "bool",
        "string",
        "a group",
        "a message",
        "bytes",
        "uint32",
        "an enum",
        "sfixed32",
        "sfixed64",
        "sint32",
        "sint64",
    ];
    usize::try_from(kind)
        .ok()
        .and_then(|kind| NAMES.get(kind))
        .copied()
        .unwrap_or(NAMES[0])
}

pub(super) fn resolve(schema: &Schema, message: &str, path: &str) -> Result<FieldPath, PathError> {
    let names: Vec<&str> = path.split('.').collect();
    if names.len() > MAX_DEPTH {
        return Err(PathError::TooDeep);
    }
    let mut numbers = Vec::with_capacity(names.len());
    let mut current = message.to_owned();
    for (at, name) in names.iter().enumerate() {
        let last = at + 1 == names.len();
        let message_type =
            schema
                .messages
                .get(current.as_str())
                .ok_or_else(|| PathError::UnknownMessage {
                    message: current.clone(),
                })?;
        let field = message_type
            .fields
            .get(*name)
            .ok_or_else(|| PathError::NoSuchField {
                message: current.clone(),
                field: (*name).to_owned(),
            })?;
        if field.repeated {
            return Err(PathError::Repeated {
                message: current,
                field: (*name).to_owned(),
            });
        }
        numbers.push(field.number);
        if last {
            if field.kind != descriptor::TYPE_STRING && field.kind != descriptor::TYPE_BYTES {
                return Err(PathError::NotText {
                    message: current,
                    field: (*name).to_owned(),
                    kind: type_name(field.kind),
                });
            }
        } else {
            match (&field.type_name, field.kind) {
                (Some(next), descriptor::TYPE_MESSAGE) => current = next.to_string(),
                _ => {
                    return Err(PathError::NotAMessage {
                        message: current,
                        field: (*name).to_owned(),
                        kind: type_name(field.kind),
                    });
                }
            }
        }
    }
    Ok(FieldPath { numbers })
}

#[cfg(test)]
mod tests {
    use super::super::tests::orders;
    use super::*;

    fn schema() -> Schema {
        Schema::from_files(&[orders()]).unwrap()
    }

    #[test]
    fn resolves_top_level_and_nested_text_fields() {
        let schema = schema();
        let request = "orders.v1.OrderRequest";
        assert_eq!(schema.resolve(request, "tenant_id").unwrap().numbers, [1]);
        assert_eq!(
            schema.resolve(request, "owner.user_id").unwrap().numbers,
            [2, 1]
        );
        assert_eq!(schema.resolve(request, "blob").unwrap().numbers, [5]);
    }

    #[test]
    fn names_the_field_that_does_not_resolve() {
        let schema = schema();
        let request = "orders.v1.OrderRequest";
        let message = |path| schema.resolve(request, path).unwrap_err().to_string();
        assert_eq!(
            message("tenant"),
            "orders.v1.OrderRequest has no field tenant"
        );
        assert_eq!(
            message("owner.name"),
            "orders.v1.OrderRequest.Owner has no field name"
        );
        assert_eq!(
            message("count"),
            "count in orders.v1.OrderRequest is int64: rules compare string and bytes fields"
        );
        assert_eq!(
            message("labels"),
            "labels in orders.v1.OrderRequest is repeated: a rule compares one value"
        );
        assert_eq!(
            message("tenant_id.x"),
            "tenant_id in orders.v1.OrderRequest is string, not a message: only the last name may be a field"
        );
        assert_eq!(
            message("owner"),
            "owner in orders.v1.OrderRequest is a message: rules compare string and bytes fields"
        );
        assert_eq!(
            schema
                .resolve("orders.v1.Nope", "x")
                .unwrap_err()
                .to_string(),
            "the schema has no message orders.v1.Nope"
        );
    }
}
