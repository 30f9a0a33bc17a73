//! What a load test measured, as text, JSON and a self-contained HTML page.

use std::fmt::Write as _;

use serde::Serialize;

use super::budget::Budget;
use super::consumers::ConsumerTime;
use super::mix::ProductMix;
use super::stats::{StageSummary, Summary};

/// How arrivals were driven.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Mode {
    /// A fixed number of requests in flight: the next order is sent when one is answered.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
    /// Orders sent at a constant rate whatever the answers, latency counted from when each was
    /// due.
    Open {
        /// Orders per second.
        rate: f64,
        /// For how long, in seconds.
        duration_seconds: f64,
    },
}

/// Orders by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Orders the load test meant to place.
    pub scheduled: usize,
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
}

/// The latencies of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latencies {
    /// From when each POST was due (open loop) or sent (closed loop) to its answer.
    pub request: Option<Summary>,
    /// From when each order was due or sent to its `OrderConfirmed`.
    pub end_to_end: Option<Summary>,
    /// From `OrderPlaced` to `OrderConfirmed`, as the order service recorded them.
    pub placed_to_confirmed: Option<Summary>,
}

/// One confirmed order on the latency chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// When it was due or sent, seconds from the start.
    pub sent_at: f64,
    /// Its end-to-end latency.
    pub latency_ms: f64,
}

/// Orders in one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    /// Seconds from the start.
    pub second: usize,
    /// Orders placed in it (`OrderPlaced` recorded).
    pub placed: usize,
    /// Orders confirmed in it (`OrderConfirmed` recorded).
    pub confirmed: usize,
}

/// What a load test measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadTestReport {
    /// How arrivals were driven.
    pub mode: Mode,
    /// Which products the orders bought.
    pub products: ProductMix,
    /// Orders by outcome.
    pub orders: Counts,
    /// From the first POST until the last order was seen final, in seconds.
    pub elapsed_seconds: f64,
    /// Times an open-loop arrival waited because the in-flight bound was reached (then the
    /// rate was not held).
    pub in_flight_bound_hit: usize,
    /// GETs the load test made to see the orders become final (they cost the system too).
    pub polls: usize,
    /// The latencies.
    pub latency: Latencies,
    /// The stages of a confirmed order, from its events.
    pub stages: Vec<StageSummary>,
    /// The stage with the largest median.
    pub slowest_stage: Option<String>,
    /// Each bus consumer's handling time over the run, the busiest first (from the services'
    /// `/metrics`; empty when they could not be read).
    pub consumers: Vec<ConsumerTime>,
    /// The consumer whose handler took the most time in all.
    pub slowest_consumer: Option<String>,
    /// The confirmed orders' end-to-end latency against when they were sent.
    pub timeline: Vec<Point>,
    /// Orders placed and confirmed per second.
    pub throughput: Vec<Second>,
    /// Whether tables were vacuumed and analyzed before the measured phase, and which.
    pub vacuumed: Option<String>,
    /// What an order cost, where the counters could be read.
    pub budget: Option<Budget>,
}

