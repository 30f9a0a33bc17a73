//! The one place that picks the backends: in memory, PostgreSQL, RabbitMQ, Redis.

use std::sync::Arc;

use es_core::memory::{
    MemoryCache, MemoryEventBus, MemoryEventStore, MemoryIdempotencyStore, MemoryLeaseStore,
};
use es_core::{
    Cache, CheckpointStore, EventBus, EventStore, IdempotencyStore, LeaseStore, ParkedEventStore,
    SagaStore, SnapshotStore,
};

use crate::config::Settings;
use crate::http::{Health, HealthProbe};
use crate::service_kind::ServiceKind;

/// Why the system could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A single service cannot hear the others without a broker.
    #[error("the {0} service on its own needs a message broker: pass --amqp-url (or set AMQP_URL); to run without one, use `order-processing all`")]
    NeedsBroker(&'static str),
    /// A setting can never work (a malformed URL, say).
    #[error("{0}")]
    Unsupported(String),
    /// A port could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The load test could not run against the system.
    #[error("load test: {0}")]
    LoadTest(#[from] crate::loadtest::LoadTestError),
    /// A chaos run could not run, or found failures.
    #[error(transparent)]
    Chaos(#[from] crate::chaos::ChaosError),
    /// A backend failed while starting a service.
    #[error("cannot start the {service} service: {source}")]
    Service {
        /// Which service.
        service: &'static str,
        /// Why.
        #[source]
        source: es_core::Error,
    },
}

/// Every backend a service may use, behind the es-core traits.
#[derive(Clone)]
pub struct Backends {
    /// The event store: every service's write side, and the outbox the relays read.
    pub store: Arc<dyn EventStore>,
    /// Durable checkpoints (the relays').
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Where the relays park events the bus can never carry (beside their checkpoints).
    pub parked: Arc<dyn ParkedEventStore>,
    /// Leases beside the store, so that of the instances of a service only one relays.
    pub leases: Arc<dyn LeaseStore>,
    /// Saga state and deadlines.
    pub sagas: Arc<dyn SagaStore>,
    /// Aggregate snapshots (in the event store's database).
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The bus events travel on.
    pub bus: Arc<dyn EventBus>,
    /// The read-model cache, when there is one.
    pub cache: Option<Arc<dyn Cache>>,
    /// Idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Prunes old inbox entries, finished sagas and expired keys (the store's tables).
    pub housekeeping: Arc<dyn es_core::Housekeeping>,
    /// Prefixed to queue (consumer) names.
    pub queue_prefix: String,
    /// One probe per dependency, for `/health`.
    pub health: Health,
    /// The customers' listings (orders written in the commit of their events).
    pub listings: crate::listing::Listings,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("store", &self.store)
            .field("leases", &self.leases)
            .field("bus", &self.bus)
            .field("cache", &self.cache)
            .field("idempotency", &self.idempotency)
            .field("health", &self.health)
            .finish()
    }
}

impl Backends {
    /// The embedded defaults: one in-memory store (events, inbox, checkpoints, sagas), one
    /// in-memory bus routing by the contract's keys, an in-memory cache and idempotency store.
    pub fn embedded() -> Self {
        let listings = crate::listing::Listings::memory();
        let mut store = MemoryEventStore::new();
        if let Some(listing) = listings.memory_projection() {
            store = store.with_inline_projection(listing);
        }
        let bus = MemoryEventBus::with_router(crate::events::router());
        let cache = MemoryCache::new();
        let probe_store: Arc<dyn EventStore> = Arc::new(store.clone());
        let health = Health::default()
            .with("eventStore", store_probe(probe_store))
            .with("eventBus", always_healthy())
            .with("cache", always_healthy());
        Backends {
            store: Arc::new(store.clone()),
            checkpoints: Arc::new(store.clone()),
            parked: Arc::new(store.clone()),
            leases: Arc::new(MemoryLeaseStore::new()),
            snapshots: Arc::new(store.clone()),
            housekeeping: Arc::new(store.clone()),
            sagas: Arc::new(store),
            bus: Arc::new(bus),
            cache: Some(Arc::new(cache)),
            idempotency: Arc::new(MemoryIdempotencyStore::new()),
            queue_prefix: String::new(),
            health,
            listings,
        }
    }

    /// The backends `settings` ask for: each URL switches its part to the real backend.
    ///
    /// PostgreSQL is connected (and migrated) before this returns, retrying with backoff and
    /// logging which URL failed and why while it cannot; RabbitMQ and Redis connect on first
    /// use and reconnect by themselves, so they are only checked by `/health`.
    pub async fn from_settings(settings: &Settings) -> Result<Self, StartError> {
        Self::from_settings_until(settings, std::future::pending()).await
    }

    /// [`from_settings`](Self::from_settings), giving up when `give_up` completes.
    pub async fn from_settings_until(
        settings: &Settings,
        give_up: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Self, StartError> {
        let mut backends = Self::embedded();
        backends.queue_prefix = settings.queue_prefix.clone();
        let real = settings.database_url.is_some()
            || settings.amqp_url.is_some()
            || settings.redis_url.is_some();
        let mut health = Health::default();
        if let Some(url) = &settings.database_url {
            let store = connect_postgres(
                url,
                &settings.database_schema,
                settings.database_max_connections,
                give_up,
            )
            .await?;
            let (store, listings) =
                crate::listing::Listings::install(store)
                    .await
                    .map_err(|source| StartError::Service {
                        service: "order",
                        source,
                    })?;
            backends.listings = listings;
            let sampled = store.clone();
            crate::telemetry::on_render("postgres-pool", move || sampled.record_pool_metrics());
            // The read models' lag, as `projections status` counts it, on every scrape.
            let admin = store.clone();
            let lag = format!("read-model-lag:{}", store.config().schema);
            crate::telemetry::on_render_async(lag, move || {
                let admin = admin.clone();
                async move {
                    match es_core::ProjectionAdmin::status(&admin).await {
                        Ok(status) => es_core::telemetry::read_model_lag(&status),
                        Err(error) => {
                            tracing::debug!(%error, "cannot count the read models' lag for /metrics")
                        }
                    }
                }
            });
            let pg: Arc<dyn EventStore> = Arc::new(store.clone());
            health = health
                .with("eventStore", store_probe(pg.clone()))
                .with_target("eventStore", redact(url))
                .with_soft(
                    "readModels",
                    crate::listing::lag_probe(store.clone(), crate::listing::MAX_LAG),
                );
            backends.idempotency = Arc::new(es_postgres::PgIdempotencyStore::new(&store));
            backends.store = pg;
            backends.checkpoints = Arc::new(store.clone());
            backends.parked = Arc::new(store.clone());
            backends.leases = Arc::new(es_postgres::PgLeaseStore::new(&store));
            backends.snapshots = Arc::new(store.clone());
            backends.housekeeping = Arc::new(store.clone());
            backends.sagas = Arc::new(store);
        } else {
            health = health.with("eventStore", store_probe(backends.store.clone()));
        }
        if let Some(url) = &settings.amqp_url {
            let bus = es_rabbitmq::AmqpEventBus::new(amqp_config(url, settings));
            let probe = bus.clone();
            health = health.with(
                "eventBus",
                Arc::new(move || {
                    let bus = probe.clone();
                    Box::pin(async move { bus.check().await.map_err(|e| e.to_string()) })
                }),
            );
            health = health.with_target("eventBus", redact(url));
            backends.bus = Arc::new(bus);
        } else {
            health = health.with("eventBus", always_healthy());
        }
        if let Some(url) = &settings.redis_url {
            let config = es_redis::RedisConfig::new(url.clone())
                .with_key_prefix(settings.redis_prefix.clone());
            let redis = es_redis::RedisConnection::lazy(config).map_err(|e| {
                StartError::Unsupported(format!("bad Redis settings ({}): {e}", redact(url)))
            })?;
            let probe = redis.clone();
            health = health.with(
                "cache",
                Arc::new(move || {
                    let redis = probe.clone();
                    Box::pin(async move { redis.ping().await.map_err(|e| e.to_string()) })
                }),
            );
            health = health.with_target("cache", redact(url));
            backends.cache = Some(Arc::new(es_redis::RedisCache::new(redis.clone())));
            backends.idempotency = Arc::new(es_redis::RedisIdempotencyStore::new(redis));
        } else if real {
            // An in-process cache would go stale beside other processes: read the store.
            backends.cache = None;
        } else {
            health = health.with("cache", always_healthy());
        }
        backends.health = health;
        Ok(backends)
    }

    /// The queue (consumer) name of `service`: `{prefix}{name}-service`.
    pub fn consumer(&self, service: ServiceKind) -> String {
        format!("{}{}-service", self.queue_prefix, service.name())
    }
}

fn always_healthy() -> HealthProbe {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

fn store_probe(store: Arc<dyn EventStore>) -> HealthProbe {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.head().await.map(|_| ()).map_err(|e| e.to_string()) })
    })
}

