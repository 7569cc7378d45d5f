//! Wires the parts together: configuration, TLS, the connection to the app, the
//! middleware chain, the listener, and shutdown on SIGTERM / SIGINT. Reading the
//! configuration is [`load`]; reload (on a change of the file, or SIGHUP), the signals
//! themselves, and waiting for certificate files written after start live beside it
//! (`app/reload.rs`, `app/signals.rs`, `app/wait.rs`).

mod load;
mod reload;
mod schema;
mod signals;
mod wait;

pub use load::{Loaded, load, load_waiting};
pub use schema::print as schema;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Readiness;
use crate::inbound::{self, Forward};
use crate::metrics::Metrics;
use crate::reload::Current;
use crate::serve::{Listener, MemoryBudget, Server, Socket};
use crate::telemetry;
use crate::telemetry::Tracing;
use crate::tls::ReloadableTls;
use crate::upstream::Upstream;
use load::{MIB, detected_memory_problem, memory_limit, sized_limits};
use reload::Reloader;
use signals::Signals;

/// Exit code for a bad configuration or bad usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for any other start-up failure.
pub const EXIT_FAILURE: u8 = 1;

/// `gatehouse check`: prints `ok` and the worst-case memory the limits allow, or every
/// problem (one per line, naming the file and the field) and returns 64.
pub fn check(path: &Path) -> ExitCode {
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let limits = &loaded.config.limits;
    if let Some(problem) = detected_memory_problem(&loaded.config) {
        eprintln!("{}: {problem}", path.display());
        return ExitCode::from(EXIT_USAGE);
    }
    for warning in loaded.config.warnings() {
        eprintln!("{}: warning: {warning}", path.display());
    }
    let schema_note = match schema::check_fields(path, &loaded.config) {
        Ok(note) => note,
        Err(code) => return code,
    };
    println!("ok");
    if let Some(note) = schema_note {
        println!("{note}");
    }
    println!(
        "worst-case memory: {}{}",
        MemoryBudget::of(limits, loaded.config.outbound.as_ref()),
        match memory_limit(limits) {
            Some((limit, from)) => format!(", limit {} MiB ({from})", limit / MIB),
            None => String::new(),
        }
    );
    if let Some(sized) = sized_limits(limits) {
        println!("{sized}");
    }
    ExitCode::SUCCESS
}

