//! Attacks on what gatehouse authorizes and forwards, each tried against the real binary:
//! method paths an app server would decode into another method, certificates whose names
//! pass for others, credentials the app should never see, claims that smuggle values
//! into identity headers, and rules that could never match.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use rcgen::SanType;
use serde_json::json;
use tonic::Code;

use crate::support::issuers::*;
use crate::support::pb::*;
use crate::support::*;

/// An app that answers OK to any path at all and records the paths it was called on,
/// so a path gatehouse forwards shows up as OK here and in [`ProbeApp::paths`].
struct ProbeApp {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
}

impl ProbeApp {
    async fn start() -> ProbeApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let recorded = paths.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let path = request
                            .uri()
                            .path_and_query()
                            .map_or_else(String::new, |path| path.as_str().to_owned());
                        recorded.lock().unwrap().push(path);
                        async {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", "0")
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        ProbeApp { addr, paths }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Calls `path` with an empty body: the call's (grpc-status, grpc-message, ErrorInfo
/// reason or "" when the status has no details), read from the headers of a
/// trailers-only response or else from the trailers.
async fn raw_call(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    token: Option<&str>,
) -> (String, String, String) {
    let mut request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK, "{path}");
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let status = collected.trailers().cloned().unwrap_or_default();
    let source = if headers.contains_key("grpc-status") {
        &headers
    } else {
        &status
    };
    let text = |name: &str| {
        source
            .get(name)
            .map_or("", |value| value.to_str().unwrap())
            .to_owned()
    };
    let reason = if source.contains_key("grpc-status-details-bin") {
        error_info_in(source).reason
    } else {
        String::new()
    };
    (text("grpc-status"), text("grpc-message"), reason)
}

const NOT_A_METHOD_PATH: &str = "not a gRPC method path: expected /Service/Method";

/// An app server that looks methods up case-insensitively would run a rule's method for
/// a path spelled in another case; the rule decides those paths too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_decides_paths_that_differ_from_its_method_only_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("cases", Algorithm::RS256);
    let app = ProbeApp::start().await;
    let config = config_with_admin(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}authorization:\n  default: allow\n  rules:\n    - methods: [/probe.v1.Probe/Fail]\n      allow_roles: [admin]\n",
            provider(dir.path(), "cases", &issuer, "")
        );
    let gatehouse = Gatehouse::start(&config);
    let mut sender = h2_connection(gatehouse.addr).await;
    let viewer = issuer.token("bob", "acme", &["viewer"]);
    let admin_token = issuer.token("root", "acme", &["admin"]);
    for path in [
        "/probe.v1.probe/fail",
        "/PROBE.V1.PROBE/FAIL",
        "/probe.v1.Probe/fail",
    ] {
        let (code, _, reason) = raw_call(&mut sender, path, Some(&viewer)).await;
        assert_eq!(
            (code.as_str(), reason.as_str()),
            ("7", "PERMISSION_DENIED_BY_RULE"),
            "{path}"
        );
    }
    assert!(
        app.paths().is_empty(),
        "a re-cased path reached the app: {:?}",
        app.paths()
    );
    // The rule still lets through whom it allows, in whatever case they spell it.
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.probe/fail", Some(&admin_token))
            .await
            .0,
        "0"
    );
    assert_eq!(app.paths(), ["/probe.v1.probe/fail"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_grpc_grammar_are_refused_unimplemented_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("paths", Algorithm::RS256);
    let app = ProbeApp::start().await;
    let config = config_with_admin(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}authorization:\n  rules:\n    - methods: [/probe.v1.Probe/Fail]\n      allow_roles: [admin]\n",
            provider(dir.path(), "paths", &issuer, "")
        );
    let gatehouse = Gatehouse::start(&config);
    let mut sender = h2_connection(gatehouse.addr).await;
    let viewer = issuer.token("bob", "acme", &["viewer"]);
    let admin_token = issuer.token("root", "acme", &["admin"]);

    // The rule holds for the real path, and the app answers OK to whatever reaches it.
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.Probe/Fail", Some(&viewer)).await,
        (
            "7".into(),
            "permission denied for /probe.v1.Probe/Fail".into(),
            "PERMISSION_DENIED_BY_RULE".into()
        )
    );
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.Probe/Fail", Some(&admin_token))
            .await
            .0,
        "0"
    );
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.Probe/Other", Some(&viewer))
            .await
            .0,
        "0"
    );
    assert_eq!(
        app.paths(),
        ["/probe.v1.Probe/Fail", "/probe.v1.Probe/Other"]
    );

    // Each of these names Fail to an app server that decodes or normalises the path.
    let odd = [
        "/probe.v1.Probe/%46ail",
        "/probe.v1.%50robe/Fail",
        "/probe.v1.Probe/Fail/",
        "/probe.v1.Probe//Fail",
        "/probe.v1.Probe/./Fail",
        "/probe.v1.Probe/Fail;x",
        "/probe.v1.Probe/Fail?x=1",
    ];
    for path in odd {
        assert_eq!(
            raw_call(&mut sender, path, Some(&viewer)).await,
            (
                "12".into(),
                NOT_A_METHOD_PATH.into(),
                "INVALID_METHOD_PATH".into()
            ),
            "{path}"
        );
    }
    // Refused before authentication: without credentials the answer is the same.
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.Probe/%46ail", None).await,
        (
            "12".into(),
            NOT_A_METHOD_PATH.into(),
            "INVALID_METHOD_PATH".into()
        )
    );
    assert_eq!(
        app.paths(),
        ["/probe.v1.Probe/Fail", "/probe.v1.Probe/Other"],
        "an odd path reached the app"
    );

    // Logged, and counted under the bounded `other` label, never under the raw path.
    gatehouse
        .wait_for_line(&[
            "msg=request",
            "grpc_code=Unimplemented",
            "refused=invalid_method_path",
        ])
        .await;
    // The query is part of what is logged, so the line does not read as a call of Fail.
    gatehouse
        .wait_for_line(&["/probe.v1.Probe/Fail?x=1", "refused=invalid_method_path"])
        .await;
    let scrape = wait_for_metric(
        &gatehouse,
        r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="other",grpc_method="other",grpc_code="Unimplemented"} 8"#,
    )
    .await;
    assert!(
        scrape.contains(
            r#"gatehouse_auth_total{method="none",result="refused",reason="invalid_method_path"} 8"#
        ),
        "{scrape}"
    );
    for fragment in ["%46", "%50", "Fail/", "/Fail\"", "Fail;", "x=1"] {
        assert!(
            !scrape.contains(fragment),
            "{fragment} in a metric label:\n{scrape}"
        );
    }

    // The connection and the process keep serving.
    assert_eq!(
        raw_call(&mut sender, "/probe.v1.Probe/Other", Some(&viewer))
            .await
            .0,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_patterns_match_only_names_of_their_own_kind() {
    let gateway_id = "spiffe://dev.gatehouse/ns/default/sa/gateway";
    // CA-signed, with the allowed SPIFFE ID as its CN and a DNS name as its only SAN.
    let spoof = broken::client_with_names(
        gateway_id,
        vec![SanType::DnsName("intruder.test".try_into().unwrap())],
    );
    let by_dns = broken::client_with_names(
        "dns-peer",
        vec![SanType::DnsName("svc.allowed.test".try_into().unwrap())],
    );
    let by_cn = broken::client_with_names(
        "legacy-client",
        vec![SanType::URI(
            "spiffe://dev.gatehouse/ns/default/sa/legacy"
                .try_into()
                .unwrap(),
        )],
    );
    let scanner = Identity::dev("client-compliance-scanner");

    // tls.allowed_peers: refused callers get PERMISSION_DENIED, as before.
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .allowed_peers(&[
            gateway_id,
            "spiffe://dev.gatehouse/*/sa/compliance-scanner",
            "dns:svc.allowed.test",
            "cn:legacy-client",
        ])
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let addr = gatehouse.addr;
    let call = |identity: Identity| async move {
        let channel = channel(addr, Some(identity)).await.unwrap();
        DemoClient::new(channel).inspect(InspectRequest {}).await
    };
    for (case, identity) in [
        ("the CN spells the allowed SPIFFE ID", spoof.clone()),
        ("a * that would have to cross /", scanner.clone()),
    ] {
        let status = call(identity).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::PermissionDenied,
                "client certificate not in tls.allowed_peers"
            ),
            "{case}"
        );
        assert_eq!(reason(&status), "PEER_NOT_ALLOWED", "{case}");
    }
    assert_eq!(app.observed().calls(), 0, "a refused peer reached the app");
    for (case, identity) in [
        ("the SPIFFE ID as a URI SAN", Identity::gateway()),
        ("dns: against the DNS SAN", by_dns),
        ("cn: against the CN", by_cn),
    ] {
        let reply = call(identity)
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"));
        let metadata = reply.into_inner().metadata;
        assert!(
            metadata
                .iter()
                .any(|e| e.key == "x-auth-method" && e.value == "mtls"),
            "{case}: {metadata:?}"
        );
    }
    assert_eq!(app.observed().calls(), 3);

    // A rule's allow_peers follows the same syntax.
    let config = dev_config(app.addr)
        + &format!(
            "authorization:
  rules:
    - methods: [/gatehouse.demo.v1.Demo/Fail]
      allow_peers: [\"{gateway_id}\", \"spiffe://dev.gatehouse/*/sa/compliance-scanner\"]
"
        );
    let rules = Gatehouse::start(&config);
    let addr = rules.addr;
    let fail = |identity: Identity| async move {
        let channel = channel(addr, Some(identity)).await.unwrap();
        DemoClient::new(channel)
            .fail(FailRequest {
                code: 5,
                message: "reached the app".into(),
            })
            .await
            .unwrap_err()
    };
    let reached = fail(Identity::gateway()).await;
    assert_eq!(
        (reached.code(), reached.message()),
        (Code::NotFound, "reached the app")
    );
    for (case, identity) in [("spoofed CN", spoof), ("* across /", scanner)] {
        let status = fail(identity).await;
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::PermissionDenied,
                "permission denied for /gatehouse.demo.v1.Demo/Fail"
            ),
            "{case}"
        );
        assert_eq!(reason(&status), "PERMISSION_DENIED_BY_RULE", "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_only_bearer_tokens_gatehouse_verified_and_never_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("creds", Algorithm::ES256);
    let app = App::start().await;
    const KEY: &str = "creds-key-0123456789";
    let keys = format!(
        "  api_keys:\n    keys:\n      - {{ name: ops, sha256: \"{}\" }}\n",
        hash(KEY)
    );
    let unverified = |request: &mut tonic::Request<InspectRequest>| {
        request
            .metadata_mut()
            .insert("authorization", "Bearer not-a-token".parse().unwrap());
    };
    let assert_no_credentials = |metadata: &[(String, String)], case: &str| {
        assert!(
            values(metadata, "authorization").is_empty(),
            "{case}: authorization reached the app: {metadata:?}"
        );
        assert!(
            values(metadata, "x-api-key").is_empty(),
            "{case}: x-api-key reached the app: {metadata:?}"
        );
    };

    // Public methods: whatever the caller sent is removed, and the call runs as `none`.
    let public = dev_config(app.addr)
        + &format!(
            "auth:\n  public_methods: [/gatehouse.demo.v1.Demo/Inspect]\n  jwt:\n    providers:\n{}{keys}",
            provider(dir.path(), "creds", &issuer, "")
        );
    let gatehouse = Gatehouse::start(&public);
    let mut client = crate::support::client(gatehouse.addr).await;
    let mut request = with_key(InspectRequest {}, "not-a-key");
    unverified(&mut request);
    let metadata = inspect(&mut client, request).await.unwrap();
    assert_no_credentials(&metadata, "public, unverified token and key");
    assert_eq!(values(&metadata, "x-auth-method"), ["none"]);
    let valid = issuer.token("alice", "acme", &[]);
    let metadata = inspect(&mut client, with_token(InspectRequest {}, &valid))
        .await
        .unwrap();
    assert_no_credentials(&metadata, "public, valid token");
    assert_eq!(values(&metadata, "x-auth-method"), ["none"]);
    // Request trailers are not where gatehouse reads credentials, so none pass there.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("authorization", "Bearer not-a-token".parse().unwrap());
    trailers.insert("x-api-key", "not-a-key".parse().unwrap());
    trailers.insert("x-custom-trailer", "kept".parse().unwrap());
    let reply = collect_with_trailers(gatehouse.addr, &valid, trailers).await;
    let trailers = pairs(reply.trailers);
    assert_eq!(
        values(&trailers, "x-custom-trailer"),
        ["kept"],
        "{trailers:?}"
    );
    assert_no_credentials(&trailers, "request trailers");
    drop(gatehouse);

    // API keys only: a bearer token is nobody's credential here and goes nowhere.
    let keys_only = dev_config(app.addr) + "auth:\n" + &keys;
    let gatehouse = Gatehouse::start(&keys_only);
    let mut client = crate::support::client(gatehouse.addr).await;
    let mut request = with_key(InspectRequest {}, KEY);
    unverified(&mut request);
    let metadata = inspect(&mut client, request).await.unwrap();
    assert_no_credentials(&metadata, "api keys only");
    assert_eq!(values(&metadata, "x-api-key-name"), ["ops"]);
    // Two key headers are as ambiguous as two tokens, even if the first one is good.
    let mut twice = with_key(InspectRequest {}, KEY);
    twice
        .metadata_mut()
        .append("x-api-key", "another-key".parse().unwrap());
    let calls = app.observed().calls();
    let status = inspect(&mut client, twice).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "more than one x-api-key header")
    );
    assert_eq!(reason(&status), "AMBIGUOUS_CREDENTIALS");
    assert_eq!(
        app.observed().calls(),
        calls,
        "the refused call reached the app"
    );
    drop(gatehouse);

    // mTLS only: no credential is read, none is forwarded.
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = crate::support::client(gatehouse.addr).await;
    let mut request = with_key(InspectRequest {}, KEY);
    unverified(&mut request);
    let metadata = inspect(&mut client, request).await.unwrap();
    assert_no_credentials(&metadata, "mtls only");
    assert_eq!(values(&metadata, "x-auth-method"), ["mtls"]);
    drop(gatehouse);

    // forward_token: false keeps even a verified token from the app.
    let kept = dev_config(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}",
            provider(dir.path(), "creds", &issuer, ", forward_token: false")
        );
    let gatehouse = Gatehouse::start(&kept);
    let mut client = crate::support::client(gatehouse.addr).await;
    let metadata = inspect(&mut client, with_token(InspectRequest {}, &valid))
        .await
        .unwrap();
    assert_no_credentials(&metadata, "forward_token: false");
    assert_eq!(values(&metadata, "x-user-id"), ["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_that_would_smuggle_values_into_identity_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Issuer::generate("plain", Algorithm::ES256);
    let mapped = Issuer::generate("mapped", Algorithm::ES256);
    let app = App::start().await;
    let config = dev_config(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}{}",
            provider(dir.path(), "plain", &plain, ""),
            provider(
                dir.path(),
                "mapped",
                &mapped,
                ", claims: { user_id: uid, tenant_id: org.id, roles: groups }"
            )
        );
    let gatehouse = Gatehouse::start(&config);
    let mut client = crate::support::client(gatehouse.addr).await;
    let with = |issuer: &Issuer, change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = issuer.claims("alice", "acme", &["viewer"]);
        claims["uid"] = json!("alice");
        claims["org"] = json!({"id": "acme"});
        claims["groups"] = json!(["viewer"]);
        change(&mut claims);
        issuer.sign(&claims)
    };
    let role_message =
        |claim: &str| format!("claim {claim}: a role is empty or contains ',' or whitespace");
    let cases = [
        (
            "a role with a comma",
            with(&plain, &|c| c["roles"] = json!(["viewer,admin"])),
            role_message("roles"),
        ),
        (
            "a role with a space",
            with(&plain, &|c| c["roles"] = json!(["viewer admin"])),
            role_message("roles"),
        ),
        (
            "an empty sub",
            with(&plain, &|c| c["sub"] = json!("")),
            "claim sub is empty".to_owned(),
        ),
        (
            "an empty tenant",
            with(&plain, &|c| c["tenant_id"] = json!("")),
            "claim tenant_id is empty".to_owned(),
        ),
        (
            "an empty mapped user id",
            with(&mapped, &|c| c["uid"] = json!("")),
            "claim uid is empty".to_owned(),
        ),
        (
            "an empty mapped tenant",
            with(&mapped, &|c| c["org"] = json!({"id": ""})),
            "claim org.id is empty".to_owned(),
        ),
        (
            "a mapped role with a comma",
            with(&mapped, &|c| c["groups"] = json!(["viewer,admin"])),
            role_message("groups"),
        ),
    ];
    for (case, token, message) in &cases {
        let status = inspect(&mut client, with_token(InspectRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message.as_str()),
            "{case}"
        );
        assert_eq!(reason(&status), "BAD_CLAIM", "{case}");
    }
    assert_eq!(
        app.observed().calls(),
        0,
        "a smuggling token reached the app"
    );
    for issuer in [&plain, &mapped] {
        let metadata = inspect(
            &mut client,
            with_token(InspectRequest {}, &with(issuer, &|_| {})),
        )
        .await
        .unwrap();
        assert_eq!(values(&metadata, "x-user-roles"), ["viewer"]);
        assert_eq!(values(&metadata, "x-tenant-id"), ["acme"]);
    }

    // API key entries with such values never load.
    let config = dev_config(app.addr)
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: ops, sha256: \"{}\", tenant_id: \"\", roles: [ops, \"ops,admin\", \"ops admin\"] }}\n",
            hash("ops-key-0123456789")
        );
    check_refuses(
        dir.path(),
        &config,
        &[
            "auth.api_keys.keys[0].tenant_id: empty",
            "auth.api_keys.keys[0].roles[1]: \"ops,admin\"",
            "auth.api_keys.keys[0].roles[2]: \"ops admin\"",
        ],
        &["roles[0]"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_that_could_never_match_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig::new("127.0.0.1:50051".parse().unwrap())
        .allowed_peers(&["gateway", "dns:*.svc"])
        .yaml()
        + "auth:
  public_methods: [/grpc.health.v1.Health/Check, /grpc.health.v1.Health/Check*]
  api_keys: { keys_file: /nonexistent/keys.yaml }
authorization:
  rules:
    - methods: [/gatehouse.demo.v1.Demo/Fail, \"/pkg.*/Get\"]
      allow_roles: [admin]
    - methods: [\"/*/Get\", /pkg.Svc//Get, \"*\"]
      allow_peers: [\"spiffe://td/*\", \"cn:\"]
";
    check_refuses(
        dir.path(),
        &config,
        &[
            "tls.allowed_peers[0]: \"gateway\": write a URI",
            "auth.public_methods[1]: \"/grpc.health.v1.Health/Check*\": write /pkg.Service/Method",
            "authorization.rules[0].methods[1]: \"/pkg.*/Get\": write /pkg.Service/Method",
            "authorization.rules[1].methods[0]: \"/*/Get\": write /pkg.Service/Method",
            "authorization.rules[1].methods[1]: \"/pkg.Svc//Get\": write /pkg.Service/Method",
            "authorization.rules[1].allow_peers[1]: \"cn:\"",
        ],
        &[
            "tls.allowed_peers[1]",
            "auth.public_methods[0]",
            "rules[0].methods[0]",
            "rules[1].methods[2]",
            "allow_peers[0]",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_deny_a_call_no_rule_allows_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("deny", Algorithm::ES256);
    let app = App::start().await;
    let config = dev_config(app.addr)
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}authorization:
  default: deny
  rules:
    - methods: [/gatehouse.demo.v1.Demo/Fail, /gatehouse.demo.v1.Demo/Inspect]
      allow_roles: [admin]
",
            provider(dir.path(), "deny", &issuer, "")
        );
    let gatehouse = Gatehouse::start(&config);
    let mut client = crate::support::client(gatehouse.addr).await;
    let admin_token = issuer.token("root", "acme", &["admin"]);

    let metadata = inspect(&mut client, with_token(InspectRequest {}, &admin_token))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["root"]);
    let status = client
        .echo(with_token(EchoRequest::default(), &admin_token))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "permission denied for /gatehouse.demo.v1.Demo/Echo: no authorization rule allows it"
        )
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "PERMISSION_DENIED_BY_DEFAULT");
    assert_eq!(info.metadata["rule"], "default");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Echo");
    // Authentication still comes first, and public methods need no rule.
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "missing credentials")
    );
    assert_eq!(reason(&status), "MISSING_CREDENTIALS");
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");
    assert_eq!(
        app.observed().calls(),
        1,
        "only the allowed Inspect reached the app"
    );
}
