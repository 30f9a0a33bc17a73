//! `order-processing`: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use order_processing_example::{run, shutdown::os_signal, Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // An operator command prints its answer on stdout, and a chaos run's stdout is its one-line
    // verdict: their own log goes beside, to stderr (a chaos run's, warnings only).
    let chaos = matches!(cli.command, Some(Command::Chaos(_)));
    let log_to_stderr =
        chaos || matches!(cli.command, Some(Command::Dlq(_) | Command::Projections(_)));
    let default_filter = if chaos {
        "warn"
    } else {
        "info,tower_http=info"
    };
    tracing_subscriber::fmt()
        .with_writer(move || -> Box<dyn std::io::Write> {
            if log_to_stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        })
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(!log_to_stderr && std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
    match run(cli, os_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot run");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
