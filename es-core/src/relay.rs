//! The outbox relay: the event log is the outbox.
//!
//! Nothing publishes straight after an append. The [`Relay`] tails the store's gap-free global
//! log from its checkpoint, publishes each batch to the bus, and moves the checkpoint only after
//! the bus confirmed the batch. Killed at any point, it loses nothing: it starts again from the
//! checkpoint, and at worst publishes the last batch twice — consumers drop the duplicates with
//! their inbox.
//!
//! Every instance of a service may run the same relay: [`RelayBuilder::lease`] makes only the
//! holder of a [`LeaseStore`] lease publish, and a standby take over when the holder stops.
//!
//! Two kinds of failure are told apart:
//!
//! - **An event the bus can never carry** (the bus answers with an error for which
//!   [`Error::is_bad_input`] holds: a payload its wire format cannot encode, a name too long for
//!   it): the relay publishes the batch event by event to find it, parks it in a
//!   [`ParkedEventStore`] (logged at error level, listed by [`Relay::parked`]) and goes on. One
//!   poison event never holds back the events after it.
//! - **A bus that is down or refuses** (anything else): the relay drops its subscription to the
//!   log, so that no query, snapshot or pool connection stays open while it waits, retries the
//!   batch with exponential backoff and jitter, and once the bus took it, subscribes again from
//!   the checkpoint.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::bus::EventBus;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::lease::{unique_holder, LeaseStore};
use crate::memory::MemoryEventStore;
use crate::store::{CheckpointStore, EventStore};
use crate::stream::{Position, StreamFilter, StreamId};
use crate::telemetry::RelayMetrics;

/// An event a relay could never publish, set aside so that the rest of the log goes on.
///
/// The event itself stays in the store untouched; this record says where it is and why the
/// bus refused it, for an operator to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The relay (its checkpoint name) that parked it.
    pub relay: String,
    /// The event's id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its type.
    pub event_type: String,
    /// Its place in the global log.
    pub position: Position,
    /// What the bus said.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

impl ParkedEvent {
    /// The record of `relay` parking `event` because of `error`, now.
    pub fn new(relay: impl Into<String>, event: &RecordedEvent, error: impl fmt::Display) -> Self {
        ParkedEvent {
            relay: relay.into(),
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            position: event.position,
            error: error.to_string(),
            parked_at: Utc::now(),
        }
    }
}

/// Where relays park the events they can never publish, for an operator to see.
///
/// Backends: [`MemoryEventStore`] here, `PgEventStore` in `es-postgres` (the table
/// `parked_events`).
#[async_trait]
pub trait ParkedEventStore: Send + Sync + fmt::Debug {
    /// Records `parked`. Parking the same event for the same relay again replaces its error and
    /// time: a relay that restarts before moving its checkpoint parks it once more.
    async fn park(&self, parked: ParkedEvent) -> Result<()>;

    /// The events `relay` parked, in log order, at most `limit`.
    async fn parked(&self, relay: &str, limit: usize) -> Result<Vec<ParkedEvent>>;
}