impl LoadTestReport {
    /// Final orders per second over the whole run.
    pub fn orders_per_second(&self) -> f64 {
        (self.orders.confirmed + self.orders.cancelled) as f64
            / self.elapsed_seconds.max(f64::EPSILON)
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mode = match self.mode {
            Mode::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
            Mode::Open {
                rate,
                duration_seconds,
            } => format!(
                "open loop, {rate} orders/s for {duration_seconds} s (latency from when each order was due)"
            ),
        };
        let summary = |s: &Option<Summary>| s.as_ref().map_or("–".into(), Summary::render);
        let c = &self.orders;
        let _ = write!(
            out,
            "mode:              {mode}\n\
             products:          {}\n\
             orders placed:     {} of {} ({} failed)\n\
             confirmed:         {}\n\
             cancelled:         {}\n\
             not final in time: {}\n\
             elapsed:           {:.2} s\n\
             throughput:        {:.1} orders/s (first POST until every order is final)\n\
             latency\n  \
               request (POST):          {}\n  \
               end to end:              {}\n  \
               placed → confirmed:      {}\n",
            self.products.describe(),
            c.placed,
            c.scheduled,
            c.failed,
            c.confirmed,
            c.cancelled,
            c.unfinished,
            self.elapsed_seconds,
            self.orders_per_second(),
            summary(&self.latency.request),
            summary(&self.latency.end_to_end),
            summary(&self.latency.placed_to_confirmed),
        );
        if !self.stages.is_empty() {
            out.push_str(
                "stages (from the order's events; an order paid before it recorded its \
                 reservation has only the last)\n",
            );
            for stage in &self.stages {
                let _ = writeln!(
                    out,
                    "  {:<24} {} ({} orders)",
                    stage.name,
                    stage.summary.render(),
                    stage.summary.count
                );
            }
            if let Some(slowest) = &self.slowest_stage {
                let _ = writeln!(out, "  slowest stage (by median): {slowest}");
            }
        }
        if !self.consumers.is_empty() {
            out.push_str("consumers (handling time over the run, from the services' /metrics)\n");
            for time in &self.consumers {
                let _ = writeln!(
                    out,
                    "  {:<24} {:>9.3} s in {} attempts ({:.2} ms each)",
                    time.consumer,
                    time.seconds,
                    time.attempts,
                    time.mean_ms()
                );
            }
            if let Some(slowest) = &self.slowest_consumer {
                let _ = writeln!(out, "  slowest consumer (by total time): {slowest}");
            }
        }
        if self.in_flight_bound_hit > 0 {
            let _ = writeln!(
                out,
                "in-flight bound reached {} times: the rate was not held",
                self.in_flight_bound_hit
            );
        }
        let _ = writeln!(
            out,
            "polling: {} GETs ({:.2} an order)",
            self.polls,
            self.polls as f64 / c.placed.max(1) as f64
        );
        if let Some(vacuumed) = &self.vacuumed {
            let _ = writeln!(out, "before the measured phase: {vacuumed}");
        }
        if let Some(budget) = &self.budget {
            out.push_str(&budget.render());
        }
        out
    }

    /// A self-contained HTML page: the figures, latency over time and the throughput curve,
    /// drawn as inline SVG (no script, nothing fetched).
    pub fn render_html(&self) -> String {
        let mut page = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>order-processing load test</title>\n<style>\
             body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:960px}\
             pre{background:#f6f6f6;padding:1em;overflow-x:auto}\
             svg{background:#fff;border:1px solid #ddd}\
             .p50{stroke:#1f77b4}.p99{stroke:#d62728}.dot{fill:#1f77b4;fill-opacity:.35}\
             .placed{stroke:#2ca02c}.confirmed{stroke:#9467bd}\
             text{font-size:11px;fill:#444}</style></head><body>\n\
             <h1>order-processing load test</h1>\n",
        );
        let _ = writeln!(
            page,
            "<p><b>{:.1} orders/s</b>; {} confirmed, {} cancelled, {} not final; slowest stage: {}</p>",
            self.orders_per_second(),
            self.orders.confirmed,
            self.orders.cancelled,
            self.orders.unfinished,
            escape(self.slowest_stage.as_deref().unwrap_or("–")),
        );
        page.push_str("<h2>Latency over time (end to end)</h2>\n");
        page.push_str(&self.latency_chart());
        page.push_str("<h2>Throughput (orders per second)</h2>\n");
        page.push_str(&self.throughput_chart());
        page.push_str("<h2>Figures</h2>\n<pre>");
        page.push_str(&escape(&self.render()));
        page.push_str("</pre>\n</body></html>\n");
        page
    }

    fn latency_chart(&self) -> String {
        // Thinned to at most a few thousand dots, so a long run still opens quickly.
        let stride = (self.timeline.len() / 4000).max(1);
        let x_max = self
            .timeline
            .iter()
            .map(|p| p.sent_at)
            .fold(1.0, f64::max)
            .ceil();
        let y_max = self
            .timeline
            .iter()
            .map(|p| p.latency_ms)
            .fold(1.0, f64::max);
        let chart = Chart::new(x_max, y_max, "s", "ms");
        let mut svg = chart.open("latency of confirmed orders against when they were sent");
        for point in self.timeline.iter().step_by(stride) {
            let (x, y) = chart.at(point.sent_at, point.latency_ms);
            let _ = write!(
                svg,
                "<circle class=\"dot\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\"/>"
            );
        }
        // p50 and p99 of each second.
        let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); x_max as usize + 1];
        for point in &self.timeline {
            per_second[point.sent_at as usize].push(point.latency_ms);
        }
        for (class, q) in [("p50", 0.5), ("p99", 0.99)] {
            let points: Vec<(f64, f64)> = per_second
                .iter_mut()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(s, v)| {
                    v.sort_by(f64::total_cmp);
                    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
                    (s as f64 + 0.5, v[rank - 1])
                })
                .collect();
            svg.push_str(&chart.polyline(class, &points));
        }
        svg.push_str(&chart.legend(&[("p50", "p50 per second"), ("p99", "p99 per second")]));
        svg.push_str("</svg>\n");
        svg
    }

