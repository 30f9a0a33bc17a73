//! A running service: its router and its background work (consumers, relays, projections,
//! deadline loops), started together and stopped in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use es_core::bus::ConsumerHandle;
use es_core::projection::ProjectionHandle;
use es_core::{EventBus, MessageHandler, Projection, ProjectionRunner, Relay, StreamFilter};
use es_postgres::{PgProjection, PgReadModelRunner};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backends::{Backends, StartError};
use crate::config::Settings;
use crate::listing::Listings;
use tokio_util::sync::CancellationToken;

/// The five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Orders and the order saga (5001).
    Order,
    /// Stock and reservations (5002).
    Inventory,
    /// The simulated payment gateway (5003).
    Payment,
    /// Customer notifications (5004).
    Notification,
    /// Daily figures and recent events (5005).
    Analytics,
}

impl ServiceKind {
    /// All five, in start order.
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Order,
        ServiceKind::Inventory,
        ServiceKind::Payment,
        ServiceKind::Notification,
        ServiceKind::Analytics,
    ];

    /// The service's short name (`order`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Order => "order",
            ServiceKind::Inventory => "inventory",
            ServiceKind::Payment => "payment",
            ServiceKind::Notification => "notification",
            ServiceKind::Analytics => "analytics",
        }
    }

    /// The port `settings` give it.
    pub fn port(self, settings: &Settings) -> u16 {
        match self {
            ServiceKind::Order => settings.order_port,
            ServiceKind::Inventory => settings.inventory_port,
            ServiceKind::Payment => settings.payment_port,
            ServiceKind::Notification => settings.notification_port,
            ServiceKind::Analytics => settings.analytics_port,
        }
    }
}

/// Most messages a batched consumer (payment, inventory, the order saga) commits in one
/// transaction. With the default prefetch of 32, each instance runs two batches at a time;
/// at low load a batch is the one message there is.
pub(crate) const CONSUMER_BATCH: u16 = 16;

/// How long a relay's lease lasts unrenewed: a standby instance takes over from one that died
/// within about this (at once from one that stopped), and renewals go every third of it.
const RELAY_LEASE_TTL: Duration = Duration::from_secs(5);

/// Background work of one service.
#[derive(Debug, Default)]
pub(crate) struct Background {
    stop: CancellationToken,
    consumers: Vec<ConsumerHandle>,
    projections: Vec<ProjectionHandle>,
    tasks: Vec<JoinHandle<()>>,
    relays: Vec<JoinHandle<()>>,
}

impl Background {
    /// Subscribes `handler` as `consumer` to `routing_keys`, one message at a time.
    pub(crate) async fn consume(
        &mut self,
        bus: &Arc<dyn EventBus>,
        consumer: String,
        routing_keys: Vec<String>,
        handler: Arc<dyn MessageHandler>,
    ) -> es_core::Result<()> {
        self.consume_batched(bus, consumer, routing_keys, handler, 1)
            .await
    }

