//! No caller can stall another on the way to the app. Each attack is first shown to have
//! happened (the app's window filled, streams open and backed up, the stream limit
//! taken), then other callers are served within 3 s; an attacker that leaves has its
//! stream reset at the app within 1 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::support::pb::*;
use crate::support::*;

/// What other callers' calls get to finish, each, while an attack goes on.
const SERVED_WITHIN: Duration = Duration::from_secs(3);
/// What the app gets to see an abandoned stream reset.
const RESET_WITHIN: Duration = Duration::from_secs(1);
const KIB: u64 = 1024;

/// A raw HTTP/2 client over mTLS, which sends only what its window allows and reads
/// nothing unless told; its connection closes when the returned task is aborted.
async fn raw_client(
    addr: std::net::SocketAddr,
    identity: &Identity,
) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tls = tls_connect(addr, Some(identity)).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client.ready().await.unwrap(), task)
}

fn grpc_request(method: &str) -> http::Request<()> {
    http::Request::post(format!("https://localhost/gatehouse.demo.v1.Demo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Polls `condition` until it holds, at most [`PATIENCE`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A good caller on its own connection: a unary call and a 256 KiB client stream, each
/// answered within [`SERVED_WITHIN`].
async fn good_caller_is_served(gatehouse: &Gatehouse, when: &str) {
    let mut good = client(gatehouse.addr).await;
    let echo = async {
        let mut request = tonic::Request::new(EchoRequest {
            message: "served".into(),
            ..Default::default()
        });
        request.set_timeout(SERVED_WITHIN);
        good.clone().echo(request).await
    };
    let reply = tokio::time::timeout(SERVED_WITHIN, echo)
        .await
        .unwrap_or_else(|_| panic!("{when}: the unary call was not answered within 3 s"))
        .unwrap_or_else(|status| panic!("{when}: the unary call failed: {status:?}"));
    assert_eq!(reply.into_inner().message, "served");

    let messages = (0..4).map(|_| EchoRequest {
        payload: vec![b'g'; 64 * KIB as usize],
        ..Default::default()
    });
    let mut request = tonic::Request::new(futures_util::stream::iter(messages));
    request.set_timeout(SERVED_WITHIN);
    let collected = tokio::time::timeout(SERVED_WITHIN, good.collect(request))
        .await
        .unwrap_or_else(|_| panic!("{when}: the 256 KiB client stream took over 3 s"))
        .unwrap_or_else(|status| panic!("{when}: the 256 KiB client stream failed: {status:?}"));
    assert_eq!(collected.into_inner().payload_bytes, 256 * KIB);
}

/// Writes 64 KiB `Chat` messages, each asking for a 64 KiB reply, as fast as the window
/// allows and never reads a reply; counts the payload bytes sent into `sent`. When `stop`
/// is notified, resets the stream with CANCEL, as a client that cancels the call does.
fn chat_without_reading(
    mut body: h2::SendStream<Bytes>,
    sent: Arc<AtomicU64>,
    stop: Arc<Notify>,
) -> JoinHandle<()> {
    let message = grpc_message(&EchoRequest {
        payload: vec![b'a'; 64 * KIB as usize],
        reply_size: 64 * KIB as u32,
        ..Default::default()
    });
    tokio::spawn(async move {
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let mut rest = message.clone();
            while !rest.is_empty() {
                if body.capacity() == 0 {
                    body.reserve_capacity(rest.len());
                    tokio::select! {
                        capacity = std::future::poll_fn(|cx| body.poll_capacity(cx)) => match capacity {
                            Some(Ok(_)) => continue,
                            _ => return,
                        },
                        () = stopped.as_mut() => {
                            body.send_reset(h2::Reason::CANCEL);
                            return;
                        }
                    }
                }
                let piece = rest.split_to(body.capacity().min(rest.len()));
                if body.send_data(piece, false).is_err() {
                    return;
                }
            }
            sent.fetch_add(64 * KIB, Ordering::SeqCst);
        }
    })
}

/// Request bytes the attacker must have sent beyond what the app read, with its writes
/// stalled, before the attack counts as on. Gatehouse's receive window for the attacker's
/// stream is 256 KiB and its pump holds one 64 KiB message, so a writer stalled this far
/// ahead of the app's reads is held by the app's windows (hyper's: 1 MiB for the stream
/// and 1 MiB for its connection, which a second attacker stream on the same connection
/// shares), not by gatehouse.
const HELD_BEYOND_READ: u64 = 512 * KIB;
/// How long the attacker's writes must have made no progress to count as stalled.
const STALLED_FOR: Duration = Duration::from_millis(300);

/// Starts the attack of a bidi stream whose replies nobody reads, and waits until it has
/// filled the app's window: the app stopped reading, the attacker has sent
/// [`HELD_BEYOND_READ`] more than the app read and cannot send any more.
async fn fill_the_apps_window(gatehouse: &Gatehouse, app: &App) -> Attack {
    fill_the_apps_window_as(gatehouse, app, &Identity::gateway()).await
}

/// [`fill_the_apps_window`] by the caller with the client certificate `identity`.
async fn fill_the_apps_window_as(gatehouse: &Gatehouse, app: &App, identity: &Identity) -> Attack {
    // Earlier attacks' chats have stopped reading; this one's reads are the rest.
    let before = app.observed().chat_bytes();
    let (mut attacker, connection) = raw_client(gatehouse.addr, identity).await;
    let (response, body) = attacker.send_request(grpc_request("Chat"), false).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let writer = chat_without_reading(body, sent.clone(), stop.clone());
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the app answered the chat's headers")
        .unwrap();
    assert_eq!(response.status(), 200);
    // Held, never read: the replies back up into gatehouse and the app.
    let observed = app.service.observed.clone();
    let progress = std::cell::Cell::new(((0, 0), tokio::time::Instant::now()));
    eventually(
        "the app read the chat and then stopped with its window full",
        || {
            let read = observed.chat_bytes() - before;
            let now = (sent.load(Ordering::SeqCst), read);
            let (seen, since) = progress.get();
            if seen != now {
                progress.set((now, tokio::time::Instant::now()));
                return false;
            }
            read >= 64 * KIB && now.0 >= read + HELD_BEYOND_READ && since.elapsed() >= STALLED_FOR
        },
    )
    .await;
    Attack {
        _client: attacker,
        connection,
        writer,
        response: Some(response.into_body()),
        sent,
        stop,
    }
}

/// The attacker's connection, stream and counters.
struct Attack {
    _client: h2::client::SendRequest<Bytes>,
    connection: JoinHandle<()>,
    writer: JoinHandle<()>,
    response: Option<h2::RecvStream>,
    sent: Arc<AtomicU64>,
    stop: Arc<Notify>,
}

impl Attack {
    /// The end of the attack's call, if it has ended: reads the replies held so far and
    /// returns the trailers when they follow them within a second.
    async fn ended(&mut self) -> Option<http::HeaderMap> {
        let response = self.response.as_mut()?;
        let read = async {
            while let Some(chunk) = response.data().await {
                let chunk = chunk.ok()?;
                let _ = response.flow_control().release_capacity(chunk.len());
            }
            response.trailers().await.ok()?
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.writer.abort();
        self.connection.abort();
    }
}

/// The reason in the `google.rpc.ErrorInfo` of a call's trailers.
fn reason_in(trailers: &http::HeaderMap) -> String {
    error_info_in(trailers).reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_stream_whose_app_stops_reading_stalls_no_one_else_and_is_reset_when_its_caller_leaves()
 {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    good_caller_is_served(&gatehouse, "before the attack").await;

    let attack = fill_the_apps_window(&gatehouse, &app).await;
    good_caller_is_served(&gatehouse, "during the attack").await;
    assert!(
        attack.sent.load(Ordering::SeqCst) >= app.observed().chat_bytes() + HELD_BEYOND_READ,
        "the attack was still on while others were served"
    );

    // The attacker disconnects: its connection to gatehouse closes.
    let cancelled = app.observed().cancelled();
    attack.connection.abort();
    assert!(
        app.observed()
            .wait_until(RESET_WITHIN, |seen| seen.cancelled() > cancelled)
            .await,
        "the app did not see the abandoned chat reset within 1 s"
    );
    drop(attack);
    good_caller_is_served(&gatehouse, "after the attacker left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_stalled_bidi_streams_than_connections_to_the_app_stall_no_one_else() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    // Five attackers, one more than limits.upstream_connections (4), each with its own
    // identity on its own connection to gatehouse and each filling the app's window for
    // its stream.
    let mut attacks = Vec::new();
    for attacker in 0..5 {
        let identity = svid(&format!(
            "spiffe://dev.gatehouse/ns/default/sa/attacker-{attacker}"
        ));
        attacks.push(fill_the_apps_window_as(&gatehouse, &app, &identity).await);
    }
    good_caller_is_served(&gatehouse, "during five attacks").await;
    let read = app.observed().chat_bytes();
    let sent: u64 = attacks.iter().map(|a| a.sent.load(Ordering::SeqCst)).sum();
    assert!(
        sent >= read + 5 * HELD_BEYOND_READ,
        "the attacks were still on while others were served"
    );
    let cancelled = app.observed().cancelled();
    drop(attacks);
    assert!(
        app.observed()
            .wait_until(RESET_WITHIN, |seen| seen.cancelled() >= cancelled + 5)
            .await,
        "the app did not see all five chats reset within 1 s"
    );
    good_caller_is_served(&gatehouse, "after the attackers left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_stalling_connection_after_connection_holds_two_and_stalls_no_one() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    // One identity, sixteen stalled streams one after another, each on a connection of
    // its own (and each, in turn, on a connection to the app of its own): as many as the
    // pool opens while its connections are stalled, and far below the identity's
    // 256-call limit.
    let mut attacks = Vec::new();
    for _ in 0..16 {
        attacks.push(fill_the_apps_window(&gatehouse, &app).await);
    }
    good_caller_is_served(&gatehouse, "after sixteen stalls by one identity").await;

    // Two are held; every later one was ended with a status saying why.
    let mut held = 0;
    for attack in &mut attacks {
        match attack.ended().await {
            None => held += 1,
            Some(trailers) => {
                assert_eq!(trailers["grpc-status"], "8", "{trailers:?}");
                assert_eq!(reason_in(&trailers), "STALLED_CALLS_LIMIT");
            }
        }
    }
    assert_eq!(held, 2, "stalled streams the identity kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_of_many_identities_give_way_to_calls_that_wait() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_admin(app.addr));
    // Sixteen identities stall a stream each: every connection the pool may open (four
    // times limits.upstream_connections) has a stream the app stopped reading.
    let mut attacks = Vec::new();
    for attacker in 0..16 {
        let identity = svid(&format!(
            "spiffe://dev.gatehouse/ns/default/sa/attacker-{attacker}"
        ));
        attacks.push(fill_the_apps_window_as(&gatehouse, &app, &identity).await);
    }
    // No call is put beside a stalled stream: the good caller's calls wait, and the
    // streams stalled longest give way.
    good_caller_is_served(&gatehouse, "with every connection to the app stalled").await;
    let mut given_way = 0;
    for attack in &mut attacks {
        if let Some(trailers) = attack.ended().await {
            assert_eq!(trailers["grpc-status"], "8", "{trailers:?}");
            assert_eq!(reason_in(&trailers), "REQUEST_NOT_READ");
            given_way += 1;
        }
    }
    assert!(given_way > 0, "no stalled stream gave way");
    let metrics = scrape_metrics(&gatehouse).await;
    assert!(
        metrics.contains(r#"gatehouse_upstream_errors_total{kind="request_not_read"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_bidi_stream_cancelled_by_its_caller_is_reset_at_the_app_within_a_second() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let attack = fill_the_apps_window(&gatehouse, &app).await;
    let cancelled = app.observed().cancelled();
    // RST_STREAM(CANCEL) from the caller, its connection kept open.
    attack.stop.notify_one();
    assert!(
        app.observed()
            .wait_until(RESET_WITHIN, |seen| seen.cancelled() > cancelled)
            .await,
        "the app did not see the cancelled chat reset within 1 s"
    );
    good_caller_is_served(&gatehouse, "after the cancel").await;
    assert!(
        !attack.connection.is_finished(),
        "the caller's connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_nobody_reads_stall_no_one_else_and_the_app_stays_ready() {
    let app = App::start().await;
    let config = config_with_admin(app.addr);
    let gatehouse = Gatehouse::start(&config);
    let (mut attacker, connection) = raw_client(gatehouse.addr, &Identity::gateway()).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        attacker = attacker.ready().await.unwrap();
        let (response, mut body) = attacker
            .send_request(grpc_request("Countdown"), false)
            .unwrap();
        body.send_data(
            grpc_message(&CountdownRequest {
                count: 100_000,
                payload_size: 64 * KIB as u32,
                ..Default::default()
            }),
            true,
        )
        .unwrap();
        held.push((response, body));
    }
    // The attacker's whole connection window is 64 KiB; the app has handed out far more
    // for its 8 streams, none of which ended: they are open and backed up.
    let observed = app.service.observed.clone();
    assert!(
        observed
            .wait_until(PATIENCE, |seen| seen.countdowns_started() == 8
                && seen.countdown_bytes() >= 8 * 64 * KIB)
            .await,
        "the 8 streams never backed up: started {}, {} bytes",
        observed.countdowns_started(),
        observed.countdown_bytes()
    );
    assert_eq!(observed.finished(), 0);
    let finished = observed.finished();

    good_caller_is_served(&gatehouse, "during the attack").await;
    let mut good = client(gatehouse.addr).await;
    let mut request = tonic::Request::new(CountdownRequest {
        count: 32,
        payload_size: 64 * KIB as u32,
        ..Default::default()
    });
    request.set_timeout(SERVED_WITHIN);
    let read_all = async {
        let mut stream = good.countdown(request).await?.into_inner();
        let mut received = 0;
        while stream.message().await?.is_some() {
            received += 1;
        }
        Ok::<_, tonic::Status>(received)
    };
    let received = tokio::time::timeout(SERVED_WITHIN, read_all)
        .await
        .expect("a good server stream of 2 MiB took over 3 s")
        .expect("a good server stream failed");
    assert_eq!(received, 32);
    let (status, body) = get(admin(&gatehouse), "/readyz").await;
    assert_eq!(status, 200, "/readyz failed during the attack: {body}");
    assert_eq!(
        observed.finished(),
        finished + 2,
        "only the good client stream and server stream finished; the attack was still on"
    );
    drop(held);
    connection.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_every_stream_limit_get_resource_exhausted_in_bounded_time() {
    let serving = support_serving(5);
    let app = App::start_serving("127.0.0.1:0".parse().unwrap(), Default::default(), serving).await;
    let config = DevConfig::new(app.addr)
        .limit("upstream_connections", "2")
        .limit("upstream_queue", "3")
        .limit("upstream_queue_timeout", "300ms")
        .admin()
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let holder = client(gatehouse.addr).await;
    // 2 connections × the app's limit of 5 streams.
    let holders: Vec<_> = (0..10)
        .map(|_| {
            let mut holder = holder.clone();
            tokio::spawn(async move { holder.wait(WaitRequest { millis: 60_000 }).await })
        })
        .collect();
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() == 10)
            .await,
        "the holders never took every stream: {}\n{}",
        app.observed().waits_started(),
        gatehouse.output()
    );
    assert_eq!(app.observed().connections(), 2);

    // Further calls: 3 may wait, for 300 ms; all are refused by gatehouse, none hangs.
    let others = client(gatehouse.addr).await;
    let further: Vec<_> = (0..6)
        .map(|_| {
            let mut others = others.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(EchoRequest::default());
                request.set_timeout(Duration::from_secs(60));
                others.echo(request).await
            })
        })
        .collect();
    let mut reasons = Vec::new();
    for call in further {
        let status = tokio::time::timeout(PATIENCE, call)
            .await
            .expect("a call beyond the limit waited without bound")
            .unwrap()
            .expect_err("a call beyond every stream limit was served");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("no free stream"), "{status:?}");
        reasons.push(reason(&status));
    }
    // Those that found the queue full, and those that waited in it in vain.
    reasons.sort();
    reasons.dedup();
    assert_eq!(reasons, ["APP_QUEUE_FULL", "APP_QUEUE_TIMEOUT"]);
    let metrics = scrape_metrics(&gatehouse).await;
    for kind in ["queue_full", "queue_timeout"] {
        assert!(
            metrics.contains(&format!(
                "gatehouse_upstream_errors_total{{kind=\"{kind}\"}}"
            )),
            "{kind} not counted:\n{metrics}"
        );
    }
    assert_eq!(app.observed().calls(), 0, "no refused call reached the app");

    // The holders finish: calls flow again.
    app.observed().release_waits();
    for call in holders {
        call.await.unwrap().expect("a holder's call failed");
    }
    let reply = others.clone().echo(EchoRequest::default()).await;
    assert!(reply.is_ok(), "{reply:?}");
}

fn support_serving(max_concurrent_streams: u32) -> crate::support::demo::Serving {
    crate::support::demo::Serving {
        max_concurrent_streams: Some(max_concurrent_streams),
        ..Default::default()
    }
}
