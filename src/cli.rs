//! The command line: `gatehouse run`, `check`, `schema`, `inject`, `hash-key` and `token`.

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
    /// Print the app's services, methods, stream kinds and request messages as gatehouse
    /// learns them (`schema.source`: the app's reflection or the descriptor set).
    Schema {
        /// The YAML configuration file.
        #[arg(long, short, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Read Kubernetes YAML (Deployments, StatefulSets, DaemonSets, Pods) on standard
    /// input and write it with gatehouse added as a native sidecar; running it again on
    /// its output changes nothing.
    Inject(InjectArgs),
    /// Read an API key on standard input and print the `sha256:` line for the config.
    HashKey,
    /// Development helper: mint a JWT to try calls with, such as with grpcurl.
    // Boxed: the token options are far larger than the other commands' arguments.
    Token(Box<TokenArgs>),
}

/// Options of `gatehouse inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The gatehouse image the sidecar runs.
    #[arg(long, default_value = concat!("gatehouse:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The ConfigMap holding `gatehouse.yaml`; default: the workload's name + `-gatehouse`.
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
    /// The Secret holding `tls.crt`, `tls.key` and `ca.crt` (cert-manager's layout);
    /// default: the workload's name + `-tls`.
    #[arg(long, value_name = "NAME")]
    pub tls_secret: Option<String>,
    /// A Secret holding `keys.yaml` for `auth.api_keys.keys_file`, mounted at
    /// /etc/gatehouse/api-keys; default: none.
    #[arg(long, value_name = "NAME")]
    pub api_keys_secret: Option<String>,
    /// The sidecar's memory limit; gatehouse sizes its limits to it (a Kubernetes
    /// quantity: 160Mi, 1Gi).
    #[arg(long, default_value = "160Mi")]
    pub memory: String,
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
