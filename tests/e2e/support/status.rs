//! The details gatehouse puts in the statuses it generates (`grpc-status-details-bin`).

/// The `google.rpc.ErrorInfo` gatehouse put in a status it generated, decoded from
/// `grpc-status-details-bin` with gatehouse's own `google.rpc` message types. Fails the
/// test unless the details are whole: one `ErrorInfo` packed as `Any`, `domain: gatehouse`,
/// and the same code and message as the status itself.
pub fn error_info(status: &tonic::Status) -> gatehouse::grpc::details::ErrorInfo {
    // tonic has already base64-decoded the header.
    decode_details(status.details(), status.code() as i32, status.message())
}

/// [`error_info`]'s reason: the UPPER_SNAKE constant, such as `TOKEN_EXPIRED`.
pub fn reason(status: &tonic::Status) -> String {
    error_info(status).reason
}

/// [`error_info`] for callers that read the headers or trailers themselves (raw HTTP/2).
pub fn error_info_in(map: &http::HeaderMap) -> gatehouse::grpc::details::ErrorInfo {
    use base64::Engine as _;
    let value = map
        .get("grpc-status-details-bin")
        .unwrap_or_else(|| panic!("no grpc-status-details-bin in {map:?}"));
    // gRPC's -bin values are unpadded base64; gatehouse writes them so.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.as_bytes())
        .unwrap_or_else(|error| panic!("grpc-status-details-bin {value:?}: {error}"));
    let code = map
        .get("grpc-status")
        .and_then(|code| code.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-status in {map:?}"));
    let message = map
        .get("grpc-message")
        .map(|message| {
            percent_encoding::percent_decode(message.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    decode_details(&bytes, code, &message)
}

fn decode_details(bytes: &[u8], code: i32, message: &str) -> gatehouse::grpc::details::ErrorInfo {
    use gatehouse::grpc::details::{ERROR_INFO_TYPE_URL, ErrorInfo, RpcStatus};
    use prost::Message as _;
    assert!(
        !bytes.is_empty(),
        "the status carries no grpc-status-details-bin"
    );
    let status = RpcStatus::decode(bytes).expect("details are a google.rpc.Status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (code, message),
        "details disagree with grpc-status/grpc-message"
    );
    // One ErrorInfo; a global limit's refusal adds a RetryInfo after it.
    let retry_info = status.details.len() == 2
        && status.details[1].type_url == gatehouse::grpc::details::RETRY_INFO_TYPE_URL;
    assert!(
        status.details.len() == 1 || retry_info,
        "one ErrorInfo, and at most a RetryInfo: {status:?}"
    );
    assert_eq!(status.details[0].type_url, ERROR_INFO_TYPE_URL);
    let info = ErrorInfo::decode(status.details[0].value.as_slice())
        .expect("the detail is a google.rpc.ErrorInfo");
    assert_eq!(info.domain, "gatehouse", "{info:?}");
    info
}

/// The `retry_delay` of the `google.rpc.RetryInfo` in a status gatehouse generated.
pub fn retry_delay(status: &tonic::Status) -> Option<std::time::Duration> {
    use gatehouse::grpc::details::{RETRY_INFO_TYPE_URL, RetryInfo, RpcStatus};
    use prost::Message as _;
    let details = RpcStatus::decode(status.details()).ok()?;
    let packed = details
        .details
        .iter()
        .find(|detail| detail.type_url == RETRY_INFO_TYPE_URL)?;
    let delay = RetryInfo::decode(packed.value.as_slice())
        .ok()?
        .retry_delay?;
    Some(std::time::Duration::new(
        u64::try_from(delay.seconds).ok()?,
        u32::try_from(delay.nanos).ok()?,
    ))
}
