//! `order-processing projections status|rebuild [NAME]`: the read models on PostgreSQL, their
//! checkpoints and lag, and a rebuild that keeps the active generation serving meanwhile.

use std::fmt::Write as _;

use clap::Subcommand;
use es_core::{ProjectionAdmin, ProjectionPhase};

use crate::backends::{connect_postgres, StartError};
use crate::config::Settings;

/// What to do with the read models.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ProjectionsCommand {
    /// Prints each read model's generations: code version, phase, checkpoint and lag.
    Status,
    /// Starts rebuilding a read model (every one when NAME is omitted) into a new generation
    /// beside the active one; the service that keeps it does the work and switches readers
    /// over once it has caught up. Follow it with `status`.
    Rebuild {
        /// The read model: `order-listing`, `notification-listing`, `analytics-figures` or
        /// `product-catalog`.
        name: Option<String>,
    },
}

/// What the embedded backends answer: their read models are in the serving process.
pub const IN_MEMORY: &str = "read models live in memory (no --database-url): each process \
builds its own from the log when it starts; there is nothing to list or rebuild here\n";

/// Runs `command` against the PostgreSQL of `settings` and returns what to print.
pub async fn run(command: &ProjectionsCommand, settings: &Settings) -> Result<String, StartError> {
    let Some(url) = &settings.database_url else {
        return Ok(IN_MEMORY.to_owned());
    };
    let store = connect_postgres(
        url,
        &settings.database_schema,
        settings.database_max_connections,
        tokio::time::sleep(std::time::Duration::from_secs(30)),
    )
    .await?;
    let failed = |source| StartError::Service {
        service: "projections",
        source,
    };
    let status = store.status().await.map_err(failed)?;
    let mut out = String::new();
    match command {
        ProjectionsCommand::Status => {
            if status.is_empty() {
                out.push_str("no read model has run on this schema yet\n");
            }
            for info in status {
                let phase = match info.phase {
                    ProjectionPhase::Active => "active",
                    ProjectionPhase::Building => "building",
                    _ => "other",
                };
                let _ = writeln!(
                    out,
                    "{} v{} generation {} {phase}: checkpoint {}, {} events behind ({:.1}s)",
                    info.name,
                    info.version,
                    info.generation,
                    info.position,
                    info.events_behind,
                    info.time_behind.as_secs_f64()
                );
            }
        }
        ProjectionsCommand::Rebuild { name } => {
            let mut names: Vec<String> = match name {
                Some(name) => vec![name.clone()],
                None => status.into_iter().map(|info| info.name).collect(),
            };
            names.dedup();
            if names.is_empty() {
                out.push_str("no read model has run on this schema yet: nothing to rebuild\n");
            }
            for name in names {
                store.rebuild(&name).await.map_err(failed)?;
                let _ = writeln!(
                    out,
                    "{name}: rebuild requested; the running service builds it beside the active generation and switches over when it has caught up"
                );
            }
        }
    }
    store.close().await;
    Ok(out)
}