    /// Subscribes `handler` as `consumer` to `routing_keys`, handing it up to `batch`
    /// messages at once ([`MessageHandler::handle_batch`]): for handlers that commit a batch
    /// in one unit of work.
    pub(crate) async fn consume_batched(
        &mut self,
        bus: &Arc<dyn EventBus>,
        consumer: String,
        routing_keys: Vec<String>,
        handler: Arc<dyn MessageHandler>,
        batch: u16,
    ) -> es_core::Result<()> {
        let subscription = es_core::Consumer::new(consumer.clone(), routing_keys).with_batch(batch);
        let handler = crate::events::Traced::new(consumer.clone(), handler);
        match bus.subscribe(subscription.clone(), handler.clone()).await {
            Ok(handle) => self.consumers.push(handle),
            // The broker is away: start anyway (`/health` says 503 meanwhile) and subscribe
            // once it answers. Its queue is declared with the topology, so nothing sent to the
            // service meanwhile is lost.
            Err(error) if error.is_transient() => {
                tracing::warn!(%consumer, %error, "cannot subscribe yet; retrying in the background");
                self.consumers
                    .push(subscribe_later(bus.clone(), subscription, handler));
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    /// Relays the streams of `category` from the store to the bus, while this instance holds
    /// the relay's lease (the other instances of the service stand by).
    pub(crate) fn relay(&mut self, backends: &Backends, category: &str) {
        let relay = Relay::builder(format!("relay-{category}"))
            .store(backends.store.clone())
            .bus(backends.bus.clone())
            .checkpoints(backends.checkpoints.clone())
            .filter(StreamFilter::category(category))
            .parked_events(backends.parked.clone())
            .lease(backends.leases.clone(), RELAY_LEASE_TTL)
            .build();
        let stop = self.stop.clone().cancelled_owned();
        self.relays
            .push(tokio::spawn(async move { relay.run(stop).await }));
    }

    /// Runs a projection with its checkpoint in the backends' checkpoint store: durable on
    /// PostgreSQL, so a restart reads only the events after it. Only for projections that keep
    /// no state in the process (a cache marker): a state folded in memory goes with the
    /// process, and would come back without what its checkpoint says it has.
    pub(crate) fn project(&mut self, backends: &Backends, projection: Arc<dyn Projection>) {
        let runner = ProjectionRunner::new(backends.store.clone(), backends.checkpoints.clone());
        self.projections.push(runner.spawn(projection));
    }

    /// Runs a read model where the backends keep it: on PostgreSQL `tables`, kept by a
    /// versioned runner (batches whose rows and checkpoint commit together, rebuilt blue/green
    /// by `order-processing projections rebuild`); on the embedded backends `memory`, folded in
    /// the process. On PostgreSQL one step runs before this returns, so the tables (the views
    /// readers query) exist before the service answers.
    pub(crate) async fn read_model(
        &mut self,
        backends: &Backends,
        tables: Arc<dyn PgProjection>,
        memory: Arc<dyn Projection>,
    ) -> es_core::Result<()> {
        match &backends.listings {
            Listings::Postgres(store) => {
                let runner = PgReadModelRunner::new(store.clone());
                runner.step(&*tables).await?;
                self.spawn(move |stop| async move { runner.run(tables, stop).await });
            }
            Listings::Memory(_) => {
                // State and checkpoint both in the process: a service started again on the
                // same backends folds its model from the start of the log.
                let runner = ProjectionRunner::new(
                    backends.store.clone(),
                    Arc::new(es_core::memory::MemoryEventStore::new()),
                );
                self.projections.push(runner.spawn(memory));
            }
        }
        Ok(())
    }

    /// Runs a task until the service stops; it gets the stop signal.
    pub(crate) fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = Box::pin(self.stop.clone().cancelled_owned());
        self.tasks.push(tokio::spawn(task(stop)));
    }

    /// Stops consumers (each finishes the message in hand), then loops and projections, then
    /// the relays, so what the last handlers appended is still published.
    async fn stop(self) {
        for consumer in self.consumers {
            consumer.stop().await;
        }
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        for projection in self.projections {
            projection.stop().await;
        }
        for relay in self.relays {
            let _ = relay.await;
        }
    }
}

/// Subscribes in the background, retrying with backoff until the bus answers. The handle stops
/// the retries, or the consumer once it runs.
fn subscribe_later(
    bus: Arc<dyn EventBus>,
    subscription: es_core::Consumer,
    handler: Arc<dyn MessageHandler>,
) -> ConsumerHandle {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let consumer = subscription.consumer.clone();
        let mut backoff = es_core::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let handle = loop {
            let wait = backoff.next_delay();
            let subscribed = tokio::select! {
                _ = stopped.cancelled() => return,
                subscribed = async {
                    tokio::time::sleep(wait).await;
                    bus.subscribe(subscription.clone(), handler.clone()).await
                } => subscribed,
            };
            match subscribed {
                Ok(handle) => break handle,
                Err(error) => {
                    tracing::warn!(%consumer, %error, "cannot subscribe yet; retrying");
                }
            }
        };
        tracing::info!(%consumer, "subscribed");
        stopped.cancelled().await;
        handle.stop().await;
    });
    ConsumerHandle::new(stop, task)
}

