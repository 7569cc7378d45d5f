//! Configuration reload on SIGHUP: the whole file is read and checked again, and what
//! can change while running is swapped in (authentication, API keys, authorization
//! rules, TLS files and client-auth settings, the log level). Key sets fetched from
//! issuers carry over, so a reload during an issuer outage keeps JWT calls working. An
//! invalid file changes nothing: every problem is logged and the failure counted.
//! Settings that only take effect on restart are named in the log when they differ.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::Signal;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reload::Current;
use crate::telemetry::LogLevel;
use crate::tls::ReloadableTls;

/// What a reload may change, and what it compares against.
pub struct Reloader {
    pub path: PathBuf,
    pub running: Config,
    pub authenticator: Arc<Current<Authenticator>>,
    pub tls: Option<Arc<ReloadableTls>>,
    pub log_level: Arc<LogLevel>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads on every SIGHUP until the process ends; `None` when the SIGHUP handler
    /// could not be installed (already logged).
    pub fn spawn(mut self, hangups: Option<Signal>) {
        let Some(mut hangups) = hangups else {
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                self.reload().await;
            }
        });
    }

    async fn reload(&mut self) {
        let loaded = match super::load::load(&self.path) {
            Ok(loaded) => loaded,
            Err(error) => {
                for problem in error.to_string().lines() {
                    tracing::warn!(
                        problem,
                        "configuration reload refused; the running configuration stays"
                    );
                }
                self.metrics.reload("failure");
                return;
            }
        };
        let (config, mut authenticator) = (loaded.config, loaded.authenticator);
        for setting in restart_only_changes(&self.running, &config) {
            tracing::warn!(
                setting,
                "changed in the file, but takes effect only after a restart"
            );
        }
        // Remote key sets are not fetched again: the running ones (or, for a provider
        // whose source changed, the running keys until its own load) serve on, so an
        // issuer that is down during the reload costs no working key.
        authenticator.take_over_keys(&self.authenticator.get());
        let authenticator = Arc::new(authenticator);
        authenticator.start().await;
        self.authenticator.set(authenticator);
        if let (Some(tls), true) = (&self.tls, config.tls.enabled) {
            let _ = tls.reload(Some(&config.tls));
        }
        self.log_level.set(&config.telemetry.log_level);
        self.metrics.reload("success");
        tracing::info!(file = %self.path.display(), "configuration reloaded");
        self.running = config;
    }
}

/// The settings that differ between `running` and `new` but need a restart.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check(
        "listen.address",
        running.listen.address != new.listen.address,
    );
    check("tls.enabled", running.tls.enabled != new.tls.enabled);
    check(
        "upstream",
        format!("{:?}", running.upstream) != format!("{:?}", new.upstream),
    );
    check(
        "outbound",
        format!("{:?}", running.outbound) != format!("{:?}", new.outbound),
    );
    check(
        "limits",
        format!("{:?}", running.limits) != format!("{:?}", new.limits),
    );
    check(
        "telemetry.log_format",
        running.telemetry.log_format != new.telemetry.log_format,
    );
    check(
        "telemetry.admin_address",
        running.telemetry.admin_address != new.telemetry.admin_address,
    );
    check(
        "telemetry.otlp_endpoint",
        running.telemetry.otlp_endpoint != new.telemetry.otlp_endpoint,
    );
    check(
        "telemetry.otlp_ca_file",
        running.telemetry.otlp_ca_file != new.telemetry.otlp_ca_file,
    );
    check(
        "telemetry.service_name",
        running.telemetry.service_name != new.telemetry.service_name,
    );
    check(
        "telemetry.sample_ratio",
        running.telemetry.sample_ratio != new.telemetry.sample_ratio,
    );
    changed
}
