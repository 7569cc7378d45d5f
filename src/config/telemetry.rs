//! `telemetry`: logs, metrics and traces.

use std::net::SocketAddr;

use serde::Deserialize;

use super::Problem;

/// `telemetry`: logs, metrics, traces.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default)]
    pub log_format: LogFormat,
    /// A level (`info`) or per-module levels (`info,gatehouse::upstream=debug`).
    #[serde(default = "Telemetry::default_log_level")]
    pub log_level: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; absent: not served.
    pub admin_address: Option<SocketAddr>,
    /// OTLP/gRPC collector for spans; absent: trace context is propagated, nothing is
    /// exported.
    pub otlp_endpoint: Option<String>,
    #[serde(default = "Telemetry::default_service_name")]
    pub service_name: String,
    /// Share of new traces sampled (0.0 to 1.0); a caller's sampled flag is followed.
    #[serde(default = "Telemetry::default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Telemetry {
    fn default_log_level() -> String {
        "info".to_owned()
    }
    fn default_service_name() -> String {
        "gatehouse".to_owned()
    }
    fn default_sample_ratio() -> f64 {
        1.0
    }

    /// The log directives, the sampling share and the collector address.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if let Err(message) = check_log_level(&self.log_level) {
            problems.push(Problem::new("telemetry.log_level", message));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(Problem::new(
                "telemetry.sample_ratio",
                "a share between 0.0 and 1.0",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(Problem::new(
                "telemetry.otlp_endpoint",
                format!("{endpoint:?}: write http://host:4317"),
            ));
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            log_format: LogFormat::default(),
            log_level: Telemetry::default_log_level(),
            admin_address: None,
            otlp_endpoint: None,
            service_name: Telemetry::default_service_name(),
            sample_ratio: Telemetry::default_sample_ratio(),
        }
    }
}

/// `telemetry.log_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

/// Accepts `LEVEL` and `module::path=LEVEL` directives, comma-separated.
fn check_log_level(directives: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in directives.split(',').map(str::trim) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level: use off, error, warn, info, debug or trace, optionally per module (info,gatehouse::upstream=debug)"
            ));
        }
    }
    Ok(())
}
