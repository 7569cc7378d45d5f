//! Authentication and identity through the real binary: every refusal in the token table,
//! each algorithm family, API keys, forged identity headers, remote key sets and
//! authorization rules.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tonic::Code;
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::support::issuers::*;
use crate::support::pb::*;
use crate::support::*;

/// Keys and files for one gatehouse under test.
struct Fixture {
    rs: Issuer,
    ps: Issuer,
    es: Issuer,
    ed: Issuer,
    hs: Issuer,
    dir: tempfile::TempDir,
}

const SCANNER_KEY: &str = "scanner-key-0123456789";
const OPS_KEY: &str = "ops-key-0123456789";
const FILE_KEY: &str = "file-key-0123456789";

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            rs: Issuer::generate("rs", Algorithm::RS256),
            ps: Issuer::generate("ps", Algorithm::PS256),
            es: Issuer::generate("es", Algorithm::ES256),
            ed: Issuer::generate("ed", Algorithm::EdDSA),
            hs: Issuer::generate("hs", Algorithm::HS256),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.yaml")
    }

    /// The config: five providers (one per family), inline and file API keys, and a
    /// rule making `Fail` an admin method. `extra` is appended under `auth:`.
    fn config(&self, app: std::net::SocketAddr, extra_providers: &str) -> String {
        let jwks_provider = |name: &str, issuer: &Issuer, alg: &str| {
            let file = self.file(&format!("{name}.json"), jwks(&[issuer]).as_bytes());
            format!(
                "      - {{ name: {name}, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [{alg}], jwks_file: \"{file}\" }}\n",
                issuer.iss
            )
        };
        let secret = self.file("hs.secret", &self.hs.material);
        if !self.keys_file().exists() {
            write_keys_file(&self.keys_file(), &[("from-file", FILE_KEY)]);
        }
        let providers = [
            jwks_provider("rs", &self.rs, "RS256"),
            jwks_provider("ps", &self.ps, "PS256"),
            jwks_provider("es", &self.es, "ES256"),
            jwks_provider("ed", &self.ed, "EdDSA"),
            format!(
                "      - {{ name: hs, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [HS256], secret_file: \"{secret}\", forward_token: false }}\n",
                self.hs.iss
            ),
        ]
        .concat();
        dev_config(app)
            + &format!(
                "auth:
  jwt:
    providers:
{providers}{extra_providers}  api_keys:
    keys:
      - {{ name: scanner, sha256: \"{}\", tenant_id: acme, roles: [scanner] }}
      - {{ name: ops-key, sha256: \"{}\" }}
    keys_file: \"{}\"
authorization:
  rules:
    - methods: [/gatehouse.demo.v1.Demo/Fail]
      allow_roles: [admin]
      allow_api_keys: [ops-key]
      allow_peers: [spiffe://dev.gatehouse/ns/default/sa/compliance-scanner]
",
                hash(SCANNER_KEY),
                hash(OPS_KEY),
                self.keys_file().display()
            )
    }
}

/// Adds every spelling of forged identity headers a caller might try.
fn forge<T>(request: &mut tonic::Request<T>) {
    let metadata = request.metadata_mut();
    for name in [
        "x-tenant-id",
        "x_tenant_id",
        "x-user-id",
        "x-user-roles",
        "x-auth-method",
        "x-api-key-name",
        "x-forwarded-client-cert",
    ] {
        metadata.insert(
            MetadataKey::from_bytes(name.as_bytes()).unwrap(),
            "forged".parse().unwrap(),
        );
    }
    metadata.insert_bin("x-tenant-id-bin", MetadataValue::from_bytes(b"forged"));
}

fn assert_identity_not_forged(metadata: &[(String, String)]) {
    for (key, value) in metadata {
        assert_ne!(
            value, "forged",
            "forged {key} reached the app: {metadata:?}"
        );
        assert!(
            !key.contains('_') && !key.ends_with("-id-bin"),
            "{key} reached the app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_every_bad_token_with_unauthenticated_and_never_calls_the_app() {
    let fixture = Fixture::new();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&fixture.config(app.addr, ""));
    let mut client = client(gatehouse.addr).await;
    let rs = &fixture.rs;
    let good = rs.token("alice", "acme", &["admin"]);
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let b64 = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap());
    let claims_with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = rs.claims("alice", "acme", &["admin"]);
        change(&mut claims);
        claims
    };
    let now = jsonwebtoken::get_current_timestamp();
    let stranger = Issuer::generate("stranger", Algorithm::RS256);
    let mut impostor = Issuer::generate("impostor", Algorithm::RS256);
    impostor.iss = rs.iss.clone();
    impostor.kid = rs.kid.clone();
    // HS256 keyed with the RSA public key: the classic algorithm confusion.
    let public_key_pem = rs.jwk();
    let confused = {
        let secret = serde_json::to_vec(&public_key_pem).unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(rs.kid.clone());
        jsonwebtoken::encode(
            &header,
            &rs.claims("alice", "acme", &["admin"]),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };

    // Headers that point at keys (jku, x5u) or embed one (jwk) are never used.
    let self_keyed = {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(rs.kid.clone());
        header.jwk = Some(impostor.jwk());
        header.jku = Some(format!("https://127.0.0.1:{}/jwks", gatehouse.addr.port()));
        header.x5u = Some("https://127.0.0.1:1/cert.pem".to_owned());
        impostor.sign_with_header(header, &rs.claims("alice", "acme", &["admin"]))
    };

    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "jku, x5u and an embedded jwk",
            self_keyed,
            "bad signature",
            "BAD_SIGNATURE",
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(json!({"alg": "none", "typ": "JWT"}))),
            "algorithm not allowed",
            "BAD_ALGORITHM",
        ),
        (
            "HS256 with the RSA public key",
            confused,
            "algorithm not allowed",
            "BAD_ALGORITHM",
        ),
        (
            "signed by an unknown key",
            impostor.sign(&rs.claims("alice", "acme", &[])),
            "bad signature",
            "BAD_SIGNATURE",
        ),
        (
            "unknown key id",
            {
                let mut other = rs.rotated("never-published");
                other.iss = rs.iss.clone();
                other.token("alice", "acme", &[])
            },
            "unknown key id",
            "UNKNOWN_KEY_ID",
        ),
        (
            "unknown issuer",
            stranger.token("alice", "acme", &[]),
            "wrong issuer",
            "WRONG_ISSUER",
        ),
        (
            "expired beyond the leeway",
            rs.sign(&claims_with(&|c| c["exp"] = json!(now - 120))),
            "token expired",
            "TOKEN_EXPIRED",
        ),
        (
            "nbf in the future",
            rs.sign(&claims_with(&|c| c["nbf"] = json!(now + 3600))),
            "token not yet valid",
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "wrong aud",
            rs.sign(&claims_with(&|c| c["aud"] = json!("other-service"))),
            "wrong audience",
            "WRONG_AUDIENCE",
        ),
        (
            "missing exp",
            rs.sign(&claims_with(&|c| {
                drop(c.as_object_mut().unwrap().remove("exp"))
            })),
            "token has no exp claim",
            "MISSING_CLAIM",
        ),
        (
            "missing sub",
            rs.sign(&claims_with(&|c| {
                drop(c.as_object_mut().unwrap().remove("sub"))
            })),
            "token has no sub claim",
            "MISSING_CLAIM",
        ),
        (
            "exp as a string",
            rs.sign(&claims_with(&|c| c["exp"] = json!((now + 600).to_string()))),
            "exp",
            "MISSING_CLAIM",
        ),
        (
            "missing tenant",
            rs.sign(&claims_with(&|c| {
                drop(c.as_object_mut().unwrap().remove("tenant_id"))
            })),
            "tenant_id",
            "MISSING_TENANT",
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{signature}",
                b64(claims_with(&|c| c["roles"] = json!(["root"])))
            ),
            "bad signature",
            "BAD_SIGNATURE",
        ),
        (
            "tampered signature",
            format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode([7u8; 256])),
            "bad signature",
            "BAD_SIGNATURE",
        ),
        (
            "oversized",
            format!("{head}.{}.{signature}", "A".repeat(9000)),
            "token too large",
            "TOKEN_TOO_LARGE",
        ),
        (
            "two segments",
            format!("{head}.{payload}"),
            "malformed token",
            "MALFORMED_TOKEN",
        ),
        (
            "four segments",
            format!("{good}.extra"),
            "malformed token",
            "MALFORMED_TOKEN",
        ),
        (
            "garbage",
            "not a token at all".to_owned(),
            "malformed token",
            "MALFORMED_TOKEN",
        ),
    ];
    for (case, token, message, why) in &cases {
        let status = inspect(&mut client, with_token(InspectRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(reason(&status), *why, "{case}");
        assert!(
            status.message().contains(message),
            "{case}: expected {message:?}, got {:?}",
            status.message()
        );
    }

    let status = inspect(&mut client, tonic::Request::new(InspectRequest {}))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "missing credentials")
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "MISSING_CREDENTIALS");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Inspect");

    let mut basic = tonic::Request::new(InspectRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6c2VjcmV0".parse().unwrap());
    let status = inspect(&mut client, basic).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "MALFORMED_TOKEN");

    let mut both = with_token(InspectRequest {}, &good);
    both.metadata_mut()
        .insert("x-api-key", SCANNER_KEY.parse().unwrap());
    let status = inspect(&mut client, both).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("both"), "{status:?}");
    assert_eq!(reason(&status), "AMBIGUOUS_CREDENTIALS");

    let mut twice = with_token(InspectRequest {}, &good);
    twice.metadata_mut().append("authorization", bearer(&good));
    let status = inspect(&mut client, twice).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("more than one"), "{status:?}");
    assert_eq!(reason(&status), "AMBIGUOUS_CREDENTIALS");

    let status = inspect(&mut client, with_key(InspectRequest {}, "not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "unknown API key")
    );
    assert_eq!(reason(&status), "UNKNOWN_API_KEY");

    assert_eq!(app.observed().calls(), 0, "a refused call reached the app");
    let allowed = inspect(&mut client, with_token(InspectRequest {}, &good))
        .await
        .unwrap();
    assert_eq!(values(&allowed, "x-user-id"), ["alice"]);
    assert_eq!(app.observed().calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_of_every_family_reach_the_app_with_verified_identity() {
    let fixture = Fixture::new();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&fixture.config(app.addr, ""));
    let mut client = client(gatehouse.addr).await;
    for issuer in [
        &fixture.rs,
        &fixture.ps,
        &fixture.es,
        &fixture.ed,
        &fixture.hs,
    ] {
        let token = issuer.token(
            &format!("user-of-{:?}", issuer.alg),
            "globex",
            &["reader", "writer"],
        );
        let mut request = with_token(InspectRequest {}, &token);
        forge(&mut request);
        let metadata = inspect(&mut client, request)
            .await
            .unwrap_or_else(|status| panic!("{:?}: {status:?}", issuer.alg));
        assert_eq!(
            values(&metadata, "x-user-id"),
            [format!("user-of-{:?}", issuer.alg).as_str()]
        );
        assert_eq!(values(&metadata, "x-tenant-id"), ["globex"]);
        assert_eq!(values(&metadata, "x-user-roles"), ["reader,writer"]);
        assert_eq!(values(&metadata, "x-auth-method"), ["jwt"]);
        assert!(values(&metadata, "x-api-key-name").is_empty());
        let client_cert = values(&metadata, "x-forwarded-client-cert");
        assert!(
            client_cert[0].contains("URI=spiffe://dev.gatehouse/ns/default/sa/gateway"),
            "{client_cert:?}"
        );
        assert_identity_not_forged(&metadata);
        // The hs provider says forward_token: false.
        let forwarded = values(&metadata, "authorization");
        if issuer.alg == Algorithm::HS256 {
            assert!(forwarded.is_empty(), "the token was forwarded");
        } else {
            assert_eq!(forwarded, [format!("Bearer {token}").as_str()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_service_callers_and_a_keys_file_change_revokes_them() {
    let fixture = Fixture::new();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&fixture.config(app.addr, ""));
    let mut client = client(gatehouse.addr).await;

    let mut request = with_key(InspectRequest {}, SCANNER_KEY);
    forge(&mut request);
    let metadata = inspect(&mut client, request).await.unwrap();
    assert_eq!(values(&metadata, "x-api-key-name"), ["scanner"]);
    assert_eq!(
        values(&metadata, "x-tenant-id"),
        ["acme"],
        "the key's tenant overrides the forged one"
    );
    assert_eq!(values(&metadata, "x-user-roles"), ["scanner"]);
    assert_eq!(values(&metadata, "x-auth-method"), ["api_key"]);
    assert!(
        values(&metadata, "x-api-key").is_empty(),
        "the API key was forwarded"
    );
    assert!(values(&metadata, "x-user-id").is_empty());
    assert_identity_not_forged(&metadata);

    let metadata = inspect(&mut client, with_key(InspectRequest {}, FILE_KEY))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-api-key-name"), ["from-file"]);

    // Rotate: the file is replaced by one holding a different key. The reload that counts
    // is the one with all three keys (two inline, one from the file), and it is logged
    // after it is applied.
    let rotated = ["API keys reloaded", "keys=3"];
    let reloads = gatehouse.count_lines(&rotated);
    write_keys_file(
        &fixture.keys_file(),
        &[("rotated", "rotated-key-0123456789")],
    );
    gatehouse.wait_for_nth_line(&rotated, reloads + 1).await;
    let status = inspect(&mut client, with_key(InspectRequest {}, FILE_KEY))
        .await
        .expect_err("the revoked key still works");
    assert_eq!(status.code(), Code::Unauthenticated);
    // Admitted after the reload, so refused at admission rather than ended by it.
    assert_eq!(reason(&status), "UNKNOWN_API_KEY");
    let metadata = inspect(
        &mut client,
        with_key(InspectRequest {}, "rotated-key-0123456789"),
    )
    .await
    .unwrap();
    assert_eq!(values(&metadata, "x-api-key-name"), ["rotated"]);

    // A broken file keeps the last good keys.
    let refusals = gatehouse.count_lines(&["API keys file refused"]);
    std::fs::write(
        fixture.keys_file(),
        "keys: [{ name: broken, sha256: nope }]",
    )
    .unwrap();
    gatehouse
        .wait_for_nth_line(&["API keys file refused"], refusals + 1)
        .await;
    assert!(
        inspect(
            &mut client,
            with_key(InspectRequest {}, "rotated-key-0123456789")
        )
        .await
        .is_ok()
    );
    assert!(
        inspect(&mut client, with_key(InspectRequest {}, SCANNER_KEY))
            .await
            .is_ok(),
        "inline keys stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_never_reaches_the_app_on_public_methods_or_in_trailers() {
    let fixture = Fixture::new();
    let app = App::start().await;
    let config = fixture.config(app.addr, "").edit(
        "auth:\n  jwt:",
        "auth:\n  public_methods: [/grpc.health.v1.Health/Check, /gatehouse.demo.v1.Demo/Inspect]\n  jwt:",
    );
    let gatehouse = Gatehouse::start(&config);
    let mut client = client(gatehouse.addr).await;

    let mut request = tonic::Request::new(InspectRequest {});
    forge(&mut request);
    let metadata = inspect(&mut client, request).await.unwrap();
    assert_eq!(values(&metadata, "x-auth-method"), ["none"]);
    assert!(
        values(&metadata, "x-tenant-id").is_empty() && values(&metadata, "x-user-id").is_empty()
    );
    assert_identity_not_forged(&metadata);

    // Request trailers: a client stream whose trailers carry a forged tenant.
    let mut forged = http::HeaderMap::new();
    forged.insert("x-tenant-id", "forged".parse().unwrap());
    forged.insert("x-custom-trailer", "kept".parse().unwrap());
    let reply = collect_with_trailers(
        gatehouse.addr,
        &fixture.rs.token("alice", "acme", &[]),
        forged,
    )
    .await;
    let trailers = pairs(reply.trailers);
    assert_eq!(
        values(&trailers, "x-custom-trailer"),
        ["kept"],
        "{trailers:?}"
    );
    assert!(
        values(&trailers, "x-tenant-id").is_empty(),
        "a forged trailer reached the app: {trailers:?}"
    );
    assert_eq!(reply.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_rules_allow_by_role_key_or_peer_and_refuse_the_rest() {
    let fixture = Fixture::new();
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&fixture.config(app.addr, ""));
    let mut client = client(gatehouse.addr).await;
    // Fail answers with the status asked for: NotFound means the call got through.
    let fail = || FailRequest {
        code: 5,
        message: "reached the app".into(),
    };

    let admin = fixture.rs.token("root", "acme", &["admin"]);
    assert_eq!(
        client
            .fail(with_token(fail(), &admin))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .fail(with_key(fail(), OPS_KEY))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let reader = fixture.rs.token("bob", "acme", &["reader"]);
    let status = client.fail(with_token(fail(), &reader)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("/gatehouse.demo.v1.Demo/Fail"),
        "{status:?}"
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "PERMISSION_DENIED_BY_RULE");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Fail");
    assert_eq!(info.metadata["rule"], "0");
    let status = client
        .fail(with_key(fail(), SCANNER_KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "PERMISSION_DENIED_BY_RULE");
    // Other methods have no rule: any authenticated caller.
    assert!(
        client
            .echo(with_token(EchoRequest::default(), &reader))
            .await
            .is_ok()
    );

    // The same reader from the compliance-scanner workload is allowed by its certificate.
    let channel = channel(
        gatehouse.addr,
        Some(Identity::dev("client-compliance-scanner")),
    )
    .await
    .unwrap();
    let mut scanner = DemoClient::new(channel);
    assert_eq!(
        scanner
            .fail(with_token(fail(), &reader))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peers_limits_which_certificates_may_call_at_all() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .allowed_peers(&["spiffe://dev.gatehouse/ns/*/sa/gateway"])
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let mut gateway = client(gatehouse.addr).await;
    let metadata = inspect(&mut gateway, tonic::Request::new(InspectRequest {}))
        .await
        .unwrap();
    assert_eq!(values(&metadata, "x-auth-method"), ["mtls"]);

    let channel = channel(
        gatehouse.addr,
        Some(Identity::dev("client-compliance-scanner")),
    )
    .await
    .unwrap();
    let status = DemoClient::new(channel)
        .inspect(InspectRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "PEER_NOT_ALLOWED");
    assert_eq!(app.observed().calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_rotates_survives_the_issuer_going_down_and_bounds_refetches() {
    let fixture = Fixture::new();
    let server = JwksServer::start().await;
    let rotating = Issuer::generate("rotating", Algorithm::ES256);
    let flooded = Issuer::generate("flooded", Algorithm::ES256);
    server.publish("/rotating", jwks(&[&rotating]));
    server.publish("/flooded", jwks(&[&flooded]));
    let ca = dev_cert("ca.crt").display().to_string();
    let remote = |name: &str, issuer: &Issuer, extra: &str| {
        format!(
            "      - {{ name: {name}, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [ES256], jwks_url: \"{}\", jwks_ca_file: \"{ca}\"{extra} }}\n",
            issuer.iss,
            server.url(&format!("/{name}"))
        )
    };
    let providers = remote(
        "rotating",
        &rotating,
        ", refresh_interval: 1s, min_refresh_interval: 100ms",
    ) + &remote("flooded", &flooded, ", min_refresh_interval: 1h");
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&fixture.config(app.addr, &providers));
    let mut client = client(gatehouse.addr).await;

    // Loaded at start.
    let metadata = inspect(
        &mut client,
        with_token(InspectRequest {}, &rotating.token("r1", "acme", &[])),
    )
    .await
    .unwrap();
    assert_eq!(values(&metadata, "x-user-id"), ["r1"]);

    // Rotation: a token signed by a key published after start works once refetched.
    let next = rotating.rotated("rotating-2");
    server.publish("/rotating", jwks(&[&rotating, &next]));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match inspect(
            &mut client,
            with_token(InspectRequest {}, &next.token("r2", "acme", &[])),
        )
        .await
        {
            Ok(metadata) => {
                assert_eq!(values(&metadata, "x-user-id"), ["r2"]);
                break;
            }
            Err(status) => {
                assert!(status.message().contains("unknown key id"), "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the rotated key was never fetched"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }

    // The issuer goes down: background refreshes fail, the last good keys keep serving.
    server.set_down(true);
    let fetched = server.fetches("/rotating");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.fetches("/rotating") < fetched + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh was attempted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for user in ["down-1", "down-2"] {
        let metadata = inspect(
            &mut client,
            with_token(InspectRequest {}, &next.token(user, "acme", &[])),
        )
        .await
        .unwrap();
        assert_eq!(values(&metadata, "x-user-id"), [user]);
    }
    server.set_down(false);

    // A flood of made-up key ids: the rate limit allows no fetch beyond the first.
    let before = server.fetches("/flooded");
    assert_eq!(before, 1, "fetched once at start");
    for i in 0..50 {
        let mut fake = flooded.rotated(&format!("made-up-{i}"));
        fake.iss = flooded.iss.clone();
        let status = inspect(
            &mut client,
            with_token(InspectRequest {}, &fake.token("x", "acme", &[])),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(&status), "UNKNOWN_KEY_ID");
    }
    assert_eq!(
        server.fetches("/flooded"),
        before,
        "made-up key ids caused fetches"
    );
}
