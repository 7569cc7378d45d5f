//! The parts of `google/protobuf/descriptor.proto` that gatehouse reads: files, their
//! messages with their fields, and their services with their methods. Decoded with prost's
//! derive, like the details in `grpc::details`; every other field of a descriptor (options,
//! source info, enums, extensions) is skipped by the decoder, unread.

/// `google.protobuf.FileDescriptorSet`: what `protoc --descriptor_set_out
/// --include_imports` writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    pub file: Vec<FileDescriptorProto>,
}

/// `google.protobuf.FileDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileDescriptorProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub package: Option<String>,
    #[prost(string, repeated, tag = "3")]
    pub dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub message_type: Vec<DescriptorProto>,
    #[prost(message, repeated, tag = "6")]
    pub service: Vec<ServiceDescriptorProto>,
}

/// `google.protobuf.DescriptorProto`: one message type and the types nested in it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub field: Vec<FieldDescriptorProto>,
    #[prost(message, repeated, tag = "3")]
    pub nested_type: Vec<DescriptorProto>,
}

/// `google.protobuf.FieldDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldDescriptorProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub number: Option<i32>,
    /// 1 optional, 2 required, 3 repeated.
    #[prost(int32, optional, tag = "4")]
    pub label: Option<i32>,
    /// `FieldDescriptorProto.Type`: 9 string, 11 message, 12 bytes, …
    #[prost(int32, optional, tag = "5")]
    pub r#type: Option<i32>,
    /// For messages and enums: the type's name, fully qualified with a leading `.`.
    #[prost(string, optional, tag = "6")]
    pub type_name: Option<String>,
}

/// `google.protobuf.ServiceDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceDescriptorProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub method: Vec<MethodDescriptorProto>,
}

/// `google.protobuf.MethodDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MethodDescriptorProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Fully qualified with a leading `.`.
    #[prost(string, optional, tag = "2")]
    pub input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub output_type: Option<String>,
    #[prost(bool, optional, tag = "5")]
    pub client_streaming: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub server_streaming: Option<bool>,
}

/// `FieldDescriptorProto.Label.LABEL_REPEATED`.
pub const LABEL_REPEATED: i32 = 3;
/// `FieldDescriptorProto.Type` values gatehouse tells apart.
pub const TYPE_GROUP: i32 = 10;
pub const TYPE_MESSAGE: i32 = 11;
pub const TYPE_STRING: i32 = 9;
pub const TYPE_BYTES: i32 = 12;
