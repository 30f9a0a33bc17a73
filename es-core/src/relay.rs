//! The outbox relay: the event log is the outbox.
//!
//! Nothing publishes straight after an append. The [`Relay`] tails the store's gap-free global
//! log from its checkpoint, publishes each batch to the bus, and moves the checkpoint only after
//! the bus confirmed the batch. Killed at any point, it loses nothing: it starts again from the
//! checkpoint, and at worst publishes the last batch twice — consumers drop the duplicates with
//! their inbox.
//!
//! Every instance of a service may run the same relay: [`Relay::with_lease`] makes only the
//! holder of a [`LeaseStore`] lease publish, and a standby take over when the holder stops.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::bus::EventBus;
use crate::error::Result;
use crate::lease::{unique_holder, LeaseStore};
use crate::store::{CheckpointStore, EventStore};
use crate::stream::{Position, StreamFilter};

/// Publishes committed events from an [`EventStore`] to an [`EventBus`], at least once.
#[derive(Clone)]
pub struct Relay {
    name: String,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    filter: StreamFilter,
    batch_size: usize,
    lease: Option<Lease>,
}

/// The lease a relay holds while it runs, and who it is to the lease store.
#[derive(Clone)]
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
            .field("batch_size", &self.batch_size);
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

impl Relay {
    /// A relay whose checkpoint is saved under `name`, relaying every stream.
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Relay {
            name: name.into(),
            store,
            bus,
            checkpoints,
            filter: StreamFilter::All,
            batch_size: 500,
            lease: None,
        }
    }

    /// Runs only while this relay holds the lease named after it (its checkpoint name) in
    /// `leases`, so that of the instances running the same relay only one publishes.
    ///
    /// [`run`](Self::run) then takes the lease for `ttl` and renews it every `ttl / 3`. When a
    /// renewal fails, answers no, or does not answer before the lease would run out, it stops
    /// publishing at once and goes back to trying to acquire every `ttl / 3`; after each
    /// acquisition it reloads the checkpoint, which the previous holder may have moved. On
    /// shutdown it releases the lease, so a standby takes over at once; a holder that dies
    /// without releasing is replaced within about `ttl * 4 / 3`.
    ///
    /// A batch in flight when the lease is lost may still reach the bus, and two holders may
    /// briefly overlap after a stall: publishing stays at least once, and the consumers'
    /// inboxes drop the duplicates. Each clone of a relay is a holder of its own.
    /// [`relay_available`](Self::relay_available) does not take the lease.
    pub fn with_lease(mut self, leases: Arc<dyn LeaseStore>, ttl: Duration) -> Self {
        self.lease = Some(Lease {
            store: leases,
            ttl,
            holder: unique_holder(),
        });
        self
    }

    /// Relays only the streams `filter` lets through (e.g. one service's own categories).
    pub fn with_filter(mut self, filter: StreamFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Publishes at most `batch_size` events per confirmed batch.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The saved checkpoint.
    pub async fn checkpoint(&self) -> Result<Position> {
        Ok(self.checkpoints.load(&self.name).await?.unwrap_or_default())
    }

    /// Relays everything readable now, batch by batch; returns how many events it published.
    pub async fn relay_available(&self) -> Result<usize> {
        let mut position = self.checkpoint().await?;
        let mut published = 0;
        loop {
            let batch = self
                .store
                .read_all(&self.filter, position, self.batch_size)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(published);
            };
            let last = last.position;
            self.bus.publish(&batch).await?;
            self.checkpoints.save(&self.name, last).await?;
            published += batch.len();
            position = last;
        }
    }

    /// Relays until `shutdown` completes: follows the log live, publishes what is ready as one
    /// batch, retries a failed publish or checkpoint with backoff, never skips an event.
    ///
    /// With a lease ([`with_lease`](Self::with_lease)), it does so only while it holds the
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

    /// Follows the log from the saved checkpoint until `shutdown` completes or the log ends.
    async fn follow<S>(&self, mut shutdown: Pin<&mut S>) -> Stopped
    where
        S: Future<Output = ()> + Send,
    {
        let min_backoff = Duration::from_millis(50);
        let max_backoff = Duration::from_secs(5);
        let mut backoff = min_backoff;
        'restart: loop {
            let start = match self.checkpoint().await {
                Ok(position) => position,
                Err(error) => {
                    tracing::warn!(relay = %self.name, %error, "cannot load the relay checkpoint; retrying");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Stopped::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            };
            backoff = min_backoff;
            let mut events = self.store.subscribe(self.filter.clone(), start);
            loop {
                let first = tokio::select! {
                    _ = shutdown.as_mut() => return Stopped::Shutdown,
                    next = events.next() => next,
                };
                let first = match first {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::warn!(relay = %self.name, %error, "reading the log failed; retrying");
                        continue;
                    }
                    None => return Stopped::LogEnded,
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
                let mut backoff = min_backoff;
                while let Err(error) = self.bus.publish(&batch).await {
                    tracing::warn!(relay = %self.name, %error, events = batch.len(), "publishing failed; retrying");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Stopped::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
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