/// One started service: serve its router, then stop it.
#[derive(Debug)]
pub struct Service {
    kind: ServiceKind,
    router: Router,
    background: Background,
}

impl Service {
    /// Starts `kind` on `backends`: consumers, relays, read models, and its router.
    pub async fn start(
        kind: ServiceKind,
        backends: &Backends,
        settings: &Settings,
    ) -> Result<Service, StartError> {
        let mut background = Background::default();
        let router = match kind {
            ServiceKind::Order => crate::order::start(backends, settings, &mut background).await,
            ServiceKind::Inventory => {
                crate::inventory::start(backends, settings, &mut background).await
            }
            ServiceKind::Payment => {
                crate::payment::start(backends, settings, &mut background).await
            }
            ServiceKind::Notification => {
                crate::notification::start(backends, settings, &mut background).await
            }
            ServiceKind::Analytics => {
                crate::analytics::start(backends, settings, &mut background).await
            }
        }
        .map_err(|source| StartError::Service {
            service: kind.name(),
            source,
        })?;
        Ok(Service {
            kind,
            router,
            background,
        })
    }

    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// Its HTTP routes (for `tower::ServiceExt::oneshot` in tests).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes: stops accepting, finishes requests in
    /// flight, then stops the background work.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(service = self.kind.name(), %address, "listening");
        let limits = crate::http::ServeLimits::default();
        let served = crate::http::serve(listener, self.router, shutdown, limits).await;
        self.background.stop().await;
        tracing::info!(service = self.kind.name(), "stopped");
        served
    }

    /// Stops the background work without serving (for a service that never ran).
    pub async fn stop(self) {
        self.background.stop().await;
    }
}

