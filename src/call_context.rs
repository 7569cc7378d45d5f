//! Call contexts: how an outbound call finds the inbound call it serves, with no code in
//! the app (DESIGN §10).
//!
//! Inbound, each admitted call with a verified bearer token gets a random 128-bit handle,
//! handed to the app as the W3C `baggage` member `gatehouse-ctx=<32 hex>`, which
//! OpenTelemetry-instrumented apps copy to their outgoing calls by themselves. Outbound,
//! `credentials: context` looks the handle up here and attaches that call's token, under
//! the remaining deadline of that call, and ends the outbound call when the inbound one
//! ends.
//!
//! A handle is only a pointer into this process's memory: minted by gatehouse (callers'
//! copies are stripped first), accepted only on the outbound listener, stripped before any
//! call leaves the pod, and never logged.
//!
//! # Bounds
//!
//! What one caller can make the table hold is bounded three ways. An entry keeps only the
//! bearer token, rebuilt from its trimmed form, so padding around a token costs nothing
//! here. One identity holds at most [`Bounds::per_owner`] entries, calls in their grace
//! included: past that its oldest ended entry makes room, and a call of an identity whose
//! every entry is open gets no handle. The whole table holds at most [`Bounds::handles`]
//! entries and [`Bounds::bytes`] of tokens: when full, the oldest ended entries (anyone's)
//! make room first, and only a table full of open calls refuses a new one. So no caller
//! can evict another's open call, and one caller's ended calls can only shorten its own
//! grace.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The baggage member that carries a handle.
pub const BAGGAGE_MEMBER: &str = "gatehouse-ctx";
/// The plain header an app may use instead of baggage.
pub const X_GATEHOUSE_CTX: HeaderName = HeaderName::from_static("x-gatehouse-ctx");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// The longest token an entry keeps: the verifier's cap on tokens (8 KiB) and `Bearer `.
pub const MAX_STORED_TOKEN: usize = 8 * 1024 + 7;
/// What an entry costs besides its token: the map slot, the order sets, the end signal.
pub const ENTRY_COST: usize = 256;

/// How much the table may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Entries at most, open calls and calls in their grace.
    pub handles: usize,
    /// Token bytes at most.
    pub bytes: usize,
    /// Entries of one identity at most.
    pub per_owner: usize,
}

/// Every live handle.
pub struct CallContexts {
    grace: Duration,
    bounds: Bounds,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u128, Entry>,
    /// Ended calls in the order their grace runs out; the grace is the same for all, so
    /// the first is always the next to go.
    ended: BTreeSet<(Instant, u128)>,
    owners: HashMap<u64, Owner>,
    bytes: usize,
}

/// One identity's entries.
#[derive(Default)]
struct Owner {
    open: usize,
    /// Its ended calls, oldest first.
    ended: VecDeque<(Instant, u128)>,
}

struct Entry {
    /// `Bearer <token>`, rebuilt from the verified token; sensitive, so HPACK and debug
    /// output never hold it.
    token: HeaderValue,
    /// From the inbound call's `grpc-timeout`.
    deadline: Option<Instant>,
    /// Set when the inbound call ends: the handle resolves until then.
    expires: Option<Instant>,
    owner: u64,
    /// Cancelled when the inbound call ends.
    ended: CancellationToken,
}

/// What a live handle resolves to.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub token: HeaderValue,
    pub deadline: Option<Instant>,
    /// When a call made under the handle must end.
    pub ends: CallEnd,
}

/// When an outbound call made under a handle ends: with its inbound call, or, for one
/// made in the grace after it, when the grace runs out. It never outlives the call it
/// serves by more than that.
#[derive(Clone, Debug)]
pub enum CallEnd {
    /// The inbound call is open; cancelled when it ends.
    With(CancellationToken),
    /// The inbound call has ended; its grace runs out then.
    At(Instant),
}

impl CallEnd {
    /// Resolves when the outbound call must end.
    pub fn reached(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match self {
            CallEnd::With(token) => Box::pin(token.cancelled_owned()),
            CallEnd::At(at) => Box::pin(tokio::time::sleep_until(at)),
        }
    }
}

