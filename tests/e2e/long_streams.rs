//! Long, quiet streams (watches, subscriptions) stay open through gatehouse for as long as
//! the caller keeps them, in front of two real apps: the demo app (hyper/tonic) and a
//! grpc-go server on default settings, whose keepalive policy closes the connection with
//! GOAWAY `too_many_pings` when it is pinged more than once per 5 minutes.
//!
//! These take six minutes by design, so both streams run concurrently in one test and the
//! rest of the suite runs beside it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::pb::*;
use crate::support::*;

/// How long each stream stays quiet: past grpc-go's 5-minute minimum ping interval, and
/// three times the 2 minutes after which its ping strikes closed the connection.
const QUIET: Duration = Duration::from_secs(6 * 60);

async fn health_client(gatehouse: SocketAddr) -> HealthClient<Channel> {
    let channel = channel(gatehouse, Some(Identity::gateway()))
        .await
        .expect("mTLS connection to gatehouse");
    HealthClient::new(channel)
}

fn status_of(reply: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(reply.status).expect("a known serving status")
}

/// A quiet `grpc.health.v1.Health/Watch` through gatehouse to grpc-go: no message, no
/// status and no error for six minutes, then the stream still carries the next change and
/// the same gatehouse still serves new calls.
async fn quiet_watch_to_grpc_go() {
    let mut app = GrpcGoApp::start();
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut health = health_client(gatehouse.addr).await;

    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .expect("Health/Watch through gatehouse to grpc-go")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("the watch's first message")
        .expect("the watch is open");
    assert_eq!(status_of(&first), ServingStatus::Serving);

    let opened = Instant::now();
    match tokio::time::timeout(QUIET, watch.message()).await {
        Err(_quiet) => {}
        Ok(ended) => panic!(
            "the quiet Health/Watch to grpc-go ended after {:.1} s with {ended:?}\n\
             grpc-go-app:\n{}\ngatehouse:\n{}",
            opened.elapsed().as_secs_f64(),
            app.output(),
            gatehouse.output()
        ),
    }

    app.set_status("NOT_SERVING");
    let change = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the change reaches the watch")
        .expect("the watch is still open after six quiet minutes")
        .expect("the watch has not ended");
    assert_eq!(status_of(&change), ServingStatus::NotServing);

    let check = health
        .check(HealthCheckRequest::default())
        .await
        .expect("a new call through the same gatehouse");
    assert_eq!(status_of(check.get_ref()), ServingStatus::NotServing);
}

/// A quiet server stream to the demo app: `Countdown` waits six minutes before its only
/// reply, which must still arrive, followed by the stream's OK end.
async fn quiet_stream_to_demo_app() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut demo = client(gatehouse.addr).await;

    let request = CountdownRequest {
        count: 1,
        interval_millis: QUIET.as_millis() as u32,
        ..Default::default()
    };
    let mut stream = demo
        .countdown(request)
        .await
        .expect("Countdown through gatehouse to the demo app")
        .into_inner();
    let opened = Instant::now();
    let reply = tokio::time::timeout(QUIET + PATIENCE, stream.message())
        .await
        .expect("the demo app answers once its interval is over");
    let reply = match reply {
        Ok(Some(reply)) => reply,
        ended => panic!(
            "the quiet Countdown to the demo app ended after {:.1} s with {ended:?}; gatehouse:\n{}",
            opened.elapsed().as_secs_f64(),
            gatehouse.output()
        ),
    };
    assert_eq!(reply.message, "1");
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends after its last reply");
    assert!(matches!(end, Ok(None)), "{end:?}");

    let echo = demo
        .echo(EchoRequest {
            message: "after the quiet stream".into(),
            ..Default::default()
        })
        .await
        .expect("a new call through the same gatehouse");
    assert_eq!(echo.into_inner().message, "after the quiet stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_streams_stay_open_six_minutes_to_grpc_go_and_the_demo_app() {
    tokio::join!(quiet_watch_to_grpc_go(), quiet_stream_to_demo_app());
}
