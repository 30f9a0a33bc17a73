//! A running system for tests: chosen services on port-0 listeners, and an HTTP client.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use order_processing_example::{Backends, Service, ServiceKind, Settings};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod processes;
pub mod scenarios;

/// One `#[tokio::test]` per scenario, on the given backend.
#[macro_export]
macro_rules! scenario_tests {
    ($backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                common::scenarios::$name($backend).await
            }
        )*
    };
}

/// Which backends a test system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In memory.
    Embedded,
    /// PostgreSQL, RabbitMQ and Redis, isolated by names.
    Real,
}

/// The test servers, as `es-test-services` finds them (env var, local port, container); each
/// fails the test, saying how to provide one, when there is none.
pub use es_test_services::{amqp_url, database_url, redis_url};

/// Settings on the real backends with names no other test uses.
/// Settings whose order timeout outlasts any wait in these tests: a test that is not about the
/// timeout must not be decided by it when a loaded machine runs slowly.
pub fn patient() -> Settings {
    Settings {
        order_timeout: Duration::from_secs(300),
        ..Settings::default()
    }
}

pub fn isolated(mut settings: Settings) -> Settings {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    settings.database_url = Some(database_url());
    settings.amqp_url = Some(amqp_url());
    settings.redis_url = Some(redis_url());
    settings.database_schema = format!("op_test_{suffix}");
    settings.exchange = format!("op-test-{suffix}");
    settings.queue_prefix = format!("op-test-{suffix}-");
    settings.redis_prefix = format!("op-test-{suffix}:");
    settings.queue_expires = Some(Duration::from_secs(120));
    // Many test systems share one server (max_connections is 100 by default).
    settings.database_max_connections = 4;
    settings
}

/// Backends for `settings`, failing the test with a way out when a service does not answer.
pub async fn connect(settings: &Settings) -> Backends {
    let give_up = tokio::time::sleep(Duration::from_secs(45));
    let backends = Backends::from_settings_until(settings, give_up)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: PostgreSQL at {} does not answer (set DATABASE_URL to another)",
                database_url()
            )
        });
    let (healthy, entries) = backends.health.check().await;
    assert!(
        healthy,
        "a backend does not answer: {entries}; start RabbitMQ and Redis or set AMQP_URL ({}) and REDIS_URL ({})",
        amqp_url(),
        redis_url()
    );
    backends
}

pub const LAPTOP: &str = "11111111-1111-1111-1111-111111111111";
pub const MOUSE: &str = "22222222-2222-2222-2222-222222222222";
pub const KEYBOARD: &str = "33333333-3333-3333-3333-333333333333";
pub const MONITOR: &str = "44444444-4444-4444-4444-444444444444";

pub struct System {
    urls: HashMap<ServiceKind, String>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The PostgreSQL schema to drop when the system goes.
    schema: Option<SchemaGuard>,
    pub client: reqwest::Client,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Drops a test's schema when it goes out of scope, also when the test panics.
#[derive(Debug)]
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop runs outside any async context we could await in: use a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(drop_schema(&schema));
            }
        });
        let _ = cleanup.join();
    }
}

/// Drops a test's schema.
pub async fn drop_schema(schema: &str) {
    match sqlx::PgPool::connect(&database_url()).await {
        Ok(pool) => {
            // The read models' generations live in schemas of their own beside it.
            let generations: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
            )
            .bind(format!("{schema}_rm_"))
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for schema in generations.iter().map(String::as_str).chain([schema]) {
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                if let Err(error) = sqlx::query(&drop).execute(&pool).await {
                    eprintln!("cannot drop schema {schema}: {error}");
                }
            }
            pool.close().await;
        }
        Err(error) => eprintln!("cannot drop schema {schema}: {error}"),
    }
}

impl System {
    /// All five services on the embedded backends.
    pub async fn embedded() -> System {
        Self::embedded_with(patient(), &ServiceKind::ALL).await
    }

    pub async fn launch(backend: Backend, settings: Settings, kinds: &[ServiceKind]) -> System {
        match backend {
            Backend::Embedded => Self::embedded_with(settings, kinds).await,
            Backend::Real => {
                let settings = isolated(settings);
                let schema = SchemaGuard(settings.database_schema.clone());
                let backends = connect(&settings).await;
                let mut system = Self::start(backends, settings, kinds).await;
                system.schema = Some(schema);
                system
            }
        }
    }

