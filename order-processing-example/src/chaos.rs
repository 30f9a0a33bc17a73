//! `order-processing chaos`: the whole system under load and faults, then checked.
//!
//! A run starts the five services as separate processes of this binary on the real backends,
//! each run on backends of its own: a fresh PostgreSQL database (`chaos_<id>`, dropped after), a
//! RabbitMQ vhost of its own (`chaos-<id>`, deleted after; inside it the contract's exchange and
//! queue names) and a private `redis-server` on a free port. It places orders at a steady rate
//! for `--duration` while it injects faults picked by a seeded generator:
//!
//! - `kill`: SIGKILL of a random service, restarted after a short pause;
//! - `amqp`: the broker closes a service's connection (`rabbitmqctl close_connection`);
//! - `pg`: every backend of the run's database is terminated (`pg_terminate_backend`);
//! - `redis`: the private Redis is stopped and started again (empty) after a short pause;
//! - `dup`: events already delivered are published again with the same `message_id`.
//!
//! Then it waits for quiet (every order final, the queues drained, the log still) and checks
//! the outcome from the public API and the stores: every order final and staying so, stock
//! whole, one successful payment per Confirmed order and no charge kept by a Cancelled one, one
//! notification per order and kind, analytics equal to the outcomes, the dead-letter queues
//! empty. [`ChaosReport::line`] sums it up in one line.
//!
//! Each order gets a customer of its own and an `Idempotency-Key`: a POST that fails is retried
//! with the same key, and listing the customer's orders afterwards finds every order the system
//! created, also those whose answer never arrived.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use es_core::{EventStore, Position, RecordedEvent, StreamFilter};
use futures_util::{stream, StreamExt};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::config::{parse_duration, Settings};
use crate::service_kind::ServiceKind;

/// The default PostgreSQL server (a fresh database is created on it for each run).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The default RabbitMQ broker (a fresh vhost is created on it for each run).
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The services decline payments above this: orders of three laptops are declined.
const DECLINE_ABOVE: &str = "2000.00";
/// How long one order's POST is retried (same key) before the run gives up on it.
const PLACE_PATIENCE: Duration = Duration::from_secs(30);

/// A kind of fault a chaos run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL of a service, restarted after a short pause.
    Kill,
    /// The broker closes a service's connection.
    Amqp,
    /// PostgreSQL terminates the backends of the run's database.
    Pg,
    /// Redis stopped and started again.
    Redis,
    /// Events published again with the same message id.
    Dup,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Amqp,
        FaultKind::Pg,
        FaultKind::Redis,
        FaultKind::Dup,
    ];

    /// The kind's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Amqp => "amqp",
            FaultKind::Pg => "pg",
            FaultKind::Redis => "redis",
            FaultKind::Dup => "dup",
        }
    }
}

/// The faults a run injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet(pub Vec<FaultKind>);

impl FaultSet {
    /// Every kind of fault.
    pub fn all() -> Self {
        FaultSet(FaultKind::ALL.to_vec())
    }

    /// No fault: the run checks the system under load alone.
    pub fn none() -> Self {
        FaultSet(Vec::new())
    }
}

/// Parses `all`, `none` or a comma-separated list of fault kinds (`kill,pg,dup`).
pub fn parse_faults(text: &str) -> Result<FaultSet, String> {
    match text.trim() {
        "all" => return Ok(FaultSet::all()),
        "none" | "" => return Ok(FaultSet::none()),
        _ => {}
    }
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim) {
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == part)
            .ok_or_else(|| {
                format!("unknown fault `{part}` (use all, none, or some of kill,amqp,pg,redis,dup)")
            })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(FaultSet(kinds))
}

/// Options of `order-processing chaos`. The backends are the usual `--database-url` and
/// `--amqp-url` (a fresh database and vhost are made on them); the order timeout is the usual
/// `--order-timeout` (pass `1s` to make races likely).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ChaosArgs {
    /// How long orders are placed and faults injected.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Orders placed per second.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Seeds the choice of faults and orders (the time when omitted; the report names it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The mean time between two faults.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub fault_interval: Duration,
    /// Which faults: `all`, `none`, or a list of kill,amqp,pg,redis,dup.
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    pub faults: FaultSet,
    /// Give up waiting for quiet after the run after this long (and check anyway).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub quiet_timeout: Duration,
    /// Where the services' logs go (a new directory under the system's temp dir when omitted).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The `order-processing` binary to run the services with (this one when omitted).
    #[arg(long, hide = true)]
    pub binary: Option<PathBuf>,
}

impl Default for ChaosArgs {
    fn default() -> Self {
        ChaosArgs {
            duration: Duration::from_secs(60),
            rate: 5,
            seed: None,
            fault_interval: Duration::from_secs(3),
            faults: FaultSet::all(),
            quiet_timeout: Duration::from_secs(120),
            log_dir: None,
            binary: None,
        }
    }
}

/// Why a chaos run could not run (what it found is in the [`ChaosReport`] instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// A backend or a tool the run needs did not do what was asked.
    #[error("cannot set up the chaos run: {0}")]
    Setup(String),
    /// A file or a process could not be handled.
    #[error("chaos run: {0}")]
    Io(#[from] std::io::Error),
    /// The run finished and found failures (the report line says which).
    #[error("the chaos run found failures: {0}")]
    Broken(String),
}

fn setup(what: impl std::fmt::Display) -> ChaosError {
    ChaosError::Setup(what.to_string())
}

