//! The budget: what one order costs the machine, counted from the engines' own counters.
//!
//! Before the measured phase and after it the load generator reads PostgreSQL's
//! `pg_stat_database` (and `pg_stat_statements` where it is loaded), RabbitMQ's global
//! counters (`rabbitmqctl eval`), Redis's `INFO stats`, and the CPU time of the processes
//! from `/proc`; the differences divided by the orders that became final are the budget.
//! Each source is optional: one that cannot be read is left out with a note, never guessed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::Connection;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI in use).
const TICKS_PER_SECOND: u64 = 100;

/// PostgreSQL's counters for one database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PgCounters {
    /// Committed plus rolled-back transactions.
    pub transactions: u64,
    /// Statements executed (`pg_stat_statements`), when it is loaded.
    pub statements: Option<u64>,
    /// Rows inserted.
    pub rows_inserted: u64,
    /// Rows updated.
    pub rows_updated: u64,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Rows fetched by index scans.
    pub rows_fetched: u64,
    /// Rows returned by scans (sequential and index), before filtering.
    pub rows_returned: u64,
}

impl PgCounters {
    fn since(&self, before: &PgCounters) -> PgCounters {
        PgCounters {
            transactions: self.transactions.saturating_sub(before.transactions),
            statements: match (self.statements, before.statements) {
                (Some(after), Some(before)) => Some(after.saturating_sub(before)),
                _ => None,
            },
            rows_inserted: self.rows_inserted.saturating_sub(before.rows_inserted),
            rows_updated: self.rows_updated.saturating_sub(before.rows_updated),
            rows_deleted: self.rows_deleted.saturating_sub(before.rows_deleted),
            rows_fetched: self.rows_fetched.saturating_sub(before.rows_fetched),
            rows_returned: self.rows_returned.saturating_sub(before.rows_returned),
        }
    }
}

/// RabbitMQ's node-wide message counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerCounters {
    /// Messages publishers sent.
    pub published: u64,
    /// Messages routed to at least one queue.
    pub routed: u64,
    /// Messages delivered to consumers (one message to three queues is three).
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acknowledged: u64,
    /// Deliveries made again.
    pub redelivered: u64,
}

impl BrokerCounters {
    fn since(&self, before: &BrokerCounters) -> BrokerCounters {
        BrokerCounters {
            published: self.published.saturating_sub(before.published),
            routed: self.routed.saturating_sub(before.routed),
            delivered: self.delivered.saturating_sub(before.delivered),
            acknowledged: self.acknowledged.saturating_sub(before.acknowledged),
            redelivered: self.redelivered.saturating_sub(before.redelivered),
        }
    }

    /// Reads the counters from the text of `rabbit_global_counters:overview()`: an Erlang map
    /// per protocol and queue type, summed here.
    pub fn parse(text: &str) -> Option<BrokerCounters> {
        let sum = |key: &str| -> Option<u64> {
            let needle = format!("{key} =>");
            let mut total = None;
            let mut rest = text;
            while let Some(found) = rest.find(&needle) {
                rest = &rest[found + needle.len()..];
                let digits: String = rest
                    .trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse::<u64>() {
                    total = Some(total.unwrap_or(0) + n);
                }
            }
            total
        };
        Some(BrokerCounters {
            published: sum("messages_received_total")?,
            routed: sum("messages_routed_total").unwrap_or(0),
            delivered: sum("messages_delivered_total")?,
            acknowledged: sum("messages_acknowledged_total").unwrap_or(0),
            redelivered: sum("messages_redelivered_total").unwrap_or(0),
        })
    }
}

/// Who a process works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Group {
    /// The system under test (`order-processing` processes, or the `--pid`s given).
    System,
    /// PostgreSQL: the postmaster and every backend.
    Postgres,
    /// RabbitMQ's Erlang VM.
    Rabbitmq,
    /// `redis-server`.
    Redis,
    /// This process.
    LoadGenerator,
}