/// Binds every service's port on `settings.host`.
async fn bind(kinds: &[ServiceKind], settings: &Settings) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::new();
    for &kind in kinds {
        let address = format!("{}:{}", settings.host, kind.port(settings));
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Starts `kinds` on `backends`, each on its port of `settings`, and serves until `shutdown`.
pub async fn run_services(
    kinds: &[ServiceKind],
    backends: &Backends,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listeners = bind(kinds, settings).await?;
    serve(kinds, listeners, backends, settings, shutdown).await
}

async fn serve(
    kinds: &[ServiceKind],
    listeners: Vec<TcpListener>,
    backends: &Backends,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut services = Vec::new();
    for &kind in kinds {
        services.push(Service::start(kind, backends, settings).await?);
    }
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    // One pruning loop per process; running it in several processes at once is harmless.
    let (housekeeping, retention, interval, wait) = (
        backends.housekeeping.clone(),
        settings.retention,
        settings.housekeeping_interval,
        stop.clone().cancelled_owned(),
    );
    running.push(tokio::spawn(async move {
        es_core::housekeeping::prune_every(&*housekeeping, retention, interval, wait).await
    }));
    for (service, listener) in services.into_iter().zip(listeners) {
        let name = service.kind().name();
        let wait = stop.clone().cancelled_owned();
        running.push(tokio::spawn(async move {
            if let Err(error) = service.run(listener, wait).await {
                tracing::error!(service = name, %error, "server failed");
            }
        }));
    }
    shutdown.await;
    stop.cancel();
    for task in running {
        let _ = task.await;
    }
    Ok(())
}

/// What a service answers while its backends are still out of reach: `/health` 503 naming
/// what it waits for, everything else 503 problem+json.
fn starting_router(waiting_for: String) -> Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let health = move || {
        let waiting_for = waiting_for.clone();
        async move {
            let body = serde_json::json!({
                "status": "Unhealthy",
                "entries": {"eventStore": {"status": "Unhealthy", "description": waiting_for}},
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    };
    Router::new()
        .route("/health", axum::routing::get(health))
        .fallback(|| async {
            crate::http::AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is starting: its backends cannot be reached yet",
            )
        })
}

/// A second handle on a listening socket, so a stand-in server can answer on it until the
/// real one takes over.
fn share(listener: TcpListener) -> std::io::Result<(TcpListener, TcpListener)> {
    let socket = listener.into_std()?;
    let clone = socket.try_clone()?;
    Ok((
        TcpListener::from_std(socket)?,
        TcpListener::from_std(clone)?,
    ))
}

/// Runs what the command line asks for until `shutdown` completes.
///
/// The ports are bound first; while PostgreSQL cannot be reached each service answers 503
/// (its `/health` says why) and the connection is retried with backoff, never a crash.
pub async fn run(
    cli: crate::config::Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use crate::config::Command;
    let kinds: Vec<ServiceKind> = match cli.command.unwrap_or(Command::All) {
        Command::All => ServiceKind::ALL.to_vec(),
        Command::Order => vec![ServiceKind::Order],
        Command::Inventory => vec![ServiceKind::Inventory],
        Command::Payment => vec![ServiceKind::Payment],
        Command::Notification => vec![ServiceKind::Notification],
        Command::Analytics => vec![ServiceKind::Analytics],
        Command::Loadtest(args) => {
            crate::loadtest::main(&args, &cli.settings).await?;
            return Ok(());
        }
        Command::Dlq(command) => {
            print!("{}", crate::dlq::run(&command, &cli.settings).await?);
            return Ok(());
        }
        Command::Projections(command) => {
            print!(
                "{}",
                crate::projections::run(&command, &cli.settings).await?
            );
            return Ok(());
        }
        Command::Chaos(args) => {
            let report = crate::chaos::run(&args, &cli.settings).await?;
            eprint!("{}", report.render());
            println!("{}", report.line());
            if !report.is_clean() {
                return Err(crate::chaos::ChaosError::Broken(report.line()).into());
            }
            return Ok(());
        }
    };
    if kinds.len() == 1 && cli.settings.amqp_url.is_none() {
        return Err(StartError::NeedsBroker(kinds[0].name()));
    }
    let settings = cli.settings;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let mut listeners = Vec::new();
    let ready = CancellationToken::new();
    let mut stand_ins = Vec::new();
    let waiting_for = match &settings.database_url {
        Some(url) => format!(
            "connecting to PostgreSQL at {}",
            crate::backends::redact(url)
        ),
        None => "starting".to_owned(),
    };
    let bound = bind(&kinds, &settings).await?;
    // Before the log starts: where each service answers, which backends hold the data.
    let addresses: Vec<_> = kinds
        .iter()
        .zip(&bound)
        .filter_map(|(&kind, listener)| Some((kind, listener.local_addr().ok()?)))
        .collect();
    crate::greeting::print(&addresses, &settings);
    for listener in bound {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (listener, stand_in) =
            share(listener).map_err(|source| StartError::Bind { address, source })?;
        listeners.push(listener);
        let until = ready.clone().cancelled_owned();
        let router = starting_router(waiting_for.clone());
        stand_ins.push(tokio::spawn(async move {
            let _ = axum::serve(stand_in, router)
                .with_graceful_shutdown(until)
                .await;
        }));
    }
    let connected = Backends::from_settings_until(&settings, stop.clone().cancelled_owned()).await;
    ready.cancel();
    for stand_in in stand_ins {
        let _ = stand_in.await;
    }
    let backends = match connected {
        Ok(backends) => backends,
        Err(_) if stop.is_cancelled() => return Ok(()),
        Err(error) => return Err(error),
    };
    // Name in the log every backend that goes away later, and when it is back.
    tokio::spawn(backends.health.clone().watch(
        std::time::Duration::from_secs(5),
        stop.clone().cancelled_owned(),
    ));
    serve(
        &kinds,
        listeners,
        &backends,
        &settings,
        stop.clone().cancelled_owned(),
    )
    .await
}