/// What a chaos run saw and found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosReport {
    /// The seed of the run.
    pub seed: u64,
    /// Orders the system holds at the end (every customer's listing).
    pub orders: usize,
    /// Of these, Confirmed.
    pub confirmed: usize,
    /// Of these, Cancelled.
    pub cancelled: usize,
    /// POSTs never answered with an order, though retried (the order may or may not exist).
    pub unplaced: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Whether quiet came before `--quiet-timeout`.
    pub quiet: bool,
    /// Something that happened is missing: an order never final, a notification, a count.
    pub lost: Vec<String>,
    /// Something happened twice: an order, a charge, a notification, a count.
    pub doubled: Vec<String>,
    /// Stock that does not add up.
    pub stock: Vec<String>,
    /// Anything else wrong: a charge kept by a Cancelled order, a status that changed after
    /// quiet, a dead letter, a reservation left open.
    pub other: Vec<String>,
    /// Where the services' logs are.
    pub log_dir: PathBuf,
}

impl ChaosReport {
    /// Faults injected in all.
    pub fn fault_count(&self) -> usize {
        self.faults.values().sum()
    }

    /// Whether the run found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.stock.is_empty()
            && self.other.is_empty()
    }

    /// `chaos: N orders, K faults, 0 lost, 0 doubled, stock whole` (and what else broke).
    pub fn line(&self) -> String {
        let mut line = format!(
            "chaos: {} orders, {} faults, {} lost, {} doubled, stock {}",
            self.orders,
            self.fault_count(),
            self.lost.len(),
            self.doubled.len(),
            if self.stock.is_empty() {
                "whole"
            } else {
                "broken"
            }
        );
        if !self.other.is_empty() {
            line.push_str(&format!(", {} other problems", self.other.len()));
        }
        line
    }

    /// The line, then the run's figures and every problem found (at most 20 of each group).
    pub fn render(&self) -> String {
        let mut text = format!("{}\n", self.line());
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        text.push_str(&format!(
            "seed {}; {} confirmed, {} cancelled, {} POSTs never answered; faults: {}; {}\nlogs: {}\n",
            self.seed,
            self.confirmed,
            self.cancelled,
            self.unplaced,
            if faults.is_empty() { "none".to_owned() } else { faults.join(", ") },
            if self.quiet { "quiet reached" } else { "quiet NOT reached" },
            self.log_dir.display()
        ));
        for (group, problems) in [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("stock", &self.stock),
            ("other", &self.other),
        ] {
            for problem in problems.iter().take(20) {
                text.push_str(&format!("  {group}: {problem}\n"));
            }
            if problems.len() > 20 {
                text.push_str(&format!(
                    "  {group}: ... and {} more\n",
                    problems.len() - 20
                ));
            }
        }
        text
    }

    /// The last `lines` warnings and errors of each log the run wrote, with the run's own notes
    /// (faults) among them: a first look at what went wrong.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for (path, content) in self.logs() {
            let notable: Vec<&str> = content
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains(" chaos: "))
                .collect();
            text.push_str(&format!("==> {} <==\n", path.display()));
            for line in &notable[notable.len().saturating_sub(lines)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Every line of every log that names `id` (an order's id is its saga's correlation id, so
    /// this is the order's path through the services), oldest first.
    pub fn trail(&self, id: &str) -> String {
        let mut lines: Vec<String> = Vec::new();
        for (path, content) in self.logs() {
            let service = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            lines.extend(content.lines().filter(|l| l.contains(id)).map(|l| {
                format!(
                    "{} [{service}]{}",
                    &l[..l.len().min(27)],
                    &l[l.len().min(27)..]
                )
            }));
        }
        lines.sort();
        lines.join("\n")
    }

    /// The order ids the problems name, in the order found.
    pub fn problem_orders(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for problem in self.lost.iter().chain(&self.doubled).chain(&self.other) {
            for word in problem.split(|c: char| !(c.is_ascii_hexdigit() || c == '-')) {
                if word.parse::<Uuid>().is_ok() && !ids.iter().any(|id| id == word) {
                    ids.push(word.to_owned());
                }
            }
        }
        ids
    }

    fn logs(&self) -> Vec<(PathBuf, String)> {
        let Ok(entries) = std::fs::read_dir(&self.log_dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|path| {
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|content| (path, content))
            })
            .collect()
    }
}

/// A tiny xorshift64* generator: a run is repeatable from its seed without a dependency.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `low` and `high`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        // Callers pass a non-empty constant list.
        items[self.below(items.len() as u64) as usize]
    }
}

/// The ports [`free_port`] hands out: below the range from which Linux picks the local port of
/// every outgoing connection and of a bind to port 0 (32768–60999 by default). A port taken
/// from that range and released for a service to bind could be taken first by any connection
/// to PostgreSQL, RabbitMQ or Redis, and the service would exit on its `Bind` error. (A host
/// whose `ip_local_port_range` reaches below 32000 keeps that race for the ports they share.)
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port nothing listens on at the moment, and not handed out before by this process (so that
/// services started side by side never race for one).
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    // Processes started together (test binaries, chaos runs) begin at different places.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + HANDED_OUT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = FREE_PORTS.start + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free port in {FREE_PORTS:?}"),
    ))
}

/// The command line of one `kind` service of `binary` on `port`, with the backends, names and
/// business settings of `settings` (the caller chooses its environment and output).
pub fn service_command(
    binary: &Path,
    kind: ServiceKind,
    settings: &Settings,
    port: u16,
) -> Command {
    let s = settings;
    let mut command = Command::new(binary);
    command
        .arg(kind.name())
        .args([
            "--database-url",
            s.database_url.as_deref().unwrap_or_default(),
        ])
        .args(["--amqp-url", s.amqp_url.as_deref().unwrap_or_default()])
        .args(["--redis-url", s.redis_url.as_deref().unwrap_or_default()])
        .args(["--database-schema", &s.database_schema])
        .args(["--exchange", &s.exchange])
        .args(["--queue-prefix", &s.queue_prefix])
        .args(["--redis-prefix", &s.redis_prefix])
        .args([
            "--database-max-connections",
            &s.database_max_connections.to_string(),
        ])
        .args([
            "--order-timeout",
            &humantime::format_duration(s.order_timeout).to_string(),
        ])
        .args([
            "--payment-decline-above",
            &s.payment_decline_above.to_string(),
        ])
        .args([format!("--{}-port", kind.name()), port.to_string()]);
    if let Some(expires) = s.queue_expires {
        command.args([
            "--amqp-queue-expires",
            &humantime::format_duration(expires).to_string(),
        ]);
    }
    command
}

