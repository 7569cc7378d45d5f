//! Configuration reload, on SIGHUP and whenever the file's content changes: the whole
//! file is read and checked again, and what can change while running is swapped in
//! (authentication, API keys, authorization rules and their field rules, TLS files and
//! client-auth settings, the log level). Key sets fetched from issuers carry over, so a
//! reload during an issuer outage keeps JWT calls working. An invalid file changes nothing: every problem
//! is logged and the failure counted. Settings that only take effect on restart are
//! named in the log when they differ.
//!
//! The file is polled like the certificates ([`crate::reload::poll`]): `stat` first,
//! then by content when that changed, its path resolved again on every poll: a
//! distroless image has no `kill` to send SIGHUP with, and a ConfigMap edit arrives as a
//! swap of the volume's `..data` symlink.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::Signal;
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reload::{Current, Stamps};
use crate::sha256::{Digest, sha256};
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
    /// The content the running configuration was read from (the file's SHA-256,
    /// taken before it was read), so a change made since is applied at once.
    pub loaded_from: Option<Digest>,
    /// The app's schema, whose field rules follow the authorization rules.
    pub schema: Option<Arc<crate::learn::AppSchema>>,
}

impl Reloader {
    /// Reloads on every SIGHUP (when its handler could be installed; else already
    /// logged) and on every change of the file's content, one reload at a time, until
    /// the process ends.
    pub fn spawn(mut self, mut hangups: Option<Signal>) {
        let file = Arc::new(ConfigFile {
            path: self.path.clone(),
            seen: Mutex::new(Seen {
                applied: self.loaded_from,
                pending: None,
            }),
            changed: Notify::new(),
            stamps: Stamps::default(),
        });
        crate::reload::poll(&file, crate::tls::RELOAD_POLL, ConfigFile::check);
        tokio::spawn(async move {
            loop {
                let hangup = async {
                    match &mut hangups {
                        Some(hangups) => hangups.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    received = hangup => {
                        if received.is_none() {
                            hangups = None;
                            continue;
                        }
                        // What SIGHUP applies, the poller need not apply again.
                        file.mark_seen();
                    }
                    () = file.changed.notified() => {
                        tracing::info!(file = %self.path.display(), "configuration file changed");
                    }
                }
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
        if let Some(schema) = &self.schema {
            schema.rules_changed(config.authorization.as_ref());
        }
        if let (Some(tls), true) = (&self.tls, config.tls.enabled) {
            let _ = tls.reload(Some(&config.tls));
        }
        self.log_level.set(&config.telemetry.log_level);
        self.metrics.reload("success");
        tracing::info!(file = %self.path.display(), "configuration reloaded");
        self.running = config;
    }
}

/// The configuration file, polled for a change of content.
struct ConfigFile {
    path: PathBuf,
    /// The content last applied (or refused), and a newer content seen at the last poll
    /// that has yet to hold still for one more; `None` when the file could not be read.
    seen: Mutex<Seen>,
    changed: Notify,
    /// What `stat` said about the file at the last poll: unchanged, it is not read.
    stamps: Stamps,
}

struct Seen {
    applied: Option<Digest>,
    pending: Option<Option<Digest>>,
}

impl ConfigFile {
    /// SHA-256 of the file's content now. Reading opens the path anew, so every
    /// symlink on the way (a ConfigMap's `gatehouse.yaml` → `..data/gatehouse.yaml`,
    /// `..data` → `..2024_…`) is resolved again: a swap is a change like an edit.
    fn fingerprint(path: &Path) -> Option<Digest> {
        std::fs::read(path).ok().map(|content| sha256(&content))
    }

    /// Notifies the reloader when the content differs from what was last applied and
    /// has held still for one poll, so a file being written in place is not read half
    /// way. Each change is reported once: a file that stays invalid is refused (and
    /// counted) once, not every second.
    fn check(&self) {
        let unchanged = self.stamps.unchanged([self.path.as_path()]);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // A change that waits for a second look is read again whatever `stat` says.
        if unchanged && seen.pending.is_none() {
            return;
        }
        let now = ConfigFile::fingerprint(&self.path);
        if seen.applied == now {
            seen.pending = None;
        } else if seen.pending == Some(now) {
            (seen.applied, seen.pending) = (now, None);
            self.changed.notify_one();
        } else {
            seen.pending = Some(now);
        }
    }

    /// Records the content a SIGHUP is about to apply, so the poller does not apply it
    /// again.
    fn mark_seen(&self) {
        let now = ConfigFile::fingerprint(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (seen.applied, seen.pending) = (now, None);
    }
}

/// The content of the configuration file now, for [`Reloader::loaded_from`].
pub fn fingerprint(path: &Path) -> Option<Digest> {
    ConfigFile::fingerprint(path)
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
    check("schema", running.schema != new.schema);
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_change_is_reported_once_after_it_held_still_for_one_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.yaml");
        std::fs::write(&path, "a").unwrap();
        let file = ConfigFile {
            seen: Mutex::new(Seen {
                applied: ConfigFile::fingerprint(&path),
                pending: None,
            }),
            path: path.clone(),
            changed: Notify::new(),
            stamps: Stamps::default(),
        };
        let reported = |file: &ConfigFile| file.changed.notified().now_or_never().is_some();
        file.check();
        assert!(!reported(&file), "nothing changed");

        std::fs::write(&path, "half").unwrap();
        file.check();
        assert!(
            !reported(&file),
            "a change is not read while it may be half written"
        );
        std::fs::write(&path, "b").unwrap();
        file.check();
        assert!(!reported(&file), "still moving");
        file.check();
        assert!(reported(&file), "held still for a poll");
        file.check();
        file.check();
        assert!(!reported(&file), "reported once");

        // What SIGHUP applies is not reported again.
        std::fs::write(&path, "c").unwrap();
        file.check();
        file.mark_seen();
        file.check();
        file.check();
        assert!(!reported(&file));

        // A file that vanishes is a change too (its reload fails, and says why).
        std::fs::remove_file(&path).unwrap();
        file.check();
        file.check();
        assert!(reported(&file));
    }
}
