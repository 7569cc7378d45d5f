//! X.509-SVIDs as meshes issue them (SPIRE, csi-driver-spiffe, Istio CAs): the SPIFFE ID
//! is the certificate's only SAN, with no DNS name. gatehouse serves one inbound, presents
//! one outbound, and checks a destination's by its SPIFFE ID alone.

use tonic::Code;

use crate::support::pb::*;
use crate::support::*;

const SOURCE_ID: &str = "spiffe://dev.gatehouse/ns/default/sa/source";
const DEST_ID: &str = "spiffe://dev.gatehouse/ns/prod/sa/identity";
/// The name A dials B by (SNI): in no certificate, as with a Kubernetes Service name.
const SERVICE_NAME: &str = "identity.prod.svc";

/// Gatehouse B: serves `svid` and admits only callers of the `default` namespace.
fn destination(dir: &std::path::Path, svid: &Identity, app: std::net::SocketAddr) -> Gatehouse {
    let (cert, key) = svid.write_to(dir, "dest");
    Gatehouse::start(&format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
  allowed_peers: [\"spiffe://dev.gatehouse/ns/default/sa/*\"]
upstream: {{ address: {app} }}
telemetry: {{ log_level: 'info,gatehouse=debug' }}
",
        cert = cert.display(),
        key = key.display(),
        ca = dev_cert("ca.crt").display(),
    ))
}

/// Gatehouse A: presents `svid` to the destinations (`name`, identity list) at `b`.
fn source(
    dir: &std::path::Path,
    svid: &Identity,
    app: std::net::SocketAddr,
    b: std::net::SocketAddr,
    destinations: &[(&str, &str)],
) -> (Gatehouse, std::net::SocketAddr) {
    let (cert, key) = svid.write_to(dir, "source");
    let entries: Vec<String> = destinations
        .iter()
        .map(|(name, identity)| {
            format!(
                "    - {{ name: {name}, address: \"{b}\", server_name: {SERVICE_NAME}, identity: [{identity}], credentials: none }}"
            )
        })
        .collect();
    let gatehouse = Gatehouse::start(&format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {server_cert}
  key_file: {server_key}
  ca_file: {ca}
upstream: {{ address: {app} }}
telemetry: {{ log_level: 'info,gatehouse=debug' }}
outbound:
  listen: 127.0.0.1:0
  client_tls: {{ cert_file: {cert}, key_file: {key} }}
  destinations:
{entries}
",
        server_cert = dev_cert("server.crt").display(),
        server_key = dev_cert("server.key").display(),
        ca = dev_cert("ca.crt").display(),
        cert = cert.display(),
        key = key.display(),
        entries = entries.join("\n"),
    ));
    let outbound = outbound_address(&gatehouse);
    (gatehouse, outbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_with_only_a_uri_san_are_accepted_both_ways_and_checked_by_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let b = destination(dir.path(), &svid(DEST_ID), app.addr);
    let (a, outbound) = source(
        dir.path(),
        &svid(SOURCE_ID),
        app.addr,
        b.addr,
        &[
            ("identity", &format!("\"{DEST_ID}\"")),
            (
                "impostor-check",
                "\"spiffe://dev.gatehouse/ns/prod/sa/billing\"",
            ),
            // A dns: entry keeps the DNS-name check, which this certificate cannot pass.
            (
                "by-dns-name",
                &format!("\"dns:{SERVICE_NAME}\", \"{DEST_ID}\""),
            ),
        ],
    );

    // Outbound: B's SVID passes on its SPIFFE ID; inbound: B admits A's SVID, and its
    // app is told who called.
    let mut client = app_client(outbound, "identity").await;
    let seen = inspect(&mut client, tonic::Request::new(InspectRequest {}))
        .await
        .expect("a call between two SVID-only pods");
    let xfcc = values(&seen, "x-forwarded-client-cert").join("");
    assert!(xfcc.contains(&format!("URI={SOURCE_ID}")), "{xfcc}");
    assert!(!xfcc.contains("DNS="), "{xfcc}");
    assert_eq!(values(&seen, "x-auth-method"), ["mtls"], "{seen:?}");
    let line = a
        .wait_for_line(&["msg=outbound", "destination=identity ", "grpc_code=OK"])
        .await;
    assert_eq!(field(&line, "peer"), DEST_ID);

    // A certificate that verifies but carries another SPIFFE ID is still refused.
    let mut client = app_client(outbound, "impostor-check").await;
    let status = client.inspect(InspectRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "IDENTITY_MISMATCH");
    assert!(status.message().contains(DEST_ID), "{}", status.message());

    let mut client = app_client(outbound, "by-dns-name").await;
    let status = client.inspect(InspectRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UPSTREAM_TLS", "{}", status.message());
    assert!(
        status.message().contains("not valid for name"),
        "{}",
        status.message()
    );
    assert_eq!(app.observed().calls(), 1, "only the genuine call arrived");
}
