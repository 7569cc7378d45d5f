//! The app's server reflection (`grpc.reflection.v1`, else `v1alpha`), asked for every
//! service it lists and the descriptor files that define them, over a pool of its own: a
//! caller's call never waits behind it, and its one connection closing is how gatehouse
//! learns that the app went away.
//!
//! Each question is one stream: the requests in one body, the answers read to the end,
//! bounded in size and time. The messages are declared here with prost's derive, like
//! the status details, the `oneof`s as optional fields, which share their wire form.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::Request;
use http::uri::Authority;
use http_body_util::BodyExt;
use prost::Message as _;

use crate::body::RequestBody;
use crate::config::Target;
use crate::grpc::{self, Code};
use crate::pool::{self, Pool};
use crate::schema::descriptor::FileDescriptorProto;

/// The reflection services, newest first.
const SERVICES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
/// One answer (all the messages of one stream) at most.
pub const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// Descriptor files in one schema at most.
pub const MAX_FILES: usize = 10_000;
/// Services asked about at most.
pub const MAX_SERVICES: usize = 1_000;
/// How long one question may take.
const ANSWER_TIME: Duration = Duration::from_secs(10);
/// Rounds of asking for files that others import, at most.
const DEPENDENCY_ROUNDS: usize = 16;
/// The largest header list read from the app's reflection answers: a status and a few
/// headers, far below this.
const MAX_HEADER_LIST: u32 = 64 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionRequest {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(string, optional, tag = "3")]
    file_by_filename: Option<String>,
    #[prost(string, optional, tag = "4")]
    file_containing_symbol: Option<String>,
    #[prost(string, optional, tag = "7")]
    list_services: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionResponse {
    #[prost(message, optional, tag = "4")]
    file_descriptor_response: Option<FileDescriptorResponse>,
    #[prost(message, optional, tag = "6")]
    list_services_response: Option<ListServiceResponse>,
    #[prost(message, optional, tag = "7")]
    error_response: Option<ErrorResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceResponse {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ErrorResponse {
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// Why the app's reflection could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    #[error("app at {0}")]
    Unreachable(#[source] pool::Error),
    #[error("the app serves no reflection service (grpc.reflection.v1 or v1alpha)")]
    NoReflection,
    #[error("app reflection answered {code}: {message}")]
    Status { code: &'static str, message: String },
    #[error("app reflection: the stream failed: {0}")]
    Stream(String),
    #[error("app reflection: an answer over {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("app reflection: no answer within {ANSWER_TIME:?}")]
    Timeout,
    #[error("app reflection: an answer that does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("app reflection: an answer that is not gRPC's length-prefixed messages")]
    Framing,
    #[error("app reflection: more than {MAX_FILES} files or {MAX_SERVICES} services")]
    TooMany,
}

/// A reflection client of the app.
pub struct Reflection {
    pool: Pool,
    authority: Authority,
}

impl Reflection {
    /// Prepares the connection; nothing is dialled until the first question.
    pub fn new(target: Target, connect_timeout: Duration) -> Reflection {
        let authority = match &target {
            Target::Tcp(address) => address
                .parse()
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            Target::Unix(_) => Authority::from_static("localhost"),
        };
        let settings = pool::Settings {
            connect_timeout,
            connections: 1,
            queue: 4,
            queue_timeout: ANSWER_TIME,
            max_header_list: MAX_HEADER_LIST,
        };
        Reflection {
            pool: Pool::new(target, settings),
            authority,
        }
    }

    /// Resolves once the connection to the app has closed (the app stopped or restarted).
    pub async fn closed(&self) {
        self.pool.closed().await;
    }

    /// Every descriptor file the app's reflection has for the services it lists, with the
    /// files they import.
    pub async fn files(&self) -> Result<Vec<FileDescriptorProto>, ReflectionError> {
        let (service, names) = self.services().await?;
        let mut files = BTreeMap::new();
        let symbols = names
            .iter()
            .map(|name| ReflectionRequest {
                file_containing_symbol: Some(name.clone()),
                ..ReflectionRequest::default()
            })
            .collect();
        for answer in self.ask(service, symbols).await? {
            keep_files(answer, &mut files)?;
        }
        for _ in 0..DEPENDENCY_ROUNDS {
            let missing: Vec<String> = files
                .values()
                .flat_map(|file: &FileDescriptorProto| file.dependency.iter())
                .filter(|name| !files.contains_key(*name))
                .cloned()
                .collect();
            if missing.is_empty() {
                break;
            }
            let requests = missing
                .into_iter()
                .map(|name| ReflectionRequest {
                    file_by_filename: Some(name),
                    ..ReflectionRequest::default()
                })
                .collect();
            let before = files.len();
            for answer in self.ask(service, requests).await? {
                keep_files(answer, &mut files)?;
            }
            if files.len() == before {
                // The app does not have them: the schema does without.
                break;
            }
        }
        Ok(files.into_values().collect())
    }

    /// The reflection service that answers, and the services it lists.
    async fn services(&self) -> Result<(&'static str, Vec<String>), ReflectionError> {
        let list = ReflectionRequest {
            list_services: Some(String::new()),
            ..ReflectionRequest::default()
        };
        for service in SERVICES {
            match self.ask(service, vec![list.clone()]).await {
                Ok(answers) => {
                    let names: Vec<String> = answers
                        .into_iter()
                        .filter_map(|answer| answer.list_services_response)
                        .flat_map(|list| list.service)
                        .map(|service| service.name)
                        .collect();
                    if names.len() > MAX_SERVICES {
                        return Err(ReflectionError::TooMany);
                    }
                    return Ok((service, names));
                }
                Err(ReflectionError::NoReflection) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(ReflectionError::NoReflection)
    }

    /// Sends `requests` on one stream of `service` and reads every answer.
    async fn ask(
        &self,
        service: &str,
        requests: Vec<ReflectionRequest>,
    ) -> Result<Vec<ReflectionResponse>, ReflectionError> {
        let mut body = BytesMut::new();
        for request in requests {
            let request = ReflectionRequest {
                host: self.authority.host().to_owned(),
                ..request
            };
            body.put_u8(0);
            body.put_u32(u32::try_from(request.encoded_len()).unwrap_or(u32::MAX));
            request
                .encode(&mut body)
                .expect("a BytesMut grows as needed");
        }
        let request = Request::post(format!("http://{}{service}", self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(RequestBody::local(body.freeze()))
            .expect("a valid request");
        let answer = async {
            let response = self
                .pool
                .send(request)
                .await
                .map_err(ReflectionError::Unreachable)?;
            let (parts, body) = response.into_parts();
            let collected = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|error| match error.downcast::<h2::Error>() {
                    Ok(error) => ReflectionError::Stream(error.to_string()),
                    Err(_) => ReflectionError::TooLarge,
                })?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let status = |name: http::HeaderName| {
                parts
                    .headers
                    .get(&name)
                    .or_else(|| trailers.get(&name))
                    .cloned()
            };
            let code = status(grpc::GRPC_STATUS).map_or(Code::Unknown, |v| Code::from_header(&v));
            match code {
                Code::Ok => messages(collected.to_bytes()),
                Code::Unimplemented => Err(ReflectionError::NoReflection),
                code => Err(ReflectionError::Status {
                    code: code.as_str(),
                    message: status(grpc::GRPC_MESSAGE)
                        .map(|value| {
                            percent_encoding::percent_decode(value.as_bytes())
                                .decode_utf8_lossy()
                                .into_owned()
                        })
                        .unwrap_or_default(),
                }),
            }
        };
        tokio::time::timeout(ANSWER_TIME, answer)
            .await
            .unwrap_or(Err(ReflectionError::Timeout))
    }
}

/// The length-prefixed messages of an answer's body.
fn messages(mut body: Bytes) -> Result<Vec<ReflectionResponse>, ReflectionError> {
    let mut answers = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return Err(ReflectionError::Framing);
        }
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + length {
            return Err(ReflectionError::Framing);
        }
        let message = body.split_to(5 + length).split_off(5);
        answers.push(ReflectionResponse::decode(message)?);
    }
    Ok(answers)
}

/// Adds the files of one answer, by name; an error answer (a symbol the app lists but
/// cannot describe) adds nothing.
fn keep_files(
    answer: ReflectionResponse,
    files: &mut BTreeMap<String, FileDescriptorProto>,
) -> Result<(), ReflectionError> {
    if let Some(error) = answer.error_response {
        tracing::debug!(
            code = error.error_code,
            message = error.error_message,
            "app reflection could not describe a symbol"
        );
    }
    for bytes in answer
        .file_descriptor_response
        .map(|r| r.file_descriptor_proto)
        .unwrap_or_default()
    {
        let file = FileDescriptorProto::decode(bytes.as_slice())?;
        let name = file.name.clone().unwrap_or_default();
        if !files.contains_key(&name) && files.len() >= MAX_FILES {
            return Err(ReflectionError::TooMany);
        }
        files.insert(name, file);
    }
    Ok(())
}
