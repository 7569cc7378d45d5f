//! The compliance service's export job in the outbound chain example (`examples/chain/run`).
//!
//! It holds no certificate, no key and no CA: it dials its own gatehouse's outbound port in
//! plaintext and names each destination in `:authority`. The demo app plays the three
//! services it calls, with these RPCs standing in for theirs:
//!
//! | step             | destination      | demo RPC                   |
//! |------------------|------------------|----------------------------|
//! | `GetUser`        | identity-service | `Inspect` (unary)          |
//! | `ListUserRoles`  | identity-service | `Inspect` (unary)          |
//! | `GetProfile`     | profile-service  | `Inspect` (unary)          |
//! | `ExportAuditLogs`| audit-service    | `Countdown` (server stream)|
//!
//! `Inspect` answers with the metadata the destination app received, so the job prints
//! each hop's identity exactly as that app saw it. Every call carries one `traceparent`;
//! the job fails unless each destination received that same trace id, and unless none of
//! them received the identity headers the job forges on purpose (gatehouse strips them on
//! the way out and the destination's gatehouse sets verified ones).
//!
//!     chain-compliance --outbound 127.0.0.1:15001 --token "$TOKEN" --csv export.csv
//!     chain-compliance --outbound 127.0.0.1:15001 --scan --csv scan.csv
//!
//! With `--token` the user's token is relayed (`credentials: relay`); with `--scan` there is
//! no user and the job calls the `…-scan` destinations, to which gatehouse attaches the
//! scanner's API key from a file the job cannot read (`credentials: {api_key_file}`).

#[path = "../demo-app/service.rs"]
mod service;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use service::pb::demo_client::DemoClient;
use service::pb::{CountdownRequest, InspectRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "The compliance export job of gatehouse's outbound chain example")]
struct Args {
    /// The compliance service's gatehouse outbound port (plaintext HTTP/2 on loopback).
    #[arg(long)]
    outbound: SocketAddr,
    /// The user's bearer token, relayed to every destination.
    #[arg(long, conflicts_with = "scan", required_unless_present = "scan")]
    token: Option<String>,
    /// A scheduled scan: no user, the `…-scan` destinations, gatehouse attaches the API key.
    #[arg(long)]
    scan: bool,
    /// Where the audit export is written, one CSV row per streamed record as it arrives.
    #[arg(long)]
    csv: PathBuf,
    /// How many audit records to stream.
    #[arg(long, default_value_t = 20)]
    records: u32,
}

