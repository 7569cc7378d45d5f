//! Call contexts: how an outbound call finds the inbound call it serves, with no code in
//! the app (DESIGN §10).
//!
//! Inbound, each admitted call with a verified bearer token gets a random 128-bit handle,
//! handed to the app as the W3C `baggage` member `gatehouse-ctx=<32 hex>`, which
//! OpenTelemetry-instrumented apps copy to their outgoing calls by themselves. Outbound,
//! `credentials: context` looks the handle up here and attaches that call's token, under
//! the remaining deadline of that call.
//!
//! A handle is only a pointer into this process's memory: minted by gatehouse (callers'
//! copies are stripped first), accepted only on the outbound listener, stripped before any
//! call leaves the pod, and never logged. The table is bounded; when it is full a new call
//! simply gets no handle, so a flood of calls cannot evict the handles of calls in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

/// The baggage member that carries a handle.
pub const BAGGAGE_MEMBER: &str = "gatehouse-ctx";
/// The plain header an app may use instead of baggage.
pub const X_GATEHOUSE_CTX: HeaderName = HeaderName::from_static("x-gatehouse-ctx");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Every live handle, bounded in number.
pub struct CallContexts {
    grace: Duration,
    capacity: usize,
    table: Mutex<Table>,
}

struct Table {
    entries: HashMap<u128, Entry>,
    /// Ended calls in the order their grace runs out; the grace is the same for all, so
    /// the front is always the next to go.
    ended: VecDeque<(Instant, u128)>,
}

struct Entry {
    /// The inbound `authorization` value exactly as verified; sensitive, so HPACK and
    /// debug output never hold it.
    token: HeaderValue,
    /// From the inbound call's `grpc-timeout`.
    deadline: Option<Instant>,
    /// Set when the inbound call ends: the handle resolves until then.
    expires: Option<Instant>,
}

/// What a live handle resolves to.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub token: HeaderValue,
    pub deadline: Option<Instant>,
}

/// Why no handle was minted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// `outbound.context_max_handles` handles are alive.
    #[error("the call context table is full")]
    Full,
    /// The system random generator failed.
    #[error("the random generator failed")]
    Random,
}

impl CallContexts {
    /// A table of at most `capacity` handles, each living `grace` past its call.
    pub fn new(grace: Duration, capacity: usize) -> CallContexts {
        CallContexts {
            grace,
            capacity,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                ended: VecDeque::new(),
            }),
        }
    }

    /// Gives a new inbound call a handle; it resolves while the returned [`OpenCall`] is
    /// held and for `grace` after it is dropped. The `HeaderValue` is the handle in hex.
    pub fn mint(
        self: &Arc<Self>,
        token: HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<(OpenCall, HeaderValue), MintError> {
        self.mint_at(token, deadline, Instant::now())
    }

    fn mint_at(
        self: &Arc<Self>,
        token: HeaderValue,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(OpenCall, HeaderValue), MintError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| MintError::Random)?;
        let handle = u128::from_be_bytes(bytes);
        let mut token = token;
        token.set_sensitive(true);
        let mut table = self.lock();
        table.expire(now);
        if table.entries.len() >= self.capacity {
            return Err(MintError::Full);
        }
        if table.entries.contains_key(&handle) {
            // 2^-128 per live handle: treat it as the generator failing, never overwrite.
            return Err(MintError::Random);
        }
        table.entries.insert(
            handle,
            Entry {
                token,
                deadline,
                expires: None,
            },
        );
        drop(table);
        let mut value = HeaderValue::try_from(format!("{handle:032x}"))
            .expect("hex digits are a valid header value");
        value.set_sensitive(true);
        Ok((
            OpenCall {
                contexts: self.clone(),
                handle,
            },
            value,
        ))
    }

    /// The context `handle` (32 hex digits) names, if it is live.
    pub fn resolve(&self, handle: &str) -> Option<CallContext> {
        self.resolve_at(handle, Instant::now())
    }

    fn resolve_at(&self, handle: &str, now: Instant) -> Option<CallContext> {
        let handle = parse_handle(handle)?;
        let mut table = self.lock();
        table.expire(now);
        table.entries.get(&handle).map(|entry| CallContext {
            token: entry.token.clone(),
            deadline: entry.deadline,
        })
    }

    fn end(&self, handle: u128) {
        let expires = crate::clock::instant_after(self.grace);
        let mut table = self.lock();
        if let Some(entry) = table.entries.get_mut(&handle) {
            entry.expires = Some(expires);
            table.ended.push_back((expires, handle));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panic elsewhere could break halfway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, handle)) = self.ended.front() {
            if at > now {
                break;
            }
            self.ended.pop_front();
            self.entries.remove(&handle);
        }
    }
}

