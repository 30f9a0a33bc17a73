//! `order-processing loadtest`: places orders against a running system and measures how fast
//! they become final, how long each stage takes, and what an order costs.
//!
//! It stocks products of its own (so stock never decides the outcome) and places orders in one
//! of two ways: closed loop (`--orders N --concurrency C`: the next order goes when one is
//! answered) or open loop (`--rate R --duration D`: orders leave at a constant rate whatever
//! the answers, and each latency counts from when the order was due, so a stalled system
//! cannot hide the requests it delayed). It then polls until every order is Confirmed or
//! Cancelled, and reads each order's events: the stages placed → reserved → paid → confirmed
//! come from the times the order service recorded, so polling does not blur them.
//!
//! With the system's backend URLs (the same flags and environment as the services) it also
//! counts the budget of an order: transactions, rows, messages, Redis calls and CPU time, and
//! the ceiling they imply on this machine (see [`budget`]).

pub mod budget;
pub mod consumers;
pub mod mix;
pub mod report;
pub mod schedule;
pub mod stats;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use futures_util::{stream, StreamExt};
use serde::Deserialize;
use tokio::sync::Semaphore;
use uuid::Uuid;

use self::budget::{Budget, Sources};
use self::mix::{Picker, ProductMix};
pub use self::report::LoadTestReport;
use self::report::{Counts, Latencies, Mode, Point, Second};
use self::schedule::Schedule;
use self::stats::{Steps, StreamEvent, Summary};
use crate::config::Settings;

/// The shortest time from one polling round's start to the next's: the resolution of the
/// measured end (a load test runs for seconds).
const POLL_ROUND: Duration = Duration::from_millis(100);

/// Orders polled at once, oldest pending first.
const POLL_CHUNK: usize = 16;

/// How long PostgreSQL may take to report an idle backend's counts (`PGSTAT_IDLE_INTERVAL` is
/// 10 s): the budget reads its counters this long after the run.
const STATS_SETTLE: Duration = Duration::from_secs(11);

fn is_final(view: &OrderView) -> bool {
    view.status == "Confirmed" || view.status == "Cancelled"
}

/// Options of `order-processing loadtest`. The backend URLs it counts the budget with are the
/// global `--database-url`, `--amqp-url` and `--redis-url` (and their environment variables).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LoadTestArgs {
    /// Closed loop: how many orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// Closed loop: requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: orders per second, sent on schedule whatever the answers (needs --duration).
    #[arg(long, requires = "duration", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Open loop: for how long (`30s`, `2m`).
    #[arg(long, requires = "rate", value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: requests in flight beyond which arrivals wait (reported when reached).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Spread orders over this many products of the load test's own, Zipf-skewed, one to
    /// three lines an order [default: 50].
    #[arg(long, conflicts_with = "hot")]
    pub products: Option<usize>,
    /// Every order buys one unit of one product: the most contention.
    #[arg(long)]
    pub hot: bool,
    /// The order service.
    #[arg(long, default_value = "http://127.0.0.1:5001")]
    pub target: String,
    /// The inventory service (the load test stocks products of its own there).
    #[arg(long, default_value = "http://127.0.0.1:5002")]
    pub inventory_target: String,
    /// A service whose `GET /metrics` names the consumer that took the most time (repeat for
    /// each process) [default: the order and inventory targets].
    #[arg(long = "metrics-target", value_name = "URL")]
    pub metrics_targets: Vec<String>,
    /// Give up waiting for orders to become final after this long.
    #[arg(long, default_value = "120s", value_parser = crate::config::parse_duration)]
    pub wait: Duration,
    /// Print the report as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as a self-contained HTML page with charts.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// The processes of the system under test, for its CPU time [default: every process
    /// named `order-processing` but this one].
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Do not `VACUUM ANALYZE` the system's tables before the measured phase (done by default
    /// when a database URL is given, as autovacuum would on a production server).
    #[arg(long)]
    pub no_vacuum: bool,
    /// Seed of the product picks (the same seed picks the same products).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to wait after the run before reading PostgreSQL's counters.
    #[arg(long, default_value = "11s", value_parser = crate::config::parse_duration, hide = true)]
    pub stats_settle: Duration,
}

