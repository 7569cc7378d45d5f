//! Beyond bearer tokens and enforced rules, through the real binary: tokens bound to one
//! client certificate (RFC 8705), and authorization rules run dry before they are enforced.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tonic::Code;

use crate::support::issuers::*;
use crate::support::pb::*;
use crate::support::*;

const GATEWAY_SPIFFE: &str = "spiffe://dev.gatehouse/ns/default/sa/gateway";

/// A demo client on a connection made with `identity` (or no client certificate).
async fn client_as(
    addr: std::net::SocketAddr,
    identity: Option<Identity>,
) -> DemoClient<tonic::transport::Channel> {
    DemoClient::new(channel(addr, identity).await.expect("TLS connection"))
}

/// Calls `Echo` with `token`, which must be refused: the status code and message.
async fn echo_refusal(
    client: &mut DemoClient<tonic::transport::Channel>,
    token: &str,
) -> (Code, String, String) {
    let status = client
        .echo(with_token(EchoRequest::default(), token))
        .await
        .expect_err("the call was refused");
    (status.code(), status.message().to_owned(), reason(&status))
}

/// `cnf.x5t#S256` for the first certificate in `pem`, computed here from the DER bytes
/// as RFC 8705 defines it, independently of gatehouse.
fn x5t_s256(pem: &str) -> String {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A token minted by `gatehouse token … --bind-cert FILE`, the documented way.
fn minted_bound_token(dir: &std::path::Path, issuer: &Issuer, cert: &std::path::Path) -> String {
    let key = dir.join("signing.pem");
    std::fs::write(&key, &issuer.material).unwrap();
    let output = gatehouse(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--alg",
        "ES256",
        "--kid",
        &issuer.kid,
        "--iss",
        &issuer.iss,
        "--aud",
        AUDIENCE,
        "--sub",
        "alice",
        "--tenant",
        "acme",
        "--bind-cert",
        cert.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_works_only_from_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let loose = Issuer::generate("loose", Algorithm::ES256);
    let strict = Issuer::generate("strict", Algorithm::ES256);
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .admin()
        .client_auth("optional")
        .yaml()
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}{}",
            provider(dir.path(), "loose", &loose, ""),
            provider(
                dir.path(),
                "strict",
                &strict,
                ", require_cert_binding: true"
            ),
        );
    let gatehouse = Gatehouse::start(&config);
    let gateway_cert = dev_cert("client-gateway.crt");
    let bound = minted_bound_token(dir.path(), &loose, &gateway_cert);
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(bound.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["cnf"]["x5t#S256"],
        x5t_s256(&Identity::gateway().cert_pem),
        "gatehouse token --bind-cert binds to the certificate's SHA-256"
    );

    // Its own certificate: accepted (and now in the verified-token cache).
    let mut gateway = client_as(gatehouse.addr, Some(Identity::gateway())).await;
    let metadata = inspect(&mut gateway, with_token(InspectRequest {}, &bound))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["alice"]);
    let calls = app.observed().calls();

    // The attack: another workload with a valid certificate from the same CA has the
    // token. Its connection is good (an unbound token passes on it), the stolen one not.
    let scanner = Identity::dev("client-compliance-scanner");
    let mut thief = client_as(gatehouse.addr, Some(scanner.clone())).await;
    let unbound = loose.token("mallory", "acme", &[]);
    let metadata = inspect(&mut thief, with_token(InspectRequest {}, &unbound))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["mallory"]);
    let calls = calls + 1;
    assert_eq!(
        echo_refusal(&mut thief, &bound).await,
        (
            Code::Unauthenticated,
            "token is bound to another certificate".to_owned(),
            "CERT_BINDING_MISMATCH".to_owned()
        )
    );
    // No client certificate at all (client_auth: optional): refused too.
    let mut anonymous = client_as(gatehouse.addr, None).await;
    assert_eq!(
        echo_refusal(&mut anonymous, &bound).await,
        (
            Code::Unauthenticated,
            "token is bound to a client certificate and this connection presented none".to_owned(),
            "CERT_BINDING_MISMATCH".to_owned()
        )
    );
    wait_for_metric(
        &gatehouse,
        r#"gatehouse_auth_total{method="jwt",result="refused",reason="cert_binding_mismatch"} 2"#,
    )
    .await;
    gatehouse
        .wait_for_line(&[
            "msg=request",
            "refused=cert_binding_mismatch",
            "peer=spiffe://dev.gatehouse/ns/default/sa/compliance-scanner",
        ])
        .await;
    assert_eq!(
        app.observed().calls(),
        calls,
        "a refused call reached the app"
    );

    // The owner is unharmed: the same token still works from its certificate.
    assert!(
        gateway
            .echo(with_token(EchoRequest::default(), &bound))
            .await
            .is_ok()
    );

    // require_cert_binding: an unbound token of that issuer is refused, a bound one
    // (cnf computed here, not by gatehouse) is accepted from its certificate only.
    assert_eq!(
        echo_refusal(&mut gateway, &strict.token("bob", "acme", &[])).await,
        (
            Code::Unauthenticated,
            "token is not bound to a client certificate (cnf.x5t#S256), which this issuer requires"
                .to_owned(),
            "CERT_BINDING_REQUIRED".to_owned()
        )
    );
    let mut claims = strict.claims("bob", "acme", &[]);
    claims["cnf"] = json!({ "x5t#S256": x5t_s256(&scanner.cert_pem) });
    let strict_bound = strict.sign(&claims);
    let metadata = inspect(&mut thief, with_token(InspectRequest {}, &strict_bound))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["bob"]);
    assert_eq!(
        echo_refusal(&mut gateway, &strict_bound).await,
        (
            Code::Unauthenticated,
            "token is bound to another certificate".to_owned(),
            "CERT_BINDING_MISMATCH".to_owned()
        )
    );
    wait_for_metric(
        &gatehouse,
        r#"gatehouse_auth_total{method="jwt",result="refused",reason="cert_binding_required"} 1"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_bound_tokens_without_client_certificates_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("bound", Algorithm::ES256);
    let config = DevConfig::new("127.0.0.1:50051".parse().unwrap())
        .client_auth("none")
        .yaml()
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}{}",
            provider(dir.path(), "free", &issuer, ""),
            provider(dir.path(), "bound", &issuer, ", require_cert_binding: true"),
        );
    check_refuses(
        dir.path(),
        &config,
        &["auth.jwt.providers[1].require_cert_binding: needs client certificates"],
        &["providers[0]"],
    );
}

