//! The one place that picks the backends: in memory, PostgreSQL, RabbitMQ, Redis.

use std::sync::Arc;

use es_core::memory::{MemoryCache, MemoryEventBus, MemoryEventStore, MemoryIdempotencyStore};
use es_core::{Cache, CheckpointStore, EventBus, EventStore, IdempotencyStore, SagaStore};

use crate::config::Settings;
use crate::http::{Health, HealthProbe};

/// Why the system could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A single service cannot hear the others without a broker.
    #[error("the {0} service on its own needs a message broker: pass --amqp-url (or set AMQP_URL); to run without one, use `order-processing all`")]
    NeedsBroker(&'static str),
    /// A backend URL was given but this build cannot use it yet.
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
    /// Saga state and deadlines.
    pub sagas: Arc<dyn SagaStore>,
    /// The bus events travel on.
    pub bus: Arc<dyn EventBus>,
    /// The read-model cache, when there is one.
    pub cache: Option<Arc<dyn Cache>>,
    /// Idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Prefixed to queue (consumer) names.
    pub queue_prefix: String,
    /// One probe per dependency, for `/health`.
    pub health: Health,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("store", &self.store)
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
        let store = MemoryEventStore::new();
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
            sagas: Arc::new(store),
            bus: Arc::new(bus),
            cache: Some(Arc::new(cache)),
            idempotency: Arc::new(MemoryIdempotencyStore::new()),
            queue_prefix: String::new(),
            health,
        }
    }

    /// The backends `settings` ask for: each URL switches its part to the real backend.
    pub async fn from_settings(settings: &Settings) -> Result<Self, StartError> {
        let mut backends = Self::embedded();
        backends.queue_prefix = settings.queue_prefix.clone();
        let unsupported = [
            ("--database-url", settings.database_url.is_some()),
            ("--amqp-url", settings.amqp_url.is_some()),
            ("--redis-url", settings.redis_url.is_some()),
        ];
        if let Some((flag, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(StartError::Unsupported(format!(
                "{flag} is not supported by this build yet; run without it for the embedded backends"
            )));
        }
        Ok(backends)
    }

    /// The queue (consumer) name of `service`: `{prefix}{service}-service`.
    pub fn consumer(&self, service: &str) -> String {
        format!("{}{service}-service", self.queue_prefix)
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
