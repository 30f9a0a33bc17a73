//! Latency figures: quantiles, and the stages an order goes through, from its events.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// p50/p95/p99/max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// How many latencies.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `latencies` (in any order); `None` when there are none.
    pub fn of(latencies: &[Duration]) -> Option<Summary> {
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Some(Summary {
            count: sorted.len(),
            p50_ms: ms(quantile(&sorted, 0.50)?),
            p95_ms: ms(quantile(&sorted, 0.95)?),
            p99_ms: ms(quantile(&sorted, 0.99)?),
            max_ms: ms(*sorted.last()?),
        })
    }

    /// `p50 …, p95 …, p99 …, max …` with units.
    pub fn render(&self) -> String {
        format!(
            "p50 {}, p95 {}, p99 {}, max {}",
            format_ms(self.p50_ms),
            format_ms(self.p95_ms),
            format_ms(self.p99_ms),
            format_ms(self.max_ms)
        )
    }
}

/// Milliseconds below ten seconds, seconds above.
pub fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// The latency at quantile `q` (0 to 1) of sorted latencies, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// One event of an order's stream, as `GET /api/orders/{id}/events` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEvent {
    /// Its type.
    pub event_type: String,
    /// When the order service recorded it.
    pub occurred_at: DateTime<Utc>,
}

/// The stages of an order, each from one event of its stream to the next.
pub const STAGES: [(&str, &str, &str); 3] = [
    ("placed → reserved", "OrderPlaced", "OrderInventoryReserved"),
    (
        "reserved → paid",
        "OrderInventoryReserved",
        "OrderPaymentProcessed",
    ),
    (
        "paid → confirmed",
        "OrderPaymentProcessed",
        "OrderConfirmed",
    ),
];

/// When the order reached each step of its happy path: placed, reserved, paid, confirmed.
///
/// Under load the payment can reach the order before the reservation does (the two travel
/// separately from the inventory service): the order then goes from placed straight to paid
/// and never records the reservation, and its first two stages are unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steps {
    /// `OrderPlaced`.
    pub placed: DateTime<Utc>,
    /// `OrderInventoryReserved`, when the order recorded it.
    pub reserved: Option<DateTime<Utc>>,
    /// `OrderPaymentProcessed`.
    pub paid: DateTime<Utc>,
    /// `OrderConfirmed`.
    pub confirmed: DateTime<Utc>,
}

impl Steps {
    /// The steps of a confirmed order's stream; `None` for an order that was not confirmed.
    pub fn from_stream(events: &[StreamEvent]) -> Option<Steps> {
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| e.event_type == kind)
                .map(|e| e.occurred_at)
        };
        Some(Steps {
            placed: at("OrderPlaced")?,
            reserved: at("OrderInventoryReserved"),
            paid: at("OrderPaymentProcessed")?,
            confirmed: at("OrderConfirmed")?,
        })
    }

    /// The time each of the [`STAGES`] took, in order (zero where clocks disagree by a hair,
    /// `None` where the order did not record the reservation).
    pub fn stage_durations(&self) -> [Option<Duration>; 3] {
        let between = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).to_std().unwrap_or_default();
        [
            self.reserved.map(|r| between(self.placed, r)),
            self.reserved.map(|r| between(r, self.paid)),
            Some(between(self.paid, self.confirmed)),
        ]
    }
}

/// One stage's latencies.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// `placed → reserved` and so on.
    pub name: String,
    /// The event it starts at.
    pub from: String,
    /// The event it ends at.
    pub to: String,
    /// Its latencies.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Summaries of the stages over many orders; a stage no order recorded is left out.
pub fn stages(steps: &[Steps]) -> Vec<StageSummary> {
    if steps.is_empty() {
        return Vec::new();
    }
    STAGES
        .iter()
        .enumerate()
        .filter_map(|(i, (name, from, to))| {
            let latencies: Vec<Duration> = steps
                .iter()
                .filter_map(|s| s.stage_durations()[i])
                .collect();
            Some(StageSummary {
                name: (*name).into(),
                from: (*from).into(),
                to: (*to).into(),
                summary: Summary::of(&latencies)?,
            })
        })
        .collect()
}

/// The stage with the largest median (ties: the later one), by name.
pub fn slowest(stages: &[StageSummary]) -> Option<String> {
    stages
        .iter()
        .max_by(|a, b| a.summary.p50_ms.total_cmp(&b.summary.p50_ms))
        .map(|s| s.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).expect("a valid time")
    }

    fn event(kind: &str, ms: i64) -> StreamEvent {
        StreamEvent {
            event_type: kind.into(),
            occurred_at: at(ms),
        }
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let latencies: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let summary = Summary::of(&latencies).expect("latencies");
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p95_ms, 95.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(
            summary.render(),
            "p50 50.0 ms, p95 95.0 ms, p99 99.0 ms, max 100.0 ms"
        );
        let one = Summary::of(&[Duration::from_millis(7)]).expect("one latency");
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
    }

    #[test]
    fn no_latencies_have_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(quantile(&[], 0.5), None);
        assert!(stages(&[]).is_empty());
        assert_eq!(slowest(&[]), None);
    }

    #[test]
    fn stages_come_from_the_order_stream() {
        let stream = vec![
            event("OrderPlaced", 0),
            event("OrderInventoryReserved", 40),
            event("OrderPaymentProcessed", 100),
            event("OrderConfirmed", 101),
        ];
        let steps = Steps::from_stream(&stream).expect("a confirmed order");
        assert_eq!(
            steps.stage_durations(),
            [
                Some(Duration::from_millis(40)),
                Some(Duration::from_millis(60)),
                Some(Duration::from_millis(1))
            ]
        );
        let slower = Steps::from_stream(&[
            event("OrderPlaced", 0),
            event("OrderInventoryReserved", 10),
            event("OrderPaymentProcessed", 300),
            event("OrderConfirmed", 300),
        ])
        .expect("a confirmed order");
        // Paid before the order heard of the reservation: only its last stage is known.
        let reordered = Steps::from_stream(&[
            event("OrderPlaced", 0),
            event("OrderPaymentProcessed", 50),
            event("OrderConfirmed", 52),
        ])
        .expect("a confirmed order");
        assert_eq!(
            reordered.stage_durations(),
            [None, None, Some(Duration::from_millis(2))]
        );
        let summaries = stages(&[steps, slower, reordered]);
        assert_eq!(summaries.len(), 3);
        assert_eq!(summaries[0].name, "placed → reserved");
        assert_eq!(summaries[0].summary.max_ms, 40.0);
        assert_eq!(summaries[1].summary.p50_ms, 60.0);
        assert_eq!(summaries[1].summary.max_ms, 290.0);
        assert_eq!(summaries[0].summary.count, 2);
        assert_eq!(summaries[2].summary.count, 3);
        assert_eq!(summaries[2].summary.p50_ms, 1.0);
        assert_eq!(slowest(&summaries).as_deref(), Some("reserved → paid"));
    }

    #[test]
    fn a_cancelled_order_has_no_steps() {
        let stream = vec![event("OrderPlaced", 0), event("OrderCancelled", 30)];
        assert_eq!(Steps::from_stream(&stream), None);
    }

    #[test]
    fn a_clock_step_backwards_counts_as_zero() {
        let steps = Steps {
            placed: at(10),
            reserved: Some(at(5)),
            paid: at(20),
            confirmed: at(20),
        };
        assert_eq!(steps.stage_durations()[0], Some(Duration::ZERO));
    }
}
