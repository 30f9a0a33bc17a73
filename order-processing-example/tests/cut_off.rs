//! A keyed POST that is cut off after its order was placed (a timeout, a client that went
//! away, a process that died) must not leave its `Idempotency-Key` stuck, and its retry must
//! answer the order that was placed, never a second one.
//!
//! The handler is stopped at the worst moment: the order is committed, and the answer is
//! about to be stored under the key. An idempotency store wrapper holds `complete` there, the
//! test drops the request's future (what axum's timeout layer and hyper do on a disconnect),
//! and a retry with the same key and body follows.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use common::{connect, customer, isolated, order_body, patient, SchemaGuard, MOUSE};
use es_core::{Aggregate, Claim, ClaimToken, IdempotencyStore, Ownership, Position, StreamFilter};
use order_processing_example::order::Order;
use order_processing_example::{Backends, Service, ServiceKind, Settings};
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

/// An idempotency store that can stall the next `complete` forever (the request is cut off
/// there) and can ignore releases (the process died before it could release).
#[derive(Debug)]
struct CutOff {
    inner: Arc<dyn IdempotencyStore>,
    stall_next_complete: AtomicBool,
    releases_lost: AtomicBool,
    stalled: Notify,
}

#[async_trait]
impl IdempotencyStore for CutOff {
    async fn claim(&self, key: &str, fingerprint: &str, lease: Duration) -> es_core::Result<Claim> {
        self.inner.claim(key, fingerprint, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        token: &ClaimToken,
        lease: Duration,
    ) -> es_core::Result<Ownership> {
        self.inner.renew(key, token, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: Bytes,
        ttl: Duration,
    ) -> es_core::Result<Ownership> {
        if self.stall_next_complete.swap(false, Ordering::SeqCst) {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.complete(key, token, response, ttl).await
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> es_core::Result<Ownership> {
        if self.releases_lost.load(Ordering::SeqCst) {
            return Ok(Ownership::Held);
        }
        self.inner.release(key, token).await
    }
}

fn post(body: &Value, key: &str) -> Request<Body> {
    Request::post("/api/orders")
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(Body::from(body.to_string()))
        .expect("request")
}

async fn answer(response: axum::response::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

/// How many `OrderPlaced` events the store holds.
async fn orders_placed(backends: &Backends) -> usize {
    let events = backends
        .store
        .read_all(
            &StreamFilter::category(Order::TYPE),
            Position::START,
            10_000,
        )
        .await
        .expect("read the log");
    events
        .iter()
        .filter(|e| e.event_type == "OrderPlaced")
        .count()
}

/// Starts the order service on `backends` with its idempotency store wrapped.
async fn order_service(
    mut backends: Backends,
    settings: &Settings,
) -> (Service, Arc<CutOff>, Backends) {
    let cut_off = Arc::new(CutOff {
        inner: backends.idempotency.clone(),
        stall_next_complete: AtomicBool::new(true),
        releases_lost: AtomicBool::new(false),
        stalled: Notify::new(),
    });
    backends.idempotency = cut_off.clone();
    let service = Service::start(ServiceKind::Order, &backends, settings)
        .await
        .expect("the order service starts");
    (service, cut_off, backends)
}

/// Sends a keyed POST and drops it once it has placed its order and is storing the answer.
async fn cut_off_after_placing(service: &Service, cut_off: &CutOff, body: &Value, key: &str) {
    let request = service.router().oneshot(post(body, key));
    tokio::select! {
        response = request => panic!("the first request was meant to stall, got {response:?}"),
        () = cut_off.stalled.notified() => {}
    }
    // The select dropped the request's future: the handler is gone mid-way.
}

/// Retries and checks the answer: 200 with the one order, soon enough that it did not sit out
/// a day-long claim (the old behaviour: a 10 s wait, then 409).
async fn retry_answers_the_placed_order(
    service: &Service,
    backends: &Backends,
    body: &Value,
    key: &str,
    within: Duration,
) {
    assert_eq!(
        orders_placed(backends).await,
        1,
        "the first request placed its order"
    );
    let started = tokio::time::Instant::now();
    let (status, order) = answer(
        service
            .router()
            .oneshot(post(body, key))
            .await
            .expect("infallible"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry answers the placed order: {order}"
    );
    assert!(took < within, "the retry took {took:?}");
    assert_eq!(order["customerId"], body["customerId"]);
    assert_eq!(order["status"], "Pending");
    assert_eq!(orders_placed(backends).await, 1, "no second order");

    // The retry stored the answer: another retry replays it.
    let (status, again) = answer(
        service
            .router()
            .oneshot(post(body, key))
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["orderId"], order["orderId"]);
    assert_eq!(orders_placed(backends).await, 1, "no second order");

    // The same key with another body is still refused.
    let other = order_body(
        body["customerId"].as_str().expect("customer"),
        &[(MOUSE, 7, "25.00")],
    );
    let (status, _) = answer(
        service
            .router()
            .oneshot(post(&other, key))
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A request dropped mid-way (timeout layer, client disconnect) frees its key at once.
async fn dropped_request(backends: Backends, settings: Settings) {
    // A lease far longer than the test waits: only the release on drop can free the key.
    let settings = Settings {
        idempotency_lease: Duration::from_secs(60),
        ..settings
    };
    let (service, cut_off, backends) = order_service(backends, &settings).await;
    let body = order_body(&customer(), &[(MOUSE, 2, "25.00")]);
    cut_off_after_placing(&service, &cut_off, &body, "cut-off").await;
    retry_answers_the_placed_order(
        &service,
        &backends,
        &body,
        "cut-off",
        Duration::from_secs(5),
    )
    .await;
    service.stop().await;
}

/// A request whose process died (no release, no renewal) frees its key when its lease runs out.
async fn died_request(backends: Backends, settings: Settings) {
    let settings = Settings {
        idempotency_lease: Duration::from_millis(1500),
        ..settings
    };
    let (service, cut_off, backends) = order_service(backends, &settings).await;
    cut_off.releases_lost.store(true, Ordering::SeqCst);
    let body = order_body(&customer(), &[(MOUSE, 1, "25.00")]);
    cut_off_after_placing(&service, &cut_off, &body, "died").await;
    // Waits for the lease (1.5 s) within the 10 s that a retry waits, then takes over.
    retry_answers_the_placed_order(&service, &backends, &body, "died", Duration::from_secs(8))
        .await;
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_cut_off_after_placing_its_order_frees_its_key_and_its_retry_answers_that_order(
) {
    dropped_request(Backends::embedded(), patient()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_whose_process_died_is_answered_by_a_retry_once_its_lease_ran_out() {
    died_request(Backends::embedded(), patient()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_backends_a_cut_off_keyed_request_frees_its_key_and_makes_one_order() {
    // Keys in Redis, then (without Redis) in PostgreSQL; each run on its own schema, so that
    // each counts only its own orders.
    for keys_in_redis in [true, false] {
        for died in [false, true] {
            let mut settings = isolated(patient());
            if !keys_in_redis {
                settings.redis_url = None;
            }
            let _schema = SchemaGuard(settings.database_schema.clone());
            let backends = connect(&settings).await;
            if died {
                died_request(backends, settings).await;
            } else {
                dropped_request(backends, settings).await;
            }
        }
    }
}