/// Publishes committed events from an [`EventStore`] to an [`EventBus`], at least once.
///
/// The store's log is the outbox: the relay tails it from a checkpoint, publishes a batch, and
/// saves the checkpoint only once the bus confirmed it. Run one per service with
/// [`run`](Relay::run) (on every instance, under a [`lease`](RelayBuilder::lease)):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::memory::{MemoryEventBus, MemoryEventStore, MemoryLeaseStore};
/// use es_core::{EventStore, ExpectedVersion, NewEvent, Relay, StreamFilter, StreamId};
///
/// let store = MemoryEventStore::new(); // es_postgres::PgEventStore: also checkpoints, parked events, leases
/// let bus = MemoryEventBus::new(); // es_rabbitmq::AmqpEventBus
/// let relay = Relay::builder("order-relay")
///     .store(store.clone())
///     .bus(bus.clone())
///     .checkpoints(store.clone())
///     .filter(StreamFilter::category("order"))
///     .parked_events(store.clone())
///     .lease(MemoryLeaseStore::new(), Duration::from_secs(5))
///     .build();
///
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn({
///     let relay = relay.clone();
///     async move { relay.run(async { let _ = stopped.await; }).await }
/// });
/// let order = StreamId::new("order-1")?;
/// let head = store.append(&order, ExpectedVersion::NoStream, vec![NewEvent::raw("OrderPlaced", "{}")]).await?;
/// while relay.checkpoint().await? < head.positions[0] {
///     tokio::time::sleep(Duration::from_millis(5)).await; // published and confirmed
/// }
/// let _ = stop.send(());
/// running.await.expect("the relay ran");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    name: String,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    filter: StreamFilter,
    batch_size: usize,
    checkpoint_interval: Duration,
    lease: Option<Lease>,
    parked: Arc<dyn ParkedEventStore>,
    metrics: RelayMetrics,
}

/// The lease a relay holds while it runs, and who it is to the lease store.
#[derive(Clone, Debug)]
struct Lease {
    store: Arc<dyn LeaseStore>,
    ttl: Duration,
    holder: String,
}

impl Lease {
    /// How often the holder renews, and a standby tries to acquire.
    fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(1))
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Relay");
        debug
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("batch_size", &self.batch_size)
            .field("checkpoint_interval", &self.checkpoint_interval);
        if let Some(lease) = &self.lease {
            debug
                .field("lease_ttl", &lease.ttl)
                .field("lease_holder", &lease.holder);
        }
        debug.finish()
    }
}

/// Why following the log stopped.
enum Stopped {
    /// The shutdown signal completed.
    Shutdown,
    /// The store ended the subscription.
    LogEnded,
}

/// A required part of a [`RelayBuilder`] that was not given yet. [`RelayBuilder::build`] exists
/// only once the store, the bus and the checkpoint store are all given, so a relay missing one
/// does not compile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unset;

/// Builds a [`Relay`] (see [`Relay::builder`]): the log it reads ([`store`](Self::store)), the
/// bus it publishes to ([`bus`](Self::bus)) and where it keeps its checkpoint
/// ([`checkpoints`](Self::checkpoints)) are required, in any order; the rest is optional.
///
/// Every part is taken by value: a backend is a cheap handle, so pass `store.clone()`; an
/// `Arc<dyn …>` works as well.
///
/// A relay without a checkpoint store (or a store, or a bus) does not compile:
///
/// ```compile_fail
/// # use es_core::memory::{MemoryEventBus, MemoryEventStore};
/// # use es_core::Relay;
/// let store = MemoryEventStore::new();
/// let relay = Relay::builder("order-relay").store(store).bus(MemoryEventBus::new()).build();
/// ```
#[derive(Debug)]
#[must_use = "a relay builder does nothing until `build` is called"]
pub struct RelayBuilder<S = Unset, B = Unset, C = Unset> {
    name: String,
    store: S,
    bus: B,
    checkpoints: C,
    filter: StreamFilter,
    batch_size: usize,
    checkpoint_interval: Duration,
    lease: Option<Lease>,
    parked: Option<Arc<dyn ParkedEventStore>>,
}

impl<S, B, C> RelayBuilder<S, B, C> {
    /// The same builder with its required parts mapped by `parts` (the typestate step).
    fn map_parts<S2, B2, C2>(
        self,
        parts: impl FnOnce(S, B, C) -> (S2, B2, C2),
    ) -> RelayBuilder<S2, B2, C2> {
        let (store, bus, checkpoints) = parts(self.store, self.bus, self.checkpoints);
        RelayBuilder {
            name: self.name,
            store,
            bus,
            checkpoints,
            filter: self.filter,
            batch_size: self.batch_size,
            checkpoint_interval: self.checkpoint_interval,
            lease: self.lease,
            parked: self.parked,
        }
    }

