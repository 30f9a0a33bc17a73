//! The command line: subcommands and flags, each flag with an environment fallback.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;

/// `order-processing`: the five services of the order processing example.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-processing", version, about, long_about = None)]
pub struct Cli {
    /// What to run; `all` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Backends, addresses and business settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// All five services in one process, each on its own port.
    All,
    /// The order service alone (needs `--amqp-url`).
    Order,
    /// The inventory service alone (needs `--amqp-url`).
    Inventory,
    /// The payment service alone (needs `--amqp-url`).
    Payment,
    /// The notification service alone (needs `--amqp-url`).
    Notification,
    /// The analytics service alone (needs `--amqp-url`).
    Analytics,
    /// Places orders against a running system and reports orders/s and latency.
    Loadtest(Box<crate::loadtest::LoadTestArgs>),
    /// Dead letters of the services' queues: `list`, `requeue` or `purge` (needs `--amqp-url`).
    #[command(subcommand)]
    Dlq(crate::dlq::DlqCommand),
    /// Read models on PostgreSQL: `status` (checkpoints and lag) or `rebuild [NAME]`.
    #[command(subcommand)]
    Projections(crate::projections::ProjectionsCommand),
    /// Runs the five services under load and injected faults, then checks the outcome.
    Chaos(crate::chaos::ChaosArgs),
}

/// Every option; each is a flag with an environment fallback, accepted before or after the
/// subcommand.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL: event store, read models, service state, outbox, inbox.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// RabbitMQ: events travel over the topic exchange.
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Redis: read-model cache and idempotency keys.
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Address every service binds.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: String,
    /// Port of the order service.
    #[arg(long, env = "ORDER_PORT", default_value_t = 5001, global = true)]
    pub order_port: u16,
    /// Port of the inventory service.
    #[arg(long, env = "INVENTORY_PORT", default_value_t = 5002, global = true)]
    pub inventory_port: u16,
    /// Port of the payment service.
    #[arg(long, env = "PAYMENT_PORT", default_value_t = 5003, global = true)]
    pub payment_port: u16,
    /// Port of the notification service.
    #[arg(long, env = "NOTIFICATION_PORT", default_value_t = 5004, global = true)]
    pub notification_port: u16,
    /// Port of the analytics service.
    #[arg(long, env = "ANALYTICS_PORT", default_value_t = 5005, global = true)]
    pub analytics_port: u16,
    /// The simulated gateway declines any payment larger than this.
    #[arg(
        long,
        env = "PAYMENT_DECLINE_ABOVE",
        default_value = "10000.00",
        global = true
    )]
    pub payment_decline_above: Decimal,
    /// An order not Confirmed or Cancelled by then is cancelled (`30s`, `500ms`, `2m`).
    #[arg(long, env = "ORDER_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub order_timeout: Duration,
    /// How long a POST with an `Idempotency-Key` holds its key without renewing it: a request
    /// cut off or a process that died frees its key after this (`10s`, `500ms`).
    #[arg(long, env = "IDEMPOTENCY_LEASE", default_value = "10s", value_parser = parse_duration, global = true)]
    pub idempotency_lease: Duration,
    /// The topic exchange events travel over.
    #[arg(
        long,
        env = "EXCHANGE",
        default_value = "order-processing-events",
        global = true
    )]
    pub exchange: String,
    /// Prefixed to every queue name (`order-service`, ...), to run isolated systems side by
    /// side on one broker.
    #[arg(long, env = "QUEUE_PREFIX", default_value = "", global = true)]
    pub queue_prefix: String,
    /// The PostgreSQL schema holding the event store's tables.
    #[arg(
        long,
        env = "DATABASE_SCHEMA",
        default_value = "order_processing",
        global = true
    )]
    pub database_schema: String,
    /// Connections each process may open to PostgreSQL.
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub database_max_connections: u32,
    /// Lets RabbitMQ delete the queues after this long unused (for test systems).
    #[arg(long = "amqp-queue-expires", env = "AMQP_QUEUE_EXPIRES", value_parser = parse_duration, global = true, hide = true)]
    pub queue_expires: Option<Duration>,
    /// How long inbox entries, finished sagas and the like are kept (`7d`, `36h`); a message
    /// redelivered after that is handled again.
    #[arg(long, env = "RETENTION", default_value = "7d", value_parser = parse_duration, global = true)]
    pub retention: Duration,
    /// How often each process prunes what is older than the retention (`1h`, `10m`).
    #[arg(long, env = "HOUSEKEEPING_INTERVAL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub housekeeping_interval: Duration,
    /// Prefixed to every Redis key.
    #[arg(
        long,
        env = "REDIS_PREFIX",
        default_value = "order-processing:",
        global = true
    )]
    pub redis_prefix: String,
    /// How log lines look: `text` for a person, `json` (one object a line) for machines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            amqp_url: None,
            redis_url: None,
            host: "127.0.0.1".into(),
            order_port: 5001,
            inventory_port: 5002,
            payment_port: 5003,
            notification_port: 5004,
            analytics_port: 5005,
            payment_decline_above: Decimal::new(1_000_000, 2),
            order_timeout: Duration::from_secs(30),
            idempotency_lease: Duration::from_secs(10),
            exchange: "order-processing-events".into(),
            queue_prefix: String::new(),
            database_schema: "order_processing".into(),
            queue_expires: None,
            database_max_connections: 10,
            redis_prefix: "order-processing:".into(),
            log_format: LogFormat::Text,
            retention: es_core::housekeeping::DEFAULT_RETENTION,
            housekeeping_interval: Duration::from_secs(3600),
        }
    }
}

