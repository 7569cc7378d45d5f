//! The process's signals, installed once at start-up: SIGTERM and SIGINT start (and a
//! second one ends) the drain, SIGHUP reloads the configuration. Installing them all
//! before anything is served means none is missed and no signal keeps its default of
//! ending the process.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Every signal gatehouse handles, handed out to the part that acts on it.
pub(super) struct Signals {
    pub shutdown: ShutdownSignals,
    /// SIGHUP; `None` when its handler could not be installed (logged: reload is off).
    pub hangups: Option<Signal>,
}

impl Signals {
    pub fn install() -> Signals {
        let shutdown = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::error!("cannot install signal handlers; stop gatehouse with SIGKILL");
                None
            }
        };
        let hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(_) => {
                tracing::error!("cannot install the SIGHUP handler; configuration reload is off");
                None
            }
        };
        Signals {
            shutdown: ShutdownSignals { streams: shutdown },
            hangups,
        }
    }
}

/// SIGTERM and SIGINT, listened to from start-up on, so a second signal sent while
/// draining is never missed.
pub(super) struct ShutdownSignals {
    streams: Option<(Signal, Signal)>,
}

impl ShutdownSignals {
    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        let Some((term, int)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}