    /// Relays only the streams `filter` lets through (e.g. one service's own categories); by
    /// default every stream.
    pub fn filter(mut self, filter: StreamFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Publishes at most `batch_size` events per confirmed batch (at least 1; 500 by default).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// While following the log ([`Relay::run`]), saves the checkpoint at most once per
    /// `interval` (and when stopped) instead of after every confirmed batch: under a steady
    /// trickle of events that is one write per interval where it was one per event or two.
    /// A relay that dies, or loses its lease, then publishes again up to `interval` of events
    /// that went out already, which the consumers' inboxes drop (as they drop the last batch
    /// of a relay that died before saving). Zero, the default, saves after every batch.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// Parks the events the bus can never carry in `parked` (without it they are kept in
    /// memory, and so forgotten at a restart, beside the error the relay logs for each).
    /// Give the relay a durable store, typically the one that keeps its checkpoint.
    pub fn parked_events(mut self, parked: impl ParkedEventStore + 'static) -> Self {
        self.parked = Some(crate::shared::parked_event_store(parked));
        self
    }

    /// Runs only while this relay holds the lease named after it (its checkpoint name) in
    /// `leases`, so that of the instances running the same relay only one publishes.
    ///
    /// [`Relay::run`] then takes the lease for `ttl` and renews it every `ttl / 3`. When a
    /// renewal fails, answers no, or does not answer before the lease would run out, it stops
    /// publishing at once and goes back to trying to acquire every `ttl / 3`; after each
    /// acquisition it reloads the checkpoint, which the previous holder may have moved. On
    /// shutdown it releases the lease, so a standby takes over at once; a holder that dies
    /// without releasing is replaced within about `ttl * 4 / 3`.
    ///
    /// A batch in flight when the lease is lost may still reach the bus, and two holders may
    /// briefly overlap after a stall: publishing stays at least once, and the consumers'
    /// inboxes drop the duplicates. Each clone of a relay is a holder of its own.
    /// [`Relay::relay_available`] does not take the lease.
    pub fn lease(mut self, leases: impl LeaseStore + 'static, ttl: Duration) -> Self {
        self.lease = Some(Lease {
            store: crate::shared::lease_store(leases),
            ttl,
            holder: unique_holder(),
        });
        self
    }
}

impl<B, C> RelayBuilder<Unset, B, C> {
    /// Reads the events to publish from `store`'s global log.
    pub fn store(
        self,
        store: impl EventStore + 'static,
    ) -> RelayBuilder<Arc<dyn EventStore>, B, C> {
        let store = crate::shared::event_store(store);
        self.map_parts(|Unset, bus, checkpoints| (store, bus, checkpoints))
    }
}

impl<S, C> RelayBuilder<S, Unset, C> {
    /// Publishes to `bus`.
    pub fn bus(self, bus: impl EventBus + 'static) -> RelayBuilder<S, Arc<dyn EventBus>, C> {
        let bus = crate::shared::event_bus(bus);
        self.map_parts(|store, Unset, checkpoints| (store, bus, checkpoints))
    }
}

impl<S, B> RelayBuilder<S, B, Unset> {
    /// Keeps the checkpoint (how far the bus confirmed the log) in `checkpoints`, under the
    /// relay's name.
    pub fn checkpoints(
        self,
        checkpoints: impl CheckpointStore + 'static,
    ) -> RelayBuilder<S, B, Arc<dyn CheckpointStore>> {
        let checkpoints = crate::shared::checkpoint_store(checkpoints);
        self.map_parts(|store, bus, Unset| (store, bus, checkpoints))
    }
}

impl RelayBuilder<Arc<dyn EventStore>, Arc<dyn EventBus>, Arc<dyn CheckpointStore>> {
    /// The relay.
    pub fn build(self) -> Relay {
        Relay {
            metrics: RelayMetrics::new(&self.name),
            name: self.name,
            store: self.store,
            bus: self.bus,
            checkpoints: self.checkpoints,
            filter: self.filter,
            batch_size: self.batch_size,
            checkpoint_interval: self.checkpoint_interval,
            lease: self.lease,
            parked: self
                .parked
                .unwrap_or_else(|| Arc::new(MemoryEventStore::new())),
        }
    }
}

impl Relay {
    /// Starts building a relay whose checkpoint is saved under `name`:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use es_core::memory::{MemoryEventBus, MemoryEventStore, MemoryLeaseStore};
    /// # use es_core::{Relay, StreamFilter};
    /// let store = MemoryEventStore::new();
    /// let relay = Relay::builder("order-relay")
    ///     .store(store.clone())
    ///     .bus(MemoryEventBus::new())
    ///     .checkpoints(store.clone())
    ///     .filter(StreamFilter::category("order"))
    ///     .lease(MemoryLeaseStore::new(), Duration::from_secs(5))
    ///     .build();
    /// assert_eq!(relay.name(), "order-relay");
    /// ```
    pub fn builder(name: impl Into<String>) -> RelayBuilder {
        RelayBuilder {
            name: name.into(),
            store: Unset,
            bus: Unset,
            checkpoints: Unset,
            filter: StreamFilter::All,
            batch_size: 500,
            checkpoint_interval: Duration::ZERO,
            lease: None,
            parked: None,
        }
    }

