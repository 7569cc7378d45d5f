//! The demo app, served in-process: what gatehouse forwards to, and what it observed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{PATIENCE, demo};

/// The demo app, served in this test's runtime on a loopback port.
pub struct App {
    pub addr: SocketAddr,
    pub service: demo::DemoService,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl App {
    pub async fn start() -> App {
        App::start_on("127.0.0.1:0".parse().unwrap(), demo::DemoService::default()).await
    }

    pub async fn start_on(address: SocketAddr, service: demo::DemoService) -> App {
        App::start_serving(address, service, demo::Serving::default()).await
    }

    pub async fn start_serving(
        address: SocketAddr,
        service: demo::DemoService,
        serving: demo::Serving,
    ) -> App {
        let (listener, addr) = demo::bind(address).await.expect("bind the demo app");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(demo::serve_with(
            listener,
            service.clone(),
            serving,
            async {
                let _ = stopped.await;
            },
        ));
        App {
            addr,
            service,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn observed(&self) -> &demo::Observed {
        &self.service.observed
    }

    /// Waits (bounded) until the app's `Countdown` handlers have handed no new bytes to
    /// their response streams for a moment: flow control holds them, and whatever a
    /// proxy between the app and a reader that stopped reading would buffer, it has
    /// buffered. Returns the bytes handed over so far.
    pub async fn until_countdowns_stall(&self) -> u64 {
        const QUIET: Duration = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let produced = self.observed().countdown_bytes();
            let moved = self
                .observed()
                .wait_until(QUIET, |seen| seen.countdown_bytes() != produced)
                .await;
            if !moved {
                return produced;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the app never stopped producing: {produced} bytes so far"
            );
        }
    }

    /// Stops the app the way a crash does: the listener closes and every open connection
    /// is dropped mid-stream.
    pub async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("demo app task");
        }
    }
}
