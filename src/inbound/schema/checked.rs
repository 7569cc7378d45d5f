//! The field rules of one call, applied to every request message: a message is held
//! until it is whole (at most `schema.max_message_size`), checked, and only then handed
//! on; the first message that fails stops the request there, so it and everything after
//! it never reach the app, while the messages before it did. The response then ends with
//! the refusal after the last whole message the app sent.
//!
//! What one call holds is bounded: one message up to the maximum, plus the rest of the
//! DATA frame that completed it. Nothing is read from the caller while a whole message
//! waits to be taken, so flow control works as it does without checks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::body::{Framing, RequestBody, RequestError, ResponseBody};
use crate::grpc::{self, Reason};
use crate::identity::Principal;
use crate::metrics::Metrics;
use crate::schema::{Caller, MethodRules, Violation};
use crate::tls::ConnectionInfo;

/// The refusal that ends a call, once a message has failed; shared by the request side
/// that finds it and the response side that delivers it.
#[derive(Debug, Default)]
pub struct Verdict {
    status: OnceLock<grpc::Status>,
}

impl Verdict {
    pub fn get(&self) -> Option<&grpc::Status> {
        self.status.get()
    }

    fn refuse(&self, status: grpc::Status) {
        let _ = self.status.set(status);
    }
}

/// Who the caller is, as Auth verified it: what `{tenant}`, `{user}`, `{key}` and
/// `{peer}` stand for.
#[derive(Clone, Debug, Default)]
pub struct CallerIdentity {
    pub principal: Option<Arc<Principal>>,
    pub connection: Option<Arc<ConnectionInfo>>,
}

impl CallerIdentity {
    fn values(&self) -> Caller<'_> {
        let principal = self.principal.as_deref();
        Caller {
            tenant: principal.and_then(|p| p.tenant_id.as_deref()),
            user: principal.and_then(|p| p.user_id.as_deref()),
            key: principal.and_then(|p| p.api_key_name.as_deref()),
            peer: self
                .connection
                .as_deref()
                .and_then(|c| c.peer.as_ref())
                .map(|peer| peer.name()),
        }
    }
}

/// The caller's request body, checked message by message.
pub struct CheckedRequest {
    inner: RequestBody,
    rules: Arc<MethodRules>,
    caller: CallerIdentity,
    verdict: Arc<Verdict>,
    max_message: usize,
    /// Counts messages refused for their size.
    metrics: Option<Arc<Metrics>>,
    /// The rest of the caller's last DATA frame: whole messages are handed on from it
    /// without a copy.
    frame: Bytes,
    /// A message that spans frames, gathered here.
    held: BytesMut,
    stopped: bool,
}

impl CheckedRequest {
    pub fn new(
        inner: RequestBody,
        rules: Arc<MethodRules>,
        caller: CallerIdentity,
        verdict: Arc<Verdict>,
        max_message: usize,
    ) -> Self {
        CheckedRequest {
            inner,
            rules,
            caller,
            verdict,
            max_message,
            metrics: None,
            frame: Bytes::new(),
            held: BytesMut::new(),
            stopped: false,
        }
    }

