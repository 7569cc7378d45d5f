//! `telemetry`: logs, metrics and traces.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// OTLP/gRPC collector for spans (`http://` or, over TLS, `https://`); absent: trace
    /// context is propagated, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Extra trust roots (PEM) for an `https://` `otlp_endpoint`, added to the public web
    /// roots: the CA of an in-cluster collector.
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of the exported spans. Absent: `OTEL_SERVICE_NAME`, else
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `gatehouse`.
    pub service_name: Option<String>,
    /// Share of new traces sampled (0.0 to 1.0); a caller's sampled flag is followed.
    #[serde(default = "Telemetry::default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Telemetry {
    fn default_log_level() -> String {
        "info".to_owned()
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
            && let Err(message) = check_endpoint(endpoint)
        {
            problems.push(Problem::new("telemetry.otlp_endpoint", message));
        }
        let https = self
            .otlp_endpoint
            .as_deref()
            .is_some_and(|endpoint| endpoint.starts_with("https://"));
        if self.otlp_ca_file.is_some() && !https {
            problems.push(Problem::new(
                "telemetry.otlp_ca_file",
                "only for an https:// otlp_endpoint",
            ));
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            problems.push(Problem::new("telemetry.service_name", "empty"));
        }
    }
}

/// An OTLP/gRPC endpoint: `http://` or `https://`, a host, an optional port, no path
/// (gRPC's path is the method's).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let advice = "write http://host:4317, or https://host:4317 for TLS";
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?}: not a URL: {advice}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|host| !host.is_empty());
    let path_ok = uri
        .path_and_query()
        .is_none_or(|path| path.as_str().is_empty() || path.as_str() == "/");
    if scheme_ok && host_ok && path_ok {
        Ok(())
    } else {
        Err(format!("{endpoint:?}: {advice}"))
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            log_format: LogFormat::default(),
            log_level: Telemetry::default_log_level(),
            admin_address: None,
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let telemetry: Telemetry = serde_saphyr::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        telemetry.validate(&mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_otlp_endpoint_is_http_or_https_with_a_host_and_no_path() {
        for good in [
            "http://127.0.0.1:4317",
            "https://otel-collector.observability:4317",
            "https://[::1]:4317/",
        ] {
            assert_eq!(problems(&format!("otlp_endpoint: {good}")), [] as [&str; 0]);
        }
        for bad in [
            "grpc://x:4317",
            "otel-collector:4317",
            "https://",
            "http://x:4317/v1/traces",
        ] {
            let problems = problems(&format!("otlp_endpoint: '{bad}'"));
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].starts_with("telemetry.otlp_endpoint: "),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn a_collector_ca_needs_an_https_endpoint() {
        assert_eq!(
            problems("{ otlp_endpoint: 'http://x:4317', otlp_ca_file: /certs/ca.crt }"),
            ["telemetry.otlp_ca_file: only for an https:// otlp_endpoint"]
        );
        assert_eq!(
            problems("{ otlp_endpoint: 'https://x:4317', otlp_ca_file: /certs/ca.crt }"),
            [] as [&str; 0]
        );
    }
}
