//! What the app serves, as its own descriptors say: every method with its stream kind and
//! request message, and the fields of those messages, so that calls to methods the app
//! does not have can be refused, `grpc_type` can be exact, and the fields that
//! authorization rules name can be found in request messages.
//!
//! Data only: [`Schema`] is built from `FileDescriptorProto`s, whether they came from the
//! app's server reflection or from a descriptor set file (the fetching lives with the
//! connections to the app). [`FieldPath`] is a dotted path resolved to field numbers, and
//! [`Reader`] the wire scan that reads those fields, and only those, out of an encoded
//! message.
//!
//! ```
//! use gatehouse::schema::{Schema, StreamKind};
//! # fn example(descriptor_set: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::from_descriptor_set(descriptor_set)?;
//! if let Some(method) = schema.method("/orders.v1.Orders/Get") {
//!     assert_eq!(method.kind, StreamKind::Unary);
//!     let tenant = schema.resolve(&method.input, "tenant_id")?;
//! }
//! # Ok(()) }
//! ```

pub mod descriptor;
mod path;
pub mod rules;
mod scan;

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;

use descriptor::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
pub use path::{FieldPath, PathError};
pub use rules::{Caller, Entry, MethodRules, Table, Violation};
pub use scan::{Malformed, Reader};

/// Methods in one schema at most: a schema is the app's, but a bound keeps a broken or
/// hostile reflection answer from taking memory without end.
pub const MAX_METHODS: usize = 10_000;
/// Message types in one schema at most.
pub const MAX_MESSAGES: usize = 100_000;

/// How a method streams: gRPC's four kinds, named as go-grpc-prometheus' `grpc_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl StreamKind {
    fn of(client_streaming: bool, server_streaming: bool) -> StreamKind {
        match (client_streaming, server_streaming) {
            (false, false) => StreamKind::Unary,
            (true, false) => StreamKind::ClientStream,
            (false, true) => StreamKind::ServerStream,
            (true, true) => StreamKind::BidiStream,
        }
    }

    /// The `grpc_type` label value.
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Unary => "unary",
            StreamKind::ClientStream => "client_stream",
            StreamKind::ServerStream => "server_stream",
            StreamKind::BidiStream => "bidi_stream",
        }
    }
}

/// One method the app serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method {
    pub kind: StreamKind,
    /// The request message's full name, without the leading `.`.
    pub input: Box<str>,
}

/// One message type: its fields by name.
#[derive(Clone, Debug, Default)]
struct MessageType {
    fields: BTreeMap<Box<str>, Field>,
}

#[derive(Clone, Debug)]
struct Field {
    number: u32,
    repeated: bool,
    /// `FieldDescriptorProto.Type`.
    kind: i32,
    /// For message fields: the message's full name, without the leading `.`.
    type_name: Option<Box<str>>,
}

/// Why descriptors could not be made into a schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The bytes are not an encoded `FileDescriptorSet` / `FileDescriptorProto`.
    #[error("not a protobuf descriptor: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A descriptor left out a name gatehouse needs.
    #[error("{what} without a name in {file}")]
    Unnamed { what: &'static str, file: String },
    /// More methods or message types than [`MAX_METHODS`] / [`MAX_MESSAGES`].
    #[error("more than {limit} {what}: not a schema gatehouse holds")]
    TooLarge { what: &'static str, limit: usize },
}

/// The app's methods and request message types.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// By path, `/pkg.Service/Method`.
    methods: HashMap<Box<str>, Method>,
    /// By full name, without the leading `.`.
    messages: HashMap<Box<str>, MessageType>,
}

impl Schema {
    /// The schema of an encoded `FileDescriptorSet` (`protoc --descriptor_set_out
    /// --include_imports`).
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Schema, SchemaError> {
        Schema::from_files(&FileDescriptorSet::decode(bytes)?.file)
    }

    /// The schema of these files: their services' methods and their messages, nested
    /// ones included. A message that no file defines is simply absent, and a field path
    /// through it does not resolve.
    pub fn from_files(files: &[FileDescriptorProto]) -> Result<Schema, SchemaError> {
        let mut schema = Schema::default();
        for file in files {
            let file_name = file.name.clone().unwrap_or_default();
            let package = file.package.as_deref().unwrap_or_default();
            let prefix = if package.is_empty() {
                String::new()
            } else {
                format!("{package}.")
            };
            for message in &file.message_type {
                schema.add_message(&prefix, message, &file_name)?;
            }
            for service in &file.service {
                let service_name = service.name.as_deref().ok_or(SchemaError::Unnamed {
                    what: "a service",
                    file: file_name.clone(),
                })?;
                for method in &service.method {
                    let (Some(name), Some(input)) = (&method.name, &method.input_type) else {
                        return Err(SchemaError::Unnamed {
                            what: "a method or its input type",
                            file: file_name.clone(),
                        });
                    };
                    if schema.methods.len() >= MAX_METHODS {
                        return Err(SchemaError::TooLarge {
                            what: "methods",
                            limit: MAX_METHODS,
                        });
                    }
                    let kind = StreamKind::of(
                        method.client_streaming.unwrap_or(false),
                        method.server_streaming.unwrap_or(false),
                    );
                    schema.methods.insert(
                        format!("/{prefix}{service_name}/{name}").into(),
                        Method {
                            kind,
                            input: input.trim_start_matches('.').into(),
                        },
                    );
                }
            }
        }
        Ok(schema)
    }