/// Runs a chaos run with the backends of `settings` and returns what it found.
pub async fn run(args: &ChaosArgs, settings: &Settings) -> Result<ChaosReport, ChaosError> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let id = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("order-processing-chaos-{id}")),
    };
    std::fs::create_dir_all(&log_dir)?;
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()?,
    };
    let mut env = Environment::create(&id, settings, log_dir.clone()).await?;
    let outcome = async {
        let mut cluster = Cluster::start(binary, &env, settings.order_timeout).await?;
        let result = drive(args, seed, &mut env, &mut cluster).await;
        cluster.stop().await;
        result
    }
    .await;
    env.remove().await;
    let mut report = outcome?;
    report.seed = seed;
    report.log_dir = log_dir;
    Ok(report)
}

/// The run's own backends: a database, a vhost, a Redis server.
struct Environment {
    admin: sqlx::PgPool,
    database: String,
    database_url: String,
    vhost: String,
    amqp_url: String,
    redis_port: u16,
    redis: Option<Child>,
    log_dir: PathBuf,
}

impl Environment {
    async fn create(id: &str, settings: &Settings, log_dir: PathBuf) -> Result<Self, ChaosError> {
        let base_db = settings
            .database_url
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        let base_amqp = settings
            .amqp_url
            .clone()
            .unwrap_or_else(|| DEFAULT_AMQP_URL.into());
        let database = format!("chaos_{id}");
        let mut database_url =
            reqwest::Url::parse(&base_db).map_err(|e| setup(format!("bad --database-url: {e}")))?;
        database_url.set_path(&format!("/{database}"));
        let mut amqp_url =
            reqwest::Url::parse(&base_amqp).map_err(|e| setup(format!("bad --amqp-url: {e}")))?;
        let vhost = format!("chaos-{id}");
        amqp_url.set_path(&format!("/{vhost}"));
        let user = match amqp_url.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };

        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&base_db)
            .await
            .map_err(|e| {
                setup(format!(
                    "PostgreSQL ({}): {e}",
                    crate::backends::redact(&base_db)
                ))
            })?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await
            .map_err(|e| setup(format!("CREATE DATABASE {database}: {e}")))?;
        let mut env = Environment {
            admin,
            database,
            database_url: database_url.to_string(),
            vhost: vhost.clone(),
            amqp_url: amqp_url.to_string(),
            redis_port: free_port()?,
            redis: None,
            log_dir,
        };
        let made = async {
            rabbitmqctl(&["add_vhost", &vhost]).await?;
            rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"]).await?;
            env.start_redis().await
        }
        .await;
        if let Err(error) = made {
            env.remove().await;
            return Err(error);
        }
        Ok(env)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    async fn start_redis(&mut self) -> Result<(), ChaosError> {
        let log = append_log(&self.log_dir, "redis")?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| setup(format!("redis-server (is it on the PATH?): {e}")))?;
        self.redis = Some(child);
        // Ready when it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.redis_port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(setup("the private redis-server did not start"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn stop_redis(&mut self) {
        if let Some(mut redis) = self.redis.take() {
            let _ = redis.kill().await;
        }
    }

    /// Terminates every backend of the run's database but this connection; returns how many.
    async fn terminate_backends(&self) -> Result<u64, ChaosError> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.database)
        .fetch_one(&self.admin)
        .await
        .map_err(|e| setup(format!("pg_terminate_backend: {e}")))?;
        Ok(count.max(0) as u64)
    }

    /// Queue name → messages (ready and unacknowledged) in the run's vhost.
    async fn queue_depths(&self) -> Result<BTreeMap<String, u64>, ChaosError> {
        let out =
            rabbitmqctl(&["-q", "list_queues", "-p", &self.vhost, "name", "messages"]).await?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let name = parts.next()?;
                let messages = parts.next()?.parse().ok()?;
                Some((name.to_owned(), messages))
            })
            .collect())
    }

    /// Removes the database, the vhost and the Redis server; failures are only printed.
    async fn remove(&mut self) {
        self.stop_redis().await;
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        if let Err(error) = sqlx::query(&drop).execute(&self.admin).await {
            eprintln!("chaos: cannot drop database {}: {error}", self.database);
        }
        self.admin.close().await;
        if let Err(error) = rabbitmqctl(&["delete_vhost", &self.vhost]).await {
            eprintln!("chaos: cannot delete vhost {}: {error}", self.vhost);
        }
    }
}