    fn throughput_chart(&self) -> String {
        let x_max = (self.throughput.len() as f64).max(1.0);
        let y_max = self
            .throughput
            .iter()
            .map(|s| s.placed.max(s.confirmed) as f64)
            .fold(1.0, f64::max);
        let chart = Chart::new(x_max, y_max, "s", "/s");
        let mut svg = chart.open("orders placed and confirmed per second");
        for (class, pick) in [
            ("placed", (|s: &Second| s.placed) as fn(&Second) -> usize),
            ("confirmed", |s: &Second| s.confirmed),
        ] {
            let points: Vec<(f64, f64)> = self
                .throughput
                .iter()
                .map(|s| (s.second as f64 + 0.5, pick(s) as f64))
                .collect();
            svg.push_str(&chart.polyline(class, &points));
        }
        svg.push_str(&chart.legend(&[("placed", "placed"), ("confirmed", "confirmed")]));
        svg.push_str("</svg>\n");
        svg
    }
}

/// Axes and scales of one chart.
struct Chart {
    x_max: f64,
    y_max: f64,
    x_unit: &'static str,
    y_unit: &'static str,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 80.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 10.0;
const RIGHT: f64 = 10.0;

impl Chart {
    fn new(x_max: f64, y_max: f64, x_unit: &'static str, y_unit: &'static str) -> Chart {
        Chart {
            x_max: x_max.max(f64::EPSILON),
            y_max: y_max.max(f64::EPSILON) * 1.05,
            x_unit,
            y_unit,
        }
    }

    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (
            LEFT + x / self.x_max * (WIDTH - LEFT - RIGHT),
            HEIGHT - BOTTOM - y / self.y_max * (HEIGHT - BOTTOM - TOP),
        )
    }

