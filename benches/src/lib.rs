//! Shared pieces of the benches: the event every scenario writes, a timing loop, and the
//! results table.
//!
//! Every PostgreSQL and RabbitMQ figure is measured beside the raw driver doing the same work in
//! the same run, and the ratio is what the table reports: absolute numbers drift between runs
//! on shared machines, ratios hold.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// One line of an order, as the example's `OrderPlaced` carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// The product.
    pub product_id: uuid::Uuid,
    /// How many.
    pub quantity: u32,
    /// Price of one, in cents.
    pub unit_price_cents: u64,
}

/// The benchmark's event: a ~200-byte JSON `OrderPlaced`, the same for every contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BenchEvent {
    /// An order was placed.
    OrderPlaced {
        /// The customer.
        customer_id: uuid::Uuid,
        /// Its lines.
        items: Vec<Line>,
        /// The total, in cents.
        total_cents: u64,
    },
}

impl DomainEvent for BenchEvent {}

/// The fields of [`BenchEvent::OrderPlaced`] as one struct: what the raw driver decodes a
/// stored payload into, straight from the column, the fastest way it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlacedData {
    /// The customer.
    pub customer_id: uuid::Uuid,
    /// Its lines.
    pub items: Vec<Line>,
    /// The total, in cents.
    pub total_cents: u64,
}

impl From<OrderPlacedData> for BenchEvent {
    fn from(data: OrderPlacedData) -> Self {
        BenchEvent::OrderPlaced {
            customer_id: data.customer_id,
            items: data.items,
            total_cents: data.total_cents,
        }
    }
}

/// A fresh benchmark event.
pub fn order_placed() -> BenchEvent {
    BenchEvent::OrderPlaced {
        customer_id: uuid::Uuid::new_v4(),
        items: vec![Line {
            product_id: uuid::Uuid::new_v4(),
            quantity: 2,
            unit_price_cents: 99_999,
        }],
        total_cents: 199_998,
    }
}

/// An aggregate that folds benchmark events (counting them and summing totals), so replays do
/// real decoding and folding work.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OrderBook {
    /// Events folded.
    pub orders: u64,
    /// Sum of the totals.
    pub total_cents: u64,
}

/// Place `n` orders at once.
#[derive(Debug, Clone, Copy)]
pub struct PlaceOrders(pub usize);

impl Aggregate for OrderBook {
    const TYPE: &'static str = "book";
    type Command = PlaceOrders;
    type Event = BenchEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, PlaceOrders(n): PlaceOrders) -> Result<Vec<BenchEvent>, Self::Error> {
        Ok((0..n).map(|_| order_placed()).collect())
    }

    fn apply(&mut self, event: &BenchEvent) {
        let BenchEvent::OrderPlaced { total_cents, .. } = event;
        self.orders += 1;
        self.total_cents += total_cents;
    }
}

/// How long each measurement runs and how many times (the median is reported).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Length of one measurement.
    pub seconds: f64,
    /// Measurements per figure; the median is kept.
    pub runs: usize,
}

impl Plan {
    /// From `BENCH_SECONDS` (default 3) and `BENCH_RUNS` (default 3).
    pub fn from_env() -> Self {
        let seconds = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0);
        let runs = std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        Plan { seconds, runs }
    }
}