    fn add_message(
        &mut self,
        prefix: &str,
        message: &DescriptorProto,
        file: &str,
    ) -> Result<(), SchemaError> {
        let name = message.name.as_deref().ok_or(SchemaError::Unnamed {
            what: "a message",
            file: file.to_owned(),
        })?;
        if self.messages.len() >= MAX_MESSAGES {
            return Err(SchemaError::TooLarge {
                what: "message types",
                limit: MAX_MESSAGES,
            });
        }
        let full = format!("{prefix}{name}");
        let mut fields = BTreeMap::new();
        for field in &message.field {
            let (Some(field_name), Some(number)) = (&field.name, field.number) else {
                return Err(SchemaError::Unnamed {
                    what: "a field or its number",
                    file: file.to_owned(),
                });
            };
            fields.insert(
                field_name.as_str().into(),
                Field {
                    number: u32::try_from(number).unwrap_or(0),
                    repeated: field.label == Some(descriptor::LABEL_REPEATED),
                    kind: field.r#type.unwrap_or(0),
                    type_name: field
                        .type_name
                        .as_deref()
                        .map(|t| t.trim_start_matches('.').into()),
                },
            );
        }
        let nested_prefix = format!("{full}.");
        for nested in &message.nested_type {
            self.add_message(&nested_prefix, nested, file)?;
        }
        self.messages.insert(full.into(), MessageType { fields });
        Ok(())
    }

    /// The method at `path` (`/pkg.Service/Method`), if the app serves it.
    pub fn method(&self, path: &str) -> Option<&Method> {
        self.methods.get(path)
    }

    /// Every method, by path in order.
    pub fn methods(&self) -> Vec<(&str, &Method)> {
        let mut methods: Vec<_> = self
            .methods
            .iter()
            .map(|(path, method)| (&**path, method))
            .collect();
        methods.sort_unstable_by_key(|(path, _)| *path);
        methods
    }

    /// How many methods the app serves.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Resolves `path` (`owner.user_id`) in the message type `message`.
    pub fn resolve(&self, message: &str, path: &str) -> Result<FieldPath, PathError> {
        path::resolve(self, message, path)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::descriptor::*;
    use super::*;

    fn field(name: &str, number: i32, kind: i32, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(1),
            r#type: Some(kind),
            type_name: type_name.map(Into::into),
        }
    }

    fn method(name: &str, input: &str, client: bool, server: bool) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(input.into()),
            output_type: Some(".orders.v1.Reply".into()),
            client_streaming: Some(client),
            server_streaming: Some(server),
        }
    }

    /// `orders.v1.Orders`, one method of each kind, over `OrderRequest { tenant_id = 1;
    /// Owner owner = 2 { user_id = 1; repeated tags = 2 }; int64 count = 3; repeated
    /// string labels = 4; bytes blob = 5 }`.
    pub(crate) fn orders() -> FileDescriptorProto {
        let mut owner = DescriptorProto {
            name: Some("Owner".into()),
            field: vec![field("user_id", 1, TYPE_STRING, None)],
            nested_type: vec![],
        };
        let mut tags = field("tags", 2, TYPE_STRING, None);
        tags.label = Some(LABEL_REPEATED);
        owner.field.push(tags);
        let mut labels = field("labels", 4, TYPE_STRING, None);
        labels.label = Some(LABEL_REPEATED);
        let request = DescriptorProto {
            name: Some("OrderRequest".into()),
            field: vec![
                field("tenant_id", 1, TYPE_STRING, None),
                field(
                    "owner",
                    2,
                    TYPE_MESSAGE,
                    Some(".orders.v1.OrderRequest.Owner"),
                ),
                field("count", 3, 3, None),
                labels,
                field("blob", 5, TYPE_BYTES, None),
            ],
            nested_type: vec![owner],
        };
        FileDescriptorProto {
            name: Some("orders.proto".into()),
            package: Some("orders.v1".into()),
            dependency: vec![],
            message_type: vec![request],
            service: vec![ServiceDescriptorProto {
                name: Some("Orders".into()),
                method: vec![
                    method("Get", ".orders.v1.OrderRequest", false, false),
                    method("Upload", ".orders.v1.OrderRequest", true, false),
                    method("Watch", ".orders.v1.OrderRequest", false, true),
                    method("Sync", ".orders.v1.OrderRequest", true, true),
                ],
            }],
        }
    }

    #[test]
    fn methods_have_their_paths_kinds_and_request_types() {
        let set = FileDescriptorSet {
            file: vec![orders()],
        };
        let schema = Schema::from_descriptor_set(&set.encode_to_vec()).unwrap();
        let kinds: Vec<(&str, &str)> = schema
            .methods()
            .into_iter()
            .map(|(path, method)| (path, method.kind.label()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("/orders.v1.Orders/Get", "unary"),
                ("/orders.v1.Orders/Sync", "bidi_stream"),
                ("/orders.v1.Orders/Upload", "client_stream"),
                ("/orders.v1.Orders/Watch", "server_stream"),
            ]
        );
        assert_eq!(
            &*schema.method("/orders.v1.Orders/Get").unwrap().input,
            "orders.v1.OrderRequest"
        );
        assert!(schema.method("/orders.v1.Orders/Delete").is_none());
    }

    #[test]
    fn garbage_is_not_a_schema() {
        assert!(matches!(
            Schema::from_descriptor_set(b"\x0a\xff\xff"),
            Err(SchemaError::Decode(_))
        ));
    }
}
