//! `order-processing loadtest`: places orders against a running system and measures how fast
//! they become final.
//!
//! It stocks a product of its own (so every order can be served), places `--orders` orders with
//! `--concurrency` requests in flight, then polls until every order is Confirmed or Cancelled.
//! Throughput is orders per second from the first POST until the last order is final; latency
//! is each order's time from placement to confirmation as the order service recorded it
//! (`updatedAt - createdAt` of a Confirmed order), so polling does not blur it.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use futures_util::{stream, StreamExt};
use serde::Deserialize;
use uuid::Uuid;

/// The shortest time from one polling round's start to the next's: the resolution of the
/// measured end (a load test runs for seconds).
const POLL_ROUND: Duration = Duration::from_millis(100);

/// Orders polled at once, oldest pending first.
const POLL_CHUNK: usize = 16;

fn is_final(view: &OrderView) -> bool {
    view.status == "Confirmed" || view.status == "Cancelled"
}

/// Options of `order-processing loadtest`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LoadTestArgs {
    /// How many orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The order service.
    #[arg(long, default_value = "http://127.0.0.1:5001")]
    pub target: String,
    /// The inventory service (the load test stocks a product of its own there).
    #[arg(long, default_value = "http://127.0.0.1:5002")]
    pub inventory_target: String,
    /// Give up waiting for orders to become final after this long.
    #[arg(long, default_value = "120s", value_parser = crate::config::parse_duration)]
    pub wait: Duration,
}

/// What a load test measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadTestReport {
    /// Orders placed (201).
    pub placed: usize,
    /// POSTs that failed.
    pub failed: usize,
    /// Orders that ended Confirmed.
    pub confirmed: usize,
    /// Orders that ended Cancelled.
    pub cancelled: usize,
    /// Orders still not final when the wait ran out.
    pub unfinished: usize,
    /// From the first POST until the last order was seen final.
    pub elapsed: Duration,
    /// Placement-to-confirmation latencies of the Confirmed orders, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadTestReport {
    /// Final orders per second over the whole run.
    pub fn orders_per_second(&self) -> f64 {
        (self.confirmed + self.cancelled) as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The latency at quantile `q` (0 to 1), nearest rank.
    pub fn latency(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        Some(self.latencies[rank - 1])
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("–".to_owned(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1000.0)
            })
        };
        format!(
            "orders placed:     {} ({} failed)\n\
             confirmed:         {}\n\
             cancelled:         {}\n\
             not final in time: {}\n\
             elapsed:           {:.2} s\n\
             throughput:        {:.1} orders/s (first POST until every order is final)\n\
             latency placed→Confirmed: p50 {}, p95 {}, p99 {}, max {}\n",
            self.placed,
            self.failed,
            self.confirmed,
            self.cancelled,
            self.unfinished,
            self.elapsed.as_secs_f64(),
            self.orders_per_second(),
            ms(self.latency(0.50)),
            ms(self.latency(0.95)),
            ms(self.latency(0.99)),
            ms(self.latencies.last().copied()),
        )
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
    /// The HTTP client failed.
    #[error("cannot reach the system: {0}")]
    Http(#[from] reqwest::Error),
}

/// Runs a load test, drawing a progress line on stderr.
pub async fn run(args: &LoadTestArgs) -> Result<LoadTestReport, LoadTestError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    let concurrency = args.concurrency.max(1);

    // A product of its own with stock for every order, so stock never decides the outcome.
    let product = Uuid::new_v4();
    let stocked = client
        .put(format!(
            "{}/api/inventory/products/{product}",
            args.inventory_target.trim_end_matches('/')
        ))
        .json(&serde_json::json!({ "name": "Load test widget", "availableQuantity": args.orders }))
        .send()
        .await?;
    if !stocked.status().is_success() {
        return Err(LoadTestError::System(format!(
            "stocking the load-test product answered {}",
            stocked.status()
        )));
    }

    let orders_url = format!("{}/api/orders", args.target.trim_end_matches('/'));
    let placed_count = Arc::new(AtomicUsize::new(0));
    let final_count = Arc::new(AtomicUsize::new(0));
    let progress = spawn_progress(args.orders, placed_count.clone(), final_count.clone());
    let start = Instant::now();

    let body = serde_json::json!({
        "customerId": Uuid::new_v4(),
        "items": [{ "productId": product, "productName": "Load test widget", "quantity": 1, "unitPrice": 19.99 }]
    });
    let results: Vec<Result<Uuid, String>> = stream::iter(0..args.orders)
        .map(|_| {
            let (client, url, body, placed) = (
                client.clone(),
                orders_url.clone(),
                body.clone(),
                placed_count.clone(),
            );
            async move {
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
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(first)) = results.iter().find(|r| r.is_err()) {
        tracing::warn!(failed, first = %first, "some orders could not be placed");
    }
    let mut pending: Vec<Uuid> = results.into_iter().filter_map(Result::ok).collect();
    let placed = pending.len();

    // Poll until every order is final (or the wait runs out). Orders become final roughly in
    // the order they were placed, so a round polls the pending ones oldest first, a chunk at a
    // time, and ends at the first chunk with an order still pending: the orders after it are
    // most likely pending too. Polling all of them every round would load the system under
    // test with GETs and measure that instead. (An order that stays pending holds back the
    // polling of later ones, not the measured end: the run ends when it is final too.)
    let deadline = Instant::now() + args.wait;
    let mut finals: Vec<OrderView> = Vec::with_capacity(placed);
    while !pending.is_empty() && Instant::now() < deadline {
        let round_began = Instant::now();
        let mut still_pending = Vec::with_capacity(pending.len());
        let mut chunks = pending.chunks(POLL_CHUNK.min(concurrency));
        for chunk in chunks.by_ref() {
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
    let elapsed = start.elapsed();
    progress.abort();
    eprintln!();

    let mut latencies: Vec<Duration> = finals
        .iter()
        .filter(|v| v.status == "Confirmed")
        .filter_map(|v| (v.updated_at - v.created_at).to_std().ok())
        .collect();
    latencies.sort();
    let confirmed = latencies.len();
    Ok(LoadTestReport {
        placed,
        failed,
        confirmed,
        cancelled: finals.len() - confirmed,
        unfinished: pending.len(),
        elapsed,
        latencies,
    })
}

fn spawn_progress(
    total: usize,
    placed: Arc<AtomicUsize>,
    finals: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let width = 30;
        loop {
            let (p, f) = (
                placed.load(Ordering::Relaxed),
                finals.load(Ordering::Relaxed),
            );
            let filled = (f * width).checked_div(total).unwrap_or(width).min(width);
            eprint!(
                "\r[{}{}] placed {p}/{total}, final {f}/{total}",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let report = LoadTestReport {
            placed: 100,
            failed: 0,
            confirmed: 100,
            cancelled: 0,
            unfinished: 0,
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(report.latency(0.5), Some(Duration::from_millis(50)));
        assert_eq!(report.latency(0.95), Some(Duration::from_millis(95)));
        assert_eq!(report.latency(0.99), Some(Duration::from_millis(99)));
        assert_eq!(report.latency(1.0), Some(Duration::from_millis(100)));
        assert_eq!(report.orders_per_second(), 50.0);
        assert!(report.render().contains("p50 50.0 ms"));
    }

    #[test]
    fn an_empty_run_has_no_latency() {
        let report = LoadTestReport {
            placed: 0,
            failed: 0,
            confirmed: 0,
            cancelled: 0,
            unfinished: 0,
            elapsed: Duration::from_secs(1),
            latencies: vec![],
        };
        assert_eq!(report.latency(0.5), None);
    }
}