/// Parses a duration as `humantime` reads it (`30s`, `500ms`, `2m`, `1h`, `7d`, `1h 30m`,
/// `2weeks`), or a plain whole number of seconds (`7`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|error| match error {
            humantime::DurationError::NumberOverflow => {
                format!("`{text}` is too long a duration")
            }
            other => format!("`{text}` is not a duration ({other}; try `30s`, `500ms`, `2m`)"),
        })?,
    };
    if duration.is_zero() {
        return Err(format!("`{text}` must be a positive duration"));
    }
    // Past about 292 million years a duration no longer fits the time arithmetic: a clear
    // error instead of a panic where it is added to a clock.
    if chrono::Duration::from_std(duration).is_err() {
        return Err(format!("`{text}` is too long a duration"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("3x").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn a_duration_too_long_for_the_clock_is_an_error_not_a_panic() {
        let error = parse_duration("99999999999999999999999h").unwrap_err();
        assert!(error.contains("too long"), "{error}");
        assert!(parse_duration("1e400").is_err());
        assert!(
            parse_duration("100000000d").is_ok(),
            "100 million days still fit"
        );
        let cli = Cli::try_parse_from([
            "order-processing",
            "--order-timeout",
            "99999999999999999999999h",
        ]);
        assert!(cli.is_err(), "rejected when the command line is parsed");
    }

    #[test]
    fn env_example_lists_every_setting_and_reads_as_a_dotenv_file() {
        use clap::CommandFactory;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env.example");
        let text = std::fs::read_to_string(path).expect(".env.example at the repository's root");
        for arg in Cli::command().get_arguments() {
            if let Some(name) = arg.get_env().and_then(|name| name.to_str()) {
                // Set, or shown commented out where unset is the default.
                let listed = text.lines().any(|line| {
                    line.trim_start_matches("# ")
                        .starts_with(&format!("{name}="))
                });
                assert!(listed, "{name} missing from .env.example");
            }
        }
        let pairs = dotenvy::from_path_iter(path)
            .expect("readable")
            .collect::<Result<Vec<_>, _>>()
            .expect("every line of .env.example parses");
        assert!(pairs
            .iter()
            .any(|(name, value)| name == "LOG_FORMAT" && value == "text"));
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        let default = Cli::try_parse_from(["order-processing"]).unwrap();
        assert_eq!(default.settings.log_format, LogFormat::Text);
        let json =
            Cli::try_parse_from(["order-processing", "all", "--log-format", "json"]).unwrap();
        assert_eq!(json.settings.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["order-processing", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn flags_are_accepted_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["order-processing", "--order-port", "7001", "order"])
            .expect("flag before the subcommand");
        let after = Cli::try_parse_from(["order-processing", "order", "--order-port", "7001"])
            .expect("flag after the subcommand");
        assert_eq!(before.settings.order_port, 7001);
        assert_eq!(after.settings.order_port, 7001);
        assert_eq!(after.command, Some(Command::Order));
        let none = Cli::try_parse_from(["order-processing"]).expect("no arguments");
        assert_eq!(none.command, None);
        assert_eq!(none.settings.retention, Settings::default().retention);
        let retention = Cli::try_parse_from(["order-processing", "--retention", "36h"]).unwrap();
        assert_eq!(retention.settings.retention, Duration::from_secs(36 * 3600));
        assert_eq!(
            none.settings.housekeeping_interval,
            Duration::from_secs(3600)
        );
        let interval =
            Cli::try_parse_from(["order-processing", "--housekeeping-interval", "10m"]).unwrap();
        assert_eq!(
            interval.settings.housekeeping_interval,
            Duration::from_secs(600)
        );
    }
}
