//! Waiting for the certificate, key and CA files that a certificate sidecar
//! (spiffe-helper) or a CSI driver writes after the container has started. Until every file exists and loads,
//! no listener is bound, so callers are refused at connect rather than in a handshake
//! gatehouse cannot complete, and `/readyz` names each file and what is wrong with it.
//! The files are polled like every other watched file ([`crate::reload::poll`]).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::load::{TlsMaterial, tls_material};
use super::signals::ShutdownSignals;
use crate::admin::Readiness;
use crate::config::{Config, Problem};

/// Waits until the TLS files `config` names exist and load, and returns what they hold;
/// `None` when SIGTERM or SIGINT came first. `waiting_for` is what was missing at start;
/// `admin` where `/readyz` tells it meanwhile.
pub(super) async fn tls_material_when_ready(
    config: &Config,
    waiting_for: Vec<Problem>,
    readiness: &Arc<Readiness>,
    admin: Option<std::net::SocketAddr>,
    signals: &mut ShutdownSignals,
) -> Option<TlsMaterial> {
    let waiter = Arc::new(Waiter {
        config: config.clone(),
        readiness: readiness.clone(),
        found: Mutex::new(None),
        ready: Notify::new(),
        reported: Mutex::new(Vec::new()),
    });
    let files = waiting_for.len();
    waiter.report(waiting_for);
    tracing::warn!(
        admin = admin.map(|a| a.to_string()),
        files,
        "waiting for TLS files before listening"
    );
    crate::reload::poll(&waiter, crate::tls::RELOAD_POLL, Waiter::check);
    tokio::select! {
        () = waiter.ready.notified() => {}
        signal = signals.next() => {
            tracing::info!(signal, "stopped while waiting for TLS files");
            return None;
        }
    }
    let material = waiter
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    readiness.set_waiting_for(Vec::new());
    tracing::info!("TLS files are in place");
    material
}

/// The owner of the polling: dropped when the wait ends, which ends the polling.
struct Waiter {
    config: Config,
    readiness: Arc<Readiness>,
    found: Mutex<Option<TlsMaterial>>,
    ready: Notify,
    /// What was last logged and shown on `/readyz`, so a file that stays missing is
    /// logged once, not every poll.
    reported: Mutex<Vec<String>>,
}

impl Waiter {
    fn check(&self) {
        if self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let missing = crate::tls::missing_files(&self.config);
        // Files that exist may still be half written (a certificate before its key):
        // what does not load yet is waited for too, and shown.
        let loaded = if missing.is_empty() {
            tls_material(&self.config)
        } else {
            Err(missing)
        };
        match loaded {
            Ok(material) => {
                *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(material);
                self.ready.notify_one();
            }
            Err(problems) => self.report(problems),
        }
    }

    fn report(&self, problems: Vec<Problem>) {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if *reported == lines {
            return;
        }
        for problem in &lines {
            tracing::warn!(
                %problem,
                "waiting for TLS files: not listening until they are in place"
            );
        }
        self.readiness.set_waiting_for(lines.clone());
        *reported = lines;
    }
}
