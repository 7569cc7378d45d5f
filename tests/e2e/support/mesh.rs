//! Two pods' gatehouses for outbound tests: the destination (gatehouse B, inbound, with
//! a serving certificate made with rcgen, good or broken) and the source (gatehouse A,
//! whose outbound port the app calls in plaintext), with the files they share, the
//! destination entries A is configured with, and the app's client of A's outbound port.

use std::net::SocketAddr;
use std::path::Path;

use jsonwebtoken::Algorithm;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use tonic::transport::{Channel, Endpoint};

use super::issuers::{Issuer, jwks};
use super::{
    DemoClient, Gatehouse, Identity, dev_cert, field, hash, signed_by_dev_ca, signed_by_other_ca,
};

/// The SPIFFE ID of the genuine destination's certificate.
pub const DEST_ID: &str = "spiffe://dev.gatehouse/ns/default/sa/dest";
/// The name gatehouse A dials a destination by (SNI), in every destination certificate.
pub const SERVER_NAME: &str = "dest.test";
/// The API key gatehouse B admits as `scanner`, in the mesh's `service.key` file.
pub const SERVICE_KEY: &str = "outbound-service-key-0123456789";

/// Who signs a destination certificate.
pub enum Signer {
    DevCa,
    OtherCa,
}

/// A serving certificate for `SERVER_NAME` plus `sans`, valid until `not_after`.
pub fn destination_cert(sans: Vec<SanType>, signer: Signer, not_after: (i32, u8, u8)) -> Identity {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
    params.subject_alt_names.extend(sans);
    params.distinguished_name.push(DnType::CommonName, "dest");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    match signer {
        Signer::DevCa => signed_by_dev_ca(params),
        Signer::OtherCa => signed_by_other_ca(params),
    }
}

/// A URI subject alternative name.
pub fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

/// The certificate a genuine destination presents.
pub fn genuine() -> Identity {
    destination_cert(vec![uri(DEST_ID)], Signer::DevCa, (2099, 1, 1))
}

/// Files shared by the gatehouses of one outbound test: the users' token issuer and its
/// JWKS, and the service key.
pub struct Mesh {
    pub users: Issuer,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    /// A new issuer for the users, with `jwks.json` and `service.key` written.
    pub fn new() -> Mesh {
        let mesh = Mesh {
            users: Issuer::generate("users", Algorithm::RS256),
            dir: tempfile::tempdir().unwrap(),
        };
        mesh.write("jwks.json", jwks(&[&mesh.users]).as_bytes());
        mesh.write("service.key", format!("{SERVICE_KEY}\n").as_bytes());
        mesh
    }

    /// Writes `name` in the mesh's directory and returns its path.
    fn write(&self, name: &str, content: &[u8]) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    /// Gatehouse B: inbound only, serving `cert`, checking the users' tokens and the
    /// service key, in front of `app`.
    pub fn destination(
        &self,
        name: &str,
        cert: &Identity,
        app: SocketAddr,
        otlp: &str,
    ) -> Gatehouse {
        let (cert_file, key_file) = cert.write_to(self.dir.path(), name);
        Gatehouse::start(&format!(
            "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {cert_file}
  key_file: {key_file}
  ca_file: {ca}
upstream: {{ address: {app} }}
auth:
  jwt:
    providers:
      - {{ name: users, issuer: \"{iss}\", audiences: [demo], algorithms: [RS256], jwks_file: {jwks} }}
  api_keys:
    keys:
      - {{ name: scanner, sha256: \"{hash}\" }}
telemetry: {{ service_name: {name}, log_level: 'info,gatehouse=debug'{otlp} }}
",
            cert_file = cert_file.display(),
            key_file = key_file.display(),
            ca = dev_cert("ca.crt").display(),
            iss = self.users.iss,
            jwks = self.dir.path().join("jwks.json").display(),
            hash = hash(SERVICE_KEY),
        ))
    }

    /// Gatehouse A: its own inbound side in front of `app`, and an outbound listener
    /// with `destinations` (YAML list items), presenting the development `gateway`
    /// certificate. Returns it and its outbound address.
    pub fn source(
        &self,
        app: SocketAddr,
        destinations: &[String],
        otlp: &str,
    ) -> (Gatehouse, SocketAddr) {
        self.source_presenting(
            app,
            destinations,
            otlp,
            (
                &dev_cert("client-gateway.crt"),
                &dev_cert("client-gateway.key"),
            ),
        )
    }

    /// Gatehouse A presenting the client certificate in `client` (cert, key paths).
    pub fn source_presenting(
        &self,
        app: SocketAddr,
        destinations: &[String],
        otlp: &str,
        client: (&Path, &Path),
    ) -> (Gatehouse, SocketAddr) {
        let gatehouse =
            Gatehouse::start(&self.source_config(app, destinations, otlp, client, "127.0.0.1:0"));
        let outbound = outbound_address(&gatehouse);
        (gatehouse, outbound)
    }

    /// Gatehouse A's config, its outbound listener on `listen`.
    pub fn source_config(
        &self,
        app: SocketAddr,
        destinations: &[String],
        otlp: &str,
        client: (&Path, &Path),
        listen: &str,
    ) -> String {
        format!(
            "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
upstream: {{ address: {app} }}
telemetry: {{ service_name: source, log_level: 'info,gatehouse=debug'{otlp} }}
outbound:
  listen: {listen}
  client_tls:
    cert_file: {client_cert}
    key_file: {client_key}
  destinations:
{destinations}
",
            cert = dev_cert("server.crt").display(),
            key = dev_cert("server.key").display(),
            ca = dev_cert("ca.crt").display(),
            client_cert = client.0.display(),
            client_key = client.1.display(),
            destinations = destinations.join("\n"),
        )
    }
}

/// A destination entry for gatehouse B at `addr`.
pub fn entry(name: &str, addr: SocketAddr, identity: &str, credentials: &str) -> String {
    format!(
        "    - {{ name: {name}, address: \"{addr}\", server_name: {SERVER_NAME}, identity: [\"{identity}\"], credentials: {credentials}, audience: demo }}"
    )
}

/// The outbound address a listening gatehouse logged.
pub fn outbound_address(gatehouse: &Gatehouse) -> SocketAddr {
    let output = gatehouse.output();
    let line = output
        .lines()
        .find(|line| line.contains("msg=listening"))
        .expect("the listening line");
    field(line, "outbound")
        .parse()
        .expect("an outbound address")
}

/// The app's client: plaintext HTTP/2 to the outbound port, naming `authority`.
pub async fn app_client(outbound: SocketAddr, authority: &str) -> DemoClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .expect("h2c connection to the outbound port");
    DemoClient::new(channel)
}
