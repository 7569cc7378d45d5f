//! The commands, and `gatehouse run` in three steps: reading the configuration
//! ([`load`], waiting for certificate files written after start: `app/wait.rs`), starting
//! (`app/start.rs`: the shared parts, the sockets of `app/bind.rs`, both chains on their
//! listeners, the reloader of `app/reload.rs`) and stopping (`app/shutdown.rs`: one tree
//! of cancellation, driven by the signals of `app/signals.rs`).

mod bind;
mod load;
mod reload;
mod runtime;
mod schema;
mod shutdown;
mod signals;
mod start;
mod wait;

pub use load::{Loaded, load, load_waiting};
pub use schema::print as schema;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::serve::MemoryBudget;
use crate::telemetry;
use bind::StartError;
use load::{MIB, detected_memory_problem, memory_limit, sized_limits};
use shutdown::Shutdown;
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
    let runtime = match runtime::build() {
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

/// Starts, serves until a stop signal, and drains.
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
    let source = start::Source {
        path: path.to_owned(),
        loaded_from,
        log_level,
        hangups,
    };
    let stop = Shutdown::new();
    match start::start(source, loaded, &mut signals, &stop).await? {
        Some(serving) => shutdown::drain(serving, stop, &mut signals).await,
        None => Ok(()),
    }
}