/// The RabbitMQ settings: the contract's exchange, every service's queue declared up front (so
/// no event waits on a consumer to start), and the contract's routing keys.
pub(crate) fn amqp_config(url: &str, settings: &Settings) -> es_rabbitmq::AmqpConfig {
    let mut topology = es_rabbitmq::Topology::new(settings.exchange.clone());
    for service in crate::service_kind::ServiceKind::ALL {
        let name = service.name();
        topology = topology.with_queue(
            format!("{}{name}-service", settings.queue_prefix),
            crate::events::bindings(service),
        );
    }
    if let Some(expires) = settings.queue_expires {
        topology = topology.with_queue_expires(expires);
    }
    es_rabbitmq::AmqpConfig::new(url.to_owned(), settings.exchange.clone())
        .with_connection_name(format!("order-processing-{}", std::process::id()))
        .with_topology(topology)
        .with_router(crate::events::router())
        // A service's internal events are relayed too; no queue binds them.
        .with_unroutable(es_rabbitmq::Unroutable::Ignore)
}

/// Connects to PostgreSQL and applies the migrations, retrying with backoff until it works
/// or `give_up` completes; a URL that can never work fails at once.
pub(crate) async fn connect_postgres(
    url: &str,
    schema: &str,
    max_connections: u32,
    give_up: impl std::future::Future<Output = ()> + Send,
) -> Result<es_postgres::PgEventStore, StartError> {
    tokio::pin!(give_up);
    let mut backoff = es_core::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(10),
    );
    loop {
        let mut config = es_postgres::PgConfig::new(schema);
        config.application_name = "order-processing".into();
        config.max_connections = max_connections.max(1);
        let attempt = async {
            let store = es_postgres::PgEventStore::connect(url, config).await?;
            store.migrate().await?;
            Ok::<_, es_core::Error>(store)
        };
        let wait = match attempt.await {
            Ok(store) => return Ok(store),
            Err(es_core::Error::InvalidInput(problem)) => {
                return Err(StartError::Unsupported(format!(
                    "bad PostgreSQL settings ({}): {problem}",
                    redact(url)
                )))
            }
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::error!(url = %redact(url), %error, retry_in = ?wait, "cannot reach PostgreSQL; retrying");
                wait
            }
        };
        tokio::select! {
            _ = &mut give_up => return Err(StartError::Unsupported("gave up connecting to PostgreSQL".into())),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a hidden secret reads as.
const HIDDEN: &str = "***";

/// Query parameters whose values are secrets, by a part of their name (lowercase):
/// `password`, `sslpassword`, `auth`, `token`, `access_token`, `secret`, `api_key` and the like.
const SECRET_PARAMETERS: [&str; 7] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "key",
    "credential",
];