/// Rule 0 makes `Inspect` an admin method; everything else is refused by `default: deny`.
/// Only the gateway's certificate may connect at all.
fn dry_run_config(app: std::net::SocketAddr, providers: &str, dry_run: bool) -> String {
    DevConfig::new(app)
        .admin()
        .allowed_peers(&[GATEWAY_SPIFFE])
        .yaml()
        + &format!(
            "auth:\n  jwt:\n    providers:\n{providers}authorization:
  default: deny
  dry_run: {dry_run}
  rules:
    - methods: [/gatehouse.demo.v1.Demo/Inspect]
      allow_roles: [admin]
"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lets_refused_calls_through_and_says_which_rule_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("dry", Algorithm::ES256);
    let providers = provider(dir.path(), "dry", &issuer, "");
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dry_run_config(app.addr, &providers, true));
    let mut client = client(gatehouse.addr).await;
    let viewer = issuer.token("vera", "acme", &["viewer"]);
    let root = issuer.token("root", "acme", &["admin"]);

    // Refused by rule 0 and by the default, yet both reach the app.
    let metadata = inspect(&mut client, with_token(InspectRequest {}, &viewer))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["vera"]);
    for _ in 0..2 {
        client
            .echo(with_token(EchoRequest::default(), &viewer))
            .await
            .unwrap();
    }
    assert_eq!(app.observed().calls(), 3);
    gatehouse
        .wait_for_line(&[
            "msg=request",
            "method=/gatehouse.demo.v1.Demo/Inspect",
            "user_id=vera",
            "would_refuse=true rule=0",
        ])
        .await;
    gatehouse
        .wait_for_line(&[
            "msg=request",
            "method=/gatehouse.demo.v1.Demo/Echo",
            "grpc_code=OK",
            "would_refuse=true rule=default",
        ])
        .await;
    wait_for_metric(
        &gatehouse,
        r#"gatehouse_authz_dry_run_refusals_total{method="/gatehouse.demo.v1.Demo/Echo"} 2"#,
    )
    .await;
    let scrape = wait_for_metric(
        &gatehouse,
        r#"gatehouse_authz_dry_run_refusals_total{method="/gatehouse.demo.v1.Demo/Inspect"} 1"#,
    )
    .await;

    // A call the rules allow is not marked, and not counted.
    inspect(&mut client, with_token(InspectRequest {}, &root))
        .await
        .unwrap();
    let line = gatehouse
        .wait_for_line(&["msg=request", "user_id=root"])
        .await;
    assert!(!line.contains("would_refuse"), "{line}");
    assert!(!line.contains("rule="), "{line}");
    let after = scrape_metrics(&gatehouse).await;
    let dry_run_lines = |scrape: &str| -> Vec<String> {
        scrape
            .lines()
            .filter(|line| line.starts_with("gatehouse_authz_dry_run_refusals_total"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(dry_run_lines(&after), dry_run_lines(&scrape));

    // Dry run is about authorization only: no credentials, still refused; a certificate
    // outside tls.allowed_peers, still refused.
    let calls = app.observed().calls();
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "MISSING_CREDENTIALS");
    let mut outsider = client_as(
        gatehouse.addr,
        Some(Identity::dev("client-compliance-scanner")),
    )
    .await;
    assert_eq!(
        echo_refusal(&mut outsider, &root).await,
        (
            Code::PermissionDenied,
            "client certificate not in tls.allowed_peers".to_owned(),
            "PEER_NOT_ALLOWED".to_owned()
        )
    );
    assert_eq!(
        app.observed().calls(),
        calls,
        "a refused call reached the app"
    );

    // Enforce the same rules (a reload, as an operator would): the same calls are refused.
    std::fs::write(
        gatehouse.config_path(),
        dry_run_config(app.addr, &providers, false),
    )
    .unwrap();
    gatehouse.signal("HUP");
    gatehouse.wait_for_line(&["configuration reloaded"]).await;
    assert_eq!(
        echo_refusal(&mut client, &viewer).await,
        (
            Code::PermissionDenied,
            "permission denied for /gatehouse.demo.v1.Demo/Echo: no authorization rule allows it"
                .to_owned(),
            "PERMISSION_DENIED_BY_DEFAULT".to_owned()
        )
    );
    let status = client
        .inspect(with_token(InspectRequest {}, &viewer))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "permission denied for /gatehouse.demo.v1.Demo/Inspect"
        )
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "PERMISSION_DENIED_BY_RULE");
    assert_eq!(info.metadata["rule"], "0");
    assert_eq!(app.observed().calls(), calls);
    let enforced = scrape_metrics(&gatehouse).await;
    assert_eq!(
        dry_run_lines(&enforced),
        dry_run_lines(&scrape),
        "enforced refusals are not dry-run refusals"
    );
}
