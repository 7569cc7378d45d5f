//! Token keys over time through the real binary: a configuration reload while the issuer
//! is down keeps the working keys, and a JWKS file is re-read when it changes.

use jsonwebtoken::Algorithm;
use tonic::Code;

use crate::support::issuers::*;
use crate::support::pb::*;
use crate::support::*;

/// The `x-user-id` the app saw for a call with `token`, or the refusal.
async fn user_seen(
    client: &mut DemoClient<tonic::transport::Channel>,
    token: &str,
) -> Result<String, tonic::Status> {
    let metadata = inspect(client, with_token(InspectRequest {}, token)).await?;
    let users = values(&metadata, "x-user-id");
    assert_eq!(users.len(), 1, "{users:?}");
    Ok(users[0].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_while_the_issuer_is_down_keeps_jwt_calls_working() {
    let server = JwksServer::start().await;
    let steady = Issuer::generate("steady", Algorithm::ES256);
    let moved = Issuer::generate("moved", Algorithm::RS256);
    server.publish("/steady", jwks(&[&steady]));
    server.publish("/moved", jwks(&[&moved]));
    let ca = dev_cert("ca.crt").display().to_string();
    let app = App::start().await;
    let config = |moved_path: &str| {
        let provider = |name: &str, issuer: &Issuer, alg: &str, path: &str| {
            format!(
                "      - {{ name: {name}, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [{alg}], jwks_url: \"{}\", jwks_ca_file: \"{ca}\", refresh_interval: 1s, min_refresh_interval: 100ms }}\n",
                issuer.iss,
                server.url(path)
            )
        };
        config_with_admin(app.addr)
            + "auth:\n  jwt:\n    providers:\n"
            + &provider("steady", &steady, "ES256", "/steady")
            + &provider("moved", &moved, "RS256", moved_path)
    };
    let gatehouse = Gatehouse::start(&config("/moved"));
    let admin = admin(&gatehouse);
    let mut client = client(gatehouse.addr).await;
    assert_eq!(
        user_seen(&mut client, &steady.token("before", "acme", &[]))
            .await
            .unwrap(),
        "before"
    );
    assert_eq!(
        user_seen(&mut client, &moved.token("before-moved", "acme", &[]))
            .await
            .unwrap(),
        "before-moved"
    );
    assert_eq!(get(admin, "/readyz").await.0, 200);

    // The issuer goes away, and gatehouse has noticed: its refreshes fail.
    server.stop().await;
    gatehouse
        .wait_for_line(&["JWKS fetch failed", "cannot connect"])
        .await;

    // A reload now: "steady" is unchanged, "moved" points at a new address that cannot
    // be fetched either.
    std::fs::write(gatehouse.config_path(), config("/moved-elsewhere")).unwrap();
    gatehouse.signal("HUP");
    gatehouse.wait_for_line(&["configuration reloaded"]).await;

    // New tokens (never cached: the reload starts a new cache) are still verified.
    assert_eq!(
        user_seen(&mut client, &steady.token("after", "acme", &[]))
            .await
            .unwrap(),
        "after"
    );
    assert_eq!(
        user_seen(&mut client, &moved.token("after-moved", "acme", &[]))
            .await
            .unwrap(),
        "after-moved"
    );
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    // A forged key is still refused: the carried-over keys are the issuer's, not any.
    let forged = steady.rotated(&steady.kid);
    let refusal = user_seen(&mut client, &forged.token("forged", "acme", &[]))
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), Code::Unauthenticated);
    assert_eq!(refusal.message(), "bad signature");
}

/// Replaces `path` the way deployment tools do, so the poller never reads half a file.
fn replace_file(path: &std::path::Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_jwks_file_is_read_again_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let first = Issuer::generate("filed", Algorithm::ES256);
    let second = first.rotated("filed-2");
    replace_file(&file, &jwks(&[&first]));
    let app = App::start().await;
    let config = dev_config(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n      - {{ name: filed, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [ES256], jwks_file: \"{}\" }}\n",
            first.iss,
            file.display()
        );
    let gatehouse = Gatehouse::start(&config);
    let mut client = client(gatehouse.addr).await;
    let first_token = first.token("first", "acme", &[]);
    assert_eq!(user_seen(&mut client, &first_token).await.unwrap(), "first");
    let refusal = user_seen(&mut client, &second.token("second", "acme", &[]))
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), Code::Unauthenticated);
    assert_eq!(refusal.message(), "unknown key id");

    // The issuer adds its next key: picked up without a restart or a signal.
    replace_file(&file, &jwks(&[&first, &second]));
    gatehouse
        .wait_for_line(&["JWKS file reloaded", "keys=2"])
        .await;
    assert_eq!(
        user_seen(&mut client, &second.token("second", "acme", &[]))
            .await
            .unwrap(),
        "second"
    );

    // The old key is withdrawn: its tokens stop working, cached ones included.
    replace_file(&file, &jwks(&[&second]));
    gatehouse
        .wait_for_line(&["JWKS file reloaded", "keys=1"])
        .await;
    let refusal = user_seen(&mut client, &first_token).await.unwrap_err();
    assert_eq!(refusal.code(), Code::Unauthenticated);
    assert_eq!(refusal.message(), "unknown key id");

    // A broken file is refused and the last good keys serve on.
    replace_file(&file, "{ \"keys\": ");
    gatehouse.wait_for_line(&["JWKS file refused"]).await;
    assert_eq!(
        user_seen(&mut client, &second.token("still", "acme", &[]))
            .await
            .unwrap(),
        "still"
    );
}