/// How often the run analyzes the system's tables when the server has autovacuum off. Often:
/// a fresh system's tables grow from empty within the first seconds of a burst, where a
/// production server's statistics already describe tables of their size.
const ANALYZE_EVERY: Duration = Duration::from_secs(2);

impl Default for LoadTestArgs {
    fn default() -> Self {
        LoadTestArgs {
            orders: 1000,
            concurrency: 32,
            rate: None,
            duration: None,
            max_in_flight: 10_000,
            products: None,
            hot: false,
            target: "http://127.0.0.1:5001".into(),
            inventory_target: "http://127.0.0.1:5002".into(),
            metrics_targets: Vec::new(),
            wait: Duration::from_secs(120),
            json: false,
            report: None,
            pids: Vec::new(),
            no_vacuum: false,
            seed: 1,
            stats_settle: STATS_SETTLE,
        }
    }
}

/// Orders per second: a positive finite number.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate(f64);

// Sound: a `Rate` is never NaN (`parse_rate` and `Rate::new` refuse it).
impl Eq for Rate {}

impl Rate {
    /// `per_second` orders per second; `None` unless it is positive and finite.
    pub fn new(per_second: f64) -> Option<Rate> {
        (per_second.is_finite() && per_second > 0.0).then_some(Rate(per_second))
    }

    /// Orders per second.
    pub fn per_second(&self) -> f64 {
        self.0
    }
}

/// Parses `--rate`.
fn parse_rate(text: &str) -> Result<Rate, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(Rate::new)
        .ok_or_else(|| format!("`{text}` is not a positive number of orders per second"))
}

