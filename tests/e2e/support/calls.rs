//! What a test puts on a call and reads back from it: credentials in metadata, the
//! metadata the demo app saw, and a client stream sent by hand with request trailers.

use std::net::SocketAddr;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::pb::{CollectReply, EchoRequest, InspectRequest, MetadataEntry};
use super::{DemoClient, grpc_message, h2_connection};

/// `Bearer {token}`, as an `authorization` value.
pub fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().unwrap()
}

/// A request for `message` carrying `token` as its bearer token.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token));
    request
}

/// A request for `message` carrying the API key `key` in `x-api-key`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    request
}

/// Metadata entries the demo app reported (what it saw, or a stream's trailers), as
/// (key, value) pairs.
pub fn pairs(entries: Vec<MetadataEntry>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|entry| (entry.key, entry.value))
        .collect()
}

/// Calls `Inspect`: the metadata the app saw, as (key, value) pairs.
pub async fn inspect(
    client: &mut DemoClient<Channel>,
    request: tonic::Request<InspectRequest>,
) -> Result<Vec<(String, String)>, tonic::Status> {
    let reply = client.inspect(request).await?.into_inner();
    Ok(pairs(reply.metadata))
}

/// Every value of `key` in (key, value) pairs, in order.
pub fn values<'a>(metadata: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    metadata
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Calls `Collect` on a bare HTTP/2 connection with one message and request `trailers`.
pub async fn collect_with_trailers(
    addr: SocketAddr,
    token: &str,
    trailers: http::HeaderMap,
) -> CollectReply {
    use http_body_util::{BodyExt, StreamBody};
    use prost::Message;
    let message = EchoRequest {
        message: "with trailers".into(),
        ..Default::default()
    };
    let frames = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(grpc_message(&message))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Collect")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let mut sender = h2_connection(addr).await;
    let response = sender.send_request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some("0"), "{:?}", collected.trailers());
    let body = collected.to_bytes();
    CollectReply::decode(&body[5..]).unwrap()
}
