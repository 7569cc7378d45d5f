//! The command line: `gatehouse run`, `check`, `hash-key` and `token`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// gatehouse: the sidecar that terminates mTLS in front of a gRPC app and forwards calls
/// to it over plaintext HTTP/2.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version = crate::version::describe(), about)]
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
    /// Read an API key on standard input and print the `sha256:` line for the config.
    HashKey,
    /// Development helper: mint a JWT to try calls with, such as with grpcurl.
    // Boxed: the token options are far larger than the other commands' arguments.
    Token(Box<TokenArgs>),
}

/// Options of `gatehouse token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The signing key: a PEM private key (RS*, PS*, ES*, EdDSA) or a secret file (HS*).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The signing algorithm.
    #[arg(long, default_value = "RS256")]
    pub alg: String,
    /// `kid` header: the key's id in the provider's JWKS.
    #[arg(long)]
    pub kid: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    pub iss: String,
    /// `aud` claim; comma-separated for a token that several services accept (an
    /// outbound chain relays one user's token to each of them).
    #[arg(long, required = true, value_delimiter = ',')]
    pub aud: Vec<String>,
    /// `sub` claim: the user.
    #[arg(long)]
    pub sub: String,
    /// `tenant_id` claim.
    #[arg(long)]
    pub tenant: Option<String>,
    /// `roles` claim, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime: `exp` is now plus this (30s, 15m, 1h).
    #[arg(long, default_value = "1h")]
    pub ttl: crate::config::Duration,
    /// Bind the token to this client certificate (PEM; the first one in the file): adds
    /// `cnf: {"x5t#S256": …}`, so gatehouse accepts it only from that certificate.
    #[arg(long, value_name = "FILE")]
    pub bind_cert: Option<PathBuf>,
}
