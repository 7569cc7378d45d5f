//! Global limits: one budget per tenant for every replica, kept in a real Redis
//! (standalone, TLS, Cluster). Two gatehouses share a key prefix as two replicas of a
//! service do; a tenant driven through both at several times its rate gets the rule's
//! budget plus at most the documented overshoot (replicas × lease), while another tenant
//! is served. The store is then stopped under load and started again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::support::pb::*;
use crate::support::*;

/// The tenants' API keys; each key's `tenant_id` is its name.
const TENANTS: [&str; 6] = ["acme", "globex", "initech", "umbrella", "hooli", "stark"];

fn key_of(tenant: &str) -> String {
    format!("{tenant}-key-0123456789")
}

/// The rule every test drives: 20 calls a second per tenant, a burst of 20, so the
/// default lease is 2 and two replicas may overshoot by 4.
const RATE: f64 = 20.0;
const BURST: f64 = 20.0;
const LEASE: f64 = 2.0;

/// gatehouse in h2c in front of `app`, tenants by API key, `Inspect` public, and one
/// global rule per tenant in the store `redis` (a YAML scalar or list) under `prefix`.
fn config(app: SocketAddr, redis: &str, prefix: &str, timeout: &str, extra: &str) -> String {
    let keys: String = TENANTS
        .iter()
        .map(|tenant| {
            format!(
                "      - {{ name: {tenant}-client, sha256: \"{}\", tenant_id: {tenant} }}\n",
                hash(&key_of(tenant))
            )
        })
        .collect();
    format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls: {{ enabled: false }}
upstream: {{ address: {app} }}
telemetry: {{ log_level: 'info,gatehouse=debug', admin_address: 127.0.0.1:0 }}
auth:
  public_methods: [/grpc.health.v1.Health/Check, /gatehouse.demo.v1.Demo/Inspect]
  api_keys:
    keys:
{keys}limits:
  global:
    redis: {redis}
    key_prefix: \"{prefix}\"
    timeout: {timeout}
{extra}    rules:
      - {{ per: tenant, calls_per_second: {RATE}, burst: {BURST} }}
"
    )
}

/// A key prefix no other test shares.
fn prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "gatehouse-test:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn h2c(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn echo(channel: &Channel, tenant: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "budget".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-api-key", key_of(tenant).parse().unwrap());
    DemoClient::new(channel.clone())
        .echo(request)
        .await
        .map(|_| ())
}

/// What a tenant's calls came back with during one drive.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    refused: Vec<tonic::Status>,
    other: Vec<tonic::Status>,
    slowest: Duration,
}

/// Calls `tenant` through `gatehouse` every `every` for `how_long`, each call on its own
/// task so a slow one never slows the pace; the tally once every call has answered.
async fn drive(gatehouse: SocketAddr, tenant: &str, every: Duration, how_long: Duration) -> Tally {
    let channel = h2c(gatehouse).await;
    let tenant: Arc<str> = tenant.into();
    let mut calls = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(every);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + how_long;
    while tokio::time::Instant::now() < end {
        pace.tick().await;
        let (channel, tenant) = (channel.clone(), tenant.clone());
        calls.spawn(async move {
            let started = Instant::now();
            let answer = echo(&channel, &tenant).await;
            (answer, started.elapsed())
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = calls.join_next().await {
        let (answer, took) = done.unwrap();
        tally.slowest = tally.slowest.max(took);
        match answer {
            Ok(()) => tally.admitted += 1,
            Err(status) if status.code() == Code::ResourceExhausted => tally.refused.push(status),
            Err(status) => tally.other.push(status),
        }
    }
    tally
}

/// Drives `tenant` through every gatehouse at once, 100 calls a second each (five times
/// the rule's rate per replica); the tallies and the seconds the drive took.
async fn drive_all(
    gatehouses: &[&Gatehouse],
    tenant: &str,
    how_long: Duration,
) -> (Vec<Tally>, f64) {
    let started = Instant::now();
    let drives = gatehouses.iter().map(|gatehouse| {
        let addr = gatehouse.addr;
        let tenant = tenant.to_owned();
        tokio::spawn(async move { drive(addr, &tenant, Duration::from_millis(10), how_long).await })
    });
    let tallies = futures_util::future::join_all(drives).await;
    let tallies: Vec<Tally> = tallies.into_iter().map(Result::unwrap).collect();
    (tallies, started.elapsed().as_secs_f64())
}

/// Two replicas of one service, both seeing the other in the store.
async fn replicas(config: &str) -> (Gatehouse, Gatehouse) {
    let (one, two) = (Gatehouse::start(config), Gatehouse::start(config));
    for gatehouse in [&one, &two] {
        until_metric(gatehouse, "gatehouse_global_limit_replicas", 2.0).await;
    }
    (one, two)
}

fn assert_global_refusal(status: &tonic::Status, local: bool) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, "GLOBAL_RATE_LIMITED");
    assert_eq!(info.metadata["rule"], "0");
    assert_eq!(info.metadata["per"], "tenant");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Echo");
    let delay = retry_delay(status).expect("a RetryInfo in the details");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "retry in {delay:?}"
    );
    assert_eq!(
        status.message().contains("this replica's share"),
        local,
        "{}",
        status.message()
    );
}

