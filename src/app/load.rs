//! Reading a configuration and every file it names, with all problems reported at once:
//! what `gatehouse check` prints, what `gatehouse run` starts from, and what a reload
//! swaps in.

use std::path::Path;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Limits, Problem};
use crate::serve::MemoryBudget;
use crate::tls;

/// Parses, validates and reads every file the configuration names, reporting all
/// problems at once.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let config = Config::read(path)?;
    let invalid = |problems| ConfigError::Invalid {
        file: path.to_owned(),
        problems,
    };
    let mut problems = config.validate();
    if let Some(limit) = config.limits.memory_limit
        && let Some(problem) = check_memory(&config.limits, limit.0, "limits.memory_limit")
    {
        problems.push(problem);
    }
    merge(
        &mut problems,
        crate::telemetry::export_problems(&config.telemetry),
    );
    let tls = if config.tls.enabled {
        match tls::server_config(&config.tls) {
            Ok(tls) => Some(tls),
            Err(more) => {
                merge(&mut problems, more);
                None
            }
        }
    } else {
        None
    };
    let authenticator = match Authenticator::build(&config) {
        Ok(authenticator) => Some(authenticator),
        Err(more) => {
            merge(&mut problems, more);
            None
        }
    };
    // Only a config that validated names files worth reading.
    let outbound = if problems.is_empty() {
        match crate::outbound::Destinations::load(&config) {
            Ok(outbound) => outbound,
            Err(more) => {
                merge(&mut problems, more);
                None
            }
        }
    } else {
        None
    };
    match (problems.is_empty(), authenticator) {
        (true, Some(authenticator)) => Ok(Loaded {
            config,
            tls,
            authenticator,
            outbound,
        }),
        _ => Err(invalid(problems)),
    }
}

pub(super) const MIB: u64 = 1024 * 1024;

/// The memory gatehouse may use: `limits.memory_limit`, else the cgroup's limit (v2
/// `memory.max`, v1 `memory.limit_in_bytes`), with where it came from.
pub(super) fn memory_limit(limits: &Limits) -> Option<(u64, &'static str)> {
    if let Some(limit) = limits.memory_limit {
        return Some((limit.0, "limits.memory_limit"));
    }
    let read = |file: &str| {
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    if let Some(limit) = read("/sys/fs/cgroup/memory.max") {
        return Some((limit, "cgroup memory.max"));
    }
    // cgroup v1 writes "no limit" as a number near 2^63.
    read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .filter(|limit| *limit < 1 << 60)
        .map(|limit| (limit, "cgroup memory.limit_in_bytes"))
}

/// A problem when no `limits.memory_limit` is set and the worst case does not fit the
/// cgroup's limit. `check` refuses such a configuration; `run` logs it, so a pod that
/// ran before keeps starting.
pub(super) fn detected_memory_problem(limits: &Limits) -> Option<Problem> {
    if limits.memory_limit.is_some() {
        return None;
    }
    let (limit, from) = memory_limit(limits)?;
    check_memory(limits, limit, from)
}

/// A problem when the worst case the limits allow does not fit the memory limit.
fn check_memory(limits: &Limits, limit: u64, from: &str) -> Option<Problem> {
    let budget = MemoryBudget::of(limits);
    (budget.total > limit).then(|| {
        Problem::new(
            "limits",
            format!(
                "worst-case memory {budget} exceeds the memory limit of {} MiB ({from}): lower \
                 limits.max_connections, limits.max_concurrent_streams, \
                 limits.max_header_list_size or limits.upstream_connections, or raise the limit; see docs/deploy.md",
                limit / MIB,
            ),
        )
    })
}

/// A configuration with every file it names read and checked.
pub struct Loaded {
    pub config: Config,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub authenticator: Authenticator,
    /// The `outbound` destinations, when configured.
    pub outbound: Option<crate::outbound::Destinations>,
}

/// Adds problems on fields not already reported (a missing `cert_file` is found both by
/// validation and by the TLS loader).
fn merge(problems: &mut Vec<Problem>, more: Vec<Problem>) {
    for problem in more {
        if !problems.iter().any(|known| known.field == problem.field) {
            problems.push(problem);
        }
    }
}
