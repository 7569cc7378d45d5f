//! The clocks: the wall clock in whole seconds since the Unix epoch, what token
//! `exp`/`nbf`, API key `not_after` and the once-a-second log gates compare against (one
//! reading, so every expiry check agrees on what "now" is); and deadlines on the
//! monotonic clock that never overflow, whatever duration a setting or a caller names.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 for a clock set before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The instant `after` from now, for deadlines taken from settings and callers: past what
/// the clock can hold, about thirty years from now instead, which no call waits out.
pub fn instant_after(after: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system_clock_in_seconds() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = unix_now();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }
}