    /// Counts the messages refused for their size in `metrics`.
    pub fn counted(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The length of the message at the start of `data` when all of it is there;
    /// `Ok(None)` when more bytes are needed.
    fn whole(&self, data: &[u8]) -> Result<Option<usize>, grpc::Status> {
        let Some(prefix) = data.get(..5) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if prefix[0] != 0 {
            return Err(grpc::Status::new(
                Reason::MalformedMessage,
                "a compressed request message cannot be checked against field rules: send it uncompressed",
            ));
        }
        if length > self.max_message {
            if let Some(metrics) = &self.metrics {
                metrics.limit_refusal("max_message_size");
            }
            return Err(grpc::Status::new(
                Reason::MessageTooLarge,
                format!(
                    "a request message of {length} bytes is over schema.max_message_size ({} bytes) for a method with field rules",
                    self.max_message
                ),
            ));
        }
        Ok((data.len() >= 5 + length).then_some(length))
    }

    fn checked(&self, message: Bytes) -> Result<Option<Bytes>, grpc::Status> {
        match self.rules.check(&message[5..], &self.caller.values()) {
            Ok(()) => Ok(Some(message)),
            Err(violation) => Err(refusal(&violation, self.rules.rule)),
        }
    }

    /// The next whole message, checked; `Ok(None)` when more bytes are needed. Straight
    /// from the caller's frame when it holds the message whole, else gathered.
    fn next_message(&mut self) -> Result<Option<Bytes>, grpc::Status> {
        if self.held.is_empty() {
            if let Some(length) = self.whole(&self.frame)? {
                let message = self.frame.split_to(5 + length);
                return self.checked(message);
            }
            if self.frame.is_empty() {
                return Ok(None);
            }
        }
        if !self.frame.is_empty() {
            self.held.extend_from_slice(&self.frame);
            self.frame = Bytes::new();
        }
        match self.whole(&self.held)? {
            Some(length) => {
                let message = self.held.split_to(5 + length).freeze();
                self.checked(message)
            }
            None => Ok(None),
        }
    }

    /// Ends the request here: the refusal for the caller, an error for the pump, which
    /// resets the app's stream once what it was handed has been written.
    fn stop(&mut self, status: grpc::Status) -> Poll<Option<Result<Frame<Bytes>, RequestError>>> {
        tracing::debug!(
            message = status.message(),
            "request stopped by a field rule"
        );
        self.verdict.refuse(status);
        self.stopped = true;
        self.frame = Bytes::new();
        self.held = BytesMut::new();
        Poll::Ready(Some(Err(RequestError::Stopped)))
    }
}

/// The status for a message that broke a rule: the field is named, its value never.
fn refusal(violation: &Violation<'_>, rule: usize) -> grpc::Status {
    match violation {
        Violation::Mismatch(field) => grpc::Status::new(
            Reason::FieldMismatch,
            format!("permission denied: request field {field} does not match the caller"),
        )
        .with("field", *field)
        .with("rule", rule.to_string()),
        Violation::Unresolved(field, why) => grpc::Status::new(
            Reason::FieldMismatch,
            format!("permission denied: request field {field} cannot be checked: {why}"),
        )
        .with("field", *field)
        .with("rule", rule.to_string()),
        Violation::Malformed(malformed) => grpc::Status::new(
            Reason::MalformedMessage,
            format!("the request message does not decode: {malformed}"),
        ),
    }
}

impl Body for CheckedRequest {
    type Data = Bytes;
    type Error = RequestError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestError>>> {
        let this = &mut *self;
        if this.stopped {
            return Poll::Ready(Some(Err(RequestError::Stopped)));
        }
        loop {
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Ok(None) => {}
                Err(status) => return this.stop(status),
            }
            // Only now, with no whole message held, is more read from the caller.
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    // `next_message` left no bytes in `frame`.
                    Ok(data) => this.frame = data,
                    Err(trailers) if this.held.is_empty() => {
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                    Err(_) => return this.stop(cut_short()),
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None if this.held.is_empty() => return Poll::Ready(None),
                None => return this.stop(cut_short()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A stopped request has no clean end: the pump resets the stream instead.
        !self.stopped && self.frame.is_empty() && self.held.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn cut_short() -> grpc::Status {
    grpc::Status::new(
        Reason::MalformedMessage,
        "the request ended inside a message",
    )
}

/// The app's response to a checked call: passed on as it is until a request message
/// fails; then it ends after the app's last whole message, with the refusal, once the
/// app's stream has ended (the pump resets it after delivering what passed).
pub struct CheckedResponse {
    inner: ResponseBody,
    verdict: Arc<Verdict>,
    /// The call's path, for the refusal's details.
    method: http::Uri,
    framing: Framing,
    /// The refusal went out: nothing follows.
    ended: bool,
}

impl CheckedResponse {
    pub fn new(inner: ResponseBody, verdict: Arc<Verdict>, method: http::Uri) -> Self {
        CheckedResponse {
            inner,
            verdict,
            method,
            framing: Framing::default(),
            ended: false,
        }
    }
}

impl Body for CheckedResponse {
    type Data = Bytes;
    type Error = grpc::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, grpc::Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            let refused = this.verdict.get().is_some();
            let frame: Option<Result<Frame<Bytes>, Infallible>> =
                ready!(Pin::new(&mut this.inner).poll_frame(cx));
            let frame = match frame {
                Some(Ok(frame)) => frame,
                None if !refused => return Poll::Ready(None),
                None => Frame::trailers(http::HeaderMap::new()),
            };
            match frame.into_data() {
                Ok(mut data) => {
                    if !refused {
                        this.framing.advance(&data, false);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if this.framing.at_boundary() {
                        // The app's answers after the refusal are not the caller's.
                        continue;
                    }
                    let used = this.framing.advance(&data, true);
                    data.truncate(used);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(trailers) => {
                    if let Some(status) = this.verdict.get() {
                        this.ended = true;
                        let status = status.clone().with("method", this.method.path());
                        return Poll::Ready(Some(Err(status)));
                    }
                    return Poll::Ready(Some(Ok(trailers)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.verdict.get().is_none() && self.inner.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;
    use prost::encoding::{WireType, encode_key, encode_varint};

    use super::*;
    use crate::identity::{AuthMethod, Claims};
    use crate::schema::{Schema, Table};

    /// A caller's body of the frames given, then its end.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = RequestError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, RequestError>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }
    }

    fn text(out: &mut Vec<u8>, number: u32, value: &[u8]) {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    /// An `OrderRequest` of `tenant`, framed.
    fn framed(tenant: &[u8], padding: usize) -> Vec<u8> {
        let mut message = Vec::new();
        text(&mut message, 1, tenant);
        text(&mut message, 5, &vec![0; padding]);
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&message);
        out
    }

    fn rules() -> Arc<MethodRules> {
        let config = crate::config::Config::from_yaml(
            "listen: { address: 127.0.0.1:1 }\ntls: { enabled: false }\nupstream: { address: 127.0.0.1:2 }\n\
             schema: { source: reflection }\nauthorization:\n  rules:\n    - { methods: ['*'], allow_roles: [a], fields: { tenant_id: '{tenant}' } }\n",
        )
        .unwrap();
        let schema = Schema::from_files(&[crate::schema::tests::orders()]).unwrap();
        let table = Table::new(Arc::new(schema), config.authorization.as_ref());
        table
            .get("/orders.v1.Orders/Upload")
            .and_then(|entry| entry.rules.clone())
            .unwrap()
    }

    fn checked(frames: Vec<Vec<u8>>, max: usize) -> (CheckedRequest, Arc<Verdict>) {
        let principal = Principal::new(
            AuthMethod::ApiKey,
            Claims {
                tenant_id: Some("acme".into()),
                ..Claims::default()
            },
        )
        .unwrap();
        let verdict = Arc::new(Verdict::default());
        let caller = RequestBody::local(Bytes::new())
            .filtered(|_| Frames(frames.into_iter().map(Bytes::from).collect()));
        let body = CheckedRequest::new(
            caller,
            rules(),
            CallerIdentity {
                principal: Some(Arc::new(principal)),
                connection: None,
            },
            verdict.clone(),
            max,
        );
        (body, verdict)
    }

    /// The messages handed on, and whether the body ended with a stop.
    async fn drain(body: &mut CheckedRequest) -> (Vec<Bytes>, bool) {
        let mut messages = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => messages.push(frame.into_data().unwrap()),
                Err(RequestError::Stopped) => return (messages, true),
                Err(error) => panic!("{error}"),
            }
        }
        (messages, false)
    }

    #[tokio::test]
    async fn messages_pass_whole_however_the_frames_cut_them() {
        let stream: Vec<u8> =
            [framed(b"acme", 3), framed(b"acme", 0), framed(b"acme", 40)].concat();
        for cut in 0..=stream.len() {
            let (mut body, verdict) =
                checked(vec![stream[..cut].to_vec(), stream[cut..].to_vec()], 1024);
            let (messages, stopped) = drain(&mut body).await;
            assert!(!stopped && verdict.get().is_none(), "cut at {cut}");
            assert_eq!(
                messages.len(),
                3,
                "one frame per whole message, cut at {cut}"
            );
            assert_eq!(messages.concat(), stream, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn the_first_bad_message_stops_the_request_after_the_good_ones() {
        let stream: Vec<u8> = [
            framed(b"acme", 0),
            framed(b"acme", 1),
            framed(b"victim", 0),
            framed(b"acme", 2),
        ]
        .concat();
        let (mut body, verdict) = checked(vec![stream], 1024);
        let (messages, stopped) = drain(&mut body).await;
        assert!(stopped);
        assert_eq!(messages.len(), 2);
        let status = verdict.get().expect("a refusal");
        assert_eq!(status.reason(), Reason::FieldMismatch);
        assert!(!status.message().contains("victim"), "{}", status.message());
        assert!(matches!(
            body.frame().await,
            Some(Err(RequestError::Stopped))
        ));
    }

    #[tokio::test]
    async fn an_oversized_or_cut_short_message_is_refused_without_holding_it() {
        let large = framed(b"acme", 4096);
        let (mut body, verdict) = checked(vec![large[..64].to_vec(), large[64..].to_vec()], 1024);
        assert!(drain(&mut body).await.1);
        assert_eq!(verdict.get().unwrap().reason(), Reason::MessageTooLarge);
        assert!(
            body.held.is_empty() && body.frame.is_empty(),
            "the refused message is not kept"
        );

        let message = framed(b"acme", 10);
        let (mut body, verdict) = checked(vec![message[..8].to_vec()], 1024);
        assert!(drain(&mut body).await.1);
        assert_eq!(verdict.get().unwrap().reason(), Reason::MalformedMessage);
    }

    #[tokio::test]
    async fn nothing_more_is_read_while_a_whole_message_waits() {
        let stream: Vec<u8> = [framed(b"acme", 0), framed(b"acme", 0)].concat();
        let (mut body, _) = checked(vec![stream.clone(), framed(b"acme", 0)], 1024);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().len(), stream.len() / 2);
        // The second message is held from the first frame; the caller's next frame is
        // not taken until it has gone.
        assert_eq!(body.frame.len(), stream.len() / 2);
        assert!(
            body.held.is_empty(),
            "a whole message in a frame is not copied"
        );
    }

    /// The app's response body: the frames given, then the end (as when the pump's reset
    /// ends the app's stream).
    struct AppFrames(VecDeque<Frame<Bytes>>);

    impl Body for AppFrames {
        type Data = Bytes;
        type Error = grpc::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, grpc::Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn the_response_ends_after_the_apps_last_whole_message_with_the_refusal() {
        let one = framed(b"reply", 0);
        let two = framed(b"reply", 20);
        // The app's second message is cut by the reset: its first bytes came before.
        let frames = vec![
            Frame::data(Bytes::from([&one[..], &two[..4]].concat())),
            Frame::data(Bytes::from(two[4..].to_vec())),
            Frame::data(Bytes::from(framed(b"after", 0))),
        ];
        let app = ResponseBody::forwarded(
            http_body_util::combinators::UnsyncBoxBody::new(AppFrames(frames.into())),
            None,
        );
        let verdict = Arc::new(Verdict::default());
        let mut response = CheckedResponse::new(app, verdict.clone(), "/o.v1.O/M".parse().unwrap());
        let first = response.frame().await.unwrap().unwrap();
        verdict.refuse(grpc::Status::new(Reason::FieldMismatch, "refused"));
        assert_eq!(first.into_data().unwrap().len(), one.len() + 4);
        let rest = response.frame().await.unwrap().unwrap();
        assert_eq!(
            rest.into_data().unwrap().len(),
            two.len() - 4,
            "message two finished"
        );
        let end = response.frame().await.unwrap().unwrap_err();
        assert_eq!(
            end.reason(),
            Reason::FieldMismatch,
            "the app's later answers dropped"
        );
        assert!(response.frame().await.is_none());
    }
}
