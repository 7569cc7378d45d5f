//! Starting: the parts every chain shares (metrics, tracing, the authenticator, the
//! connection to the app, readiness, the app's schema, `limits.global`), the admin port, waiting for
//! certificate files that do not exist yet, then the inbound and outbound chains on
//! their listeners and the reloader that follows the config file. What runs at the end
//! is handed to the drain (`shutdown.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::signal::unix::Signal;

use super::bind::{self, StartError};
use super::load::{Loaded, TlsMaterial};
use super::reload::Reloader;
use super::shutdown::{Serving, Shutdown};
use super::signals::ShutdownSignals;
use super::wait;
use crate::admin::Readiness;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::inbound::{self, Forward};
use crate::limits::GlobalLimiter;
use crate::metrics::Metrics;
use crate::reload::Current;
use crate::serve::{Listener, Server, Socket};
use crate::telemetry::{LogLevel, Tracing};
use crate::tls::ReloadableTls;
use crate::upstream::Upstream;

/// Where the configuration came from, and how it may change while serving.
pub(super) struct Source {
    pub path: PathBuf,
    /// The file's SHA-256, taken before it was read (see [`Reloader::loaded_from`]).
    pub loaded_from: Option<crate::sha256::Digest>,
    pub log_level: Arc<LogLevel>,
    /// SIGHUP, when its handler is installed.
    pub hangups: Option<Signal>,
}

/// The parts shared by both chains, the reloader and the admin port.
struct Shared {
    config: Config,
    metrics: Arc<Metrics>,
    tracing: Arc<Tracing>,
    authenticator: Arc<Current<Authenticator>>,
    upstream: Arc<Upstream>,
    readiness: Arc<Readiness>,
    schema: Option<Arc<crate::learn::AppSchema>>,
    /// `limits.global`, when configured: budgets shared with the other replicas.
    global: Option<Arc<GlobalLimiter>>,
}

/// Starts everything; `None` when a stop signal came while certificate files were
/// awaited (nothing was served, nothing to drain).
pub(super) async fn start(
    source: Source,
    loaded: Loaded,
    signals: &mut ShutdownSignals,
    shutdown: &Shutdown,
) -> Result<Option<Serving>, StartError> {
    let Loaded {
        config,
        tls,
        authenticator,
        outbound,
        waiting_for,
        global,
    } = loaded;
    let shared = shared(config, authenticator, global).await?;
    let telemetry = &shared.config.telemetry;
    // The admin port comes first: while TLS files are awaited, /readyz says which.
    let admin = bind::admin(
        telemetry,
        &shared.metrics,
        &shared.readiness,
        shutdown.process(),
    )
    .await?;
    let material = if waiting_for.is_empty() {
        TlsMaterial { tls, outbound }
    } else {
        let waited = wait::tls_material_when_ready(
            &shared.config,
            waiting_for,
            &shared.readiness,
            admin,
            signals,
        )
        .await;
        match waited {
            Some(material) => material,
            None => {
                shared
                    .tracing
                    .flush(std::time::Duration::from_secs(2))
                    .await;
                return Ok(None);
            }
        }
    };
    let serving = listen(source, shared, material, admin, shutdown).await?;
    Ok(Some(serving))
}

/// Metrics, tracing, the authenticator, the connection to the app, readiness and the
/// learning of the app's schema; `limits.global`'s limiter, not connected yet.
async fn shared(
    config: Config,
    authenticator: Authenticator,
    global: Option<GlobalLimiter>,
) -> Result<Shared, StartError> {
    let telemetry = &config.telemetry;
    // limits.global: its metrics join the others on the admin port.
    let global = global.map(Arc::new);
    let metrics = Arc::new(Metrics::with(|registry| {
        if let Some(global) = &global {
            global.register_metrics(registry);
        }
    }));
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
    let schema = super::schema::start(&config, &readiness);
    readiness.set_global_limits(global.clone());
    Ok(Shared {
        config,
        metrics,
        tracing,
        authenticator,
        upstream,
        readiness,
        schema,
        global,
    })
}