/// An inbound call's hold on its handle; dropping it (the call ended, or its caller went
/// away) starts the grace.
pub struct OpenCall {
    contexts: Arc<CallContexts>,
    handle: u128,
}

impl OpenCall {
    /// Removes the handle at once, with no grace: for a call the app never saw (refused
    /// below the layer that minted it), so refused calls cannot fill the table.
    pub fn forget(self) {
        self.contexts.lock().entries.remove(&self.handle);
        // Drop then finds no entry and queues nothing.
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.contexts.end(self.handle);
    }
}

fn parse_handle(text: &str) -> Option<u128> {
    let text = text.trim();
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

/// The handle the app sent, from `x-gatehouse-ctx` or else the `baggage` member, without
/// checking it.
pub fn sent_handle(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(&X_GATEHOUSE_CTX) {
        return value.to_str().ok().map(str::to_owned);
    }
    headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|member| {
            let (key, value) = member.split_once('=')?;
            // Properties (`;k=v`) may follow the value; a handle has none.
            let value = value.split(';').next().unwrap_or(value);
            (key.trim() == BAGGAGE_MEMBER).then(|| value.trim().to_owned())
        })
}

/// Whether a baggage member's key names the handle in any spelling a reader might
/// accept: percent-decoded (OpenTelemetry's JavaScript propagator decodes keys), trimmed
/// and in any case.
fn names_handle(member: &str) -> bool {
    let key = member.split_once('=').map_or(member, |(key, _)| key);
    let key = percent_encoding::percent_decode_str(key.trim()).decode_utf8_lossy();
    key.trim().eq_ignore_ascii_case(BAGGAGE_MEMBER)
}

