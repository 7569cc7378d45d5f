//! Process logging: one line per event on standard output, as logfmt (the default) or
//! JSON, filtered by `telemetry.log_level`. Both formats carry the same fields under the
//! same names (`ts`, `level`, `msg`, then the event's own), and the same values: numbers
//! stay numbers in JSON, and a fraction is written with three decimals in both
//! (`duration_ms=1.078`, `"duration_ms":1.078`), so a query written for one format works
//! on the other.

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

/// Changes the log level of the running process (on a configuration reload).
pub struct LogLevel {
    handle: Option<tracing_subscriber::reload::Handle<Targets, tracing_subscriber::Registry>>,
}

impl LogLevel {
    /// Applies `directives` (checked by `Config::validate`).
    pub fn set(&self, directives: &str) {
        let (Some(handle), Ok(filter)) = (&self.handle, directives.parse::<Targets>()) else {
            return;
        };
        if let Err(error) = handle.reload(filter) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}

/// Installs the global logger. The level string was checked by `Config::validate`.
pub fn init_logging(telemetry: &Telemetry) -> LogLevel {
    let filter: Targets = telemetry
        .log_level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let installed = match telemetry.log_format {
        LogFormat::Logfmt => registry.with(layer.event_format(Logfmt)).try_init(),
        LogFormat::Json => registry.with(layer.event_format(Json)).try_init(),
    };
    // A second initialisation (only possible in tests) keeps the first logger.
    LogLevel {
        handle: installed.ok().map(|()| handle),
    }
}

/// Formats events as logfmt: `ts=… level=INFO msg=listening address=127.0.0.1:12018`.
// Not tracing-logfmt 0.3.7: as fast (14.3k vs 14.5k instructions a line), but it writes
// `level=info message=…` and leaves NEL, U+2028 and U+2029 raw, so a caller could forge lines.
pub struct Logfmt;

/// Formats events as one JSON object a line, with the fields and names of [`Logfmt`]:
/// `{"ts":"…","level":"INFO","msg":"listening","address":"127.0.0.1:12018"}`.
// Not tracing-subscriber's JSON: it writes `timestamp` and `message` and every value that
// was recorded with `%` as a string, and leaves NEL, U+2028 and U+2029 raw.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        format_line::<LogfmtSyntax>(writer, event)
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        format_line::<JsonSyntax>(writer, event)
    }
}

/// How one format writes a line's parts; the line's content is the same for both.
trait Syntax {
    fn open(line: &mut String);
    /// Writes `key` and the separator before its value (`key=`, `"key":`).
    fn key(line: &mut String, key: &str);
    fn text(line: &mut String, value: &str);
    /// Writes a text value that needs no quoting or escaping in either format.
    fn plain_text(line: &mut String, value: fmt::Arguments<'_>);
    /// Writes a value that is a literal in both formats: a number or a bool.
    fn literal(line: &mut String, value: fmt::Arguments<'_>) {
        let _ = line.write_fmt(value);
    }
    fn close(line: &mut String);
}

struct LogfmtSyntax;

impl Syntax for LogfmtSyntax {
    fn open(_: &mut String) {}
    fn key(line: &mut String, key: &str) {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
    }
    fn text(line: &mut String, value: &str) {
        push_value(line, value);
    }
    fn plain_text(line: &mut String, value: fmt::Arguments<'_>) {
        let _ = line.write_fmt(value);
    }
    fn close(_: &mut String) {}
}

struct JsonSyntax;

impl Syntax for JsonSyntax {
    fn open(line: &mut String) {
        line.push('{');
    }
    fn key(line: &mut String, key: &str) {
        if line.len() > 1 {
            line.push(',');
        }
        push_json_string(line, key);
        line.push(':');
    }
    fn text(line: &mut String, value: &str) {
        push_json_string(line, value);
    }
    fn plain_text(line: &mut String, value: fmt::Arguments<'_>) {
        let _ = write!(line, "\"{value}\"");
    }
    fn close(line: &mut String) {
        line.push('}');
    }
}

/// `ts`, `level`, the message as `msg` (first, whatever order the fields were declared
/// in), then the event's other fields, in the syntax `F`.
fn format_line<F: Syntax>(mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
    let mut line = String::with_capacity(192);
    F::open(&mut line);
    F::key(&mut line, "ts");
    F::plain_text(&mut line, format_args!("{}", Timestamp(SystemTime::now())));
    F::key(&mut line, "level");
    F::plain_text(&mut line, format_args!("{}", event.metadata().level()));
    for message in [true, false] {
        event.record(&mut Fields::<F> {
            line: &mut line,
            message,
            syntax: std::marker::PhantomData,
        });
    }
    F::close(&mut line);
    writeln!(writer, "{line}")
}

struct Fields<'a, F> {
    line: &'a mut String,
    /// This pass writes only the message (as `msg`), or only the other fields.
    message: bool,
    syntax: std::marker::PhantomData<F>,
}

impl<F: Syntax> Fields<'_, F> {
    /// Writes the key of `field` if this pass writes it; false if it does not.
    fn key(&mut self, field: &Field) -> bool {
        let is_message = field.name() == "message";
        if is_message != self.message {
            return false;
        }
        F::key(self.line, if is_message { "msg" } else { field.name() });
        true
    }
}

