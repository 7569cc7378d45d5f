//! Values written with a unit or a calendar: durations (`250ms`), sizes (`64MiB`) and
//! timestamps (`2027-01-31`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as a whole number with a unit: `64MiB`, `512KiB`, `1GiB`
/// (or `MB`, `KB`, `GB` in powers of ten; a bare number is bytes), or as Kubernetes
/// writes a memory quantity, so a pod's limit can be copied as it is: `160Mi`, `512Ki`,
/// `1Gi` in powers of two, `500M`, `1G`, `64k` in powers of ten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A size that is not a whole number of bytes with a known unit, or does not fit 64 bits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {0:?}: write a whole number and a unit (KiB, MiB, GiB, or Ki, Mi, Gi as \
     Kubernetes writes them), like \"64MiB\" or \"160Mi\""
)]
pub struct InvalidSize(String);

impl FromStr for ByteSize {
    type Err = InvalidSize;

    fn from_str(text: &str) -> Result<Self, InvalidSize> {
        let invalid = || InvalidSize(text.to_owned());
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "Ki" => 1 << 10,
            "MiB" | "Mi" => 1 << 20,
            "GiB" | "Gi" => 1 << 30,
            "TiB" | "Ti" => 1 << 40,
            "KB" | "k" => 1_000,
            "MB" | "M" => 1_000_000,
            "GB" | "G" => 1_000_000_000,
            "TB" | "T" => 1_000_000_000_000,
            _ => return Err(invalid()),
        };
        number.checked_mul(scale).map(ByteSize).ok_or_else(invalid)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as a string with a unit: `250ms`, `30s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

/// The longest duration any setting takes: ten years. Anything longer is a mistake (a
/// timeout nothing would wait out), and arithmetic on clock readings stays far from
/// overflowing with it.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(87_600 * 3600);

/// A duration that is not a whole number followed by `ms`, `s`, `m` or `h`, or that is
/// longer than [`MAX_DURATION`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDuration {
    #[error(
        "invalid duration {0:?}: write a whole number and a unit (ms, s, m, h), like \"250ms\""
    )]
    Syntax(String),
    #[error("duration {0:?} is longer than 87600h (ten years), the longest any setting takes")]
    TooLong(String),
}

// Hand-written rather than humantime: humantime also takes `10d`, `1.5s` and `1h 30m`,
// which gatehouse refuses, and words its errors differently.
impl FromStr for Duration {
    type Err = InvalidDuration;

    fn from_str(text: &str) -> Result<Self, InvalidDuration> {
        let invalid = || InvalidDuration::Syntax(text.to_owned());
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (digits, unit) = text.split_at(split);
        let amount: u64 = digits.parse().map_err(|_| invalid())?;
        let duration = match unit {
            "ms" => std::time::Duration::from_millis(amount),
            "s" => std::time::Duration::from_secs(amount),
            "m" => std::time::Duration::from_secs(amount.checked_mul(60).ok_or_else(invalid)?),
            "h" => std::time::Duration::from_secs(amount.checked_mul(3600).ok_or_else(invalid)?),
            _ => return Err(invalid()),
        };
        if duration > MAX_DURATION {
            return Err(InvalidDuration::TooLong(text.to_owned()));
        }
        Ok(Duration(duration))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"250ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Seconds since the Unix epoch for `YYYY-MM-DD` (midnight UTC) or
/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || year < 1970
    {
        return None;
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let mut hms = time.split(':').map(|part| part.parse::<i64>().ok());
            let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
            if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
                return None;
            }
            h * 3600 + m * 60 + s
        }
    };
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + seconds).ok()
}

/// Days in `month` (1–12) of `year` in the Gregorian calendar, so that a date such as
/// 31 February is refused instead of silently becoming 3 March.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MINIMAL};

    #[test]
    fn rejects_numeric_and_unitless_durations() {
        for value in ["5", "\"5\"", "\"5 s\"", "\"1.5s\"", "\"10d\""] {
            let text = format!("{MINIMAL}limits: {{ drain_timeout: {value} }}\n");
            let problem = Config::from_yaml(&text).unwrap_err();
            assert_eq!(problem.field, "limits.drain_timeout", "{value}: {problem}");
        }
        let config =
            Config::from_yaml(&format!("{MINIMAL}limits: {{ drain_timeout: 250ms }}\n")).unwrap();
        assert_eq!(
            config.limits.drain_timeout.get(),
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn timestamps_name_only_dates_that_exist() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_timestamp("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(parse_timestamp("2027-01-31T23:59:59Z"), Some(1_801_439_999));
        for impossible in [
            "2027-02-31",
            "2027-02-29",
            "1900-02-29",
            "2100-02-29",
            "2027-04-31",
            "2027-06-31T00:00:00Z",
            "2027-09-31",
            "2027-11-31",
            "2027-13-01",
            "2027-00-10",
            "2027-01-00",
        ] {
            assert_eq!(parse_timestamp(impossible), None, "{impossible}");
        }
    }

    #[test]
    fn durations_and_sizes_name_the_text_they_refuse() {
        assert_eq!("1h".parse(), Ok(Duration::from_secs(3600)));
        assert_eq!(
            "5 s".parse::<Duration>().unwrap_err().to_string(),
            "invalid duration \"5 s\": write a whole number and a unit (ms, s, m, h), like \"250ms\""
        );
        assert!("18446744073709551615h".parse::<Duration>().is_err());
        assert_eq!("87600h".parse(), Ok(Duration::from_secs(87_600 * 3600)));
        assert_eq!(
            "87601h".parse::<Duration>().unwrap_err().to_string(),
            "duration \"87601h\" is longer than 87600h (ten years), the longest any setting takes"
        );
        assert_eq!("64MiB".parse(), Ok(ByteSize(64 << 20)));
        assert_eq!("1 KB".parse(), Ok(ByteSize(1000)));
        assert_eq!(
            "12XB".parse::<ByteSize>().unwrap_err().to_string(),
            "invalid size \"12XB\": write a whole number and a unit (KiB, MiB, GiB, or Ki, Mi, \
             Gi as Kubernetes writes them), like \"64MiB\" or \"160Mi\""
        );
        assert!("18446744073709551615GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_accept_the_spellings_of_a_kubernetes_memory_limit() {
        for (text, bytes) in [
            ("160Mi", 160 << 20),
            ("512Ki", 512 << 10),
            ("1Gi", 1 << 30),
            ("2Ti", 2 << 40),
            ("500M", 500_000_000),
            ("1G", 1_000_000_000),
            ("64k", 64_000),
            ("160MiB", 160 << 20),
            ("4096", 4096),
        ] {
            assert_eq!(text.parse(), Ok(ByteSize(bytes)), "{text}");
        }
        // Kubernetes' milli-units and exponents are not sizes of memory anyone means.
        for refused in ["160mi", "1.5Gi", "1e9", "100m", "1Mb", "Mi"] {
            assert!(refused.parse::<ByteSize>().is_err(), "{refused}");
        }
        let config =
            Config::from_yaml(&format!("{MINIMAL}limits: {{ memory_limit: 160Mi }}\n")).unwrap();
        assert_eq!(config.limits.memory_limit, Some(ByteSize(160 << 20)));
    }
}
