//! `order-processing`: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use order_processing_example::{run, shutdown::os_signal, Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A chaos run's stdout is its one-line verdict: its own log goes to stderr, warnings only.
    let chaos = matches!(cli.command, Some(Command::Chaos(_)));
    let default_filter = if chaos {
        "warn"
    } else {
        "info,tower_http=info"
    };
    tracing_subscriber::fmt()
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(!chaos && std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(move || -> Box<dyn std::io::Write> {
            if chaos {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        })
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
