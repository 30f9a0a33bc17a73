//! Where the services spent their time: each bus consumer's handling time over the run, read
//! from the services' `GET /metrics` before and after it.
//!
//! The counters are cumulative since each process started, so the run's share is the
//! difference of two readings. The services of one process (`order-processing all`) serve the
//! same registry on every port: a consumer read on several ports is counted once.

use std::collections::BTreeMap;

use serde::Serialize;

/// The histogram whose `_sum` and `_count` are read, by its `consumer` label.
const HANDLING: &str = es_core::telemetry::MESSAGE_HANDLING_SECONDS;

/// One consumer's handling over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerTime {
    /// The consumer (queue) name.
    pub consumer: String,
    /// Attempts its handler made (handled, retried and dead-lettered).
    pub attempts: u64,
    /// Seconds its handler took, all attempts together.
    pub seconds: f64,
}

impl ConsumerTime {
    /// Mean milliseconds an attempt.
    pub fn mean_ms(&self) -> f64 {
        self.seconds * 1000.0 / self.attempts.max(1) as f64
    }
}

/// A reading: attempts and seconds by consumer.
pub type Reading = BTreeMap<String, (u64, f64)>;

/// The handling time by consumer in a `/metrics` text.
pub fn parse(text: &str) -> Reading {
    let mut reading = Reading::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) = line.strip_prefix(&format!("{HANDLING}_sum{{")) {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix(&format!("{HANDLING}_count{{")) {
            (false, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(consumer) = label(labels, "consumer") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = reading.entry(consumer).or_default();
        if is_sum {
            entry.1 = value;
        } else {
            entry.0 = value as u64;
        }
    }
    reading
}

/// The value of `key` in a Prometheus label set (`a="x",b="y"`).
fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')?;
    Some(labels[start..start + end].to_owned())
}

/// Reads `/metrics` of each of `targets` (service base URLs) and merges them; a target that
/// does not answer is left out (logged).
pub async fn read(client: &reqwest::Client, targets: &[String]) -> Reading {
    let mut merged = Reading::new();
    for target in targets {
        let url = format!("{}/metrics", target.trim_end_matches('/'));
        let text = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => response.text().await,
            Ok(response) => {
                tracing::warn!(%url, status = %response.status(), "cannot read the metrics");
                continue;
            }
            Err(error) => Err(error),
        };
        match text {
            // Separate processes have separate consumers; one process shows the same ones
            // on every port: keep the larger reading of a consumer seen twice.
            Ok(text) => {
                for (consumer, (attempts, seconds)) in parse(&text) {
                    let entry = merged.entry(consumer).or_default();
                    if attempts >= entry.0 {
                        *entry = (attempts, seconds);
                    }
                }
            }
            Err(error) => tracing::warn!(%url, %error, "cannot read the metrics"),
        }
    }
    merged
}

/// What each consumer did between `before` and `after`, the busiest first; consumers that did
/// nothing are left out.
pub fn between(before: &Reading, after: &Reading) -> Vec<ConsumerTime> {
    let mut times: Vec<ConsumerTime> = after
        .iter()
        .filter_map(|(consumer, &(attempts, seconds))| {
            let (attempts_before, seconds_before) =
                before.get(consumer).copied().unwrap_or_default();
            let attempts = attempts.saturating_sub(attempts_before);
            (attempts > 0).then(|| ConsumerTime {
                consumer: consumer.clone(),
                attempts,
                seconds: (seconds - seconds_before).max(0.0),
            })
        })
        .collect();
    times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    times
}

/// The consumer whose handler took the most time in all.
pub fn slowest(times: &[ConsumerTime]) -> Option<String> {
    times.first().map(|t| t.consumer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE es_message_handling_seconds histogram
es_message_handling_seconds_bucket{consumer=\"inventory-service\",le=\"0.001\"} 3
es_message_handling_seconds_sum{consumer=\"inventory-service\"} 0.5
es_message_handling_seconds_count{consumer=\"inventory-service\"} 10
es_message_handling_seconds_sum{consumer=\"payment-service\"} 2.25
es_message_handling_seconds_count{consumer=\"payment-service\"} 9
http_requests_total{route=\"/api/orders\",method=\"POST\",status=\"201\"} 4
";

    #[test]
    fn reads_sums_and_counts_by_consumer() {
        let reading = parse(TEXT);
        assert_eq!(reading.len(), 2);
        assert_eq!(reading["inventory-service"], (10, 0.5));
        assert_eq!(reading["payment-service"], (9, 2.25));
    }

    #[test]
    fn the_slowest_consumer_took_the_most_time_over_the_run() {
        let before = parse(TEXT);
        let mut after = before.clone();
        // Over the run: inventory 20 attempts in 3 s, payment 1 in 0.25 s, a new one 2 in 1 s.
        after.insert("inventory-service".into(), (30, 3.5));
        after.insert("payment-service".into(), (10, 2.5));
        after.insert("order-service".into(), (2, 1.0));
        let times = between(&before, &after);
        assert_eq!(
            times
                .iter()
                .map(|t| t.consumer.as_str())
                .collect::<Vec<_>>(),
            ["inventory-service", "order-service", "payment-service"]
        );
        assert_eq!(times[0].attempts, 20);
        assert!((times[0].seconds - 3.0).abs() < 1e-9);
        assert!((times[0].mean_ms() - 150.0).abs() < 1e-9);
        assert_eq!(slowest(&times).as_deref(), Some("inventory-service"));
        // A consumer that did nothing during the run is not named.
        assert!(between(&after, &after).is_empty());
        assert_eq!(slowest(&[]), None);
    }
}