/// A replica on its local share while the store is away: no other failure, at most the
/// share and at least half of it admitted, no answer held near the store's timeout, and
/// the refusals say the limit was local.
fn assert_within_the_local_share(tally: &Tally, share: f64) {
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert!(
        tally.admitted as f64 <= share,
        "{} admitted, share {share:.1}",
        tally.admitted
    );
    assert!(
        tally.admitted as f64 >= 0.5 * share,
        "{} admitted, share {share:.1}",
        tally.admitted
    );
    assert!(
        tally.slowest < Duration::from_secs(1),
        "answers wait at most the timeout: {:?}",
        tally.slowest
    );
    assert_global_refusal(tally.refused.last().expect("refusals"), true);
}

/// The budget of the rule over `seconds`, and what the service may admit at most: the
/// budget plus replicas × lease.
fn budget_of(seconds: f64, replicas: f64) -> (f64, f64) {
    let budget = BURST + RATE * seconds;
    (budget, budget + replicas * LEASE)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_driven_through_two_replicas_gets_one_budget_and_another_is_served() {
    let redis = Redis::start();
    let app = App::start().await;
    let config = config(app.addr, &redis.server.url(), &prefix(), "250ms", "");
    let (one, two) = replicas(&config).await;

    let other = tokio::spawn({
        let addr = one.addr;
        async move {
            drive(
                addr,
                "globex",
                Duration::from_millis(200),
                Duration::from_secs(3),
            )
            .await
        }
    });
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(3)).await;
    let other = other.await.unwrap();

    let admitted: u64 = tallies.iter().map(|t| t.admitted).sum();
    let offered: usize = tallies
        .iter()
        .map(|t| t.admitted as usize + t.refused.len())
        .sum();
    let (budget, most) = budget_of(seconds, 2.0);
    eprintln!(
        "global limit, 2 replicas: {admitted} of {offered} calls admitted in {seconds:.2}s; \
         budget {budget:.1}, at most {most:.1} with the overshoot; per-pod limits would admit {:.1}",
        2.0 * budget
    );
    for tally in &tallies {
        assert!(tally.other.is_empty(), "{:?}", tally.other);
    }
    assert!(
        offered as f64 > 3.0 * budget,
        "the tenant was driven at several times its rate"
    );
    assert!(
        admitted as f64 <= most,
        "{admitted} admitted, at most {most:.1}"
    );
    assert!(
        admitted as f64 >= 0.7 * budget,
        "{admitted} admitted of a budget of {budget:.1}"
    );
    assert!(
        (admitted as f64) < 1.5 * budget,
        "well below two per-pod budgets ({:.1})",
        2.0 * budget
    );
    assert!(
        tallies.iter().all(|t| t.admitted > 0),
        "both replicas admitted some: {:?}",
        tallies.iter().map(|t| t.admitted).collect::<Vec<_>>()
    );
    let refusal = tallies
        .iter()
        .flat_map(|t| &t.refused)
        .next()
        .expect("refusals");
    assert_global_refusal(refusal, false);
    assert!(
        other.admitted >= 10 && other.refused.is_empty() && other.other.is_empty(),
        "the other tenant, well within its own budget, is served throughout: {other:?}"
    );
    // Leases: far fewer round trips than calls.
    let scrape = scrape_metrics(&one).await;
    let leases = sample(&scrape, "gatehouse_global_limit_leases_total{rule=\"0\"}").unwrap();
    let checked: f64 = ["admitted", "refused"]
        .iter()
        .filter_map(|result| {
            sample(
                &scrape,
                &format!("gatehouse_global_limit_total{{rule=\"0\",result=\"{result}\"}}"),
            )
        })
        .sum();
    eprintln!("replica one: {leases} leases for {checked} calls checked");
    assert!(
        leases < checked / 2.0,
        "{leases} leases for {checked} calls"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_methods_and_health_checks_never_touch_the_store() {
    let redis = Redis::start();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(
        app.addr,
        &redis.server.url(),
        &prefix(),
        "250ms",
        "",
    ));
    until_metric(&gatehouse, "gatehouse_global_limit_replicas", 1.0).await;
    let channel = h2c(gatehouse.addr).await;
    // Leases run GET in the store; announcements never do.
    let leases_before = redis.server.command_calls("get");
    for _ in 0..50 {
        DemoClient::new(channel.clone())
            .inspect(InspectRequest::default())
            .await
            .unwrap();
        let mut check = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
        check
            .metadata_mut()
            .insert("x-api-key", key_of("acme").parse().unwrap());
        tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(check)
            .await
            .unwrap();
    }
    assert_eq!(redis.server.command_calls("get"), leases_before);
    // The counter does move: a call a rule counts leases from the store.
    echo(&channel, "acme").await.unwrap();
    assert!(redis.server.command_calls("get") > leases_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_leaves_each_replica_its_share_and_global_limits_resume() {
    let mut redis = Redis::start();
    let app = App::start().await;
    // A stopped store refuses connections at once, so no call waits on it whatever the
    // timeout; a long one keeps a lease answered late on this loaded machine, after the
    // store is back, from being decided by the fallback (the hung store has its own test).
    let config = config(app.addr, &redis.server.url(), &prefix(), "250ms", "");
    let (one, two) = replicas(&config).await;

    redis.server.stop();
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(3)).await;
    // Each replica enforces half the rule: a burst of 10 and 10 a second, plus what it
    // leased before the outage (nothing: acme made no call before).
    let share = BURST / 2.0 + RATE / 2.0 * seconds + LEASE;
    for (tally, gatehouse) in tallies.iter().zip([&one, &two]) {
        eprintln!(
            "store down: {} admitted, {} refused in {seconds:.2}s (share {share:.1}); slowest answer {:?}",
            tally.admitted,
            tally.refused.len(),
            tally.slowest
        );
        assert_within_the_local_share(tally, share);
        let (status, readyz) = get(admin(gatehouse), "/readyz").await;
        assert_eq!(
            status, 200,
            "a store outage is no reason to leave the Service: {readyz}"
        );
        assert!(
            readyz.contains("global limits: store failing for"),
            "{readyz}"
        );
        let scrape = scrape_metrics(gatehouse).await;
        assert_eq!(
            sample(&scrape, "gatehouse_global_limit_store_up"),
            Some(0.0)
        );
        assert!(
            sample(
                &scrape,
                "gatehouse_global_limit_store_errors_total{kind=\"connection\"}"
            )
            .unwrap_or(0.0)
                + sample(
                    &scrape,
                    "gatehouse_global_limit_store_errors_total{kind=\"not_connected\"}"
                )
                .unwrap_or(0.0)
                > 0.0,
            "{scrape}"
        );
        gatehouse
            .wait_for_line(&["global limits: the store failed", "on_store_failure=local"])
            .await;
    }

    redis.server.restart();
    for gatehouse in [&one, &two] {
        until_metric(gatehouse, "gatehouse_global_limit_store_up", 1.0).await;
        gatehouse
            .wait_for_line(&["global limits: the store answers again"])
            .await;
    }
    // Buckets that failed retry the store within a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(3)).await;
    let admitted: u64 = tallies.iter().map(|t| t.admitted).sum();
    // A replica's first call after the outage is still answered from its share while
    // the retried lease is in flight: at most a local burst each.
    let (budget, most) = budget_of(seconds, 2.0);
    let most = most + BURST;
    eprintln!("store back: {admitted} admitted in {seconds:.2}s; budget {budget:.1}");
    assert!(
        admitted as f64 <= most,
        "{admitted} admitted, at most {most:.1}"
    );
    let refusals: Vec<&tonic::Status> = tallies.iter().flat_map(|t| &t.refused).collect();
    assert_global_refusal(refusals.last().expect("refusals"), false);
    let (_, readyz) = get(admin(&one), "/readyz").await;
    assert!(
        readyz.contains("global limits: store answering, 2 replicas live"),
        "{readyz}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_stops_answering_holds_no_call_longer_than_the_timeout() {
    let redis = Redis::start();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(
        app.addr,
        &redis.server.url(),
        &prefix(),
        "25ms",
        "",
    ));
    until_metric(&gatehouse, "gatehouse_global_limit_replicas", 1.0).await;

    redis.server.pause();
    let (tallies, seconds) = drive_all(&[&gatehouse], "acme", Duration::from_secs(2)).await;
    let tally = &tallies[0];
    // Alone, the replica's share is the whole rule.
    let (_, most) = budget_of(seconds, 1.0);
    eprintln!(
        "store hung: {} admitted, {} refused in {seconds:.2}s (share {most:.1}); slowest answer {:?}",
        tally.admitted,
        tally.refused.len(),
        tally.slowest
    );
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert!(
        tally.slowest < Duration::from_secs(1),
        "answers wait at most the timeout: {:?}",
        tally.slowest
    );
    assert!(
        tally.admitted as f64 <= most,
        "{} admitted, share {most:.1}",
        tally.admitted
    );
    assert_global_refusal(tally.refused.last().expect("refusals"), true);

    redis.server.resume();
    until_metric(&gatehouse, "gatehouse_global_limit_store_up", 1.0).await;
    let scrape = scrape_metrics(&gatehouse).await;
    let errors = |kind: &str| {
        sample(
            &scrape,
            &format!("gatehouse_global_limit_store_errors_total{{kind=\"{kind}\"}}"),
        )
    };
    assert!(errors("timeout") > Some(0.0), "{scrape}");
    assert_eq!(
        errors("connection"),
        None,
        "a slow answer is no broken connection: {scrape}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (tallies, _) = drive_all(&[&gatehouse], "acme", Duration::from_secs(1)).await;
    assert_global_refusal(tallies[0].refused.last().expect("refusals"), false);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_a_stopped_master_fails_only_its_buckets_until_it_is_back() {
    let mut cluster = RedisCluster::start();
    let app = App::start().await;
    let prefix = prefix();
    let seeds: Vec<String> = cluster
        .seeds()
        .iter()
        .map(|seed| format!("\"{seed}\""))
        .collect();
    let store = format!("[{}]", seeds.join(", "));
    // A timeout the loaded test machine never reaches while the masters are up: a lease
    // answered late would be decided by the fallback and blur the budget measured first.
    let config = config(app.addr, &store, &prefix, "250ms", "");
    let (one, two) = replicas(&config).await;

    // The cluster keeps one budget as a single instance does.
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(2)).await;
    let admitted: u64 = tallies.iter().map(|t| t.admitted).sum();
    let (budget, most) = budget_of(seconds, 2.0);
    eprintln!("cluster: {admitted} admitted in {seconds:.2}s; budget {budget:.1}");
    assert!(
        admitted as f64 <= most && admitted as f64 >= 0.7 * budget,
        "{admitted}, budget {budget:.1}"
    );

    // Stop the master that holds acme's bucket; find a tenant whose bucket is elsewhere.
    let bucket = |tenant: &str| format!("{prefix}:0:tenant:t{}:{tenant}", tenant.len());
    let down = cluster.owner_of(&bucket("acme"));
    let elsewhere = TENANTS
        .into_iter()
        .find(|tenant| cluster.owner_of(&bucket(tenant)) != down)
        .expect("a tenant whose bucket is on another master");
    cluster.nodes[down].stop();
    let other = tokio::spawn({
        let addr = one.addr;
        async move {
            drive(
                addr,
                elsewhere,
                Duration::from_millis(5),
                Duration::from_secs(3),
            )
            .await
        }
    });
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(3)).await;
    let other = other.await.unwrap();
    let share = BURST / 2.0 + RATE / 2.0 * seconds + LEASE;
    for tally in &tallies {
        eprintln!(
            "cluster, acme's master down: {} admitted in {seconds:.2}s (share {share:.1}); slowest {:?}",
            tally.admitted, tally.slowest
        );
        assert_within_the_local_share(tally, share);
    }
    // The other tenant's bucket lives on a master that is up: its budget stays global.
    assert!(other.other.is_empty(), "{:?}", other.other);
    let other_refusal = other
        .refused
        .last()
        .expect("the other tenant, driven past its rate");
    assert_global_refusal(other_refusal, false);

    cluster.nodes[down].restart();
    cluster.until_ok();
    for gatehouse in [&one, &two] {
        until_metric(gatehouse, "gatehouse_global_limit_store_up", 1.0).await;
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (tallies, seconds) = drive_all(&[&one, &two], "acme", Duration::from_secs(2)).await;
    let admitted: u64 = tallies.iter().map(|t| t.admitted).sum();
    let (budget, most) = budget_of(seconds, 2.0);
    eprintln!("cluster, master back: {admitted} admitted in {seconds:.2}s; budget {budget:.1}");
    assert!(
        admitted as f64 <= most + BURST,
        "{admitted}, at most {most:.1} + a local burst"
    );
    let refusals: Vec<&tonic::Status> = tallies.iter().flat_map(|t| &t.refused).collect();
    assert_global_refusal(refusals.last().expect("refusals"), false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_store_with_a_password_from_a_file_keeps_the_budget() {
    let redis = Redis::start_tls("s3cret-store-password");
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "s3cret-store-password\n").unwrap();
    let extra = format!(
        "    password_file: {}\n    ca_file: {}\n",
        password.display(),
        dev_cert("ca.crt").display()
    );
    let gatehouse = Gatehouse::start(&config(
        app.addr,
        &redis.server.url(),
        &prefix(),
        "250ms",
        &extra,
    ));
    until_metric(&gatehouse, "gatehouse_global_limit_store_up", 1.0).await;
    let (tallies, _) = drive_all(&[&gatehouse], "acme", Duration::from_secs(1)).await;
    assert!(tallies[0].other.is_empty(), "{:?}", tallies[0].other);
    assert_global_refusal(tallies[0].refused.last().expect("refusals"), false);

    // A wrong password is a store that fails: visible, and calls still answered.
    std::fs::write(&password, "wrong\n").unwrap();
    let wrong = Gatehouse::start(&config(
        app.addr,
        &redis.server.url(),
        &prefix(),
        "250ms",
        &extra,
    ));
    let (status, readyz) = get(admin(&wrong), "/readyz").await;
    assert_eq!(status, 200, "{readyz}");
    assert!(readyz.contains("global limits: store failing"), "{readyz}");
    let (tallies, _) = drive_all(&[&wrong], "acme", Duration::from_secs(1)).await;
    assert!(
        tallies[0].admitted > 0 && tallies[0].other.is_empty(),
        "{:?}",
        tallies[0]
    );
    assert_global_refusal(tallies[0].refused.last().expect("refusals"), true);
}

#[test]
fn check_refuses_rules_that_can_never_pass_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        "127.0.0.1:1".parse().unwrap(),
        "redis://127.0.0.1:1",
        "p",
        "25ms",
        "",
    )
    .edit(
        &format!("calls_per_second: {RATE}, burst: {BURST}"),
        "calls_per_second: 0, burst: 0",
    );
    check_refuses(
        dir.path(),
        &config,
        &[
            "limits.global.rules[0].calls_per_second: 0 can never pass",
            "limits.global.rules[0].burst: 0 can never pass",
        ],
        &["limits.global.redis"],
    );
    let missing = config
        .edit(
            "    timeout: 25ms\n",
            "    timeout: 25ms\n    password_file: /nonexistent/redis-password\n",
        )
        .edit("calls_per_second: 0, burst: 0", "calls_per_second: 5");
    check_refuses(
        dir.path(),
        &missing,
        &["limits.global.password_file: /nonexistent/redis-password"],
        &["limits.global.rules"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_decodes_the_reason_and_the_retry_info_of_a_global_refusal() {
    let redis = Redis::start();
    let app = App::start().await;
    let config = config(app.addr, &redis.server.url(), &prefix(), "250ms", "").edit(
        &format!("calls_per_second: {RATE}, burst: {BURST}"),
        "calls_per_minute: 1",
    );
    let gatehouse = Gatehouse::start(&config);
    let addr = gatehouse.addr;
    let key = format!("x-api-key: {}", key_of("acme"));
    let (first, second) = tokio::task::spawn_blocking(move || {
        let protos = repo().join("proto");
        let demo_protos = repo().join("examples/demo-app/proto");
        let flags = [
            "-plaintext",
            "-import-path",
            protos.to_str().unwrap(),
            "-import-path",
            demo_protos.to_str().unwrap(),
            "-proto",
            "demo.proto",
            "-proto",
            "google/rpc/error_details.proto",
            "-H",
            &key,
        ];
        let call = ["gatehouse.demo.v1.Demo/Echo"];
        (
            grpcurl_raw(addr, &flags, &call, None),
            grpcurl_raw(addr, &flags, &call, None),
        )
    })
    .await
    .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let refused = stderr(&second) + &stdout(&second);
    for expected in [
        "Code: ResourceExhausted",
        "Message: GLOBAL_RATE_LIMITED: limits.global.rules[0] allows 1 call a minute per tenant across every replica",
        r#""reason":"GLOBAL_RATE_LIMITED""#,
        r#""@type":"type.googleapis.com/google.rpc.RetryInfo""#,
        r#""retryDelay":"#,
    ] {
        assert!(refused.contains(expected), "{expected} in {refused}");
    }
}

/// Four replicas in one process, each its own limiter as in four gatehouses, sharing a
/// real store under load from all sides at once: leases in flight, buckets near empty.
#[tokio::test(flavor = "multi_thread")]
async fn four_replicas_admit_at_most_the_budget_plus_four_leases() {
    use gatehouse::auth::outcome::AuthOutcome;
    use gatehouse::identity::{AuthMethod, Claims, Principal};
    use gatehouse::limits::{Check, GlobalLimiter};

    let redis = Redis::start();
    let yaml = format!(
        "{{ redis: '{}', key_prefix: '{}', timeout: 250ms, rules: [{{ per: tenant, calls_per_second: 50, burst: 20 }}] }}",
        redis.server.url(),
        prefix()
    );
    let config: gatehouse::config::GlobalLimits = serde_saphyr::from_str(&yaml).unwrap();
    let lease = f64::from(config.rules[0].lease());
    // Cancelled when the test ends: the four announcers stop with it.
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let limiter = Arc::new(GlobalLimiter::new(&config).unwrap_or_else(|p| panic!("{p:?}")));
        limiter.start(stop.clone()).await;
        replicas.push(limiter);
    }
    let claims = Claims {
        tenant_id: Some("acme".into()),
        ..Claims::default()
    };
    let principal = Arc::new(Principal::new(AuthMethod::ApiKey, claims).unwrap());
    let started = Instant::now();
    let end = started + Duration::from_secs(2);
    let callers = replicas.iter().flat_map(|limiter| {
        (0..4).map(|_| {
            let (limiter, principal) = (limiter.clone(), principal.clone());
            tokio::spawn(async move {
                let (mut admitted, mut checked) = (0u64, 0u64);
                while Instant::now() < end {
                    let outcome = AuthOutcome::Admitted {
                        principal: principal.clone(),
                        would_refuse: None,
                    };
                    let admitted_now = match limiter.check(Some(&outcome), None, "/pkg.Svc/Get") {
                        Check::Admitted => true,
                        Check::Refused(_) => false,
                        Check::Pending(pending) => pending.await.is_ok(),
                    };
                    admitted += u64::from(admitted_now);
                    checked += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (admitted, checked)
            })
        })
    });
    let tallies: Vec<(u64, u64)> = futures_util::future::join_all(callers.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted: u64 = tallies.iter().map(|t| t.0).sum();
    let checked: u64 = tallies.iter().map(|t| t.1).sum();
    let seconds = started.elapsed().as_secs_f64();
    let budget = 20.0 + 50.0 * seconds;
    let most = budget + 4.0 * lease;
    // Leases run GET once each. Near empty a bucket leases one token at a time, so the
    // store sees about one request per admitted call, and none for a refused one.
    let leases = redis.server.command_calls("get");
    eprintln!(
        "4 replicas: {admitted} admitted of {checked} in {seconds:.2}s; budget {budget:.1}, \
         bound {most:.1} (lease {lease}); {leases} leases"
    );
    assert!(
        admitted as f64 <= most,
        "{admitted} admitted, at most {most:.1}"
    );
    assert!(
        admitted as f64 >= 0.8 * budget,
        "{admitted} admitted of {budget:.1}"
    );
    assert!(checked > 10 * leases, "{leases} leases for {checked} calls");
}

/// With the app's schema, a method the app does not serve is refused UNKNOWN_METHOD
/// before it is counted: a tenant sending made-up method paths under a per-method rule
/// makes no bucket and no key in the store for each, while a real method is counted.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_refused_by_the_schema_make_no_buckets_in_the_store() {
    let redis = Redis::start();
    let app = App::start().await;
    let prefix = prefix();
    let config = config(app.addr, &redis.server.url(), &prefix, "250ms", "")
        .replace("per: tenant,", "per: tenant_method,")
        + "schema: { source: reflection }\n";
    let gatehouse = Gatehouse::start(&config);
    gatehouse.wait_for_line(&["schema learned"]).await;
    let channel = h2c(gatehouse.addr).await;
    let keys = || {
        redis
            .server
            .cli(&["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
            .filter(|key| key.contains("tenant_method"))
            .count()
    };
    let leases_before = redis.server.command_calls("get");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for i in 0..200 {
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        let path: http::uri::PathAndQuery =
            format!("/gatehouse.demo.v1.Demo/Made{i}").parse().unwrap();
        let mut request = tonic::Request::new(EchoRequest::default());
        request
            .metadata_mut()
            .insert("x-api-key", key_of("acme").parse().unwrap());
        let status = grpc.unary(request, path, codec).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert_eq!(error_info(&status).reason, "UNKNOWN_METHOD");
    }
    assert_eq!(
        redis.server.command_calls("get"),
        leases_before,
        "a made-up method leased"
    );
    assert_eq!(keys(), 0, "a made-up method made a key in the store");
    let scrape = scrape_metrics(&gatehouse).await;
    assert_eq!(sample(&scrape, "gatehouse_global_limit_buckets"), Some(0.0));
    // A method the app serves is counted: one bucket, one key.
    echo(&channel, "acme").await.unwrap();
    assert!(redis.server.command_calls("get") > leases_before);
    assert_eq!(keys(), 1);
}
