//! A call's deadline: `grpc-timeout` on the wire, [`Deadline`] inside gatehouse.
//!
//! The server reads `grpc-timeout` once, when the request arrives, into a [`Deadline`] in
//! the request's extensions. A layer that knows a tighter one (an outbound destination's
//! `timeout`, the inbound call a context handle serves) shortens it there; the Deadline
//! layer enforces whatever it says, before the answer and while it streams.

use std::time::Duration;

use http::{Extensions, HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::{GRPC_TIMEOUT, Reason, Status};

/// When a call must have ended, and what set that time (as a status message names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    /// `grpc-timeout`, `the destination's timeout`…
    pub source: &'static str,
}

impl Deadline {
    /// The deadline `grpc-timeout` in `headers` sets, counted from `now`; none for a
    /// missing or malformed value (gRPC servers run such a call without one) or one past
    /// what the clock can hold.
    pub fn from_headers(headers: &HeaderMap, now: Instant) -> Option<Deadline> {
        let timeout = parse_timeout(headers.get(GRPC_TIMEOUT)?)?;
        Some(Deadline {
            at: now.checked_add(timeout)?,
            source: "grpc-timeout",
        })
    }

    /// The deadline a request carries.
    pub fn of(extensions: &Extensions) -> Option<Deadline> {
        extensions.get::<Deadline>().copied()
    }

    /// Gives the request `at` as its deadline unless it has an earlier one.
    pub fn shorten(extensions: &mut Extensions, at: Instant, source: &'static str) {
        if Deadline::of(extensions).is_none_or(|deadline| at < deadline.at) {
            extensions.insert(Deadline { at, source });
        }
    }

    /// What is left of it.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The status of a call whose deadline passed before `who` answered, or while it was
    /// answering.
    pub fn exceeded(&self, who: &str, answering: bool) -> Status {
        let when = if answering {
            format!("while {who} was answering")
        } else {
            format!("before {who} answered")
        };
        Status::new(
            Reason::Deadline,
            format!("deadline exceeded: {} ran out {when}", self.source),
        )
    }
}

/// Parses a `grpc-timeout` value: one to eight digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). A malformed value is `None`.
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    match unit {
        b'H' => Some(Duration::from_secs(amount * 3600)),
        b'M' => Some(Duration::from_secs(amount * 60)),
        b'S' => Some(Duration::from_secs(amount)),
        b'm' => Some(Duration::from_millis(amount)),
        b'u' => Some(Duration::from_micros(amount)),
        b'n' => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// Writes a `grpc-timeout` value: milliseconds (rounded up) while they fit the eight digits the
/// specification allows, whole seconds (rounded up) beyond that, hours at the very most.
pub fn encode_timeout(timeout: Duration) -> HeaderValue {
    // Rounded up: what is left of a deadline read a moment ago is a fraction of a
    // millisecond short of it, and the peer may end no sooner than gatehouse does.
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    let text = if millis <= 99_999_999 {
        format!("{}m", millis.max(1))
    } else if timeout.as_secs() < 99_999_999 {
        format!("{}S", timeout.as_secs() + 1)
    } else {
        format!("{}H", (timeout.as_secs() / 3600 + 1).min(99_999_999))
    };
    HeaderValue::try_from(text).expect("digits and a unit are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_timeout_once_and_keeps_the_earliest_deadline() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        assert_eq!(Deadline::from_headers(&headers, now), None);
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("250m"));
        let deadline = Deadline::from_headers(&headers, now).unwrap();
        assert_eq!(deadline.at, now + Duration::from_millis(250));
        assert_eq!(deadline.source, "grpc-timeout");
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("99999999H"));
        assert!(Deadline::from_headers(&headers, now).is_some());

        let mut extensions = Extensions::new();
        extensions.insert(deadline);
        Deadline::shorten(&mut extensions, now + Duration::from_secs(1), "later");
        assert_eq!(Deadline::of(&extensions), Some(deadline));
        Deadline::shorten(&mut extensions, now, "sooner");
        assert_eq!(Deadline::of(&extensions).unwrap().source, "sooner");
        let status = Deadline::of(&extensions)
            .unwrap()
            .exceeded("the app", false);
        assert_eq!(
            status.message(),
            "deadline exceeded: sooner ran out before the app answered"
        );
        assert_eq!(status.reason(), Reason::Deadline);
    }

    #[test]
    fn parses_grpc_timeout_units() {
        let cases = [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_timeout(&HeaderValue::from_static(text)),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn encodes_timeouts_within_eight_digits_and_round_trips_them() {
        let table = [
            (Duration::from_millis(250), "250m"),
            (Duration::from_micros(10), "1m"),
            (Duration::from_secs(10), "10000m"),
            (Duration::from_millis(99_999_999), "99999999m"),
            (Duration::from_millis(100_000_000), "100001S"),
            (Duration::from_secs(400_000_000), "111112H"),
        ];
        for (timeout, expected) in table {
            let value = encode_timeout(timeout);
            assert_eq!(value, expected, "{timeout:?}");
            assert!(parse_timeout(&value).unwrap() >= timeout, "{timeout:?}");
        }
    }
}
