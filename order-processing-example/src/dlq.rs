//! `order-processing dlq list|requeue|purge`: the dead letters of the services' queues, for an
//! operator to look at, hand back to their service, or drop.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use es_core::{DeadLetter, DeadLetterQueue};

use crate::backends::{amqp_config, redact, StartError};
use crate::config::Settings;
use crate::service_kind::ServiceKind;

/// What to do with the dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DlqCommand {
    /// Prints each dead letter (queue, event id, type, attempts, error), oldest first, and
    /// leaves it in place. At most `--limit` per service (default 100).
    List(DlqTarget),
    /// Puts dead letters back on their service's queue, to be handled again with a fresh set of
    /// attempts. At most `--limit` per service (default: all).
    Requeue(DlqTarget),
    /// Drops every dead letter of the service(s).
    Purge(DlqTarget),
}

/// Which services' dead letters, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DlqTarget {
    /// One service (`order`, `inventory`, `payment`, `notification`, `analytics`); all five
    /// when omitted.
    #[arg(long, value_parser = parse_service)]
    pub service: Option<ServiceKind>,
    /// The most dead letters to list or requeue per service (not for `purge`, which drops
    /// them all).
    #[arg(long)]
    pub limit: Option<usize>,
}

fn parse_service(name: &str) -> Result<ServiceKind, String> {
    ServiceKind::ALL
        .into_iter()
        .find(|kind| kind.name() == name)
        .ok_or_else(|| {
            format!("unknown service `{name}` (one of order, inventory, payment, notification, analytics)")
        })
}

/// Runs `command` against the broker of `settings` and returns what to print.
///
/// Dead letters live in RabbitMQ (the in-memory bus keeps them inside the process that runs
/// the services), so this needs `--amqp-url`.
pub async fn run(command: &DlqCommand, settings: &Settings) -> Result<String, StartError> {
    let Some(url) = &settings.amqp_url else {
        return Err(StartError::Unsupported(
            "dead letters live in RabbitMQ: pass --amqp-url (or set AMQP_URL)".into(),
        ));
    };
    let bus = es_rabbitmq::AmqpEventBus::new(amqp_config(url, settings));
    let target = match command {
        DlqCommand::List(target) | DlqCommand::Requeue(target) | DlqCommand::Purge(target) => {
            target
        }
    };
    if matches!(command, DlqCommand::Purge(_)) && target.limit.is_some() {
        return Err(StartError::Unsupported(
            "purge drops every dead letter; --limit is for list and requeue".into(),
        ));
    }
    let kinds = match target.service {
        Some(kind) => vec![kind],
        None => ServiceKind::ALL.to_vec(),
    };
    let failed = |error: es_core::Error| {
        StartError::Unsupported(format!("RabbitMQ at {}: {error}", redact(url)))
    };
    let mut out = String::new();
    for kind in kinds {
        let queue = format!("{}{}-service", settings.queue_prefix, kind.name());
        match command {
            DlqCommand::List(_) => {
                let letters = bus
                    .dead_letters(&queue, target.limit.unwrap_or(100))
                    .await
                    .map_err(failed)?;
                for letter in &letters {
                    let _ = writeln!(out, "{}", describe(&queue, letter));
                }
                let _ = writeln!(out, "{queue}.dlq: {} listed", letters.len());
            }
            DlqCommand::Requeue(_) => {
                let moved = bus
                    .requeue_dead_letters(&queue, target.limit.unwrap_or(usize::MAX))
                    .await
                    .map_err(failed)?;
                let _ = writeln!(out, "{queue}.dlq: {moved} requeued onto {queue}");
            }
            DlqCommand::Purge(_) => {
                let purged = bus.purge_dead_letters(&queue).await.map_err(failed)?;
                let _ = writeln!(out, "{queue}.dlq: {purged} purged");
            }
        }
    }
    bus.close().await;
    Ok(out)
}

/// One line per dead letter: where it is, what it is, why it is there.
fn describe(queue: &str, letter: &DeadLetter) -> String {
    let (event_id, event_type) = match &letter.event {
        Some(event) => (event.event_id.to_string(), event.event_type.clone()),
        None => ("-".to_owned(), "(undecodable)".to_owned()),
    };
    format!(
        "{queue}.dlq\teventId={event_id}\ttype={event_type}\tattempts={}\terror={}",
        letter.attempts,
        letter.reason.replace(['\n', '\t'], " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_dlq_command_parses_with_the_backend_flags() {
        let cli = Cli::try_parse_from([
            "order-processing",
            "dlq",
            "list",
            "--service",
            "payment",
            "--limit",
            "5",
            "--amqp-url",
            "amqp://h/%2f",
        ])
        .expect("parses");
        assert_eq!(cli.settings.amqp_url.as_deref(), Some("amqp://h/%2f"));
        assert_eq!(
            cli.command,
            Some(Command::Dlq(DlqCommand::List(DlqTarget {
                service: Some(ServiceKind::Payment),
                limit: Some(5),
            })))
        );
        assert!(
            Cli::try_parse_from(["order-processing", "dlq", "purge", "--service", "x"]).is_err()
        );
    }

    #[tokio::test]
    async fn without_a_broker_the_command_says_what_it_needs() {
        let command = DlqCommand::List(DlqTarget {
            service: None,
            limit: None,
        });
        let error = run(&command, &Settings::default()).await.unwrap_err();
        assert!(error.to_string().contains("--amqp-url"), "{error}");
    }
}
