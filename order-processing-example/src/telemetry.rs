//! Metrics: the process's Prometheus recorder, `GET /metrics`, and the HTTP middleware that
//! counts and times requests.
//!
//! The framework crates record through the `metrics` facade (names in [`es_core::telemetry`]);
//! [`install`] puts a Prometheus recorder behind it once per process, and every service's
//! router serves what it holds on `GET /metrics` in the Prometheus text format. The recorder
//! has no listener of its own: the services' own ports serve it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `http_requests_total{route,method,status}`: requests answered.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// `http_request_duration_seconds{route,method,status}`: time to answer, as a histogram.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// The `route` label of a request no route matched (the 404 fallback), so that unknown paths
/// do not each make a series.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for every `*_seconds` histogram: half a millisecond to ten seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Keeps histograms' pending samples bounded between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What is run just before each render, by name (e.g. the pool gauge's sampler).
type Sampler = Box<dyn Fn() + Send + Sync>;

/// A sampler that has to ask a backend (e.g. the read models' lag, counted by PostgreSQL).
type AsyncSampler = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// How long `GET /metrics` waits for the asynchronous samplers: a slow database must not
/// hold the scrape; the gauges then keep their last values.
const ASYNC_SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static SAMPLERS: Mutex<BTreeMap<&'static str, Sampler>> = Mutex::new(BTreeMap::new());
static ASYNC_SAMPLERS: Mutex<BTreeMap<String, AsyncSampler>> = Mutex::new(BTreeMap::new());

/// Installs the process's Prometheus recorder (once; later calls return the same handle).
///
/// Call it before building backends and services: they take their metric handles when they
/// are built. When another recorder is installed already, this one still renders (what the
/// HTTP middleware records through it is lost) and a warning says so.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only this one's");
        }
        // Without an exporter task of its own, the recorder needs upkeep now and then, or the
        // samples of histograms that nobody scrapes pile up.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// Runs `sample` before every render, to set gauges that are cheaper to read on demand (the
/// pool's connections). A later sampler under the same `name` replaces the earlier one, so
/// that a process that builds its backends again does not keep the old ones alive.
pub fn on_render(name: &'static str, sample: impl Fn() + Send + Sync + 'static) {
    SAMPLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, Box::new(sample));
}

/// Runs `sample` (and waits for it, at most 2 s) before every `GET /metrics`, for gauges
/// that take a backend's answer (the read models' lag). A later sampler under the same `name`
/// replaces the earlier one; name it after what it reads (the read models of one store
/// schema), so that several systems in one process (as in the tests) each keep theirs.
pub fn on_render_async<F, Fut>(name: impl Into<String>, sample: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sample: AsyncSampler = Arc::new(move || Box::pin(sample()));
    ASYNC_SAMPLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.into(), sample);
}

/// Runs the asynchronous samplers, together, for at most [`ASYNC_SAMPLE_TIMEOUT`].
async fn sample_async() {
    let samplers: Vec<AsyncSampler> = ASYNC_SAMPLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    if samplers.is_empty() {
        return;
    }
    let all = futures_util::future::join_all(samplers.iter().map(|sample| sample()));
    let _ = tokio::time::timeout(ASYNC_SAMPLE_TIMEOUT, all).await;
}

/// The metrics now, in the Prometheus text format.
pub fn render() -> String {
    for sample in SAMPLERS.lock().unwrap_or_else(|e| e.into_inner()).values() {
        sample();
    }
    install().render()
}

async fn serve_metrics() -> Response {
    sample_async().await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response()
}

/// The `GET /metrics` route.
pub fn route() -> Router {
    Router::new().route("/metrics", axum::routing::get(serve_metrics))
}

/// Middleware counting and timing every request by its route template (not its path, so that
/// ids in paths do not each make a series), method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = status_label(response.status());
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed());
    response
}

fn status_label(status: StatusCode) -> String {
    status.as_str().to_owned()
}
