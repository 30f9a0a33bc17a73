//! A service's background work: consumers, relays, projections and read models, deadline
//! loops. Started by the service as it starts, stopped in order when it stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use es_core::bus::ConsumerHandle;
use es_core::projection::ProjectionHandle;
use es_core::{EventBus, MessageHandler, Projection, ProjectionRunner, Relay, StreamFilter};
use es_postgres::{PgProjection, PgReadModelRunner};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends::Backends;
use crate::listing::Listings;

/// Most messages a consumer takes at once; every service's consumer commits a batch in one
/// unit of work. With the default prefetch of 32, each instance runs two batches at a time; at
/// low load a batch is the one message there is.
pub(crate) const CONSUMER_BATCH: u16 = 16;

/// How long a read model on PostgreSQL lets appends gather after one wakes it: a few
/// milliseconds of freshness for batches instead of a transaction per commit under a steady
/// load (the order listing a customer reads right after ordering is written inline, so it is
/// never behind by this).
const READ_MODEL_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// How often a relay or a projection run by [`Background::project`] saves its checkpoint while
/// events flow: a write per tenth of a second instead of one per batch (under a steady load a
/// batch is an event or two: the relays and the order cache's marks wrote about eight
/// checkpoints an order). After a crash, or a relay's lost lease, up to that much is published
/// or marked again; the consumers' inboxes drop the repeats, and a mark changes nothing twice.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

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
            .checkpoint_interval(CHECKPOINT_INTERVAL)
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
        let runner = ProjectionRunner::new(backends.store.clone(), backends.checkpoints.clone())
            .with_checkpoint_interval(CHECKPOINT_INTERVAL);
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
                let runner = PgReadModelRunner::new(store.clone()).with_linger(READ_MODEL_LINGER);
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
    pub(crate) async fn stop(self) {
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