    /// The events this relay parked (see [`ParkedEventStore`]), in log order, at most `limit`.
    pub async fn parked(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.parked.parked(&self.name, limit).await
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The saved checkpoint.
    pub async fn checkpoint(&self) -> Result<Position> {
        Ok(self.checkpoints.load(&self.name).await?.unwrap_or_default())
    }

    /// Relays everything readable now, batch by batch; returns how many events it published
    /// or parked. An event the bus can never carry is parked; any other failure of the bus is
    /// returned (what was published so far stays published, from the saved checkpoint on it
    /// goes out again next time).
    pub async fn relay_available(&self) -> Result<usize> {
        let mut position = self.checkpoint().await?;
        let mut relayed = 0;
        loop {
            let mut batch = self
                .store
                .read_all(&self.filter, position, self.batch_size)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(relayed);
            };
            let last = last.position;
            let count = batch.len();
            self.deliver(&mut batch).await?;
            self.checkpoints.save(&self.name, last).await?;
            relayed += count;
            position = last;
        }
    }

    /// Publishes `batch`, parking the events the bus can never carry. `Ok` once every event
    /// went out or was parked. On an error (of the bus, or of the parking store), `batch` keeps
    /// the events from the one that failed on, for the caller to deliver again later.
    async fn deliver(&self, batch: &mut Vec<RecordedEvent>) -> Result<()> {
        let error = match self.bus.publish(batch).await {
            Ok(()) => {
                if let Some(last) = batch.last() {
                    self.metrics.published(batch.len(), last.recorded_at);
                }
                batch.clear();
                return Ok(());
            }
            Err(error) => error,
        };
        if !error.is_bad_input() {
            return Err(error);
        }
        // Some event of the batch can never go out: find it (or them) one by one. Rare, so
        // the extra round trips do not matter.
        tracing::warn!(relay = %self.name, %error, events = batch.len(), "the bus refused an event of the batch; publishing it event by event");
        let mut done = 0usize;
        let mut outcome = Ok(());
        for event in batch.iter() {
            match self.bus.publish(std::slice::from_ref(event)).await {
                Ok(()) => done += 1,
                Err(error) if error.is_bad_input() => {
                    if let Err(parking) = self.park(event, &error).await {
                        outcome = Err(parking);
                        break;
                    }
                    done += 1;
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        if let Some(last) = done.checked_sub(1).map(|i| &batch[i]) {
            self.metrics.published(done, last.recorded_at);
        }
        batch.drain(..done);
        outcome
    }

    /// Sets `event` aside for good: recorded in the parking store, logged at error level.
    async fn park(&self, event: &RecordedEvent, error: &Error) -> Result<()> {
        self.parked
            .park(ParkedEvent::new(&self.name, event, error))
            .await?;
        tracing::error!(
            relay = %self.name,
            event_id = %event.event_id,
            stream = %event.stream_id,
            event_type = %event.event_type,
            position = ?event.position,
            %error,
            "the bus can never carry this event; parked it and went on"
        );
        Ok(())
    }

    /// Relays until `shutdown` completes: follows the log live, publishes what is ready as one
    /// batch, retries a failed publish or checkpoint with backoff, never skips an event.
    ///
    /// With a lease ([`RelayBuilder::lease`]), it does so only while it holds the
    /// lease, and releases it on shutdown.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        match &self.lease {
            None => {
                self.follow(shutdown).await;
            }
            Some(lease) => self.run_leased(lease, shutdown).await,
        }
    }

    /// Takes the lease, follows the log while it holds it, and starts over when it loses it.
    async fn run_leased<S>(&self, lease: &Lease, mut shutdown: Pin<&mut S>)
    where
        S: Future<Output = ()> + Send,
    {
        let period = lease.period();
        // Whether the store may think this relay holds the lease (then release it on the way
        // out): after a `true`, or after an error that may hide one.
        let mut maybe_held = false;
        'acquire: loop {
            let asked = Instant::now();
            let acquired = tokio::select! {
                _ = shutdown.as_mut() => break 'acquire,
                acquired = lease.store.try_acquire(&self.name, &lease.holder, lease.ttl) => acquired,
            };
            let valid_until = match acquired {
                // An answer that took the whole TTL to come is worth nothing: ask again.
                Ok(true) if asked + lease.ttl <= Instant::now() => {
                    maybe_held = true;
                    continue 'acquire;
                }
                Ok(true) => asked + lease.ttl,
                Ok(false) => {
                    maybe_held = false;
                    tokio::select! {
                        _ = shutdown.as_mut() => break 'acquire,
                        _ = tokio::time::sleep(period) => continue 'acquire,
                    }
                }
                Err(error) => {
                    maybe_held = true;
                    tracing::warn!(relay = %self.name, holder = %lease.holder, %error, "cannot acquire the relay lease; retrying");
                    tokio::select! {
                        _ = shutdown.as_mut() => break 'acquire,
                        _ = tokio::time::sleep(period) => continue 'acquire,
                    }
                }
            };
            maybe_held = true;
            tracing::info!(relay = %self.name, holder = %lease.holder, "acquired the relay lease; relaying");
            // Following the log is dropped (subscription and any publish in flight) as soon
            // as the lease is lost.
            tokio::select! {
                stopped = self.follow(shutdown.as_mut()) => {
                    if let Stopped::LogEnded = stopped {
                        tracing::info!(relay = %self.name, "the log ended; the relay stops");
                    }
                    break 'acquire;
                }
                still_ours = self.keep(lease, valid_until) => {
                    // After a failed renewal the store may still count this relay as the
                    // holder; after a refused one, another holder has it: never release that.
                    maybe_held = still_ours;
                }
            }
            tokio::select! {
                _ = shutdown.as_mut() => break 'acquire,
                _ = tokio::time::sleep(period) => {}
            }
        }
        if maybe_held {
            // Bounded: past the TTL the lease is free anyway.
            match tokio::time::timeout(lease.ttl, lease.store.release(&self.name, &lease.holder))
                .await
            {
                Ok(Ok(())) => {
                    tracing::info!(relay = %self.name, holder = %lease.holder, "released the relay lease")
                }
                Ok(Err(error)) => {
                    tracing::warn!(relay = %self.name, holder = %lease.holder, %error, "cannot release the relay lease; it expires by itself")
                }
                Err(_) => {
                    tracing::warn!(relay = %self.name, holder = %lease.holder, "releasing the relay lease timed out; it expires by itself")
                }
            }
        }
    }