impl Group {
    /// Its name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Group::System => "order-processing",
            Group::Postgres => "postgres",
            Group::Rabbitmq => "rabbitmq",
            Group::Redis => "redis",
            Group::LoadGenerator => "load generator",
        }
    }
}

/// CPU ticks of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// Its start time (ticks since boot), which tells a reused pid apart.
    pub start: u64,
    /// Whose it is.
    pub group: Group,
    /// User plus system ticks of the process itself.
    pub own: u64,
    /// User plus system ticks of its children that it waited for (PostgreSQL's backends that
    /// ended, counted at the postmaster).
    pub children: u64,
}

/// Milliseconds of CPU each group used between two samplings. A process that started between
/// them counts whole; one that ended is lost unless its parent waited for it.
pub fn cpu_between(before: &[ProcSample], after: &[ProcSample]) -> BTreeMap<Group, f64> {
    let mut ticks: BTreeMap<Group, u64> = BTreeMap::new();
    for sample in after {
        let earlier = before
            .iter()
            .find(|b| b.pid == sample.pid && b.start == sample.start);
        let used = match earlier {
            Some(b) => {
                sample.own.saturating_sub(b.own) + sample.children.saturating_sub(b.children)
            }
            None => sample.own + sample.children,
        };
        *ticks.entry(sample.group).or_default() += used;
    }
    ticks
        .into_iter()
        .map(|(group, t)| (group, t as f64 * 1000.0 / TICKS_PER_SECOND as f64))
        .collect()
}

/// Parses `/proc/<pid>/stat`: (start time, own ticks, children's ticks).
pub fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    // The command name is in parentheses and may hold spaces: count fields after the last `)`.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14–17 (utime, stime, cutime, cstime) and 22 (starttime), counting from 1 with
    // pid as 1 and comm as 2, so index 0 here is field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(22)?, field(14)? + field(15)?, field(16)? + field(17)?))
}

/// Which group a process belongs to, from its name and command line; `None` for others.
fn classify(pid: u32, comm: &str, argv0: &str, me: u32, system_pids: &[u32]) -> Option<Group> {
    if pid == me {
        return Some(Group::LoadGenerator);
    }
    if system_pids.contains(&pid) {
        return Some(Group::System);
    }
    let program = argv0.rsplit('/').next().unwrap_or(argv0);
    match comm {
        "postgres" => return Some(Group::Postgres),
        "beam.smp" => return Some(Group::Rabbitmq),
        "redis-server" => return Some(Group::Redis),
        _ => {}
    }
    (system_pids.is_empty() && program == "order-processing").then_some(Group::System)
}

/// Samples the CPU ticks of every process of interest.
pub fn sample_processes(system_pids: &[u32]) -> Vec<ProcSample> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut samples = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let argv0 =
            String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap_or(&[])).into_owned();
        let Some(group) = classify(pid, comm.trim(), &argv0, me, system_pids) else {
            continue;
        };
        let Some((start, own, children)) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
        else {
            continue;
        };
        samples.push(ProcSample {
            pid,
            start,
            group,
            own,
            children,
        });
    }
    samples
}

/// Where the counters come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The system's PostgreSQL database.
    pub database_url: Option<String>,
    /// Whether the system uses RabbitMQ (its counters are read with the local `rabbitmqctl`).
    pub broker: bool,
    /// The system's Redis.
    pub redis_url: Option<String>,
    /// The processes of the system under test; empty: every `order-processing` process.
    pub system_pids: Vec<u32>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    postgres: Option<PgCounters>,
    broker: Option<BrokerCounters>,
    redis_calls: Option<u64>,
    processes: Vec<ProcSample>,
    notes: Vec<String>,
}

impl Sources {
    /// The processes to count: the system's, this one's, and those of the engines the system
    /// uses (on the embedded backends, a PostgreSQL serving others is none of its cost).
    fn processes(&self) -> Vec<ProcSample> {
        let mut samples = sample_processes(&self.system_pids);
        samples.retain(|s| match s.group {
            Group::Postgres => self.database_url.is_some(),
            Group::Rabbitmq => self.broker,
            Group::Redis => self.redis_url.is_some(),
            Group::System | Group::LoadGenerator => true,
        });
        samples
    }