impl LoadTestArgs {
    fn mix(&self) -> ProductMix {
        if self.hot {
            ProductMix::Hot
        } else {
            ProductMix::Spread {
                products: self.products.unwrap_or(mix::DEFAULT_PRODUCTS).max(1),
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderView {
    order_id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadTestError {
    /// The system did not answer as the contract says.
    #[error("{0}")]
    System(String),
    /// The options do not make a load test.
    #[error("{0}")]
    Options(String),
    /// The HTTP client failed.
    #[error("cannot reach the system: {0}")]
    Http(#[from] reqwest::Error),
    /// The report could not be written.
    #[error("cannot write the report {path}: {source}")]
    Report {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs a load test and prints its report (text or JSON on stdout, HTML to `--report`).
pub async fn main(args: &LoadTestArgs, settings: &Settings) -> Result<(), LoadTestError> {
    let report = run(args, settings).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| LoadTestError::System(format!("cannot encode the report: {e}")))?;
        println!("{json}");
    } else {
        println!("{}", report.render());
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report.render_html()).map_err(|source| LoadTestError::Report {
            path: path.clone(),
            source,
        })?;
        if !args.json {
            println!("report written to {}", path.display());
        }
    }
    Ok(())
}

/// One POST of the run.
#[derive(Debug)]
struct Sent {
    /// When it was due (open loop) or sent (closed loop), from the start.
    due: Duration,
    /// From `due` to the answer.
    latency: Duration,
    result: Result<Uuid, String>,
}

/// Runs a load test, showing progress on stderr, and returns what it measured.
pub async fn run(
    args: &LoadTestArgs,
    settings: &Settings,
) -> Result<LoadTestReport, LoadTestError> {
    let (mode, schedule) = match (args.rate, args.duration) {
        (Some(rate), Some(duration)) => {
            let rate = rate.per_second();
            let schedule = Schedule::new(rate, duration).ok_or_else(|| {
                LoadTestError::Options(format!("--rate {rate} must be a positive number"))
            })?;
            let mode = Mode::Open {
                rate,
                duration_seconds: duration.as_secs_f64(),
            };
            (mode, Some(schedule))
        }
        (None, None) => (
            Mode::Closed {
                concurrency: args.concurrency.max(1),
            },
            None,
        ),
        _ => {
            return Err(LoadTestError::Options(
                "--rate and --duration go together".into(),
            ))
        }
    };
    let total = schedule.map_or(args.orders, |s| s.total());
    let concurrency = args.concurrency.max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    let mix = args.mix();
    let products = mix::products(mix);
    stock(&client, args, &products, total).await?;

    let vacuumed = match (&settings.database_url, args.no_vacuum) {
        (Some(url), false) => match budget::vacuum(url, &settings.database_schema).await {
            Ok(tables) => Some(format!(
                "VACUUM ANALYZE of the {tables} tables of schema {} (autovacuum is off on \
                 this machine; a production server has it on)",
                settings.database_schema
            )),
            Err(error) => {
                tracing::warn!(%error, "cannot vacuum");
                Some(format!("VACUUM ANALYZE failed: {error}"))
            }
        },
        _ => None,
    };
    // Autovacuum off (as on the machines these benches run on): analyze as it would during the
    // run, so that plans follow the tables' growth as they do on a production server.
    let mut analyzer = None;
    let vacuumed = match (&settings.database_url, args.no_vacuum) {
        (Some(url), false) if budget::autovacuum_on(url).await == Some(false) => {
            analyzer = Some(budget::analyze_every(
                url.clone(),
                settings.database_schema.clone(),
                ANALYZE_EVERY,
            ));
            vacuumed.map(|note| {
                format!(
                    "{note}; and ANALYZE of them every {} s during the run, standing in for \
                     autovacuum's",
                    ANALYZE_EVERY.as_secs()
                )
            })
        }
        _ => vacuumed,
    };

    let sources = Sources {
        database_url: settings.database_url.clone(),
        broker: settings.amqp_url.is_some(),
        redis_url: settings.redis_url.clone(),
        system_pids: args.pids.clone(),
    };
    let before = sources.before().await;
    let metrics_targets = if args.metrics_targets.is_empty() {
        vec![args.target.clone(), args.inventory_target.clone()]
    } else {
        args.metrics_targets.clone()
    };
    let handling_before = consumers::read(&client, &metrics_targets).await;

    let orders_url = format!("{}/api/orders", args.target.trim_end_matches('/'));
    let placed_count = Arc::new(AtomicUsize::new(0));
    let final_count = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(total, placed_count.clone(), final_count.clone());
    let start = Instant::now();
    let start_wall = Utc::now();

    let mut picker = Picker::new(mix, args.seed);
    let bodies: Vec<serde_json::Value> = (0..total)
        .map(|_| {
            let items: Vec<serde_json::Value> = picker
                .next_order()
                .into_iter()
                .map(|i| {
                    let p = &products[i];
                    serde_json::json!({
                        "productId": p.id,
                        "productName": p.name,
                        "quantity": 1,
                        "unitPrice": p.unit_price_cents as f64 / 100.0,
                    })
                })
                .collect();
            serde_json::json!({ "customerId": Uuid::new_v4(), "items": items })
        })
        .collect();

    let post = {
        let (client, url, placed) = (client.clone(), orders_url.clone(), placed_count.clone());
        move |body: serde_json::Value, due: Duration| {
            let (client, url, placed) = (client.clone(), url.clone(), placed.clone());
            async move {
                let result = async {
                    let response = client
                        .post(&url)
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if response.status() != reqwest::StatusCode::CREATED {
                        return Err(format!("POST answered {}", response.status()));
                    }
                    let order: OrderView = response.json().await.map_err(|e| e.to_string())?;
                    placed.fetch_add(1, Ordering::Relaxed);
                    Ok(order.order_id)
                }
                .await;
                Sent {
                    due,
                    latency: start.elapsed().saturating_sub(due),
                    result,
                }
            }
        }
    };

    let mut in_flight_bound_hit = 0;
    let sent: Vec<Sent> = match schedule {
        Some(schedule) => {
            // Open loop: each POST is its own task, started when due; only the safety bound
            // can hold one back (and is reported when it does).
            let slots = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
            let mut tasks = Vec::with_capacity(total);
            for (i, body) in bodies.into_iter().enumerate() {
                let due = schedule.due(i);
                tokio::time::sleep_until((start + due).into()).await;
                let slot = match slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => {
                        in_flight_bound_hit += 1;
                        slots
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|e| LoadTestError::System(e.to_string()))?
                    }
                };
                let request = post(body, due);
                tasks.push(tokio::spawn(async move {
                    let sent = request.await;
                    drop(slot);
                    sent
                }));
            }
            let mut sent = Vec::with_capacity(total);
            for task in tasks {
                sent.push(
                    task.await
                        .map_err(|e| LoadTestError::System(e.to_string()))?,
                );
            }
            sent
        }
        None => {
            stream::iter(bodies)
                .map(|body| post(body, start.elapsed()))
                .buffer_unordered(concurrency)
                .collect()
                .await
        }
    };
    let failed = sent.iter().filter(|s| s.result.is_err()).count();
    if let Some(Err(first)) = sent.iter().map(|s| &s.result).find(|r| r.is_err()) {
        tracing::warn!(failed, first = %first, "some orders could not be placed");
    }
    let mut placed: Vec<&Sent> = sent.iter().filter(|s| s.result.is_ok()).collect();
    placed.sort_by_key(|s| s.due);
    let order_ids: Vec<Uuid> = placed
        .iter()
        .filter_map(|s| s.result.clone().ok())
        .collect();

    let (finals, unfinished, polls) = poll_until_final(
        &client,
        &orders_url,
        &order_ids,
        concurrency,
        args.wait,
        &final_count,
    )
    .await;
    let elapsed = start.elapsed();
    if let Some(analyzer) = analyzer {
        analyzer.abort();
    }
    progress.finish();
    if sources.database_url.is_some() {
        eprintln!(
            "reading PostgreSQL's counters in {} s (an idle backend reports late)",
            args.stats_settle.as_secs_f64()
        );
    }
    let handling = consumers::between(
        &handling_before,
        &consumers::read(&client, &metrics_targets).await,
    );
    let after = sources.after(args.stats_settle).await;

    let confirmed: Vec<&OrderView> = finals.iter().filter(|v| v.status == "Confirmed").collect();
    let cancelled = finals.len() - confirmed.len();
    let placed_to_confirmed: Vec<Duration> = confirmed
        .iter()
        .filter_map(|v| (v.updated_at - v.created_at).to_std().ok())
        .collect();

    // The stages, from each order's events (read after the run, outside the measured window).
    let streams = read_streams(&client, &orders_url, &order_ids, concurrency).await;
    let mut steps = Vec::new();
    let mut timeline = Vec::new();
    let mut end_to_end = Vec::new();
    let mut throughput: Vec<Second> = Vec::new();
    let second_of = |at: DateTime<Utc>| {
        (at - start_wall)
            .to_std()
            .map(|d| d.as_secs() as usize)
            .unwrap_or(0)
    };
    let mut count = |second: usize, confirmed: bool| {
        if throughput.len() <= second {
            throughput.extend((throughput.len()..=second).map(|s| Second {
                second: s,
                ..Second::default()
            }));
        }
        if confirmed {
            throughput[second].confirmed += 1;
        } else {
            throughput[second].placed += 1;
        }
    };
    for (sent, events) in placed.iter().zip(&streams) {
        let Some(events) = events else { continue };
        if let Some(at) = events.iter().find(|e| e.event_type == "OrderPlaced") {
            count(second_of(at.occurred_at), false);
        }
        let Some(order_steps) = Steps::from_stream(events) else {
            continue;
        };
        count(second_of(order_steps.confirmed), true);
        let due_wall = start_wall
            + chrono::Duration::from_std(sent.due).unwrap_or_else(|_| chrono::Duration::zero());
        let latency = (order_steps.confirmed - due_wall)
            .to_std()
            .unwrap_or_default();
        end_to_end.push(latency);
        timeline.push(Point {
            sent_at: sent.due.as_secs_f64(),
            latency_ms: latency.as_secs_f64() * 1000.0,
        });
        steps.push(order_steps);
    }
    let stages = stats::stages(&steps);
    let slowest_stage = stats::slowest(&stages);
    let request: Vec<Duration> = sent.iter().map(|s| s.latency).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let budget = Budget::between(&before, &after, finals.len(), cores);

    Ok(LoadTestReport {
        mode,
        products: mix,
        orders: Counts {
            scheduled: total,
            placed: order_ids.len(),
            failed,
            confirmed: confirmed.len(),
            cancelled,
            unfinished,
        },
        elapsed_seconds: elapsed.as_secs_f64(),
        in_flight_bound_hit,
        polls,
        latency: Latencies {
            request: Summary::of(&request),
            end_to_end: Summary::of(&end_to_end),
            placed_to_confirmed: Summary::of(&placed_to_confirmed),
        },
        stages,
        slowest_stage,
        slowest_consumer: consumers::slowest(&handling),
        consumers: handling,
        timeline,
        throughput,
        vacuumed,
        budget: Some(budget),
    })
}

/// Stocks the run's products with enough for every order.
async fn stock(
    client: &reqwest::Client,
    args: &LoadTestArgs,
    products: &[mix::Product],
    orders: usize,
) -> Result<(), LoadTestError> {
    let base = args.inventory_target.trim_end_matches('/');
    let answers: Vec<Result<reqwest::Response, reqwest::Error>> = stream::iter(products)
        .map(|p| {
            client
                .put(format!("{base}/api/inventory/products/{}", p.id))
                .json(&serde_json::json!({ "name": p.name, "availableQuantity": orders.max(1) }))
                .send()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for answer in answers {
        let answer = answer?;
        if !answer.status().is_success() {
            return Err(LoadTestError::System(format!(
                "stocking a load-test product answered {}",
                answer.status()
            )));
        }
    }
    Ok(())
}

/// Polls until every order is final or `wait` runs out: (final views, still pending, GETs).
///
/// Orders become final roughly in the order they were placed, so a round polls the pending ones
/// oldest first, a chunk at a time, and ends at the first chunk with an order still pending:
/// the orders after it are most likely pending too. Polling all of them every round would load
/// the system under test with GETs and measure that instead. (An order that stays pending holds
/// back the polling of later ones, not the measured end: the run ends when it is final too.)
async fn poll_until_final(
    client: &reqwest::Client,
    orders_url: &str,
    order_ids: &[Uuid],
    concurrency: usize,
    wait: Duration,
    final_count: &AtomicUsize,
) -> (Vec<OrderView>, usize, usize) {
    let mut pending = order_ids.to_vec();
    let deadline = Instant::now() + wait;
    let mut finals: Vec<OrderView> = Vec::with_capacity(pending.len());
    let mut polls = 0;
    while !pending.is_empty() && Instant::now() < deadline {
        let round_began = Instant::now();
        let mut still_pending = Vec::with_capacity(pending.len());
        let mut chunks = pending.chunks(POLL_CHUNK.min(concurrency));
        for chunk in chunks.by_ref() {
            polls += chunk.len();
            let views: Vec<(Uuid, Option<OrderView>)> = stream::iter(chunk.iter().copied())
                .map(|id| {
                    let (client, url) = (client.clone(), format!("{orders_url}/{id}"));
                    async move {
                        let view = match client.get(&url).send().await {
                            Ok(response) if response.status().is_success() => {
                                response.json::<OrderView>().await.ok()
                            }
                            _ => None,
                        };
                        (id, view)
                    }
                })
                .buffered(concurrency)
                .collect()
                .await;
            let pending_before = still_pending.len();
            for (id, view) in views {
                match view {
                    Some(view) if is_final(&view) => {
                        final_count.fetch_add(1, Ordering::Relaxed);
                        finals.push(view);
                    }
                    _ => still_pending.push(id),
                }
            }
            if still_pending.len() > pending_before {
                break;
            }
        }
        still_pending.extend(chunks.flatten());
        pending = still_pending;
        if !pending.is_empty() {
            tokio::time::sleep(POLL_ROUND.saturating_sub(round_began.elapsed())).await;
        }
    }
    (finals, pending.len(), polls)
}

/// Each order's stream, in the order of `order_ids`; `None` where it could not be read.
async fn read_streams(
    client: &reqwest::Client,
    orders_url: &str,
    order_ids: &[Uuid],
    concurrency: usize,
) -> Vec<Option<Vec<StreamEvent>>> {
    stream::iter(order_ids.iter().copied())
        .map(|id| {
            let (client, url) = (client.clone(), format!("{orders_url}/{id}/events"));
            async move {
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json::<Vec<StreamEvent>>().await.ok()
                    }
                    _ => None,
                }
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

/// Progress on stderr: a bar for a person at a terminal, a plain line a second otherwise.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn start(total: usize, placed: Arc<AtomicUsize>, finals: Arc<AtomicUsize>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] final {pos}/{len} {msg}",
            ) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar
        });
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut last_line = Instant::now();
            loop {
                let (p, f) = (
                    placed.load(Ordering::Relaxed),
                    finals.load(Ordering::Relaxed),
                );
                match &shown {
                    Some(bar) => {
                        bar.set_position(f as u64);
                        bar.set_message(format!("placed {p}/{total}"));
                    }
                    None if last_line.elapsed() >= Duration::from_secs(1) => {
                        last_line = Instant::now();
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "placed {p}/{total}, final {f}/{total}");
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Progress { task, bar }
    }

    fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn parse(args: &[&str]) -> Result<LoadTestArgs, clap::Error> {
        let cli = Cli::try_parse_from(["order-processing", "loadtest"].iter().chain(args))?;
        match cli.command {
            Some(Command::Loadtest(args)) => Ok(*args),
            other => panic!("not a load test: {other:?}"),
        }
    }

    #[test]
    fn open_loop_needs_a_rate_and_a_duration() {
        let args = parse(&["--rate", "60", "--duration", "30s"]).expect("open loop");
        assert_eq!(args.rate, Rate::new(60.0));
        assert_eq!(args.duration, Some(Duration::from_secs(30)));
        assert!(parse(&["--rate", "60"]).is_err(), "a rate alone");
        assert!(parse(&["--duration", "30s"]).is_err(), "a duration alone");
        assert!(parse(&["--rate", "0", "--duration", "1s"]).is_err());
        assert!(parse(&["--rate", "NaN", "--duration", "1s"]).is_err());
    }

    #[test]
    fn the_product_mix_is_spread_unless_hot() {
        assert_eq!(
            parse(&[]).expect("defaults").mix(),
            ProductMix::Spread { products: 50 }
        );
        assert_eq!(
            parse(&["--products", "7"]).expect("spread").mix(),
            ProductMix::Spread { products: 7 }
        );
        assert_eq!(parse(&["--hot"]).expect("hot").mix(), ProductMix::Hot);
        assert!(parse(&["--hot", "--products", "7"]).is_err());
        assert_eq!(parse(&[]).expect("defaults"), LoadTestArgs::default());
    }
}