    /// Renews the lease every period while it holds; returns when it is lost: a renewal
    /// failed, answered no, or had not answered by the time the lease would run out. `false`
    /// when the store said another holder has it.
    async fn keep(&self, lease: &Lease, mut valid_until: Instant) -> bool {
        let period = lease.period();
        loop {
            tokio::time::sleep(period).await;
            let asked = Instant::now();
            let renewal = lease
                .store
                .try_acquire(&self.name, &lease.holder, lease.ttl);
            match tokio::time::timeout_at(valid_until, renewal).await {
                Ok(Ok(true)) => valid_until = asked + lease.ttl,
                Ok(Ok(false)) => {
                    tracing::warn!(relay = %self.name, holder = %lease.holder, "lost the relay lease to another holder; stopped relaying");
                    return false;
                }
                Ok(Err(error)) => {
                    tracing::warn!(relay = %self.name, holder = %lease.holder, %error, "cannot renew the relay lease; stopped relaying");
                    return true;
                }
                Err(_) => {
                    tracing::warn!(relay = %self.name, holder = %lease.holder, "the relay lease renewal did not answer before the lease ran out; stopped relaying");
                    return true;
                }
            }
        }
    }

    /// Saves what was published and not saved yet, as the relay stops: best effort, since a
    /// failure only means publishing those events again at the next start.
    async fn save_on_the_way_out(&self, unsaved: Option<Position>) {
        if let Some(position) = unsaved {
            if let Err(error) = self.checkpoints.save(&self.name, position).await {
                tracing::warn!(relay = %self.name, %error, "cannot save the relay checkpoint while stopping");
            }
        }
    }