    /// Reads every counter; the processes last, after `rabbitmqctl` (an Erlang VM of its own,
    /// also called `beam.smp`) has ended.
    pub async fn before(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.read_postgres(&mut snapshot).await;
        self.read_redis(&mut snapshot).await;
        self.read_broker(&mut snapshot).await;
        snapshot.processes = self.processes();
        snapshot
    }

    /// Reads every counter: the processes first, before `rabbitmqctl` runs, then PostgreSQL
    /// after `settle`: a backend that went idle reports its counts only some seconds later.
    pub async fn after(&self, settle: Duration) -> Snapshot {
        let mut snapshot = Snapshot {
            processes: self.processes(),
            ..Snapshot::default()
        };
        self.read_redis(&mut snapshot).await;
        self.read_broker(&mut snapshot).await;
        if self.database_url.is_some() {
            tokio::time::sleep(settle).await;
        }
        self.read_postgres(&mut snapshot).await;
        snapshot
    }

    async fn read_postgres(&self, snapshot: &mut Snapshot) {
        let Some(url) = &self.database_url else {
            return;
        };
        match read_pg_counters(url).await {
            Ok(counters) => snapshot.postgres = Some(counters),
            Err(error) => snapshot
                .notes
                .push(format!("PostgreSQL counters not read: {error}")),
        }
    }

    async fn read_redis(&self, snapshot: &mut Snapshot) {
        let Some(url) = &self.redis_url else {
            return;
        };
        match read_redis_calls(url).await {
            Ok(calls) => snapshot.redis_calls = Some(calls),
            Err(error) => snapshot
                .notes
                .push(format!("Redis counters not read: {error}")),
        }
    }

    async fn read_broker(&self, snapshot: &mut Snapshot) {
        if !self.broker {
            return;
        }
        match read_broker_counters().await {
            Ok(counters) => snapshot.broker = Some(counters),
            Err(error) => snapshot
                .notes
                .push(format!("RabbitMQ counters not read: {error}")),
        }
    }
}

async fn read_pg_counters(url: &str) -> Result<PgCounters, sqlx::Error> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let row: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted, \
         tup_fetched, tup_returned FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut connection)
    .await?;
    // Optional: only where the extension is loaded and created in this database.
    let statements: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut connection)
    .await
    .ok()
    .flatten();
    let _ = connection.close().await;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(PgCounters {
        transactions: n(row.0),
        statements: statements.map(n),
        rows_inserted: n(row.1),
        rows_updated: n(row.2),
        rows_deleted: n(row.3),
        rows_fetched: n(row.4),
        rows_returned: n(row.5),
    })
}

async fn read_redis_calls(url: &str) -> Result<u64, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    parse_redis_calls(&info).ok_or_else(|| "no total_commands_processed in INFO stats".into())
}

/// `total_commands_processed` from the text of `INFO stats`.
pub fn parse_redis_calls(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
}

async fn read_broker_counters() -> Result<BrokerCounters, String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "eval", "rabbit_global_counters:overview()."])
        .output()
        .await
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    BrokerCounters::parse(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| "rabbitmqctl printed no message counters".into())
}

/// What one order cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// The orders the counts are divided by (those that became final).
    pub orders: usize,
    /// PostgreSQL's counts over the run, the whole database.
    pub postgres: Option<PgCounters>,
    /// RabbitMQ's counts over the run, the whole node.
    pub broker: Option<BrokerCounters>,
    /// Redis commands over the run, the whole server.
    pub redis_calls: Option<u64>,
    /// CPU milliseconds of each group over the run.
    pub cpu_ms: BTreeMap<Group, f64>,
    /// The machine's cores.
    pub cores: usize,
    /// What could not be counted, and why.
    pub notes: Vec<String>,
}