async fn rabbitmqctl(args: &[&str]) -> Result<String, ChaosError> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| setup(format!("rabbitmqctl (is it on the PATH?): {e}")))?;
    if !output.status.success() {
        return Err(setup(format!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn append_log(dir: &Path, name: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
}

fn note(dir: &Path, name: &str, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = append_log(dir, name) {
        let _ = writeln!(
            file,
            "{} chaos: {text}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}

/// The five service processes.
struct Cluster {
    binary: PathBuf,
    settings: Settings,
    ports: HashMap<ServiceKind, u16>,
    children: HashMap<ServiceKind, Child>,
    log_dir: PathBuf,
    client: reqwest::Client,
}

impl Cluster {
    async fn start(
        binary: PathBuf,
        env: &Environment,
        order_timeout: Duration,
    ) -> Result<Self, ChaosError> {
        let settings = Settings {
            database_url: Some(env.database_url.clone()),
            amqp_url: Some(env.amqp_url.clone()),
            redis_url: Some(env.redis_url()),
            order_timeout,
            payment_decline_above: DECLINE_ABOVE.parse().expect("a decimal"),
            database_max_connections: 4,
            ..Settings::default()
        };
        let mut ports = HashMap::new();
        for kind in ServiceKind::ALL {
            ports.insert(kind, free_port()?);
        }
        let mut cluster = Cluster {
            binary,
            settings,
            ports,
            children: HashMap::new(),
            log_dir: env.log_dir.clone(),
            client: client(),
        };
        for kind in ServiceKind::ALL {
            cluster.spawn(kind)?;
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for kind in ServiceKind::ALL {
            while !cluster.healthy(kind).await {
                if Instant::now() > deadline {
                    return Err(setup(format!(
                        "the {} service did not become healthy (see {})",
                        kind.name(),
                        cluster.log_dir.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    fn spawn(&mut self, kind: ServiceKind) -> Result<(), ChaosError> {
        let log = append_log(&self.log_dir, kind.name())?;
        let child = service_command(&self.binary, kind, &self.settings, self.ports[&kind])
            .env("RUST_LOG", "info,tower_http=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.children.insert(kind, child);
        Ok(())
    }

    fn url(&self, kind: ServiceKind, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[&kind])
    }

    async fn healthy(&self, kind: ServiceKind) -> bool {
        matches!(self.client.get(self.url(kind, "/health")).send().await, Ok(r) if r.status().is_success())
    }

    async fn all_healthy(&self) -> bool {
        for kind in ServiceKind::ALL {
            if !self.healthy(kind).await {
                return false;
            }
        }
        true
    }

    fn pid(&self, kind: ServiceKind) -> Option<u32> {
        self.children.get(&kind).and_then(Child::id)
    }

    async fn kill(&mut self, kind: ServiceKind) {
        if let Some(mut child) = self.children.remove(&kind) {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM to every service, SIGKILL to those still running 10 s later.
    async fn stop(&mut self) {
        for child in self.children.values() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for (_, mut child) in self.children.drain() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client with a timeout builds")
}

/// The four products the inventory service seeds, with the price the run charges.
const PRODUCTS: [(&str, &str, &str); 4] = [
    ("11111111-1111-1111-1111-111111111111", "Laptop", "999.99"),
    ("22222222-2222-2222-2222-222222222222", "Mouse", "25.00"),
    ("33333333-3333-3333-3333-333333333333", "Keyboard", "75.00"),
    ("44444444-4444-4444-4444-444444444444", "Monitor", "300.00"),
];

/// One order the run tried to place.
#[derive(Debug, Clone)]
struct Attempt {
    customer: Uuid,
    body: Value,
    /// The order id the POST answered, when it answered.
    answered: Option<Uuid>,
    /// A wrong answer (a 4xx other than the retried ones).
    refused: Option<String>,
}

fn order_body(rng: &mut Rng, customer: Uuid) -> Value {
    let lines = 1 + rng.below(2) as usize;
    let first = rng.below(4) as usize;
    let items: Vec<Value> = (0..lines)
        .map(|i| {
            let (id, name, price) = PRODUCTS[(first + i) % 4];
            json!({
                "productId": id,
                "productName": name,
                "quantity": 1 + rng.below(3),
                "unitPrice": serde_json::from_str::<Value>(price).expect("a price"),
            })
        })
        .collect();
    json!({ "customerId": customer, "items": items })
}

/// Places one order, retrying with the same key while the system cannot answer.
async fn place(client: reqwest::Client, url: String, mut attempt: Attempt) -> Attempt {
    let key = Uuid::new_v4().to_string();
    let give_up = Instant::now() + PLACE_PATIENCE;
    while Instant::now() < give_up {
        let sent = client
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&attempt.body)
            .send()
            .await;
        match sent {
            Ok(response) if matches!(response.status().as_u16(), 200 | 201) => {
                let order: Option<Value> = response.json().await.ok();
                attempt.answered = order
                    .as_ref()
                    .and_then(|o| o["orderId"].as_str())
                    .and_then(|id| id.parse().ok());
                if attempt.answered.is_some() {
                    return attempt;
                }
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != 408
                    && response.status() != 429 =>
            {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                attempt.refused = Some(format!("POST answered {status}: {body}"));
                return attempt;
            }
            // Down, restarting, a backend away (503): the same key again shortly.
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    attempt
}

/// Places orders and injects faults for the run's duration, waits for quiet, checks.
async fn drive(
    args: &ChaosArgs,
    seed: u64,
    env: &mut Environment,
    cluster: &mut Cluster,
) -> Result<ChaosReport, ChaosError> {
    let mut rng = Rng::new(seed);
    let mut report = ChaosReport {
        seed,
        ..ChaosReport::default()
    };
    let start_stock = products(cluster).await?;
    let first_day = chrono::Utc::now().date_naive();

    // A store and a bus of the run's own, to read the log and to publish duplicates. The
    // services made the tables; the run only reads them (so it never migrates a database
    // that the services' binary laid out).
    let mut config = es_postgres::PgConfig::new(Settings::default().database_schema);
    config.application_name = "order-processing-chaos".into();
    config.max_connections = 2;
    let store = es_postgres::PgEventStore::connect(&env.database_url, config)
        .await
        .map_err(|e| setup(format!("the run's database: {e}")))?;
    let bus_only = Settings {
        amqp_url: Some(env.amqp_url.clone()),
        ..Settings::default()
    };
    let bus = crate::Backends::from_settings(&bus_only)
        .await
        .map_err(setup)?
        .bus;

    // Orders: one task per order, at a steady rate.
    let attempts: Arc<Mutex<Vec<tokio::task::JoinHandle<Attempt>>>> = Arc::default();
    let placer = {
        let attempts = attempts.clone();
        let url = cluster.url(ServiceKind::Order, "/api/orders");
        let client = cluster.client.clone();
        let period = Duration::from_secs(1) / args.rate.max(1);
        let duration = args.duration;
        let mut rng = Rng::new(seed.rotate_left(17));
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(period);
            while began.elapsed() < duration {
                tick.tick().await;
                let customer = Uuid::new_v4();
                let attempt = Attempt {
                    customer,
                    body: order_body(&mut rng, customer),
                    answered: None,
                    refused: None,
                };
                let task = tokio::spawn(place(client.clone(), url.clone(), attempt));
                attempts.lock().expect("never poisoned").push(task);
            }
        })
    };

    // Faults, until the orders stop.
    let mut pool: Vec<RecordedEvent> = Vec::new();
    let mut seen = Position::START;
    let began = Instant::now();
    let mut deck: Vec<FaultKind> = Vec::new();
    if !args.faults.0.is_empty() {
        loop {
            let wait = rng.between(args.fault_interval / 2, args.fault_interval * 3 / 2);
            if began.elapsed() + wait >= args.duration {
                break;
            }
            tokio::time::sleep(wait).await;
            // Each kind in turn, in a shuffled order per round: every kind comes up as often.
            if deck.is_empty() {
                deck = args.faults.0.clone();
                for i in (1..deck.len()).rev() {
                    deck.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            let kind = deck.pop().expect("refilled above");
            let at = began.elapsed().as_secs_f64();
            match inject(
                kind, &mut rng, env, cluster, &store, &*bus, &mut pool, &mut seen,
            )
            .await
            {
                Ok(what) => {
                    eprintln!("chaos: {at:6.1}s {} {what}", kind.name());
                    note(
                        &cluster.log_dir,
                        "faults",
                        &format!("{} {what}", kind.name()),
                    );
                    *report.faults.entry(kind.name()).or_default() += 1;
                }
                Err(error) => {
                    eprintln!("chaos: {at:6.1}s {} failed: {error}", kind.name());
                    note(
                        &cluster.log_dir,
                        "faults",
                        &format!("{} failed: {error}", kind.name()),
                    );
                }
            }
        }
    }
    let _ = placer.await;
    let tasks: Vec<_> = std::mem::take(&mut *attempts.lock().expect("never poisoned"));
    // Every service and Redis are back up by now (each fault restores what it broke).
    let mut placed = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(attempt) = task.await {
            placed.push(attempt);
        }
    }
    eprintln!(
        "chaos: {} orders attempted; waiting for quiet",
        placed.len()
    );
    report.quiet = wait_for_quiet(args.quiet_timeout, env, cluster, &store, &placed).await;
    if !report.quiet {
        report.other.push(format!(
            "no quiet within {:?}: orders pending, a service unhealthy, or messages still moving",
            args.quiet_timeout
        ));
    }
    check(
        &mut report,
        cluster,
        &store,
        env,
        &placed,
        &start_stock,
        first_day,
    )
    .await?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    kind: FaultKind,
    rng: &mut Rng,
    env: &mut Environment,
    cluster: &mut Cluster,
    store: &dyn EventStore,
    bus: &dyn es_core::EventBus,
    pool: &mut Vec<RecordedEvent>,
    seen: &mut Position,
) -> Result<String, ChaosError> {
    match kind {
        FaultKind::Kill => {
            let service = rng.pick(&ServiceKind::ALL);
            cluster.kill(service).await;
            note(&cluster.log_dir, service.name(), "SIGKILL");
            tokio::time::sleep(
                rng.between(Duration::from_millis(100), Duration::from_millis(1500)),
            )
            .await;
            note(&cluster.log_dir, service.name(), "restarted after SIGKILL");
            cluster.spawn(service)?;
            Ok(service.name().to_owned())
        }
        FaultKind::Amqp => {
            let service = rng.pick(&ServiceKind::ALL);
            let pid = cluster
                .pid(service)
                .ok_or_else(|| setup("no such process"))?;
            let closed = close_connections(&env.vhost, pid).await?;
            if closed == 0 {
                return Err(setup(format!(
                    "no broker connection of the {} service",
                    service.name()
                )));
            }
            note(
                &cluster.log_dir,
                service.name(),
                &format!("broker closed {closed} connection(s)"),
            );
            Ok(format!("{} ({closed} connection(s))", service.name()))
        }
        FaultKind::Pg => {
            let count = env.terminate_backends().await?;
            for kind in ServiceKind::ALL {
                note(
                    &cluster.log_dir,
                    kind.name(),
                    &format!("PostgreSQL backends terminated ({count} in all)"),
                );
            }
            Ok(format!("{count} backends"))
        }
        FaultKind::Redis => {
            // The Redis child lives in the environment; it is restarted on the same port.
            let pause = rng.between(Duration::from_millis(500), Duration::from_millis(3000));
            env.stop_redis().await;
            tokio::time::sleep(pause).await;
            env.start_redis().await?;
            for kind in ServiceKind::ALL {
                note(
                    &cluster.log_dir,
                    kind.name(),
                    &format!("Redis stopped for {pause:?}"),
                );
            }
            Ok(format!("down for {:.1}s", pause.as_secs_f64()))
        }
        FaultKind::Dup => {
            loop {
                let batch = store
                    .read_all(&StreamFilter::All, *seen, 1000)
                    .await
                    .map_err(setup)?;
                let Some(last) = batch.last() else { break };
                *seen = last.position;
                pool.extend(
                    batch
                        .into_iter()
                        .filter(|e| crate::events::routing_key_of(&e.event_type).is_some()),
                );
            }
            if pool.is_empty() {
                return Ok("nothing delivered yet".into());
            }
            // Mostly recent events: those are the ones whose handling may still be under way.
            let count = 1 + rng.below(5) as usize;
            let recent = pool.len().min(200);
            let copies: Vec<RecordedEvent> = (0..count)
                .map(|_| pool[pool.len() - 1 - rng.below(recent as u64) as usize].clone())
                .collect();
            bus.publish(&copies).await.map_err(setup)?;
            let types: Vec<&str> = copies.iter().map(|e| e.event_type.as_str()).collect();
            Ok(format!("{count} events again ({})", types.join(", ")))
        }
    }
}

/// Closes the broker connections of process `pid` in `vhost`; returns how many.
async fn close_connections(vhost: &str, pid: u32) -> Result<usize, ChaosError> {
    let out = rabbitmqctl(&[
        "-q",
        "list_connections",
        "pid",
        "vhost",
        "client_properties",
    ])
    .await?;
    let name = format!("order-processing-{pid}");
    let mut closed = 0;
    for line in out.lines() {
        let mut fields = line.split('\t');
        let (Some(conn), Some(host)) = (fields.next(), fields.next()) else {
            continue;
        };
        let rest: String = fields.collect::<Vec<_>>().join("\t");
        let matches = rest
            .match_indices(&name)
            .any(|(at, _)| !rest[at + name.len()..].starts_with(|c: char| c.is_ascii_digit()));
        if host == vhost && matches {
            rabbitmqctl(&[
                "close_connection",
                conn,
                "chaos: connection closed on purpose",
            ])
            .await?;
            closed += 1;
        }
    }
    Ok(closed)
}

/// GETs `url`: the status and the JSON body (`Null` when there is none or it is not JSON).
async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, Value), reqwest::Error> {
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// GETs `url` until it answers 200 (the system is quiet, so a failure is a fault's echo).
async fn get_ok(client: &reqwest::Client, url: &str) -> Result<(u16, Value), ChaosError> {
    let mut last = String::new();
    for _ in 0..20 {
        match get(client, url).await {
            Ok((status, body)) if status < 500 => return Ok((status, body)),
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(setup(format!("GET {url}: {last}")))
}

/// Product id → (available, reserved).
async fn products(cluster: &Cluster) -> Result<BTreeMap<String, (i64, i64)>, ChaosError> {
    let url = cluster.url(ServiceKind::Inventory, "/api/inventory/products");
    let (status, body) = get_ok(&cluster.client, &url).await?;
    let list = body
        .as_array()
        .filter(|_| status == 200)
        .ok_or_else(|| setup(format!("GET {url} answered {status} {body}")))?;
    Ok(list
        .iter()
        .filter_map(|p| {
            Some((
                p["productId"].as_str()?.to_owned(),
                (
                    p["availableQuantity"].as_i64()?,
                    p["reservedQuantity"].as_i64()?,
                ),
            ))
        })
        .collect())
}

fn is_final(status: &str) -> bool {
    status == "Confirmed" || status == "Cancelled"
}

fn money(value: &Value) -> Decimal {
    value.to_string().parse().unwrap_or_default()
}

/// Every order of `customer` (their listing, all pages).
async fn customer_orders(cluster: &Cluster, customer: Uuid) -> Result<Vec<Value>, ChaosError> {
    let url = cluster.url(
        ServiceKind::Order,
        &format!("/api/orders/customer/{customer}?limit=1000"),
    );
    let (status, body) = get_ok(&cluster.client, &url).await?;
    match body {
        Value::Array(orders) if status == 200 => Ok(orders),
        other => Err(setup(format!("GET {url} answered {status} {other}"))),
    }
}

/// Waits until every known order is final, every service healthy, the queues empty and the
/// log still for three looks in a row; `false` when `timeout` ran out first.
async fn wait_for_quiet(
    timeout: Duration,
    env: &Environment,
    cluster: &Cluster,
    store: &dyn EventStore,
    placed: &[Attempt],
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<Uuid> = placed.iter().filter_map(|a| a.answered).collect();
    let mut calm = 0;
    let mut head = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let client = &cluster.client;
        let still: Vec<Uuid> = stream::iter(pending.iter().copied())
            .map(|id| async move {
                let url = cluster.url(ServiceKind::Order, &format!("/api/orders/{id}"));
                match get(client, &url).await {
                    Ok((200, order)) if order["status"].as_str().is_some_and(is_final) => None,
                    _ => Some(id),
                }
            })
            .buffered(8)
            .filter_map(|id| async move { id })
            .collect()
            .await;
        pending = still;
        let drained = match env.queue_depths().await {
            Ok(depths) => depths
                .iter()
                .all(|(name, n)| name.ends_with(".dlq") || *n == 0),
            Err(_) => false,
        };
        let now = store.head().await.ok();
        let still_log = now.is_some() && now == head;
        head = now;
        if pending.is_empty() && drained && still_log && cluster.all_healthy().await {
            calm += 1;
            if calm >= 3 {
                return true;
            }
        } else {
            calm = 0;
        }
    }
    false
}

/// Counts of event types per order, from the log.
async fn log_counts(
    store: &dyn EventStore,
) -> Result<HashMap<(String, String), usize>, ChaosError> {
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    let mut after = Position::START;
    loop {
        let batch = store
            .read_all(&StreamFilter::All, after, 1000)
            .await
            .map_err(setup)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for event in &batch {
            let category = event.stream_id.category();
            if category == "order" || category == "payment" {
                *counts
                    .entry((
                        event.stream_id.entity_id().to_owned(),
                        event.event_type.clone(),
                    ))
                    .or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// Checks the outcome of the run from the public API and the stores.
async fn check(
    report: &mut ChaosReport,
    cluster: &Cluster,
    store: &dyn EventStore,
    env: &Environment,
    placed: &[Attempt],
    start_stock: &BTreeMap<String, (i64, i64)>,
    first_day: chrono::NaiveDate,
) -> Result<(), ChaosError> {
    use crate::events::{ORDER_CANCELLED, ORDER_CONFIRMED, ORDER_PLACED, PAYMENT_PROCESSED};
    let client = &cluster.client;

    // The orders the system holds: each attempt's customer lists at most the one order.
    let listings: Vec<Result<Vec<Value>, ChaosError>> = stream::iter(placed)
        .map(|a| customer_orders(cluster, a.customer))
        .buffered(8)
        .collect()
        .await;
    let mut orders: Vec<(Uuid, Value)> = Vec::new();
    for (attempt, listed) in placed.iter().zip(listings) {
        let listed = listed?;
        if let Some(refused) = &attempt.refused {
            report
                .other
                .push(format!("customer {}: {refused}", attempt.customer));
        }
        if listed.len() > 1 {
            report.doubled.push(format!(
                "customer {} has {} orders for one idempotency key",
                attempt.customer,
                listed.len()
            ));
        }
        if let Some(id) = attempt.answered {
            if !listed
                .iter()
                .any(|o| o["orderId"].as_str() == Some(&id.to_string()))
            {
                report.lost.push(format!(
                    "order {id} was answered to its POST but is not listed"
                ));
            }
        } else if listed.is_empty() {
            report.unplaced += 1;
        }
        orders.extend(listed.into_iter().map(|o| (attempt.customer, o)));
    }
    report.orders = orders.len();

    // Final, and staying so.
    let mut confirmed_quantity: BTreeMap<String, i64> = BTreeMap::new();
    let mut revenue = Decimal::ZERO;
    for (_, order) in &orders {
        let id = order["orderId"].as_str().unwrap_or_default();
        match order["status"].as_str().unwrap_or_default() {
            "Confirmed" => {
                report.confirmed += 1;
                revenue += money(&order["totalAmount"]);
                for item in order["items"].as_array().into_iter().flatten() {
                    *confirmed_quantity
                        .entry(item["productId"].as_str().unwrap_or_default().to_owned())
                        .or_default() += item["quantity"].as_i64().unwrap_or_default();
                }
            }
            "Cancelled" => report.cancelled += 1,
            other => report.lost.push(format!("order {id} is still {other}")),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again: Vec<Result<(u16, Value), ChaosError>> = stream::iter(&orders)
        .map(|(_, o)| {
            let url = cluster.url(
                ServiceKind::Order,
                &format!("/api/orders/{}", o["orderId"].as_str().unwrap_or_default()),
            );
            async move { get_ok(client, &url).await }
        })
        .buffered(8)
        .collect()
        .await;
    for ((_, before), now) in orders.iter().zip(again) {
        let (status, now) = now?;
        let id = before["orderId"].as_str().unwrap_or_default();
        if status != 200 {
            report.lost.push(format!(
                "order {id} answers {status} to GET after it was listed"
            ));
        } else if now["status"] != before["status"] || now["version"] != before["version"] {
            report.other.push(format!(
                "order {id} changed after quiet: {} v{} → {} v{}",
                before["status"], before["version"], now["status"], now["version"]
            ));
        }
    }

    // Stock: nothing held, nothing leaked, nothing sold twice.
    let end_stock = products(cluster).await?;
    for (product, (start, _)) in start_stock {
        let sold = confirmed_quantity.get(product).copied().unwrap_or_default();
        let Some((available, reserved)) = end_stock.get(product) else {
            report.stock.push(format!("product {product} is gone"));
            continue;
        };
        if *reserved != 0 {
            report
                .stock
                .push(format!("product {product}: {reserved} still reserved"));
        }
        if *available != start - sold {
            report.stock.push(format!(
                "product {product}: {available} available, expected {} ({start} at the start, {sold} sold to Confirmed orders)",
                start - sold
            ));
        }
    }

    // Reservations, payments, notifications per order.
    let details: Vec<Result<[(u16, Value); 3], ChaosError>> = stream::iter(&orders)
        .map(|(customer, o)| {
            let id = o["orderId"].as_str().unwrap_or_default().to_owned();
            let urls = [
                cluster.url(
                    ServiceKind::Inventory,
                    &format!("/api/inventory/reservations/{id}"),
                ),
                cluster.url(ServiceKind::Payment, &format!("/api/payments/order/{id}")),
                cluster.url(
                    ServiceKind::Notification,
                    &format!("/api/notifications/customer/{customer}?limit=1000"),
                ),
            ];
            async move {
                Ok([
                    get_ok(client, &urls[0]).await?,
                    get_ok(client, &urls[1]).await?,
                    get_ok(client, &urls[2]).await?,
                ])
            }
        })
        .buffered(8)
        .collect()
        .await;
    for ((_, order), detail) in orders.iter().zip(details) {
        let [(r_status, reservation), (p_status, payment), (_, notifications)] = detail?;
        let id = order["orderId"].as_str().unwrap_or_default();
        let status = order["status"].as_str().unwrap_or_default();
        let reservation_status = reservation["status"].as_str().unwrap_or("none");
        let paid = p_status == 200 && payment["status"] == "Succeeded";
        match status {
            "Confirmed" => {
                if r_status != 200 || reservation_status != "Committed" {
                    report.other.push(format!(
                        "Confirmed order {id}: reservation {reservation_status}, not Committed"
                    ));
                }
                if !paid {
                    report.lost.push(format!(
                        "Confirmed order {id} has no successful payment ({p_status} {payment})"
                    ));
                } else if money(&payment["amount"]) != money(&order["totalAmount"]) {
                    report.other.push(format!(
                        "Confirmed order {id}: charged {} for {}",
                        payment["amount"], order["totalAmount"]
                    ));
                }
            }
            "Cancelled" => {
                if r_status == 200 && matches!(reservation_status, "Reserved" | "Committed") {
                    report.other.push(format!(
                        "Cancelled order {id}: reservation {reservation_status}, not Released"
                    ));
                }
                if paid {
                    report.other.push(format!(
                        "Cancelled order {id} ({}) keeps a charge of {}",
                        order["cancellationReason"], payment["amount"]
                    ));
                }
            }
            _ => {}
        }
        let kinds: Vec<&str> = notifications
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["orderId"].as_str() == Some(id))
            .filter_map(|n| n["kind"].as_str())
            .collect();
        let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
        let expected: &[(&str, usize)] = match status {
            "Confirmed" => &[
                ("OrderPlaced", 1),
                ("OrderConfirmed", 1),
                ("OrderCancelled", 0),
            ],
            "Cancelled" => &[
                ("OrderPlaced", 1),
                ("OrderConfirmed", 0),
                ("OrderCancelled", 1),
            ],
            _ => &[("OrderPlaced", 1)],
        };
        for (kind, want) in expected {
            let got = count(kind);
            if got < *want {
                report
                    .lost
                    .push(format!("order {id} ({status}): no {kind} notification"));
            } else if got > *want && *want == 1 {
                report
                    .doubled
                    .push(format!("order {id}: {got} {kind} notifications"));
            } else if got > *want {
                report
                    .other
                    .push(format!("order {id} ({status}): a {kind} notification"));
            }
        }
    }

    // The log: one placement, one outcome and at most one charge per order.
    let counts = log_counts(store).await?;
    let listed: std::collections::HashSet<&str> = orders
        .iter()
        .filter_map(|(_, o)| o["orderId"].as_str())
        .collect();
    for ((order, event_type), n) in &counts {
        if event_type == ORDER_PLACED && !listed.contains(order.as_str()) {
            report.lost.push(format!(
                "order {order} is in the log but no customer lists it"
            ));
        }
        if *n > 1
            && [
                ORDER_PLACED,
                ORDER_CONFIRMED,
                ORDER_CANCELLED,
                PAYMENT_PROCESSED,
            ]
            .contains(&event_type.as_str())
        {
            report
                .doubled
                .push(format!("order {order}: {n} {event_type} events"));
        }
    }
    for order in &listed {
        let n = |t: &str| {
            counts
                .get(&((*order).to_owned(), t.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        if n(ORDER_CONFIRMED) + n(ORDER_CANCELLED) > 1
            && n(ORDER_CONFIRMED) > 0
            && n(ORDER_CANCELLED) > 0
        {
            report.other.push(format!(
                "order {order} was both confirmed and cancelled in the log"
            ));
        }
    }

    // Analytics: the day's counts equal the outcomes (summed over the days of the run).
    let today = chrono::Utc::now().date_naive();
    let url = cluster.url(
        ServiceKind::Analytics,
        &format!("/api/analytics/metrics/range?from={first_day}&to={today}"),
    );
    let (status, days) = get_ok(client, &url).await?;
    let days = days
        .as_array()
        .cloned()
        .filter(|_| status == 200)
        .unwrap_or_default();
    let sum = |field: &str| {
        days.iter()
            .map(|d| d[field].as_u64().unwrap_or_default() as usize)
            .sum::<usize>()
    };
    let counted_revenue: Decimal = days.iter().map(|d| money(&d["revenue"])).sum();
    for (what, counted, actual) in [
        ("ordersPlaced", sum("ordersPlaced"), orders.len()),
        ("ordersConfirmed", sum("ordersConfirmed"), report.confirmed),
        ("ordersCancelled", sum("ordersCancelled"), report.cancelled),
    ] {
        if counted < actual {
            report.lost.push(format!(
                "analytics counts {counted} {what}, the orders say {actual}"
            ));
        } else if counted > actual {
            report.doubled.push(format!(
                "analytics counts {counted} {what}, the orders say {actual}"
            ));
        }
    }
    if counted_revenue != revenue {
        report.other.push(format!(
            "analytics revenue {counted_revenue}, the Confirmed orders sum to {revenue}"
        ));
    }

    // The queues: drained, no dead letters (the run poisons nothing on purpose).
    for (queue, n) in env.queue_depths().await? {
        if n == 0 {
            continue;
        }
        if queue.ends_with(".dlq") {
            report
                .other
                .push(format!("dead-letter queue {queue} holds {n} messages"));
        } else {
            report
                .other
                .push(format!("queue {queue} still holds {n} messages"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!(parse_faults("all"), Ok(FaultSet::all()));
        assert_eq!(parse_faults("none"), Ok(FaultSet::none()));
        assert_eq!(
            parse_faults("kill, dup,kill"),
            Ok(FaultSet(vec![FaultKind::Kill, FaultKind::Dup]))
        );
        assert!(parse_faults("meteor").is_err());
    }

    #[test]
    fn the_subcommand_takes_its_flags_and_the_global_ones() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "order-processing",
            "chaos",
            "--duration",
            "45s",
            "--rate",
            "5",
            "--faults",
            "kill,pg",
            "--order-timeout",
            "1s",
            "--seed",
            "7",
        ])
        .expect("chaos flags parse");
        let Some(crate::Command::Chaos(args)) = cli.command else {
            panic!("not the chaos subcommand: {:?}", cli.command);
        };
        assert_eq!(args.duration, Duration::from_secs(45));
        assert_eq!(args.faults, FaultSet(vec![FaultKind::Kill, FaultKind::Pg]));
        assert_eq!(args.seed, Some(7));
        assert_eq!(cli.settings.order_timeout, Duration::from_secs(1));
        assert!(crate::Cli::try_parse_from(["order-processing", "chaos", "--rate", "0"]).is_err());
    }

    #[test]
    fn the_generator_repeats_from_its_seed_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let x = a.below(5);
            assert_eq!(x, b.below(5));
            assert!(x < 5);
        }
        let d = a.between(Duration::from_millis(100), Duration::from_millis(200));
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&d));
    }

    #[test]
    fn a_clean_report_reads_as_one_line() {
        let mut report = ChaosReport {
            orders: 300,
            ..ChaosReport::default()
        };
        report.faults.insert("kill", 4);
        report.faults.insert("pg", 3);
        assert!(report.is_clean());
        assert_eq!(
            report.line(),
            "chaos: 300 orders, 7 faults, 0 lost, 0 doubled, stock whole"
        );
        report.stock.push("product p: 1 still reserved".into());
        report
            .other
            .push("dead-letter queue q.dlq holds 1 messages".into());
        assert!(!report.is_clean());
        assert_eq!(
            report.line(),
            "chaos: 300 orders, 7 faults, 0 lost, 0 doubled, stock broken, 1 other problems"
        );
    }
}