    fn open(&self, label: &str) -> String {
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
            escape(label)
        );
        let (x0, y0) = self.at(0.0, 0.0);
        let (x1, _) = self.at(self.x_max, 0.0);
        let (_, y1) = self.at(0.0, self.y_max);
        let _ = write!(
            svg,
            "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#888\"/>\
             <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#888\"/>"
        );
        let y_step = nice_step(self.y_max / 1.05);
        for i in 0..=((self.y_max / y_step) as usize).min(20) {
            let value = y_step * i as f64;
            let (_, y) = self.at(0.0, value);
            let _ = write!(
                svg,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} {}</text>",
                x0 - 4.0,
                y + 4.0,
                tick(value),
                self.y_unit
            );
        }
        let x_step = nice_step(self.x_max);
        for i in 0..=((self.x_max / x_step) as usize).min(20) {
            let x_value = x_step * i as f64;
            let (x, _) = self.at(x_value, 0.0);
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} {}</text>",
                y0 + 16.0,
                tick(x_value),
                self.x_unit
            );
        }
        svg
    }

    fn polyline(&self, class: &str, points: &[(f64, f64)]) -> String {
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| {
                let (x, y) = self.at(x, y);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        format!(
            "<polyline class=\"{class}\" fill=\"none\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        )
    }

    fn legend(&self, entries: &[(&str, &str)]) -> String {
        let mut svg = String::new();
        for (i, (class, label)) in entries.iter().enumerate() {
            let y = TOP + 12.0 + 16.0 * i as f64;
            let x = WIDTH - RIGHT - 150.0;
            let _ = write!(
                svg,
                "<line class=\"{class}\" x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke-width=\"2\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                x + 20.0,
                x + 26.0,
                y + 4.0,
                escape(label)
            );
        }
        svg
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into three to six parts.
fn nice_step(span: f64) -> f64 {
    if !span.is_finite() || span <= 0.0 {
        return 1.0;
    }
    let rough = span / 6.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * power);
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

fn tick(value: f64) -> String {
    if value >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> LoadTestReport {
        let summary = Summary {
            count: 3,
            p50_ms: 12.0,
            p95_ms: 30.0,
            p99_ms: 31.0,
            max_ms: 32.5,
        };
        LoadTestReport {
            mode: Mode::Open {
                rate: 2.0,
                duration_seconds: 2.0,
            },
            products: ProductMix::Spread { products: 50 },
            orders: Counts {
                scheduled: 4,
                placed: 4,
                failed: 0,
                confirmed: 3,
                cancelled: 1,
                unfinished: 0,
            },
            elapsed_seconds: 2.0,
            in_flight_bound_hit: 0,
            polls: 6,
            latency: Latencies {
                request: Some(summary),
                end_to_end: Some(summary),
                placed_to_confirmed: None,
            },
            stages: vec![StageSummary {
                name: "reserved → paid".into(),
                from: "OrderInventoryReserved".into(),
                to: "OrderPaymentProcessed".into(),
                summary,
            }],
            slowest_stage: Some("reserved → paid".into()),
            consumers: vec![ConsumerTime {
                consumer: "payment-service".into(),
                attempts: 40,
                seconds: 1.5,
            }],
            slowest_consumer: Some("payment-service".into()),
            timeline: vec![
                Point {
                    sent_at: 0.0,
                    latency_ms: 12.0,
                },
                Point {
                    sent_at: 0.5,
                    latency_ms: 30.0,
                },
                Point {
                    sent_at: 1.5,
                    latency_ms: 32.5,
                },
            ],
            throughput: vec![
                Second {
                    second: 0,
                    placed: 2,
                    confirmed: 2,
                },
                Second {
                    second: 1,
                    placed: 2,
                    confirmed: 1,
                },
            ],
            vacuumed: None,
            budget: None,
        }
    }

    #[test]
    fn the_text_report_names_the_figures() {
        let text = sample_report().render();
        assert!(text.contains("open loop, 2 orders/s for 2 s"), "{text}");
        assert!(
            text.contains("orders placed:     4 of 4 (0 failed)"),
            "{text}"
        );
        assert!(text.contains("throughput:        2.0 orders/s"), "{text}");
        assert!(
            text.contains("p50 12.0 ms, p95 30.0 ms, p99 31.0 ms, max 32.5 ms"),
            "{text}"
        );
        assert!(
            text.contains("slowest stage (by median): reserved → paid"),
            "{text}"
        );
        assert!(
            text.contains("slowest consumer (by total time): payment-service"),
            "{text}"
        );
        assert!(
            text.contains("1.500 s in 40 attempts (37.50 ms each)"),
            "{text}"
        );
        assert!(text.contains("polling: 6 GETs (1.50 an order)"), "{text}");
    }

    #[test]
    fn the_html_report_is_self_contained_with_both_charts() {
        let html = sample_report().render_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 2, "two charts");
        assert_eq!(
            html.matches("<circle").count(),
            3,
            "one dot per confirmed order"
        );
        assert_eq!(html.matches("class=\"p99\" fill").count(), 1);
        assert!(html.contains("class=\"confirmed\" fill"));
        assert!(html.contains("<b>2.0 orders/s</b>"));
        assert!(html.contains("reserved → paid"));
        assert!(!html.contains("<script"), "no script");
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "nothing fetched"
        );
        // Figures in the <pre> are escaped.
        assert!(html.contains("placed → confirmed:      –"));
    }

    #[test]
    fn axes_are_cut_at_round_numbers() {
        assert_eq!(nice_step(10_071.0), 2000.0);
        assert_eq!(nice_step(36.0), 10.0);
        assert_eq!(nice_step(3.0), 0.5);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
    }

    #[test]
    fn an_empty_run_still_renders() {
        let mut report = sample_report();
        report.timeline.clear();
        report.throughput.clear();
        report.stages.clear();
        report.slowest_stage = None;
        let html = report.render_html();
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(!html.contains("NaN"), "no NaN coordinates");
    }

    #[test]
    fn the_json_report_has_a_stable_shape() {
        let json = serde_json::to_value(sample_report()).expect("serializes");
        assert_eq!(json["mode"]["kind"], "open");
        assert_eq!(json["mode"]["rate"], 2.0);
        assert_eq!(
            json["products"],
            serde_json::json!({"kind": "spread", "products": 50})
        );
        assert_eq!(json["orders"]["confirmed"], 3);
        assert_eq!(json["latency"]["request"]["p99Ms"], 31.0);
        assert_eq!(
            json["latency"]["placedToConfirmed"],
            serde_json::Value::Null
        );
        assert_eq!(json["stages"][0]["name"], "reserved → paid");
        assert_eq!(json["stages"][0]["p50Ms"], 12.0);
        assert_eq!(json["slowestStage"], "reserved → paid");
        assert_eq!(json["timeline"][1]["sentAt"], 0.5);
        assert_eq!(json["throughput"][1]["confirmed"], 1);
        assert_eq!(json["budget"], serde_json::Value::Null);
    }
}