/// Why no handle was minted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// `outbound.context_max_handles` handles or `context_max_bytes` of tokens are held
    /// by open calls.
    #[error("the call context table is full of open calls")]
    Full,
    /// The identity's `outbound.context_max_handles_per_identity` handles all belong to
    /// open calls.
    #[error("this identity's calls hold all the call contexts it may have")]
    OwnerFull,
    /// Not a bearer token gatehouse would keep.
    #[error("not a bearer token of at most 8 KiB")]
    NotBearer,
    /// The system random generator failed.
    #[error("the random generator failed")]
    Random,
}

impl CallContexts {
    /// A table within `bounds`, each handle living `grace` past its call.
    pub fn new(grace: Duration, bounds: Bounds) -> CallContexts {
        CallContexts {
            grace,
            bounds,
            table: Mutex::new(Table::default()),
        }
    }

    /// The most memory the table can take: entries and their tokens, each token at most
    /// `largest_token` bytes (the header list a caller may send).
    pub fn budget(bounds: &Bounds, largest_token: u64) -> u64 {
        let handles = bounds.handles as u64;
        let tokens = (bounds.bytes as u64).min(handles.saturating_mul(largest_token));
        handles.saturating_mul(ENTRY_COST as u64) + tokens
    }

    /// Gives a new inbound call of `owner` (a key of its identity) a handle for its
    /// verified `authorization` value; it resolves while the returned [`OpenCall`] is
    /// held and for `grace` after it is dropped. The `HeaderValue` is the handle in hex.
    pub fn mint(
        self: &Arc<Self>,
        owner: u64,
        authorization: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<(OpenCall, HeaderValue), MintError> {
        self.mint_at(owner, authorization, deadline, Instant::now())
    }

    fn mint_at(
        self: &Arc<Self>,
        owner: u64,
        authorization: &HeaderValue,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(OpenCall, HeaderValue), MintError> {
        let token = bearer(authorization).ok_or(MintError::NotBearer)?;
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| MintError::Random)?;
        let handle = u128::from_be_bytes(bytes);
        let mut table = self.lock();
        table.expire(now);
        table.make_room(&self.bounds, owner, token.len())?;
        if table.entries.contains_key(&handle) {
            // 2^-128 per live handle: treat it as the generator failing, never overwrite.
            return Err(MintError::Random);
        }
        table.bytes += token.len();
        table.owners.entry(owner).or_default().open += 1;
        table.entries.insert(
            handle,
            Entry {
                token,
                deadline,
                expires: None,
                owner,
                ended: CancellationToken::new(),
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
            ends: match entry.expires {
                None => CallEnd::With(entry.ended.clone()),
                Some(at) => CallEnd::At(at),
            },
        })
    }

    fn end(&self, handle: u128) {
        let expires = crate::clock::instant_after(self.grace);
        let mut table = self.lock();
        let Some(entry) = table.entries.get_mut(&handle) else {
            return;
        };
        entry.expires = Some(expires);
        entry.ended.cancel();
        let owner = entry.owner;
        table.ended.insert((expires, handle));
        let state = table.owners.entry(owner).or_default();
        state.open = state.open.saturating_sub(1);
        state.ended.push_back((expires, handle));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds no invariant a panic elsewhere could break halfway.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let table = self.lock();
        (table.entries.len(), table.bytes)
    }
}

/// `Bearer <token>` from an `authorization` value, the token trimmed: what an entry keeps.
fn bearer(authorization: &HeaderValue) -> Option<HeaderValue> {
    let value = authorization.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    if token.is_empty() || token.len() + 7 > MAX_STORED_TOKEN {
        return None;
    }
    let mut kept = Vec::with_capacity(7 + token.len());
    kept.extend_from_slice(b"Bearer ");
    kept.extend_from_slice(token);
    let mut kept = HeaderValue::from_bytes(&kept).ok()?;
    kept.set_sensitive(true);
    Some(kept)
}

impl Table {
    /// Removes the entries whose grace has run out.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, handle)) = self.ended.first() {
            if at > now {
                break;
            }
            self.remove_ended(at, handle);
        }
    }

    /// Removes one ended entry from the map and both orders.
    fn remove_ended(&mut self, at: Instant, handle: u128) {
        self.ended.remove(&(at, handle));
        if let Some(entry) = self.entries.remove(&handle) {
            self.bytes -= entry.token.len();
            if let Some(owner) = self.owners.get_mut(&entry.owner) {
                owner.ended.retain(|&(_, ended)| ended != handle);
                if owner.open == 0 && owner.ended.is_empty() {
                    self.owners.remove(&entry.owner);
                }
            }
        }
    }

    /// Makes room for one more entry of `owner` with a token of `token` bytes, evicting
    /// ended entries (the owner's own first when it is at its bound, then anyone's oldest);
    /// refuses when only open calls hold what is needed.
    fn make_room(&mut self, bounds: &Bounds, owner: u64, token: usize) -> Result<(), MintError> {
        loop {
            let state = self.owners.get(&owner);
            let owned = state.map_or(0, |s| s.open + s.ended.len());
            if owned < bounds.per_owner {
                break;
            }
            match state.and_then(|s| s.ended.front().copied()) {
                Some((at, handle)) => self.remove_ended(at, handle),
                None => return Err(MintError::OwnerFull),
            }
        }
        while self.entries.len() >= bounds.handles || self.bytes + token > bounds.bytes {
            match self.ended.first().copied() {
                Some((at, handle)) => self.remove_ended(at, handle),
                None => return Err(MintError::Full),
            }
        }
        Ok(())
    }
}