/// Binds the listeners, puts each chain on its own, and starts following the file.
async fn listen(
    source: Source,
    shared: Shared,
    material: TlsMaterial,
    admin: Option<std::net::SocketAddr>,
    shutdown: &Shutdown,
) -> Result<Serving, StartError> {
    let config = &shared.config;
    let sockets = bind::sockets(config, material.outbound.is_some()).await?;
    // Waits for the store at most about a second, and never fails on it: calls are
    // decided by on_store_failure until it answers. Announcing stops with the process.
    if let Some(global) = &shared.global {
        global.start(shutdown.process()).await;
    }
    let tls = material.tls.map(|initial| {
        let reloadable = Arc::new(ReloadableTls::new(
            &config.tls,
            initial,
            shared.metrics.clone(),
        ));
        reloadable.spawn_watcher();
        reloadable
    });
    shared.readiness.set_tls(tls.clone());
    let inbound = inbound_listener(
        &shared,
        &material.outbound,
        tls.clone(),
        sockets.inbound,
        shutdown,
    );
    Reloader {
        path: source.path,
        running: config.clone(),
        authenticator: shared.authenticator.clone(),
        tls,
        log_level: source.log_level,
        metrics: shared.metrics.clone(),
        loaded_from: source.loaded_from,
        schema: shared.schema.clone(),
    }
    .spawn(source.hangups);

    let (outbound_address, outbound) = match (material.outbound, sockets.outbound) {
        (Some(destinations), Some(socket)) => {
            let address = socket.describe();
            let listener = outbound_listener(&shared, destinations, socket, shutdown);
            let task = tokio::spawn(listener.run(shutdown.accepting()));
            (Some(address), Some(task))
        }
        _ => (None, None),
    };
    shared.readiness.listening.store(true, Ordering::SeqCst);
    tracing::info!(
        address = %sockets.inbound_address,
        tls = config.tls.enabled,
        client_auth = config.tls.client_auth.as_str(),
        upstream = %config.upstream.address,
        admin = admin.map(|a| a.to_string()),
        outbound = outbound_address,
        otlp = config.telemetry.otlp_endpoint.as_deref(),
        "listening"
    );
    Ok(Serving {
        inbound: tokio::spawn(inbound.run(shutdown.accepting())),
        outbound,
        readiness: shared.readiness,
        tracing: shared.tracing,
        drain_delay: config.limits.drain_delay.get(),
        drain_timeout: config.limits.drain_timeout.get(),
    })
}

/// The inbound chain in front of the app, on the callers' port.
fn inbound_listener(
    shared: &Shared,
    outbound: &Option<crate::outbound::Destinations>,
    tls: Option<Arc<ReloadableTls>>,
    tcp: tokio::net::TcpListener,
    shutdown: &Shutdown,
) -> Listener<inbound::Chain<Forward>> {
    let config = &shared.config;
    let chain = inbound::build(
        inbound::Parts {
            tracing: shared.tracing.clone(),
            metrics: shared.metrics.clone(),
            authenticator: shared.authenticator.clone(),
            limits: config.limits.clone(),
            global: shared.global.clone(),
            contexts: outbound
                .as_ref()
                .and_then(crate::outbound::Destinations::contexts),
            schema: shared.schema.clone(),
            abort: shutdown.calls(),
        },
        Forward::new(shared.upstream.clone()),
    );
    let server = Server::new(&config.limits, chain, shared.metrics.clone());
    Listener::new(
        Socket::Tcp(tcp),
        tls,
        server,
        &config.limits,
        shared.metrics.clone(),
    )
}

/// The outbound chain for the app's own calls, on the app's port.
fn outbound_listener(
    shared: &Shared,
    destinations: crate::outbound::Destinations,
    socket: Socket,
    shutdown: &Shutdown,
) -> Listener<crate::outbound::Chain> {
    destinations.spawn_watchers(shared.metrics.clone());
    let chain = crate::outbound::build(
        Arc::new(destinations),
        shared.tracing.clone(),
        shared.metrics.clone(),
        shutdown.calls(),
    );
    let limits = &shared.config.limits;
    let server = Server::new(limits, chain, shared.metrics.clone());
    Listener::for_the_app(socket, server, limits, shared.metrics.clone())
}