    /// Follows the log from the saved checkpoint until `shutdown` completes or the log ends.
    async fn follow<S>(&self, mut shutdown: Pin<&mut S>) -> Stopped
    where
        S: Future<Output = ()> + Send,
    {
        let min_backoff = Duration::from_millis(50);
        let mut backoff = Backoff::new(min_backoff, Duration::from_secs(5));
        'restart: loop {
            let start = match self.checkpoint().await {
                Ok(position) => position,
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(relay = %self.name, %error, retry_in = ?wait, "cannot load the relay checkpoint; retrying");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Stopped::Shutdown,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            backoff.reset();
            let mut events = self.store.subscribe(self.filter.clone(), start);
            // Published but not saved yet (with a checkpoint interval), and when it is due.
            let mut unsaved: Option<Position> = None;
            let mut save_at = Instant::now();
            loop {
                let first = tokio::select! {
                    _ = shutdown.as_mut() => {
                        self.save_on_the_way_out(unsaved).await;
                        return Stopped::Shutdown;
                    }
                    _ = tokio::time::sleep_until(save_at), if unsaved.is_some() => {
                        let Some(position) = unsaved.take() else { continue };
                        if let Err(error) = self.checkpoints.save(&self.name, position).await {
                            tracing::warn!(relay = %self.name, %error, "cannot save the relay checkpoint; restarting from the last one");
                            continue 'restart;
                        }
                        continue;
                    }
                    next = events.next() => next,
                };
                let first = match first {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::warn!(relay = %self.name, %error, "reading the log failed; retrying");
                        continue;
                    }
                    None => {
                        self.save_on_the_way_out(unsaved).await;
                        return Stopped::LogEnded;
                    }
                };
                let mut batch = vec![first];
                // Take whatever else is ready, without waiting, up to the batch size.
                while batch.len() < self.batch_size {
                    match events.next().now_or_never() {
                        Some(Some(Ok(event))) => batch.push(event),
                        _ => break,
                    }
                }
                let last = batch.last().map(|e| e.position).unwrap_or_default();
                if let Err(error) = self.deliver(&mut batch).await {
                    // The bus is down or refuses. Waiting for it with the subscription open
                    // would hold its query (and with it a snapshot that holds back VACUUM, and
                    // a pool connection) for the whole outage: let go of it, and read again
                    // from the checkpoint once the bus is back.
                    drop(events);
                    tracing::warn!(relay = %self.name, %error, events = batch.len(), "publishing failed; waiting for the bus without holding the log open");
                    loop {
                        let wait = backoff.next_delay();
                        tokio::select! {
                            _ = shutdown.as_mut() => return Stopped::Shutdown,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        // A publish to an unreachable broker can take its connect timeout:
                        // shutdown does not wait for it (the batch goes out again later).
                        let delivered = tokio::select! {
                            _ = shutdown.as_mut() => return Stopped::Shutdown,
                            delivered = self.deliver(&mut batch) => delivered,
                        };
                        match delivered {
                            Ok(()) => break,
                            Err(error) => {
                                tracing::warn!(relay = %self.name, %error, events = batch.len(), waited = ?wait, "publishing failed; retrying");
                            }
                        }
                    }
                    tracing::info!(relay = %self.name, "the bus took the batch again; resuming from the log");
                    backoff.reset();
                    if let Err(error) = self.checkpoints.save(&self.name, last).await {
                        tracing::warn!(relay = %self.name, %error, "cannot save the relay checkpoint; restarting from the last one");
                        tokio::select! {
                            _ = shutdown.as_mut() => return Stopped::Shutdown,
                            _ = tokio::time::sleep(min_backoff) => {}
                        }
                    }
                    continue 'restart;
                }
                backoff.reset();
                if !self.checkpoint_interval.is_zero() {
                    if unsaved.is_none() {
                        save_at = Instant::now() + self.checkpoint_interval;
                    }
                    unsaved = Some(last);
                    continue;
                }
                if let Err(error) = self.checkpoints.save(&self.name, last).await {
                    // The batch went out; restarting from the saved checkpoint republishes it,
                    // which the consumers' inboxes absorb.
                    tracing::warn!(relay = %self.name, %error, "cannot save the relay checkpoint; restarting from the last one");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Stopped::Shutdown,
                        _ = tokio::time::sleep(min_backoff) => {}
                    }
                    continue 'restart;
                }
            }
        }
    }
}