/// Removes every handle from `headers` (request headers or trailers): `x-gatehouse-ctx`
/// in every spelling (`x_gatehouse_ctx`, `-bin`), and each `baggage` member whose key
/// reads as `gatehouse-ctx` ([`names_handle`]); the rest of the baggage is kept as sent.
/// Allocates only when there is a handle to remove.
pub fn strip_handles(headers: &mut HeaderMap) {
    let spelled = |name: &str| crate::identity::is_spelling_of(name, &X_GATEHOUSE_CTX);
    if headers.keys().any(|name| spelled(name.as_str())) {
        crate::identity::strip_matching(headers, spelled);
    }
    let carries_handle = headers.get_all(&BAGGAGE).iter().any(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .split(',')
            .any(names_handle)
    });
    if !carries_handle {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(&BAGGAGE)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .filter(|member| !names_handle(member))
                .map(|member| member.trim().to_owned())
                .filter(|member| !member.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    headers.remove(&BAGGAGE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::try_from(kept.join(","))
    {
        headers.insert(BAGGAGE, value);
    }
}

/// Adds the `gatehouse-ctx` member to `baggage`, after the members already there (call
/// [`strip_handles`] first).
pub fn set_handle(headers: &mut HeaderMap, handle: &HeaderValue) {
    let handle = String::from_utf8_lossy(handle.as_bytes());
    let existing: Vec<String> = headers
        .get_all(&BAGGAGE)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect();
    let mut members = existing.join(",");
    if !members.is_empty() {
        members.push(',');
    }
    members.push_str(BAGGAGE_MEMBER);
    members.push('=');
    members.push_str(&handle);
    if let Ok(mut value) = HeaderValue::try_from(members) {
        value.set_sensitive(true);
        headers.insert(BAGGAGE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> HeaderValue {
        HeaderValue::from_static("Bearer a.b.c")
    }

    fn hex(value: &HeaderValue) -> &str {
        value.to_str().unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_handle_lives_while_its_call_is_open_and_for_grace_after() {
        let contexts = Arc::new(CallContexts::new(5 * SECOND, 10));
        let start = Instant::now();
        let deadline = Some(start + 30 * SECOND);
        let (open, handle) = contexts.mint(token(), deadline).unwrap();
        assert_eq!(hex(&handle).len(), 32);
        // Open far beyond the grace: still live.
        let context = contexts
            .resolve_at(hex(&handle), start + 3600 * SECOND)
            .expect("live while open");
        assert_eq!(context.token, token());
        assert!(context.token.is_sensitive());
        assert_eq!(context.deadline, deadline);
        let before_end = Instant::now();
        drop(open);
        let after_end = Instant::now();
        let within = contexts.resolve_at(hex(&handle), before_end + 4 * SECOND);
        assert!(within.is_some(), "within the grace");
        let over = contexts.resolve_at(hex(&handle), after_end + 5 * SECOND);
        assert!(over.is_none(), "grace over");
        assert!(contexts.lock().entries.is_empty());
    }

    #[test]
    fn made_up_and_malformed_handles_resolve_to_nothing() {
        let contexts = Arc::new(CallContexts::new(Duration::from_secs(5), 10));
        let (_open, handle) = contexts.mint(token(), None).unwrap();
        for made_up in [
            "00000000000000000000000000000000",
            "zz",
            "",
            &format!("{}0", hex(&handle)),
        ] {
            assert!(contexts.resolve(made_up).is_none(), "{made_up:?}");
        }
    }

    #[test]
    fn a_full_table_refuses_new_handles_and_keeps_the_live_ones() {
        let contexts = Arc::new(CallContexts::new(60 * SECOND, 2));
        let (first, a) = contexts.mint(token(), None).unwrap();
        let (_second, b) = contexts.mint(token(), None).unwrap();
        assert_eq!(contexts.mint(token(), None).err(), Some(MintError::Full));
        assert!(contexts.resolve(hex(&a)).is_some());
        assert!(contexts.resolve(hex(&b)).is_some());
        // A call in its grace still counts; once the grace is over its slot is free.
        drop(first);
        assert_eq!(contexts.mint(token(), None).err(), Some(MintError::Full));
        let later = Instant::now() + 61 * SECOND;
        assert!(contexts.mint_at(token(), None, later).is_ok());
        assert!(contexts.resolve_at(hex(&b), later).is_some());
    }

    #[test]
    fn a_forgotten_handle_frees_its_slot_at_once() {
        let contexts = Arc::new(CallContexts::new(60 * SECOND, 1));
        let (open, handle) = contexts.mint(token(), None).unwrap();
        assert_eq!(contexts.mint(token(), None).err(), Some(MintError::Full));
        open.forget();
        assert!(contexts.resolve(hex(&handle)).is_none());
        assert!(contexts.lock().ended.is_empty());
        assert!(contexts.mint(token(), None).is_ok());
    }

    #[test]
    fn strip_then_set_keeps_the_callers_other_baggage() {
        let mut headers = HeaderMap::new();
        headers.append(
            BAGGAGE,
            HeaderValue::from_static("userId=alice, gatehouse-ctx=forged;p=1"),
        );
        headers.append(BAGGAGE, HeaderValue::from_static("region=eu"));
        headers.insert(X_GATEHOUSE_CTX, HeaderValue::from_static("forged"));
        strip_handles(&mut headers);
        assert!(headers.get(&X_GATEHOUSE_CTX).is_none());
        assert_eq!(headers.get_all(&BAGGAGE).iter().count(), 1);
        assert_eq!(headers[&BAGGAGE], "userId=alice,region=eu");
        assert_eq!(sent_handle(&headers), None);

        set_handle(&mut headers, &HeaderValue::from_static("0123"));
        assert_eq!(
            headers[&BAGGAGE],
            "userId=alice,region=eu,gatehouse-ctx=0123"
        );
        assert_eq!(sent_handle(&headers).as_deref(), Some("0123"));

        let mut only = HeaderMap::new();
        only.insert(BAGGAGE, HeaderValue::from_static("gatehouse-ctx=forged"));
        strip_handles(&mut only);
        assert!(only.get(&BAGGAGE).is_none(), "{only:?}");
        set_handle(&mut only, &HeaderValue::from_static("0123"));
        assert_eq!(only[&BAGGAGE], "gatehouse-ctx=0123");
    }

    #[test]
    fn strips_handles_in_every_spelling_a_reader_might_accept() {
        let mut headers = HeaderMap::new();
        headers.append(
            BAGGAGE,
            HeaderValue::from_static("gatehouse%2Dctx=a, GATEHOUSE-CTX=b,%67atehouse-ctx=c, k=v"),
        );
        headers.insert("x_gatehouse_ctx", HeaderValue::from_static("d"));
        headers.insert("x-gatehouse-ctx-bin", HeaderValue::from_static("ZQ"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_handles(&mut headers);
        assert_eq!(headers[&BAGGAGE], "k=v");
        assert!(headers.get("x_gatehouse_ctx").is_none());
        assert!(headers.get("x-gatehouse-ctx-bin").is_none());
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn the_plain_header_is_read_before_baggage() {
        let mut headers = HeaderMap::new();
        headers.insert(
            BAGGAGE,
            HeaderValue::from_static("gatehouse-ctx=from-baggage"),
        );
        assert_eq!(sent_handle(&headers).as_deref(), Some("from-baggage"));
        headers.insert(X_GATEHOUSE_CTX, HeaderValue::from_static("plain"));
        assert_eq!(sent_handle(&headers).as_deref(), Some("plain"));
    }
}
