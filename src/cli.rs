//! The command line: `gatehouse run`, `gatehouse check`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// gatehouse: the sidecar that terminates mTLS in front of a gRPC app and forwards calls
/// to it over plaintext HTTP/2.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar until SIGTERM or SIGINT, then drain and exit 0.
    Run {
        /// The YAML configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Load and validate a configuration, including the files it names; print `ok` or
    /// every problem with its field path, and exit 0 or 64.
    Check {
        /// The YAML configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}
