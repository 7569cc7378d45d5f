//! The `gatehouse` binary: parses the command line and maps every outcome to an exit
//! code (0 clean, 64 bad configuration or usage, 1 any other start-up failure).

use std::process::ExitCode;

use clap::Parser;
use gatehouse::app::{self, EXIT_USAGE};
use gatehouse::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
            let _ = error.print();
            return code;
        }
    };
    match cli.command {
        Command::Run { config } => app::run(&config),
        Command::Check { config } => app::check(&config),
        Command::Schema { config } => app::schema(&config),
        Command::Inject(args) => app::inject(&args),
        Command::HashKey => app::hash_key(),
        Command::Token(args) => app::token(&args),
    }
}
