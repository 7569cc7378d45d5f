//! Process logging: one line per event on standard output, as logfmt (the default) or
//! JSON, filtered by `telemetry.log_level`.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, Telemetry};

/// Installs the global logger. The level string was checked by `Config::validate`.
pub fn init_logging(telemetry: &Telemetry) {
    let filter: Targets = telemetry
        .log_level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let installed = match telemetry.log_format {
        LogFormat::Logfmt => registry.with(layer.event_format(Logfmt)).try_init(),
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
    };
    // A second initialisation (only possible in tests) keeps the first logger.
    let _ = installed;
}

/// Formats events as logfmt: `ts=… level=INFO msg=listening address=127.0.0.1:12018`.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            writer,
            "ts={} level={}",
            Timestamp(SystemTime::now()),
            event.metadata().level()
        )?;
        let mut line = String::with_capacity(128);
        // The message first, whatever order the fields were declared in.
        event.record(&mut Fields {
            line: &mut line,
            message: true,
        });
        event.record(&mut Fields {
            line: &mut line,
            message: false,
        });
        writeln!(writer, "{line}")
    }
}

struct Fields<'a> {
    line: &'a mut String,
    /// This pass writes only the message (as `msg`), or only the other fields.
    message: bool,
}

impl Fields<'_> {
    fn push(&mut self, field: &Field, value: &str) {
        let is_message = field.name() == "message";
        if is_message != self.message {
            return;
        }
        let key = if is_message { "msg" } else { field.name() };
        self.line.push(' ');
        self.line.push_str(key);
        self.line.push('=');
        push_value(self.line, value);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.push(field, &text);
    }
}

/// Writes a value bare when it can be, quoted and escaped when it has spaces, quotes,
/// `=` or control characters (or is empty).
fn push_value(line: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c > ' ' && c != '"' && c != '=' && c != '\u{7f}');
    if bare {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// RFC 3339 UTC with milliseconds, without pulling in a date library.
struct Timestamp(SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rest) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60,
            since.subsec_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quotes_values_only_when_needed() {
        let mut line = String::new();
        for value in ["plain", "two words", "", "a=b", "say \"hi\"", "line\nbreak"] {
            push_value(&mut line, value);
            line.push('|');
        }
        assert_eq!(
            line,
            r#"plain|"two words"|""|"a=b"|"say \"hi\""|"line\nbreak"|"#
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_600_000_123);
        assert_eq!(Timestamp(at).to_string(), "2026-11-25T09:46:40.123Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Timestamp(leap).to_string(), "2000-02-29T00:00:00.000Z");
    }
}
