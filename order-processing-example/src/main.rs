//! `order-processing`: parse the command line, install logging, run.

use std::process::ExitCode;

use clap::Parser;
use order_processing_example::config::LogFormat;
use order_processing_example::{run, shutdown::os_signal, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `.env` of the working directory, if there is one, before the command line is parsed so
    // its settings serve as the flags' environment fallbacks; a variable already set wins.
    // Read before the runtime starts its threads: setting the environment is not thread-safe.
    if let Err(error) = dotenvy::from_path(".env") {
        if !error.not_found() {
            eprintln!("error: cannot read .env: {error}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    // An operator command prints its answer on stdout, a load test its report (JSON that
    // scripts read) and a chaos run its one-line verdict: their own log goes beside, to stderr
    // (a chaos run's, warnings only).
    let chaos = matches!(cli.command, Some(Command::Chaos(_)));
    let log_to_stderr = chaos
        || matches!(
            cli.command,
            Some(Command::Dlq(_) | Command::Projections(_) | Command::Loadtest(_))
        );
    let default_filter = if chaos {
        "warn"
    } else {
        "info,tower_http=info"
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(move || -> Box<dyn std::io::Write> {
            if log_to_stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        })
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        );
    match cli.settings.log_format {
        // Colours only for a person at a terminal, never in collected logs.
        LogFormat::Text => logs
            .with_ansi(!log_to_stderr && std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> ExitCode {
    // Before any backend or service is built: they take their metric handles then.
    order_processing_example::telemetry::install();
    match run(cli, os_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot run");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