/// An inbound call's hold on its handle; dropping it (the call ended, or its caller went
/// away) starts the grace and ends the outbound calls made under it.
pub struct OpenCall {
    contexts: Arc<CallContexts>,
    handle: u128,
}

impl OpenCall {
    /// Removes the handle at once, with no grace: for a call the app never saw, so such
    /// calls cannot fill the table.
    pub fn forget(self) {
        {
            let mut table = self.contexts.lock();
            if let Some(entry) = table.entries.remove(&self.handle) {
                entry.ended.cancel();
                table.bytes -= entry.token.len();
                if let Some(owner) = table.owners.get_mut(&entry.owner) {
                    owner.open = owner.open.saturating_sub(1);
                    if owner.open == 0 && owner.ended.is_empty() {
                        table.owners.remove(&entry.owner);
                    }
                }
            }
        }
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

    fn table(handles: usize, bytes: usize, per_owner: usize) -> Arc<CallContexts> {
        Arc::new(CallContexts::new(
            60 * SECOND,
            Bounds {
                handles,
                bytes,
                per_owner,
            },
        ))
    }

    #[test]
    fn a_handle_lives_while_its_call_is_open_and_for_grace_after() {
        let contexts = Arc::new(CallContexts::new(
            5 * SECOND,
            Bounds {
                handles: 10,
                bytes: 1 << 20,
                per_owner: 10,
            },
        ));
        let start = Instant::now();
        let deadline = Some(start + 30 * SECOND);
        let (open, handle) = contexts.mint(1, &token(), deadline).unwrap();
        assert_eq!(hex(&handle).len(), 32);
        // Open far beyond the grace: still live.
        let context = contexts
            .resolve_at(hex(&handle), start + 3600 * SECOND)
            .expect("live while open");
        assert_eq!(context.token, token());
        assert!(context.token.is_sensitive());
        assert_eq!(context.deadline, deadline);
        let CallEnd::With(ended) = context.ends else {
            panic!("an open call's calls end with it")
        };
        assert!(!ended.is_cancelled());
        let before_end = Instant::now();
        drop(open);
        let after_end = Instant::now();
        assert!(ended.is_cancelled(), "calls made under it end with it");
        let within = contexts.resolve_at(hex(&handle), before_end + 4 * SECOND);
        assert!(
            matches!(within.map(|c| c.ends), Some(CallEnd::At(_))),
            "within the grace, a call made now ends when the grace does"
        );
        let over = contexts.resolve_at(hex(&handle), after_end + 5 * SECOND);
        assert!(over.is_none(), "grace over");
        assert_eq!(contexts.held(), (0, 0));
        assert!(contexts.lock().owners.is_empty());
    }

    #[test]
    fn made_up_and_malformed_handles_resolve_to_nothing() {
        let contexts = table(10, 1 << 20, 10);
        let (_open, handle) = contexts.mint(1, &token(), None).unwrap();
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
    fn a_full_table_makes_room_from_ended_calls_and_never_evicts_an_open_one() {
        let contexts = table(2, 1 << 20, 10);
        let (first, a) = contexts.mint(1, &token(), None).unwrap();
        let (_second, b) = contexts.mint(2, &token(), None).unwrap();
        assert_eq!(
            contexts.mint(3, &token(), None).err(),
            Some(MintError::Full),
            "two open calls fill it"
        );
        // A call in its grace gives way to a new open one.
        drop(first);
        let (_third, c) = contexts.mint(3, &token(), None).unwrap();
        assert!(
            contexts.resolve(hex(&a)).is_none(),
            "the ended call made room"
        );
        assert!(contexts.resolve(hex(&b)).is_some());
        assert!(contexts.resolve(hex(&c)).is_some());
    }

    #[test]
    fn one_identity_holds_its_share_and_its_ended_calls_give_way_first() {
        let contexts = table(100, 1 << 20, 3);
        let mut open: Vec<_> = (0..3)
            .map(|_| contexts.mint(7, &token(), None).unwrap())
            .collect();
        assert_eq!(
            contexts.mint(7, &token(), None).err(),
            Some(MintError::OwnerFull),
            "every one of its entries is an open call"
        );
        assert!(
            contexts.mint(8, &token(), None).is_ok(),
            "another identity is served"
        );
        // Ended calls: its own oldest makes room, however fast it calls.
        let (oldest, oldest_handle) = open.remove(0);
        drop(oldest);
        let (newest, _) = contexts.mint(7, &token(), None).unwrap();
        assert!(contexts.resolve(hex(&oldest_handle)).is_none());
        open.push((newest, HeaderValue::from_static("")));
        for (call, _) in open.drain(..) {
            drop(call);
        }
        for _ in 0..1_000 {
            drop(contexts.mint(7, &token(), None).unwrap());
        }
        let table = contexts.lock();
        let owner = &table.owners[&7];
        assert_eq!(
            owner.open + owner.ended.len(),
            3,
            "never more than its share"
        );
    }

    #[test]
    fn an_entry_keeps_the_trimmed_token_and_the_table_its_bytes() {
        let contexts = table(100, 64, 100);
        let padded = format!("Bearer {}a.b.c{}", " ".repeat(15_000), " ".repeat(100));
        let padded = HeaderValue::try_from(padded).unwrap();
        let (_call, handle) = contexts.mint(1, &padded, None).unwrap();
        assert_eq!(
            contexts.resolve(hex(&handle)).unwrap().token,
            "Bearer a.b.c"
        );
        assert_eq!(contexts.held(), (1, 12));
        let long = HeaderValue::try_from(format!("Bearer {}", "t".repeat(50))).unwrap();
        assert_eq!(
            contexts.mint(2, &long, None).err(),
            Some(MintError::Full),
            "64 bytes of tokens at most"
        );
        let oversize = HeaderValue::try_from(format!("Bearer {}", "t".repeat(9_000))).unwrap();
        assert_eq!(
            contexts.mint(2, &oversize, None).err(),
            Some(MintError::NotBearer)
        );
    }

    #[test]
    fn a_forgotten_handle_frees_its_slot_at_once() {
        let contexts = table(1, 1 << 20, 10);
        let (open, handle) = contexts.mint(1, &token(), None).unwrap();
        assert_eq!(
            contexts.mint(1, &token(), None).err(),
            Some(MintError::Full)
        );
        open.forget();
        assert!(contexts.resolve(hex(&handle)).is_none());
        assert!(contexts.lock().ended.is_empty());
        assert!(contexts.mint(1, &token(), None).is_ok());
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