/// What went wrong, with the step it went wrong in.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connecting to the outbound port {0}: {1}")]
    Connect(SocketAddr, #[source] tonic::transport::Error),
    #[error("{step} ({destination}): {status}")]
    Call {
        step: &'static str,
        destination: String,
        #[source]
        status: tonic::Status,
    },
    #[error("{step} ({destination}): {problem}")]
    Seen {
        step: &'static str,
        destination: String,
        problem: String,
    },
    #[error("{0}: {1}")]
    Csv(PathBuf, #[source] std::io::Error),
    #[error("no random bytes for the trace id: {0}")]
    Random(String),
}

/// The identity headers the job forges on every call. They must never arrive.
const FORGED_USER: &str = "mallory";

struct Job {
    args: Args,
    /// `Bearer TOKEN`, checked once at start: a token that is not ASCII is a usage error.
    authorization: Option<MetadataValue<Ascii>>,
    trace_id: String,
    traceparent: String,
}

impl Job {
    fn destination(&self, service: &str) -> String {
        if self.args.scan {
            format!("{service}-scan")
        } else {
            service.to_owned()
        }
    }

    /// A channel to the outbound port that names `destination` in `:authority`.
    async fn client(&self, destination: &str) -> Result<DemoClient<Channel>, ExportError> {
        let outbound = self.args.outbound;
        let origin = format!("http://{destination}")
            .parse()
            .map_err(|_| ExportError::Seen {
                step: "connect",
                destination: destination.to_owned(),
                problem: "not a valid authority".to_owned(),
            })?;
        let channel = Endpoint::from_shared(format!("http://{outbound}"))
            .map_err(|error| ExportError::Connect(outbound, error))?
            .origin(origin)
            .connect()
            .await
            .map_err(|error| ExportError::Connect(outbound, error))?;
        Ok(DemoClient::new(channel))
    }

    /// A request with the trace, the user's token (unless scanning) and forged identity.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(
            "traceparent",
            self.traceparent.parse().expect("hex and dashes are ASCII"),
        );
        // A compromised or careless app might try to speak for someone else.
        metadata.insert("x-user-id", FORGED_USER.parse().expect("ASCII"));
        metadata.insert("x-api-key-name", FORGED_USER.parse().expect("ASCII"));
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        request
    }

    /// Calls Inspect on `service` and prints the identity its app received.
    async fn inspect(&self, step: &'static str, service: &str) -> Result<(), ExportError> {
        let destination = self.destination(service);
        let mut client = self.client(&destination).await?;
        let reply = client
            .inspect(self.request(InspectRequest {}))
            .await
            .map_err(|status| ExportError::Call {
                step,
                destination: destination.clone(),
                status,
            })?;
        let seen: Vec<(String, String)> = reply
            .into_inner()
            .metadata
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect();
        let one = |key: &str| {
            seen.iter()
                .find(|(k, _)| k == key)
                .map_or("-", |(_, v)| v.as_str())
        };
        let problem = |problem: String| ExportError::Seen {
            step,
            destination: destination.clone(),
            problem,
        };
        let trace = one("traceparent").split('-').nth(1).unwrap_or("-");
        if trace != self.trace_id {
            return Err(problem(format!(
                "the app saw trace id {trace}, not {}",
                self.trace_id
            )));
        }
        if seen.iter().any(|(_, value)| value == FORGED_USER) {
            return Err(problem(
                "the app received the forged identity header".to_owned(),
            ));
        }
        // The destination's gatehouse describes the caller's certificate in XFCC.
        let peer = one("x-forwarded-client-cert")
            .split(';')
            .find_map(|part| part.strip_prefix("URI="))
            .unwrap_or("-");
        println!(
            "{step:<16} {destination:<22} x-user-id={} x-tenant-id={} x-user-roles={} x-api-key-name={} x-auth-method={} peer={peer} trace_id={trace}",
            one("x-user-id"),
            one("x-tenant-id"),
            one("x-user-roles"),
            one("x-api-key-name"),
            one("x-auth-method"),
        );
        Ok(())
    }

    /// Streams the audit log and writes each record to the CSV file as it arrives.
    async fn export_audit_logs(&self) -> Result<u32, ExportError> {
        let step = "ExportAuditLogs";
        let destination = self.destination("audit-service");
        let csv_error = |error| ExportError::Csv(self.args.csv.clone(), error);
        let mut csv =
            std::io::BufWriter::new(std::fs::File::create(&self.args.csv).map_err(csv_error)?);
        writeln!(csv, "sequence,record,payload_bytes").map_err(csv_error)?;
        let mut client = self.client(&destination).await?;
        let call_error = |status| ExportError::Call {
            step,
            destination: destination.clone(),
            status,
        };
        let mut stream = client
            .countdown(self.request(CountdownRequest {
                count: self.args.records,
                payload_size: 256,
                interval_millis: 0,
                end_code: 0,
                end_message: String::new(),
            }))
            .await
            .map_err(call_error)?
            .into_inner();
        let mut rows = 0;
        while let Some(record) = stream.message().await.map_err(call_error)? {
            writeln!(
                csv,
                "{},{},{}",
                record.sequence,
                record.message.replace(',', ";"),
                record.payload.len()
            )
            .map_err(csv_error)?;
            // Flushed per record: the export is written while the stream is still open.
            csv.flush().map_err(csv_error)?;
            rows += 1;
        }
        println!(
            "{step:<16} {destination:<22} {rows} records streamed into {}",
            self.args.csv.display()
        );
        Ok(rows)
    }

    async fn run(&self) -> Result<(), ExportError> {
        println!("trace_id={}", self.trace_id);
        self.inspect("GetUser", "identity-service").await?;
        self.inspect("ListUserRoles", "identity-service").await?;
        self.inspect("GetProfile", "profile-service").await?;
        let rows = self.export_audit_logs().await?;
        if rows != self.args.records {
            return Err(ExportError::Seen {
                step: "ExportAuditLogs",
                destination: self.destination("audit-service"),
                problem: format!("{rows} of {} records arrived", self.args.records),
            });
        }
        Ok(())
    }
}

fn random_hex<const N: usize>() -> Result<String, ExportError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|error| ExportError::Random(error.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let authorization = match args.token.as_deref().map(|t| format!("Bearer {t}").parse()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            eprintln!("chain-compliance: --token: not a token (printable ASCII only)");
            return std::process::ExitCode::from(64);
        }
    };
    let ids = random_hex::<16>().and_then(|trace| Ok((trace, random_hex::<8>()?)));
    let (trace_id, span_id) = match ids {
        Ok(ids) => ids,
        Err(error) => {
            eprintln!("chain-compliance: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    let job = Job {
        args,
        authorization,
        trace_id,
        traceparent,
    };
    match job.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chain-compliance: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