    pub async fn embedded_with(settings: Settings, kinds: &[ServiceKind]) -> System {
        Self::start(Backends::embedded(), settings, kinds).await
    }

    pub async fn start(backends: Backends, settings: Settings, kinds: &[ServiceKind]) -> System {
        // As `main` does; the backends' own metric handles were taken when they were built.
        order_processing_example::telemetry::install();
        let shutdown = CancellationToken::new();
        let mut urls = HashMap::new();
        let mut tasks = Vec::new();
        for &kind in kinds {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
            let address = listener.local_addr().expect("local address");
            let service = Service::start(kind, &backends, &settings)
                .await
                .unwrap_or_else(|e| panic!("start {kind:?}: {e}"));
            urls.insert(kind, format!("http://{address}"));
            let wait = shutdown.clone().cancelled_owned();
            tasks.push(tokio::spawn(async move {
                service.run(listener, wait).await.expect("serve");
            }));
        }
        System {
            urls,
            shutdown,
            tasks,
            schema: None,
            client: client(),
        }
    }

    /// A system of processes started elsewhere, reached at `urls`.
    pub fn at(urls: HashMap<ServiceKind, String>) -> System {
        System {
            urls,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            schema: None,
            client: client(),
        }
    }

    pub fn url(&self, kind: ServiceKind, path: &str) -> String {
        format!("{}{path}", self.urls[&kind])
    }

    pub async fn get(&self, kind: ServiceKind, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(kind, path))
            .send()
            .await
            .expect("GET");
        read(response).await
    }

    pub async fn post_order(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(ServiceKind::Order, "/api/orders"))
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        read(request.send().await.expect("POST")).await
    }

    pub async fn put_product(&self, id: &str, name: &str, available: u64) -> (u16, Value) {
        let response = self
            .client
            .put(self.url(
                ServiceKind::Inventory,
                &format!("/api/inventory/products/{id}"),
            ))
            .json(&json!({"name": name, "availableQuantity": available}))
            .send()
            .await
            .expect("PUT");
        read(response).await
    }

    /// Places an order and returns its id (asserting the 201).
    pub async fn place(&self, customer: &str, lines: &[(&str, u64, &str)]) -> String {
        let (status, body) = self.post_order(&order_body(customer, lines), None).await;
        assert_eq!(status, 201, "{body}");
        body["orderId"].as_str().expect("orderId").to_owned()
    }

    /// Waits until the order has reached a final status, and returns it. When it does not, the
    /// panic names the order's last status and the events of its stream, so that a failure
    /// says how far the saga got.
    pub async fn settled(&self, order_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            let (status, order) = self
                .get(ServiceKind::Order, &format!("/api/orders/{order_id}"))
                .await;
            if status == 200 && matches!(order["status"].as_str(), Some("Confirmed" | "Cancelled"))
            {
                return order;
            }
            last = order;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (_, events) = self
            .get(
                ServiceKind::Order,
                &format!("/api/orders/{order_id}/events"),
            )
            .await;
        let kinds: Vec<&str> = events
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|event| event["eventType"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        panic!("timed out waiting for order {order_id} to settle: last seen {last}; its events {kinds:?}");
    }

    pub async fn product(&self, id: &str) -> Value {
        let (status, body) = self
            .get(
                ServiceKind::Inventory,
                &format!("/api/inventory/products/{id}"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("service task");
        }
        drop(self.schema);
    }
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

pub fn order_body(customer: &str, lines: &[(&str, u64, &str)]) -> Value {
    json!({
        "customerId": customer,
        "items": lines.iter().map(|(product, quantity, price)| json!({
            "productId": product,
            "productName": "Thing",
            "quantity": quantity,
            "unitPrice": serde_json::from_str::<Value>(price).expect("price"),
        })).collect::<Vec<_>>()
    })
}

pub fn customer() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A money field as an exact decimal.
pub fn money(value: &Value) -> Decimal {
    match value {
        Value::Number(n) => n.to_string().parse().expect("decimal"),
        other => panic!("not a number: {other}"),
    }
}

/// Polls `check` until it yields, for at most 60 s (twice the default order timeout: a busy
/// machine running many test systems at once is slow, never wrong).
/// How long a test waits for the system to reach what it expects.
pub const PATIENCE: Duration = Duration::from_secs(150);

pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