impl<F: Syntax> Visit for Fields<'_, F> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            F::text(self.line, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            F::text(self.line, &format!("{value:?}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.key(field) {
            return;
        }
        if value.is_finite() {
            // Milliseconds to the microsecond; no float noise (1.0779999999999998).
            F::literal(self.line, format_args!("{value:.3}"));
        } else {
            F::text(self.line, &value.to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            F::literal(self.line, format_args!("{value}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            F::literal(self.line, format_args!("{value}"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            F::literal(self.line, format_args!("{value}"));
        }
    }
}

/// Whether `c` must never appear raw in a log line: control characters (C0, DEL and C1,
/// which includes NEL, U+0085) and the Unicode line and paragraph separators (U+2028,
/// U+2029). Each of them ends a line for some log reader, so a caller-sent value holding
/// one could forge a line of its own. These are all the mandatory breaks of Unicode's
/// line-breaking rules (UAX #14: BK, CR, LF, NL).
fn breaks_lines(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Writes a value bare when it can be, quoted and escaped when it has spaces, quotes,
/// `=`, control characters or line separators (or is empty).
fn push_value(line: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c > ' ' && c != '"' && c != '=' && !breaks_lines(c));
    if bare {
        line.push_str(value);
        return;
    }
    push_quoted(line, value, |line, c| {
        let _ = write!(line, "\\u{{{:x}}}", c as u32);
    });
}

/// Writes a JSON string, with every character that [`breaks_lines`] escaped as `\uXXXX`
/// (JSON allows NEL, U+2028 and U+2029 raw; a line-based reader would split on them).
fn push_json_string(line: &mut String, value: &str) {
    // Every such character is in the Basic Multilingual Plane: one escape each.
    push_quoted(line, value, |line, c| {
        let _ = write!(line, "\\u{:04x}", c as u32);
    });
}

/// `value` in double quotes with `"`, `\`, newline, carriage return and tab escaped
/// alike in both formats, and each character that [`breaks_lines`] written by `escape`
/// (the formats spell a code point differently).
fn push_quoted(line: &mut String, value: &str, escape: impl Fn(&mut String, char)) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if breaks_lines(c) => escape(line, c),
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
    use std::sync::{Arc, Mutex};
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
    fn escapes_every_unicode_line_break_so_a_value_cannot_forge_a_line() {
        let breaks = [
            '\n', '\r', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}',
        ];
        for c in breaks {
            let forged = format!("user{c}level=ERROR msg=forged");
            let mut line = String::new();
            push_value(&mut line, &forged);
            assert!(
                line.chars().all(|c| !breaks_lines(c)),
                "U+{:04X} left raw: {line:?}",
                c as u32
            );
            assert!(line.starts_with('"') && line.ends_with('"'), "{line:?}");
            let mut json = String::new();
            push_json_string(&mut json, &forged);
            assert!(
                json.chars().all(|c| !breaks_lines(c)),
                "JSON: U+{:04X} left raw: {json:?}",
                c as u32
            );
            let parsed: String = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(parsed, forged, "JSON escaping keeps the value");
        }
        let mut line = String::new();
        push_value(&mut line, "a\u{85}b\u{2028}c\u{2029}d");
        assert_eq!(line, r#""a\u{85}b\u{2028}c\u{2029}d""#);
        let mut line = String::new();
        push_value(&mut line, "naïve-日本");
        assert_eq!(line, "naïve-日本", "other non-ASCII text stays as it is");
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

    /// The lines `emit` logs, formatted by `format`.
    fn lines<E>(format: E, emit: impl FnOnce()) -> Vec<String>
    where
        E: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let written = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .event_format(format),
        );
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn access_line() {
        tracing::info!(
            method = "/pkg.Svc/Get",
            grpc_code = "OK",
            duration_ms = 1.0779999999999998_f64,
            user_id = "a \"quoted\" user",
            bytes_out = 1066_u64,
            would_refuse = true,
            trace_id = %format_args!("{:032x}", 0x5be1_u128),
            "request"
        );
    }

    #[test]
    fn logfmt_writes_numbers_with_three_decimals_and_the_message_first() {
        let logfmt = lines(Logfmt, access_line).remove(0);
        let line = logfmt.split_once(' ').expect("ts first").1;
        assert_eq!(
            line,
            r#"level=INFO msg=request method=/pkg.Svc/Get grpc_code=OK duration_ms=1.078 user_id="a \"quoted\" user" bytes_out=1066 would_refuse=true trace_id=00000000000000000000000000005be1"#
        );
    }

    #[test]
    fn json_carries_the_names_and_values_of_logfmt_with_numbers_as_numbers() {
        let json = lines(Json, access_line).remove(0);
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).expect("one JSON object a line");
        assert!(json.starts_with(r#"{"ts":""#), "{json}");
        assert!(
            json.contains(r#"","level":"INFO","msg":"request","method":"/pkg.Svc/Get","#),
            "{json}"
        );
        assert!(json.contains(r#""duration_ms":1.078,"#), "{json}");
        assert_eq!(object["duration_ms"], serde_json::json!(1.078));
        assert_eq!(object["bytes_out"], serde_json::json!(1066));
        assert_eq!(object["would_refuse"], serde_json::json!(true));
        assert_eq!(object["msg"], "request");
        assert_eq!(object["level"], "INFO");
        assert_eq!(object["user_id"], "a \"quoted\" user");
        let logfmt = lines(Logfmt, access_line).remove(0);
        let mut logfmt_keys: Vec<&str> = logfmt
            .split(' ')
            .filter_map(|part| part.split_once('=').map(|(key, _)| key))
            .filter(|key| !key.contains('"'))
            .collect();
        logfmt_keys.sort_unstable();
        let json_keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(json_keys, logfmt_keys, "the same names in both formats");
    }
}