impl Budget {
    /// The budget of `orders` orders between two snapshots.
    pub fn between(before: &Snapshot, after: &Snapshot, orders: usize, cores: usize) -> Budget {
        let mut notes = before.notes.clone();
        notes.extend(after.notes.iter().cloned());
        notes.dedup();
        Budget {
            orders,
            postgres: match (&before.postgres, &after.postgres) {
                (Some(b), Some(a)) => Some(a.since(b)),
                _ => None,
            },
            broker: match (&before.broker, &after.broker) {
                (Some(b), Some(a)) => Some(a.since(b)),
                _ => None,
            },
            redis_calls: match (before.redis_calls, after.redis_calls) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            },
            cpu_ms: cpu_between(&before.processes, &after.processes),
            cores,
            notes,
        }
    }

    /// `total / orders`.
    pub fn per_order(&self, total: u64) -> f64 {
        total as f64 / self.orders.max(1) as f64
    }

    /// CPU milliseconds per order of the system and the engines it uses (not the load
    /// generator).
    pub fn cpu_ms_per_order(&self) -> f64 {
        let total: f64 = self
            .cpu_ms
            .iter()
            .filter(|(group, _)| **group != Group::LoadGenerator)
            .map(|(_, ms)| ms)
            .sum();
        total / self.orders.max(1) as f64
    }

    /// The most orders per second this machine's cores could serve at this CPU cost per order:
    /// cores × 1000 ms / (CPU ms per order). `None` when nothing was counted.
    pub fn ceiling(&self) -> Option<f64> {
        let per_order = self.cpu_ms_per_order();
        (per_order > 0.0).then(|| self.cores as f64 * 1000.0 / per_order)
    }

    /// The budget as lines of text.
    pub fn render(&self) -> String {
        let mut out = format!("budget per order ({} final orders):\n", self.orders);
        let mut line = |name: &str, value: String| {
            out.push_str(&format!("  {name:<22}{value}\n"));
        };
        match &self.postgres {
            Some(pg) => {
                line(
                    "transactions",
                    format!("{:.1}", self.per_order(pg.transactions)),
                );
                line(
                    "statements",
                    pg.statements.map_or(
                        "not counted (pg_stat_statements is not loaded)".into(),
                        |s| format!("{:.1}", self.per_order(s)),
                    ),
                );
                line(
                    "rows inserted",
                    format!("{:.1}", self.per_order(pg.rows_inserted)),
                );
                line(
                    "rows updated",
                    format!("{:.1}", self.per_order(pg.rows_updated)),
                );
                line(
                    "rows deleted",
                    format!("{:.1}", self.per_order(pg.rows_deleted)),
                );
                line(
                    "rows fetched",
                    format!("{:.1}", self.per_order(pg.rows_fetched)),
                );
                line(
                    "rows returned",
                    format!("{:.1}", self.per_order(pg.rows_returned)),
                );
            }
            None => line("postgres", "not counted".into()),
        }
        match &self.broker {
            Some(b) => {
                line(
                    "messages published",
                    format!("{:.1}", self.per_order(b.published)),
                );
                line(
                    "messages delivered",
                    format!("{:.1}", self.per_order(b.delivered)),
                );
                line(
                    "messages redelivered",
                    format!("{:.2}", self.per_order(b.redelivered)),
                );
            }
            None => line("messages", "not counted".into()),
        }
        line(
            "redis calls",
            self.redis_calls.map_or("not counted".into(), |c| {
                format!("{:.1}", self.per_order(c))
            }),
        );
        for (group, ms) in &self.cpu_ms {
            line(
                &format!("CPU {}", group.name()),
                format!("{:.2} ms", ms / self.orders.max(1) as f64),
            );
        }
        line(
            "CPU total",
            format!(
                "{:.2} ms (all but the load generator)",
                self.cpu_ms_per_order()
            ),
        );
        match self.ceiling() {
            Some(ceiling) => out.push_str(&format!(
                "  ceiling on {} cores: {ceiling:.0} orders/s ({} × 1000 ms / {:.2} ms)\n",
                self.cores,
                self.cores,
                self.cpu_ms_per_order()
            )),
            None => out.push_str("  ceiling: no CPU time was counted\n"),
        }
        out.push_str(
            "  (counters cover the whole database, broker node and Redis server, and every \
             process of each engine: run the system on engines of its own for exact figures)\n",
        );
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

/// `VACUUM ANALYZE` of every table of `schema`, as autovacuum would have done on a server that
/// has it on; returns how many tables.
pub async fn vacuum(url: &str, schema: &str) -> Result<usize, sqlx::Error> {
    each_table(url, schema, "VACUUM ANALYZE").await
}

/// Runs `command` (`VACUUM ANALYZE`, `ANALYZE`) on every table of `schema`; returns how many.
async fn each_table(url: &str, schema: &str, command: &str) -> Result<usize, sqlx::Error> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
            .bind(schema)
            .fetch_all(&mut connection)
            .await?;
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    for table in &tables {
        let statement = format!("{command} {}.{}", quote(schema), quote(table));
        sqlx::query(&statement).execute(&mut connection).await?;
    }
    let _ = connection.close().await;
    Ok(tables.len())
}

