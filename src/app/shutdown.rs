//! Stopping, as one tree of cancellation: the process (admin port, exporters) above the
//! calls in flight, above accepting new connections. Each step of the drain cancels one
//! level, and cancelling a level stops everything below it, so no part can be left
//! running by a stop signal that forgot it; dropping the tree (a start-up failure)
//! cancels all of it.
//!
//! The drain: on SIGTERM/SIGINT `/readyz` turns unready, new connections are still
//! taken for `drain_delay` (endpoints are slow to notice), then every listener stops
//! accepting and sends GOAWAY, calls in flight (inbound and the app's own outbound ones)
//! get `drain_timeout` to finish, and the rest end with UNAVAILABLE. A second signal at
//! any point skips what is left of the waiting.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bind::StartError;
use super::signals::ShutdownSignals;
use crate::admin::Readiness;
use crate::serve::Drain;
use crate::telemetry::Tracing;

/// How long the UNAVAILABLE answers of cut-off calls get to reach their callers.
const LAST_ANSWERS: Duration = Duration::from_secs(1);
/// How long queued spans get to reach the collector on the way out.
const SPAN_FLUSH: Duration = Duration::from_secs(2);

/// The three levels of the tree; each a child of the one before.
pub(super) struct Shutdown {
    /// The process: the admin port. Cancelled last, or when this is dropped.
    process: CancellationToken,
    /// Calls in flight, inbound and outbound: cancelled ones end with UNAVAILABLE.
    calls: CancellationToken,
    /// Accepting new connections, on every listener at once.
    accepting: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let process = CancellationToken::new();
        let calls = process.child_token();
        let accepting = calls.child_token();
        Shutdown {
            process,
            calls,
            accepting,
        }
    }

    /// Cancelled when the process stops: the admin port serves until then.
    pub fn process(&self) -> CancellationToken {
        self.process.child_token()
    }

    /// Cancelled when calls still open are cut off; each chain answers them UNAVAILABLE.
    pub fn calls(&self) -> CancellationToken {
        self.calls.child_token()
    }

    /// Cancelled when the listeners stop accepting and send GOAWAY.
    pub fn accepting(&self) -> CancellationToken {
        self.accepting.child_token()
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.process.cancel();
    }
}

/// What is serving once gatehouse has started, for the drain to stop.
pub(super) struct Serving {
    pub inbound: JoinHandle<Drain>,
    pub outbound: Option<JoinHandle<Drain>>,
    pub readiness: Arc<Readiness>,
    pub tracing: Arc<Tracing>,
    pub drain_delay: Duration,
    pub drain_timeout: Duration,
}

/// Waits for a stop signal, then drains (see the module docs) and stops everything.
pub(super) async fn drain(
    serving: Serving,
    shutdown: Shutdown,
    signals: &mut ShutdownSignals,
) -> Result<(), StartError> {
    let signal = signals.next().await;
    serving.readiness.draining.store(true, Ordering::SeqCst);
    let drain_delay = serving.drain_delay;
    tracing::info!(
        signal,
        ?drain_delay,
        "draining: /readyz is unready; new connections are refused after the delay"
    );
    let second_signal = tokio::select! {
        () = tokio::time::sleep(drain_delay) => None,
        signal = signals.next() => Some(signal),
    };
    shutdown.accepting.cancel();
    let inbound = serving.inbound.await.map_err(StartError::AcceptLoop)?;
    let outbound = match serving.outbound {
        Some(task) => Some(task.await.map_err(StartError::AcceptLoop)?),
        None => None,
    };
    tracing::info!("stopped accepting; GOAWAY sent, waiting for calls in flight");

    let second_signal = match second_signal {
        Some(signal) => Some(signal),
        None => calls_finished(&inbound, outbound.as_ref(), serving.drain_timeout, signals).await,
    };
    if let Some(signal) = second_signal {
        tracing::warn!(signal, "second signal; closing the calls still open");
    }
    shutdown.calls.cancel();
    let _ = tokio::time::timeout(LAST_ANSWERS, inbound.finished()).await;
    shutdown.process.cancel();
    serving.tracing.flush(SPAN_FLUSH).await;
    Ok(())
}

/// Waits up to `timeout` for every call in flight, the app's own outbound calls
/// alongside the calls into it; the second signal, if one comes first.
async fn calls_finished(
    inbound: &Drain,
    outbound: Option<&Drain>,
    timeout: Duration,
    signals: &mut ShutdownSignals,
) -> Option<&'static str> {
    let everything = async {
        inbound.finished().await;
        if let Some(outbound) = outbound {
            outbound.finished().await;
        }
    };
    tokio::select! {
        finished = tokio::time::timeout(timeout, everything) => {
            match finished {
                Ok(()) => tracing::info!("drained; exiting"),
                Err(_) => tracing::warn!(
                    drain_timeout = ?timeout,
                    "drain timeout reached; closing the calls still open"
                ),
            }
            None
        }
        signal = signals.next() => Some(signal),
    }
}