/// The URL with its secrets hidden, for logs and `/health`: the password of its user info and
/// the value of every query parameter that names a secret. A string that does not parse as a
/// URL is hidden whole but for its scheme: it may still hold a password.
pub fn redact(url: &str) -> String {
    // A backend URL has an authority (`scheme://host`); anything else, such as `user:pass@host`
    // without a scheme (which parses as the scheme `user`), is not one.
    let mut parsed = match url::Url::parse(url) {
        Ok(parsed) if !parsed.cannot_be_a_base() => parsed,
        _ => {
            return match url.split_once("://") {
                Some((scheme, _))
                    if !scheme.is_empty()
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
                {
                    format!("{scheme}://{HIDDEN} (not a valid URL)")
                }
                _ => format!("{HIDDEN} (not a valid URL)"),
            }
        }
    };
    if parsed.password().is_some() {
        // Fails only for URLs that cannot have a password, and those have none to hide.
        let _ = parsed.set_password(Some(HIDDEN));
    }
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_PARAMETERS.iter().any(|part| name.contains(part))
    };
    if parsed.query_pairs().any(|(name, _)| secret(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret(&name) {
                    HIDDEN.into()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Real backends for the handlers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;
    use std::time::Duration;

    use super::Backends;
    use crate::config::Settings;

    /// Runs `test` on PostgreSQL (as `es-test-services` finds it: `DATABASE_URL`, else the
    /// standard local port, else a container) in a schema of its own, then drops that schema and its read models' generation schemas, and re-raises
    /// a panic of the test after the cleanup.
    pub(crate) async fn on_postgres<F, Fut>(test: F)
    where
        F: FnOnce(Backends) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let url = es_test_services::database_url();
        let schema = format!(
            "op_unit_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let settings = Settings {
            database_url: Some(url.clone()),
            database_schema: schema.clone(),
            database_max_connections: 4,
            ..Settings::default()
        };
        let give_up = tokio::time::sleep(Duration::from_secs(45));
        let backends = Backends::from_settings_until(&settings, give_up)
            .await
            .unwrap_or_else(|e| panic!("{e}: PostgreSQL at {url} does not answer"));
        let outcome = tokio::spawn(test(backends)).await;
        let pool = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to drop the schema");
        let generations: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
        )
        .bind(format!("{schema}_rm_"))
        .fetch_all(&pool)
        .await
        .expect("list the read models' schemas");
        for name in generations
            .iter()
            .map(String::as_str)
            .chain([schema.as_str()])
        {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&pool)
                .await
                .expect("drop the schema");
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_logged_urls() {
        assert_eq!(
            redact("postgres://postgres:secret@127.0.0.1:5432/db"),
            "postgres://postgres:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn secrets_in_query_strings_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact("postgres://u:secret@h/db?password=secret&sslmode=require"),
            "postgres://u:***@h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact("amqp://h:5672/%2f?auth=secret&heartbeat=10"),
            "amqp://h:5672/%2f?auth=***&heartbeat=10"
        );
        assert_eq!(
            redact("postgres://h/db?sslmode=require&PassWord=secret&application_name=op"),
            "postgres://h/db?sslmode=require&PassWord=***&application_name=op"
        );
        assert_eq!(redact("redis://h?token=abc%20def"), "redis://h?token=***");
    }

    #[test]
    fn an_unparseable_url_is_hidden_whole_without_a_panic() {
        for url in [
            "postgres://u:secret@[bad host/db",
            "postgres://u:secret@h:99999/db",
            "u:secret@h/db?password=secret",
            "",
            "://secret",
        ] {
            let shown = redact(url);
            assert!(!shown.contains("secret"), "{url} shown as {shown}");
            assert!(shown.contains("not a valid URL"), "{url} shown as {shown}");
        }
        assert_eq!(
            redact("postgres://u:secret@h:99999/db"),
            "postgres://*** (not a valid URL)"
        );
    }
}
