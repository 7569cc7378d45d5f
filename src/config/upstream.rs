//! `upstream`: the app behind gatehouse, and [`Target`], the parsed address of anything
//! gatehouse dials.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Duration, Problem};

/// `upstream`: the app behind gatehouse, spoken to in plaintext HTTP/2.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` or `unix:/path/to.sock`.
    pub address: String,
    #[serde(default = "Upstream::default_connect_timeout")]
    pub connect_timeout: Duration,
}

impl Upstream {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(1)
    }

    /// The parsed address; only meaningful after [`Config::validate`](super::Config::validate)
    /// accepted it.
    pub fn target(&self) -> Target {
        match self.address.strip_prefix("unix:") {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => Target::Tcp(self.address.clone()),
        }
    }

    /// The address is one gatehouse can dial, and connecting may take some time.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if let Err(message) = check_upstream_address(&self.address) {
            problems.push(Problem::new("upstream.address", message));
        }
        if self.connect_timeout.get().is_zero() {
            problems.push(Problem::new(
                "upstream.connect_timeout",
                "must be longer than 0s",
            ));
        }
    }
}

/// Where a target listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port`, resolved on every connect.
    Tcp(String),
    /// A Unix domain socket, written `unix:/path` in the config.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(address) => f.write_str(address),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn check_upstream_address(address: &str) -> Result<(), String> {
    if let Some(path) = address.strip_prefix("unix:") {
        return if Path::new(path).is_absolute() {
            Ok(())
        } else {
            Err(format!(
                "{address:?}: a unix socket needs an absolute path, like unix:/run/app.sock"
            ))
        };
    }
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(format!(
            "{address:?}: expected host:port (127.0.0.1:50051) or unix:/path"
        )),
    }
}
