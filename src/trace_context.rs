//! W3C Trace Context: reading `traceparent` / `tracestate` from a call, and writing the
//! continued context, with gatehouse's span as parent, into the forwarded request.
//!
//! A valid `traceparent` is continued (same trace id, its sampled flag respected); an
//! absent or malformed one starts a new trace, sampled with `telemetry.sample_ratio`.

use std::cell::Cell;
use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace a call belongs to and gatehouse's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span, when the trace was continued.
    pub parent_span_id: Option<u64>,
    /// gatehouse's own span, the parent of the app's.
    pub span_id: u64,
    pub sampled: bool,
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the caller's trace or starts one.
    pub fn from_headers(headers: &HeaderMap, sample_ratio: f64) -> TraceContext {
        let tracestate = headers.get(TRACESTATE).cloned();
        match headers
            .get(TRACEPARENT)
            .and_then(|value| parse_traceparent(value.as_bytes()))
        {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent_span_id: Some(parent),
                span_id: random_span_id(),
                sampled,
                tracestate,
            },
            None => {
                let trace_id = random_trace_id();
                TraceContext {
                    trace_id,
                    parent_span_id: None,
                    span_id: random_span_id(),
                    sampled: sample(trace_id, sample_ratio),
                    tracestate: None,
                }
            }
        }
    }

    /// Writes `traceparent` (and `tracestate`) for the app: gatehouse's span as parent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// `00-{trace id}-{span id}-{flags}`, written into a buffer on the stack: `format!`
    /// grew a `String` several times on every call before the header value copied it.
    fn traceparent(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, digit) in value[3..35].iter_mut().enumerate() {
            *digit = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for (i, digit) in value[36..52].iter_mut().enumerate() {
            *digit = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        if self.sampled {
            value[54] = b'1';
        }
        HeaderValue::from_bytes(&value).expect("hex digits and dashes are a valid header value")
    }

    /// The trace id as 32 lowercase hex digits, for logs.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        let _ = write!(out, "{:032x}", self.trace_id);
        out
    }
}

/// `version-traceid-parentid-flags`; version 00 exactly, or a later version's first
/// four fields. All-zero ids are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, bool)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version.len() != 2
        || !is_hex(version)
        || version == "ff"
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !is_hex(trace_id) || !is_hex(span_id) || !is_hex(flags) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
    let span_id = u64::from_str_radix(span_id, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags & 1 == 1))
}

/// Root sampling: deterministic in the trace id, so every hop that samples by ratio
/// agrees.
fn sample(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let low = (trace_id & u128::from(u64::MAX)) as u64;
    (low >> 11) as f64 / (1u64 << 53) as f64 <= ratio
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failure here would leave ids predictable, not wrong; fall back to the clock.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos());
        return (nanos as u64) | 1;
    }
    u64::from_le_bytes(bytes) | 1
}

/// splitmix64 over a per-thread random seed: unique ids without a syscall per call.
fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn random_span_id() -> u64 {
    loop {
        let id = next_u64();
        if id != 0 {
            return id;
        }
    }
}

fn random_trace_id() -> u128 {
    (u128::from(next_u64()) << 64) | u128::from(random_span_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let context = TraceContext::from_headers(&headers, 0.0);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert!(
            context.sampled,
            "the caller's sampled flag wins over the ratio"
        );
        let mut forwarded = HeaderMap::new();
        context.inject(&mut forwarded);
        let value = forwarded[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(
            value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{value}"
        );
        assert!(value.ends_with("-01"));
        assert_ne!(
            &value[36..52],
            "00f067aa0ba902b7",
            "gatehouse's own span is the parent"
        );
        assert_eq!(forwarded[TRACESTATE], "vendor=x");
    }

    #[test]
    fn starts_a_trace_when_there_is_none_or_it_is_malformed() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        let context = TraceContext::from_headers(&HeaderMap::new(), 1.0);
        assert_eq!(context.parent_span_id, None);
        assert!(context.sampled);
        assert_ne!(context.trace_id, 0);
        assert!(!TraceContext::from_headers(&HeaderMap::new(), 0.0).sampled);
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
                .is_some()
        );
    }

    #[test]
    fn the_written_traceparent_is_zero_padded_lowercase_hex_and_parses_back() {
        for (trace_id, span_id, sampled) in [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                true,
            ),
            (1, 0xffff_ffff_ffff_ffff, false),
            (u128::MAX, 1, true),
        ] {
            let context = TraceContext {
                trace_id,
                parent_span_id: None,
                span_id,
                sampled,
                tracestate: None,
            };
            let value = context.traceparent();
            let flags = if sampled { "01" } else { "00" };
            assert_eq!(
                value.to_str().unwrap(),
                format!("00-{trace_id:032x}-{span_id:016x}-{flags}")
            );
            assert_eq!(
                parse_traceparent(value.as_bytes()),
                Some((trace_id, span_id, sampled))
            );
        }
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| random_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn ratio_sampling_keeps_about_that_share() {
        let kept = (0..10_000)
            .filter(|_| sample(random_trace_id(), 0.25))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }
}