/// Runs `tasks` copies of `step` for the plan's duration, `runs` times; returns the median of
/// (units counted by the steps) per second. Each step returns how many units it completed.
pub async fn throughput<F, Fut>(plan: Plan, tasks: usize, step: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send,
{
    let step = Arc::new(step);
    let mut rates = Vec::new();
    for _ in 0..plan.runs {
        rates.push(throughput_once(plan.seconds, tasks, step.clone()).await);
    }
    median(rates)
}

/// [`throughput`] of a contender and of the raw driver, their runs interleaved (contender,
/// raw, raw, contender, ...) so that a machine that slows down or speeds up during the
/// measurement weighs on both alike. Returns the medians (contender, raw).
pub async fn throughput_pair<F, Fut, G, Gut>(
    plan: Plan,
    tasks: usize,
    contender: F,
    raw: G,
) -> (f64, f64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send,
    G: Fn(usize) -> Gut + Send + Sync + 'static,
    Gut: Future<Output = u64> + Send,
{
    let (contender, raw) = (Arc::new(contender), Arc::new(raw));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        if run % 2 == 0 {
            ours.push(throughput_once(plan.seconds, tasks, contender.clone()).await);
            theirs.push(throughput_once(plan.seconds, tasks, raw.clone()).await);
        } else {
            theirs.push(throughput_once(plan.seconds, tasks, raw.clone()).await);
            ours.push(throughput_once(plan.seconds, tasks, contender.clone()).await);
        }
    }
    (median(ours), median(theirs))
}

async fn throughput_once<F, Fut>(seconds: f64, tasks: usize, step: Arc<F>) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (step, done) = (step.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let units = step(task).await;
                done.fetch_add(units, Ordering::Relaxed);
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a bench task panicked");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Times `work` (which returns how many units it did) `runs` times; the median units/s.
pub async fn timed<F, Fut>(plan: Plan, mut work: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let mut rates = Vec::new();
    for _ in 0..plan.runs {
        rates.push(timed_once(&mut work).await);
    }
    median(rates)
}

/// [`timed`] of a contender and of the raw driver, their runs interleaved as in
/// [`throughput_pair`]. Returns the medians (contender, raw).
pub async fn timed_pair<F, Fut, G, Gut>(plan: Plan, mut contender: F, mut raw: G) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
    G: FnMut() -> Gut,
    Gut: Future<Output = u64>,
{
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        if run % 2 == 0 {
            ours.push(timed_once(&mut contender).await);
            theirs.push(timed_once(&mut raw).await);
        } else {
            theirs.push(timed_once(&mut raw).await);
            ours.push(timed_once(&mut contender).await);
        }
    }
    (median(ours), median(theirs))
}

async fn timed_once<F, Fut>(work: &mut F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let start = Instant::now();
    let units = work().await;
    units as f64 / start.elapsed().as_secs_f64()
}

/// Whether the scenario group `name` is to run: all do unless `BENCH_ONLY` lists names
/// (comma-separated, matched as prefixes), e.g. `BENCH_ONLY=append,read_all`.
pub fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only
            .split(',')
            .map(str::trim)
            .any(|wanted| !wanted.is_empty() && name.starts_with(wanted)),
        _ => true,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// One row of the results: the framework's figure beside the raw driver's.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario.
    pub scenario: String,
    /// What ran it (`es-postgres`, `MemoryEventStore`, ...).
    pub contender: String,
    /// Units per second.
    pub rate: f64,
    /// The raw driver doing the same work in the same run, when there is one.
    pub raw: Option<f64>,
    /// The target ratio to the raw figure.
    pub target: Option<f64>,
    /// What a unit is.
    pub unit: &'static str,
}

impl Row {
    /// The rate over the raw rate.
    pub fn ratio(&self) -> Option<f64> {
        self.raw.map(|raw| self.rate / raw)
    }
}

/// The results as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | contender | rate | raw driver | ratio | target |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let raw = row.raw.map_or("–".to_owned(), |raw| {
            format!("{} {}", group(raw), row.unit)
        });
        let ratio = row.ratio().map_or("–".to_owned(), |r| format!("{r:.2}"));
        let target = match (row.target, row.ratio()) {
            (Some(t), Some(r)) if r >= t => format!("≥ {t} ✓"),
            (Some(t), Some(_)) => format!("≥ {t} ✗"),
            _ => "–".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} |\n",
            row.scenario,
            row.contender,
            group(row.rate),
            row.unit,
            raw,
            ratio,
            target
        ));
    }
    out
}

/// `12345.6` → `12,346`.
pub fn group(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
/// Every Rust sample of the guide in `docs/`, compiled and run as doc tests.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../README.md")]
    struct Readme;
    #[doc = include_str!("../../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../../docs/concepts/aggregates.md")]
    struct Aggregates;
    #[doc = include_str!("../../docs/concepts/events.md")]
    struct Events;
    #[doc = include_str!("../../docs/concepts/event-store.md")]
    struct EventStore;
    #[doc = include_str!("../../docs/concepts/projections.md")]
    struct Projections;
    #[doc = include_str!("../../docs/concepts/sagas.md")]
    struct Sagas;
    #[doc = include_str!("../../docs/concepts/messaging.md")]
    struct Messaging;
    #[doc = include_str!("../../docs/concepts/idempotency.md")]
    struct Idempotency;
    #[doc = include_str!("../../docs/concepts/snapshots.md")]
    struct Snapshots;
    #[doc = include_str!("../../docs/metrics.md")]
    struct Metrics;
}

/// Replaces the part of docs/benchmarks.md between `<!-- name -->` and `<!-- /name -->` with
/// `body` (markers kept), or adds it at the end under `heading` when the markers are missing.
/// The rest of the page (the reading of the tables, the end-to-end section) is left as it is.
pub fn write_doc_section(name: &str, heading: &str, body: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let section = format!("{open}\n{body}{close}");
    let updated = match (doc.find(&open), doc.find(&close)) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{section}{}", &doc[..start], &doc[end + close.len()..])
        }
        _ => format!("{doc}\n## {heading}\n\n{section}\n"),
    };
    std::fs::write(path, updated).expect("write docs/benchmarks.md");
    println!("wrote the {name} section of {path}");
}