/// `gatehouse hash-key`: the SHA-256 of the key on standard input (one trailing newline
/// ignored), as the config line that stores it.
pub fn hash_key() -> ExitCode {
    use std::io::Read;
    let mut key = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut key) {
        eprintln!("hash-key: cannot read standard input: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let key = key.strip_suffix(b"\n").unwrap_or(&key);
    let key = key.strip_suffix(b"\r").unwrap_or(key);
    if key.is_empty() {
        eprintln!(
            "hash-key: no key on standard input (try: printf %s \"$KEY\" | gatehouse hash-key)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    println!(
        "sha256: \"{}\"",
        crate::sha256::to_hex(&crate::sha256::sha256(key))
    );
    ExitCode::SUCCESS
}

/// `gatehouse inject`: Kubernetes YAML from standard input to standard output, with
/// gatehouse added as a native sidecar.
pub fn inject(args: &crate::cli::InjectArgs) -> ExitCode {
    use std::io::{Read, Write};
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("inject: cannot read standard input: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    match crate::inject::inject(&input, args) {
        Ok(output) => match std::io::stdout().write_all(output.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("inject: cannot write standard output: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Err(error) => {
            eprintln!("inject: {error}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `gatehouse token`: prints a freshly signed development JWT.
pub fn token(args: &crate::cli::TokenArgs) -> ExitCode {
    match crate::auth::token::mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("token: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `gatehouse run`: serves until a signal, drains, and exits. Certificate files that do
/// not exist yet are waited for (`app/wait.rs`) instead of refused.
pub fn run(path: &Path) -> ExitCode {
    // Taken before the file is read, so a change made meanwhile is applied, not missed.
    let loaded_from = reload::fingerprint(path);
    let loaded = match load_waiting(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log_level = Arc::new(telemetry::init_logging(&loaded.config.telemetry));
    if let Some(problem) = detected_memory_problem(&loaded.config) {
        tracing::warn!(%problem, "the limits allow more memory than the cgroup gives");
    }
    if let Some(sized) = sized_limits(&loaded.config.limits) {
        tracing::info!(limits = sized, "limits left out of the file were sized");
    }
    for warning in loaded.config.warnings() {
        tracing::warn!(%warning, "configuration warning");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(serve(path, loaded, loaded_from, log_level));
    // Calls cut off by the drain timeout must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "gatehouse could not start");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Why `gatehouse run` stopped before serving (exit 1); each names the setting at fault.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{field} {address}: cannot listen: {source}")]
    Listen {
        field: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.address {address}: {source}")]
    LocalAddress {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("outbound.listen: {0}")]
    OutboundListen(#[source] crate::config::ListenError),
    /// `telemetry.otlp_endpoint` could not be set up; the message names it.
    #[error("{0}")]
    Tracing(String),
    #[error("accept loop failed: {0}")]
    AcceptLoop(#[source] tokio::task::JoinError),
}

async fn serve(
    path: &Path,
    loaded: Loaded,
    loaded_from: Option<crate::sha256::Digest>,
    log_level: Arc<telemetry::LogLevel>,
) -> Result<(), StartError> {
    let Signals {
        shutdown: mut signals,
        hangups,
    } = Signals::install();
    let Loaded {
        config,
        tls,
        authenticator,
        outbound,
        waiting_for,
    } = loaded;
    let telemetry = &config.telemetry;
    let metrics = Arc::new(Metrics::new());
    let tracing = Arc::new(match &telemetry.otlp_endpoint {
        Some(endpoint) => {
            Tracing::exporting(endpoint, telemetry, &metrics).map_err(StartError::Tracing)?
        }
        None => Tracing::propagate_only(telemetry.sample_ratio),
    });
    let authenticator = Arc::new(authenticator);
    authenticator.start().await;
    let authenticator = Arc::new(Current::new(authenticator));
    let upstream = Arc::new(Upstream::new(
        &config.upstream,
        &config.limits,
        metrics.clone(),
    ));
    let readiness = Arc::new(Readiness::new(upstream.clone(), authenticator.clone()));
    let schema = schema::start(&config, &readiness);
    // The admin port comes first: while TLS files are awaited, /readyz says which.
    let (admin_bound, stop_admin) = start_admin(telemetry, &metrics, &readiness).await?;
    let (tls, outbound) = if waiting_for.is_empty() {
        (tls, outbound)
    } else {
        match wait::tls_material_when_ready(
            &config,
            waiting_for,
            &readiness,
            admin_bound,
            &mut signals,
        )
        .await
        {
            Some(material) => (material.tls, material.outbound),
            None => {
                let _ = stop_admin.send(true);
                tracing.flush(std::time::Duration::from_secs(2)).await;
                return Ok(());
            }
        }
    };

    let address = config.listen.address;
    let tcp = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            field: "listen.address",
            address: address.to_string(),
            source,
        })?;
    let bound = tcp
        .local_addr()
        .map_err(|source| StartError::LocalAddress { address, source })?;
    let outbound_socket = match (&outbound, &config.outbound) {
        (Some(_), Some(section)) => Some(bind_outbound(section).await?),
        _ => None,
    };

    let forward = Forward::new(upstream.clone());
    let abort_inbound = tokio_util::sync::CancellationToken::new();
    let chain = inbound::build(
        inbound::Parts {
            tracing: tracing.clone(),
            metrics: metrics.clone(),
            authenticator: authenticator.clone(),
            limits: config.limits.clone(),
            contexts: outbound
                .as_ref()
                .and_then(crate::outbound::Destinations::contexts),
            schema: schema.clone(),
            abort: abort_inbound.clone(),
        },
        forward,
    );
    let server = Server::new(&config.limits, chain, metrics.clone());
    let tls = tls.map(|initial| {
        let reloadable = Arc::new(ReloadableTls::new(&config.tls, initial, metrics.clone()));
        reloadable.spawn_watcher();
        reloadable
    });
    readiness.set_tls(tls.clone());
    let listener = Listener::new(
        Socket::Tcp(tcp),
        tls.clone(),
        server,
        &config.limits,
        metrics.clone(),
    );
    Reloader {
        path: path.to_owned(),
        running: config.clone(),
        authenticator,
        tls: tls.clone(),
        log_level,
        metrics: metrics.clone(),
        loaded_from,
        schema,
    }
    .spawn(hangups);

    // Cancelled when the drain stops accepting, on every listener at once.
    let stop_accepting = tokio_util::sync::CancellationToken::new();
    let abort_outbound = tokio_util::sync::CancellationToken::new();
    let (outbound_bound, outbound_task) = match (outbound, outbound_socket) {
        (Some(destinations), Some(socket)) => {
            destinations.spawn_watchers(metrics.clone());
            let chain = crate::outbound::build(
                Arc::new(destinations),
                tracing.clone(),
                metrics.clone(),
                abort_outbound.clone(),
            );
            let bound = socket.describe();
            let server = Server::new(&config.limits, chain, metrics.clone());
            let listener = Listener::for_the_app(socket, server, &config.limits, metrics.clone());
            let task = tokio::spawn(listener.run(stop_accepting.clone()));
            (Some(bound), Some(task))
        }
        _ => (None, None),
    };
    readiness.listening.store(true, Ordering::SeqCst);
    tracing::info!(
        address = %bound,
        tls = config.tls.enabled,
        client_auth = config.tls.client_auth.as_str(),
        upstream = %config.upstream.address,
        admin = admin_bound.map(|a| a.to_string()),
        outbound = outbound_bound,
        otlp = telemetry.otlp_endpoint.as_deref(),
        "listening"
    );

    let accepting = tokio::spawn(listener.run(stop_accepting.clone()));
    let signal = signals.next().await;
    readiness.draining.store(true, Ordering::SeqCst);
    let drain_delay = config.limits.drain_delay.get();
    tracing::info!(
        signal,
        ?drain_delay,
        "draining: /readyz is unready; new connections are refused after the delay"
    );
    // A second signal at any point ends the drain: no more delay, no more waiting.
    let second_signal = tokio::select! {
        () = tokio::time::sleep(drain_delay) => None,
        signal = signals.next() => Some(signal),
    };
    stop_accepting.cancel();
    let drain = accepting.await.map_err(StartError::AcceptLoop)?;
    let outbound_drain = match outbound_task {
        Some(task) => Some(task.await.map_err(StartError::AcceptLoop)?),
        None => None,
    };
    tracing::info!("stopped accepting; GOAWAY sent, waiting for calls in flight");

    let drain_timeout = config.limits.drain_timeout.get();
    // The app's own outbound calls drain alongside the calls into it.
    let everything = async {
        drain.finished().await;
        if let Some(outbound) = &outbound_drain {
            outbound.finished().await;
        }
    };
    let second_signal = match second_signal {
        Some(signal) => Some(signal),
        None => tokio::select! {
            finished = tokio::time::timeout(drain_timeout, everything) => {
                match finished {
                    Ok(()) => tracing::info!("drained; exiting"),
                    Err(_) => tracing::warn!(?drain_timeout, "drain timeout reached; closing the calls still open"),
                }
                None
            }
            signal = signals.next() => Some(signal),
        },
    };
    if let Some(signal) = second_signal {
        tracing::warn!(signal, "second signal; closing the calls still open");
    }
    // Calls still open end with UNAVAILABLE rather than a dropped connection; give those
    // answers a moment to reach the callers.
    abort_inbound.cancel();
    abort_outbound.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain.finished()).await;
    let _ = stop_admin.send(true);
    tracing.flush(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// Binds `telemetry.admin_address`, when set, and serves the admin endpoints on it until
/// the returned sender says stop.
async fn start_admin(
    telemetry: &crate::config::Telemetry,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
) -> Result<(Option<std::net::SocketAddr>, watch::Sender<bool>), StartError> {
    let (stop_admin, admin_stopped) = watch::channel(false);
    let Some(address) = telemetry.admin_address else {
        return Ok((None, stop_admin));
    };
    let admin = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            field: "telemetry.admin_address",
            address: address.to_string(),
            source,
        })?;
    let bound = admin.local_addr().ok();
    tokio::spawn(crate::admin::serve(
        admin,
        metrics.clone(),
        readiness.clone(),
        admin_stopped,
    ));
    Ok((bound, stop_admin))
}

/// Binds `outbound.listen`, already checked to be loopback or a Unix socket path.
async fn bind_outbound(section: &crate::config::Outbound) -> Result<Socket, StartError> {
    use crate::config::OutboundListen;
    let listen = section.listen().map_err(StartError::OutboundListen)?;
    let cannot = |source| StartError::Listen {
        field: "outbound.listen",
        address: section.listen.to_string(),
        source,
    };
    match listen {
        OutboundListen::Tcp(address) => TcpListener::bind(address)
            .await
            .map(Socket::Tcp)
            .map_err(cannot),
        OutboundListen::Unix(path) => tokio::net::UnixListener::bind(&path)
            .map(Socket::Unix)
            .map_err(cannot),
    }
}
