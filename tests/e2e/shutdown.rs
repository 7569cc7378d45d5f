//! SIGTERM drains: no new connections, in-flight calls finish, exit 0.

use std::time::Duration;

use crate::support::pb::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_then_exits_zero() {
    let app = App::start().await;
    let mut gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = client(gatehouse.addr).await;
    let in_flight = tokio::spawn(async move { client.wait(WaitRequest { millis: 1500 }).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await
    );

    gatehouse.signal("TERM");
    gatehouse
        .wait_for_line(&["msg=\"draining:", "signal=SIGTERM"])
        .await;
    gatehouse.wait_for_line(&["stopped accepting"]).await;
    // Draining: a new connection is not served.
    let late = tokio::time::timeout(Duration::from_secs(5), async {
        let channel = channel(gatehouse.addr, Some(Identity::gateway())).await?;
        DemoClient::new(channel)
            .echo(EchoRequest::default())
            .await
            .map_err(Box::<dyn std::error::Error>::from)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await;
    assert!(
        !matches!(late, Ok(Ok(()))),
        "a call on a new connection was served while draining"
    );

    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finished OK");
    assert_eq!(reply.into_inner().message, "waited 1500ms");
    let status = tokio::task::spawn_blocking(move || {
        let status = gatehouse.wait_exit();
        (status, gatehouse.output())
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(
        status.1.contains("msg=\"drained; exiting\""),
        "{}",
        status.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_in_flight_exits_zero() {
    let app = App::start().await;
    let mut gatehouse = Gatehouse::start(&dev_config(app.addr));
    gatehouse.signal("INT");
    let status = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