/// Whether the server at `url` runs autovacuum (`SHOW autovacuum`); `None` when it cannot say.
pub async fn autovacuum_on(url: &str) -> Option<bool> {
    let mut connection = sqlx::PgConnection::connect(url).await.ok()?;
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut connection)
        .await
        .ok()?;
    let _ = connection.close().await;
    Some(setting == "on")
}

/// Stands in for autovacuum's analyze on a server that has autovacuum off: `ANALYZE` of every
/// table of `schema` every `every`, until the task is aborted.
///
/// Without it the tables keep the statistics of the `VACUUM ANALYZE` before the run, when they
/// were nearly empty, and a statement the system prepared then keeps its plan however much the
/// table grows: on this machine the saga store's lookups stayed sequential scans and read
/// 20.9 million rows of `saga_states` for 2,960 orders in 40 s. On a production server
/// autovacuum analyzes a growing table, and the new statistics make those plans be made again.
pub fn analyze_every(url: String, schema: String, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = each_table(&url, &schema, "ANALYZE").await {
                tracing::warn!(%error, "cannot analyze");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, start: u64, group: Group, own: u64, children: u64) -> ProcSample {
        ProcSample {
            pid,
            start,
            group,
            own,
            children,
        }
    }

    #[test]
    fn cpu_is_the_difference_per_process_summed_per_group() {
        let before = vec![
            sample(10, 1, Group::Postgres, 100, 50),
            sample(11, 1, Group::Postgres, 20, 0),
            sample(20, 1, Group::System, 300, 0),
            // Ended before the second sampling: lost.
            sample(12, 1, Group::Postgres, 999, 0),
            // The pid is reused by a new process below.
            sample(30, 1, Group::Redis, 500, 0),
        ];
        let after = vec![
            sample(10, 1, Group::Postgres, 110, 80),
            sample(11, 1, Group::Postgres, 25, 0),
            // Started in between: counts whole.
            sample(13, 1, Group::Postgres, 7, 0),
            sample(20, 1, Group::System, 350, 0),
            sample(30, 9, Group::Redis, 3, 0),
        ];
        let cpu = cpu_between(&before, &after);
        // (10 + 30) + 5 + 7 ticks = 52 ticks = 520 ms.
        assert_eq!(cpu[&Group::Postgres], 520.0);
        assert_eq!(cpu[&Group::System], 500.0);
        assert_eq!(cpu[&Group::Redis], 30.0);
        assert!(!cpu.contains_key(&Group::Rabbitmq));
    }

    #[test]
    fn counters_turn_into_a_budget_per_order() {
        let before = Snapshot {
            postgres: Some(PgCounters {
                transactions: 1000,
                statements: None,
                rows_inserted: 10,
                rows_updated: 5,
                rows_deleted: 0,
                rows_fetched: 100,
                rows_returned: 200,
            }),
            broker: Some(BrokerCounters {
                published: 50,
                delivered: 60,
                ..BrokerCounters::default()
            }),
            redis_calls: Some(7),
            processes: vec![sample(20, 1, Group::System, 0, 0)],
            notes: vec![],
        };
        let after = Snapshot {
            postgres: Some(PgCounters {
                transactions: 3000,
                statements: None,
                rows_inserted: 1010,
                rows_updated: 505,
                rows_deleted: 0,
                rows_fetched: 2100,
                rows_returned: 4200,
            }),
            broker: Some(BrokerCounters {
                published: 850,
                delivered: 3060,
                ..BrokerCounters::default()
            }),
            redis_calls: Some(1007),
            processes: vec![
                sample(20, 1, Group::System, 200, 0),
                sample(99, 1, Group::LoadGenerator, 100, 0),
            ],
            notes: vec!["one note".into()],
        };
        let budget = Budget::between(&before, &after, 100, 2);
        let pg = budget.postgres.expect("postgres counted");
        assert_eq!(budget.per_order(pg.transactions), 20.0);
        assert_eq!(budget.per_order(pg.rows_inserted), 10.0);
        assert_eq!(pg.statements, None);
        let broker = budget.broker.expect("broker counted");
        assert_eq!(budget.per_order(broker.published), 8.0);
        assert_eq!(budget.per_order(broker.delivered), 30.0);
        assert_eq!(budget.redis_calls, Some(1000));
        // 2000 ms of the system over 100 orders; the load generator's 1000 ms do not count.
        assert_eq!(budget.cpu_ms_per_order(), 20.0);
        assert_eq!(budget.ceiling(), Some(100.0));
        let text = budget.render();
        assert!(text.contains("transactions          20.0"), "{text}");
        assert!(text.contains("ceiling on 2 cores: 100 orders/s"), "{text}");
        assert!(text.contains("note: one note"), "{text}");
    }

    #[test]
    fn a_source_missing_on_either_side_is_not_counted() {
        let before = Snapshot {
            redis_calls: None,
            ..Snapshot::default()
        };
        let after = Snapshot {
            redis_calls: Some(10),
            ..Snapshot::default()
        };
        let budget = Budget::between(&before, &after, 10, 2);
        assert_eq!(budget.redis_calls, None);
        assert_eq!(budget.ceiling(), None);
        assert!(budget
            .render()
            .contains("redis calls           not counted"));
    }

    #[test]
    fn proc_stat_is_read_past_a_name_with_spaces() {
        let stat = "4242 (order proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 25 7 3 20 0 8 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((123456, 175, 10)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn broker_counters_are_summed_over_queue_types() {
        let text = "#{[{protocol,amqp091}] =>\n      #{consumers => 2,messages_confirmed_total => 1043,\n        \
                    messages_received_confirm_total => 1043,\n        messages_received_total => 1044,messages_routed_total => 1056,\n        \
                    publishers => -21},\n  [{protocol,amqp091},{queue_type,rabbit_classic_queue}] =>\n      \
                    #{messages_acknowledged_total => 1044,\n        messages_delivered_total => 1045,messages_redelivered_total => 2},\n  \
                    [{protocol,amqp091},{queue_type,rabbit_quorum_queue}] =>\n      #{messages_acknowledged_total => 10,\n        \
                    messages_delivered_total =>\n 11,messages_redelivered_total => 0}}";
        let counters = BrokerCounters::parse(text).expect("counters");
        assert_eq!(
            counters,
            BrokerCounters {
                published: 1044,
                routed: 1056,
                delivered: 1056,
                acknowledged: 1054,
                redelivered: 2,
            }
        );
        assert_eq!(BrokerCounters::parse("{badrpc,nodedown}"), None);
    }

    #[test]
    fn redis_calls_come_from_info_stats() {
        let info = "# Stats\r\ntotal_connections_received:12\r\ntotal_commands_processed:3456\r\n";
        assert_eq!(parse_redis_calls(info), Some(3456));
        assert_eq!(parse_redis_calls("# Stats\r\n"), None);
    }
}
