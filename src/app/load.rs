//! Reading a configuration and every file it names, with all problems reported at once:
//! what `gatehouse check` prints, what `gatehouse run` starts from, and what a reload
//! swaps in.

use std::path::Path;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Limits, Problem, UNKNOWN_MEMORY};
use crate::serve::MemoryBudget;
use crate::tls;

/// Parses, validates and reads every file the configuration names, reporting all
/// problems at once: what `check` prints and what a reload swaps in.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, false)
}

/// [`load`] for `gatehouse run`: certificate, key and CA files that do not exist yet are
/// not problems but [`Loaded::waiting_for`], so the process can wait for a certificate
/// sidecar to write them. Every other problem still refuses the configuration.
pub fn load_waiting(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, true)
}

fn load_with(path: &Path, wait: bool) -> Result<Loaded, ConfigError> {
    let mut config = Config::read(path)?;
    size_limits(&mut config);
    let invalid = |problems| ConfigError::Invalid {
        file: path.to_owned(),
        problems,
    };
    let mut problems = config.validate();
    if let Some(limit) = config.limits.memory_limit
        && let Some(problem) = check_memory(&config, limit.0, "limits.memory_limit")
    {
        problems.push(problem);
    }
    merge(
        &mut problems,
        crate::telemetry::export_problems(&config.telemetry),
    );
    let waiting_for = if wait {
        tls::missing_files(&config)
    } else {
        Vec::new()
    };
    // A file being waited for is not a problem; anything else the TLS loaders report is.
    let not_waited = |more: Vec<Problem>| -> Vec<Problem> {
        more.into_iter()
            .filter(|problem| !waiting_for.iter().any(|file| file.field == problem.field))
            .collect()
    };
    let tls = if config.tls.enabled {
        match tls::server_config(&config.tls) {
            Ok(tls) => Some(tls),
            Err(more) => {
                merge(&mut problems, not_waited(more));
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
    let global = match &config.limits.global {
        Some(global) if problems.is_empty() => match crate::limits::GlobalLimiter::new(global) {
            Ok(limiter) => Some(limiter),
            Err(more) => {
                merge(&mut problems, more);
                None
            }
        },
        _ => None,
    };
    let outbound = if problems.is_empty() {
        match crate::outbound::Destinations::load(&config) {
            Ok(outbound) => outbound,
            Err(more) => {
                merge(&mut problems, not_waited(more));
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
            waiting_for,
            global,
        }),
        _ => Err(invalid(problems)),
    }
}

/// Reads the TLS material of a configuration that loaded while [waiting](load_waiting)
/// for it: the serving configuration and the outbound destinations (whose client
/// certificate is TLS material too). Every problem, a file still missing included.
pub(super) fn tls_material(config: &Config) -> Result<TlsMaterial, Vec<Problem>> {
    let mut problems = Vec::new();
    let tls = if config.tls.enabled {
        tls::server_config(&config.tls)
            .map_err(|more| problems.extend(more))
            .ok()
    } else {
        None
    };
    let outbound = crate::outbound::Destinations::load(config)
        .map_err(|more| merge(&mut problems, more))
        .ok()
        .flatten();
    if problems.is_empty() {
        Ok(TlsMaterial { tls, outbound })
    } else {
        Err(problems)
    }
}

/// What [`tls_material`] reads.
pub(super) struct TlsMaterial {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub outbound: Option<crate::outbound::Destinations>,
}

pub(super) const MIB: u64 = 1024 * 1024;

/// Sizes the limits the file left out to the memory gatehouse has (`limits.memory_limit`,
/// the cgroup's limit, or [`UNKNOWN_MEMORY`]), against the budget `check` prints.
fn size_limits(config: &mut Config) {
    let memory = memory_limit(&config.limits).map_or(UNKNOWN_MEMORY, |(limit, _)| limit);
    let outbound = config.outbound.as_ref();
    config
        .limits
        .size_to(memory, |limits| MemoryBudget::of(limits, outbound).total);
}

/// The limits that were sized rather than written, and what they were sized to:
/// `sized to 160 MiB (cgroup memory.max): max_connections 65, …`; `None` when the file
/// wrote them all.
pub(super) fn sized_limits(limits: &Limits) -> Option<String> {
    let written = limits.written;
    let sized: Vec<String> = [
        (
            "max_connections",
            written.max_connections,
            limits.max_connections as u64,
        ),
        (
            "max_concurrent_streams",
            written.max_concurrent_streams,
            limits.max_concurrent_streams.into(),
        ),
        (
            "max_header_list_size",
            written.max_header_list_size,
            limits.max_header_list_size.into(),
        ),
        (
            "upstream_connections",
            written.upstream_connections,
            limits.upstream_connections as u64,
        ),
    ]
    .into_iter()
    .filter(|(_, written, _)| !written)
    .map(|(name, _, value)| format!("{name} {value}"))
    .collect();
    if sized.is_empty() {
        return None;
    }
    let memory = match memory_limit(limits) {
        Some((limit, from)) => format!("{} MiB ({from})", limit / MIB),
        None => format!(
            "{} MiB (no limits.memory_limit and no cgroup limit)",
            UNKNOWN_MEMORY / MIB
        ),
    };
    Some(format!("sized to {memory}: {}", sized.join(", ")))
}

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
pub(super) fn detected_memory_problem(config: &Config) -> Option<Problem> {
    if config.limits.memory_limit.is_some() {
        return None;
    }
    let (limit, from) = memory_limit(&config.limits)?;
    check_memory(config, limit, from)
}

/// A problem when the worst case the limits allow does not fit the memory limit.
fn check_memory(config: &Config, limit: u64, from: &str) -> Option<Problem> {
    let budget = MemoryBudget::of(&config.limits, config.outbound.as_ref());
    (budget.total > limit).then(|| {
        Problem::new(
            "limits",
            format!(
                "worst-case memory {budget} exceeds the memory limit of {} MiB ({from}): lower \
                 limits.max_connections, limits.max_concurrent_streams, \
                 limits.max_header_list_size, limits.upstream_connections or schema.max_message_size, or raise the limit; see docs/deploy.md",
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
    /// From [`load_waiting`]: the TLS files that do not exist yet, each on its field.
    /// While any is missing, `tls` and `outbound` are not read ([`tls_material`] reads
    /// them once the files are there).
    pub waiting_for: Vec<Problem>,
    /// `limits.global`, with its files read; not connected yet.
    pub global: Option<crate::limits::GlobalLimiter>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sized_config(memory: u64, file: &str) -> Config {
        let text = format!(
            "listen: {{ address: 127.0.0.1:12018 }}\nupstream: {{ address: 127.0.0.1:1 }}\n{file}"
        );
        let mut config = Config::from_yaml(&text).unwrap();
        let outbound = config.outbound.clone();
        config.limits.size_to(memory, |limits| {
            MemoryBudget::of(limits, outbound.as_ref()).total
        });
        config
    }

    fn sized(memory: u64, file: &str) -> Limits {
        sized_config(memory, file).limits
    }

    /// (max_connections, max_concurrent_streams, max_header_list_size,
    /// upstream_connections, worst case in MiB) of a file that writes none of them.
    fn row(memory_mib: u64) -> (usize, u32, u32, usize, u64) {
        let limits = sized(memory_mib * MIB, "");
        (
            limits.max_connections,
            limits.max_concurrent_streams,
            limits.max_header_list_size,
            limits.upstream_connections,
            MemoryBudget::of(&limits, None).total.div_ceil(MIB),
        )
    }

    // The table in docs/deploy.md ("Sized for the pod").
    #[test]
    fn limits_left_out_are_sized_to_three_quarters_of_the_memory() {
        assert_eq!(row(64), (16, 8, 8192, 2, 60));
        assert_eq!(row(128), (42, 8, 8192, 2, 96));
        assert_eq!(row(160), (66, 10, 8192, 2, 120));
        assert_eq!(row(256), (64, 46, 8192, 2, 191));
        assert_eq!(row(512), (64, 68, 16384, 4, 383));
        assert_eq!(row(1024), (109, 100, 16384, 4, 768));
        assert_eq!(row(4096), (489, 100, 16384, 4, 3069));
        assert_eq!(
            row(64 * 1024).0,
            4096,
            "never more than the defaults allowed"
        );
        for mib in [96, 160, 200, 256, 300, 512, 768, 1024, 3000, 8192] {
            let worst = row(mib).4;
            assert!(
                worst <= mib * 3 / 4 + 1,
                "{mib} MiB: worst case {worst} MiB"
            );
        }
    }

    #[test]
    fn written_limits_are_kept_and_the_rest_sized_around_them() {
        let config = sized_config(
            160 * MIB,
            "limits: { max_connections: 500, max_header_list_size: 16384 }\n",
        );
        let limits = &config.limits;
        assert_eq!(limits.max_connections, 500);
        assert_eq!(limits.max_header_list_size, 16384);
        assert_eq!(limits.upstream_connections, 2);
        // Streams sized down to the least that still fits, and no further than one.
        assert_eq!(limits.max_concurrent_streams, 1);
        let problem = check_memory(&config, 160 * MIB, "limits.memory_limit")
            .expect("500 written connections cannot fit 160 MiB");
        assert!(
            problem
                .message
                .contains("exceeds the memory limit of 160 MiB")
        );

        let config = sized_config(160 * MIB, "limits: { max_concurrent_streams: 100 }\n");
        let limits = &config.limits;
        assert_eq!(limits.max_concurrent_streams, 100);
        assert_eq!(limits.max_connections, 16);
        assert!(check_memory(&config, 160 * MIB, "cgroup memory.max").is_none());

        let everything = "limits: { max_connections: 4096, max_concurrent_streams: 100, \
                          max_header_list_size: 16384, upstream_connections: 4 }\n";
        let limits = sized(160 * MIB, everything);
        assert_eq!(
            (limits.max_connections, limits.max_concurrent_streams),
            (4096, 100)
        );
        assert_eq!(sized_limits(&limits), None);
    }

    #[test]
    fn check_names_what_was_sized_and_for_how_much_memory() {
        let limits = sized(
            160 * MIB,
            "limits: { memory_limit: 160Mi, max_connections: 50 }\n",
        );
        assert_eq!(
            sized_limits(&limits).as_deref(),
            Some(
                "sized to 160 MiB (limits.memory_limit): max_concurrent_streams 19, \
                 max_header_list_size 8192, upstream_connections 2"
            )
        );
    }

    #[test]
    fn the_outbound_side_and_the_call_context_table_are_in_the_budget() {
        const OUTBOUND: &str = "outbound:
  listen: 127.0.0.1:15001
  client_tls: { cert_file: /c.crt, key_file: /c.key, ca_file: /ca.crt }
  destinations:
    - { name: a, address: 'a:1', identity: ['spiffe://x/a'], credentials: CREDENTIALS, audience: a }
";
        let budget = |config: &Config| MemoryBudget::of(&config.limits, config.outbound.as_ref());
        let written = "limits: { max_connections: 100, max_concurrent_streams: 100, \
                       max_header_list_size: 16384, upstream_connections: 4 }\n";
        let inbound = budget(&sized_config(1024 * MIB, written));
        let none = budget(&sized_config(
            1024 * MIB,
            &(written.to_owned() + &OUTBOUND.replace("CREDENTIALS", "none")),
        ));
        let context = budget(&sized_config(
            1024 * MIB,
            &(written.to_owned() + &OUTBOUND.replace("CREDENTIALS", "context")),
        ));
        assert_eq!((inbound.outbound, inbound.contexts), (0, 0));
        // 16 connections from the app and 200 calls out, each with its stream to the
        // destination.
        assert_eq!(none.outbound.div_ceil(MIB), 65);
        assert_eq!(none.contexts, 0);
        assert_eq!(context.outbound, none.outbound);
        // 10,000 handles (100 connections x 100 calls) and 16 MiB of tokens.
        assert_eq!(context.contexts.div_ceil(MIB), 19);
        assert_eq!(
            context.total,
            inbound.total + context.outbound + context.contexts
        );
        assert!(
            context
                .to_string()
                .ends_with(" + 65 MiB outbound + 19 MiB call contexts)"),
            "{context}"
        );

        // Sized limits make room for them, down to a 160 MiB pod.
        for memory in [160 * MIB, 512 * MIB] {
            let inbound = sized_config(memory, "");
            let both = sized_config(memory, &OUTBOUND.replace("CREDENTIALS", "context"));
            let shape = |limits: &Limits| (limits.max_connections, limits.max_concurrent_streams);
            assert!(shape(&both.limits) < shape(&inbound.limits), "{memory}");
            assert!(budget(&both).total <= memory * 3 / 4, "{}", budget(&both));
            assert!(both.limits.max_connections >= 16);
        }
    }
}
