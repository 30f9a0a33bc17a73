//! Metrics the crates record: what they are called, and the handles that record them.
//!
//! The crates record through the [`metrics`](https://docs.rs/metrics) facade, behind each
//! crate's default `metrics` feature. Nothing is kept and nothing is sent until the application
//! installs a recorder (for instance `metrics-exporter-prometheus`'s, rendered on a
//! `GET /metrics` route); without one, a record is a call on a no-op handle. Install the
//! recorder before building stores, buses, relays and projection runners: they take their
//! handles when they are built (once per consumer, relay or store, never per message).
//!
//! Without the `metrics` feature the handles here are empty and record nothing, so that code
//! using them compiles either way.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `es_messages_handled_total` | counter | `consumer` | messages a bus consumer's handler took |
//! | `es_messages_retried_total` | counter | `consumer` | failed attempts that will be tried again |
//! | `es_messages_dead_lettered_total` | counter | `consumer` | messages given up on and dead-lettered |
//! | `es_message_handling_seconds` | histogram | `consumer` | time in the handler, every attempt |
//! | `es_message_batches_total` | counter | `consumer` | batches of more than one message committed by `handle_batch` |
//! | `es_messages_batched_total` | counter | `consumer` | messages in those batches (÷ batches: the mean batch size) |
//! | `es_message_batch_fallbacks_total` | counter | `consumer` | batches that failed and were handled again one message at a time |
//! | `es_relay_published_total` | counter | `relay` | events the relay published (or parked) |
//! | `es_relay_lag_events` | gauge | `relay` | events in the last batch: what had piled up since the batch before |
//! | `es_relay_lag_seconds` | gauge | `relay` | age of the last published event when the bus took it |
//! | `es_projection_handled_total` | counter | `projection` | events a running projection handled |
//! | `es_projection_handling_seconds` | histogram | `projection` | time in the projection's `apply` |
//! | `es_projection_lag_seconds` | gauge | `projection` | age of the last handled event when its checkpoint was saved |
//! | `es_read_model_lag_events` | gauge | `projection`, `phase` (`active`, `building`) | events a versioned read model's generation has still to read, as [`ProjectionAdmin::status`](crate::ProjectionAdmin::status) counts them |
//! | `es_read_model_lag_seconds` | gauge | `projection`, `phase` | age of the oldest of those events (0 when none) |
//! | `es_store_append_seconds` | histogram | `backend` | an append to one stream, end to end |
//! | `es_store_commit_seconds` | histogram | `backend` | a unit of work's commit, end to end |
//! | `es_pool_connections` | gauge | `backend`, `state` (`in_use`, `idle`) | the connection pool |
//!
//! The relay's lag in events is the size of its last batch because a position in the log is
//! not a count (a position names a transaction and a place in it), so how many events lie
//! between the checkpoint and the head is not known without counting them; a batch as large as
//! the relay's batch size says that it is behind by at least that much.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// `es_messages_handled_total`: messages a bus consumer's handler took.
pub const MESSAGES_HANDLED: &str = "es_messages_handled_total";
/// `es_messages_retried_total`: failed attempts that will be tried again.
pub const MESSAGES_RETRIED: &str = "es_messages_retried_total";
/// `es_messages_dead_lettered_total`: messages given up on and dead-lettered.
pub const MESSAGES_DEAD_LETTERED: &str = "es_messages_dead_lettered_total";
/// `es_message_handling_seconds`: time in a consumer's handler, every attempt.
pub const MESSAGE_HANDLING_SECONDS: &str = "es_message_handling_seconds";
/// `es_message_batches_total`: batches of more than one message a handler committed at once.
pub const MESSAGE_BATCHES: &str = "es_message_batches_total";
/// `es_messages_batched_total`: messages in those batches.
pub const MESSAGES_BATCHED: &str = "es_messages_batched_total";
/// `es_message_batch_fallbacks_total`: batches that failed and went one message at a time.
pub const MESSAGE_BATCH_FALLBACKS: &str = "es_message_batch_fallbacks_total";
/// `es_relay_published_total`: events a relay published or parked.
pub const RELAY_PUBLISHED: &str = "es_relay_published_total";
/// `es_relay_lag_events`: events in a relay's last batch.
pub const RELAY_LAG_EVENTS: &str = "es_relay_lag_events";
/// `es_relay_lag_seconds`: age of the last event a relay published, when the bus took it.
pub const RELAY_LAG_SECONDS: &str = "es_relay_lag_seconds";
/// `es_projection_handled_total`: events a running projection handled.
pub const PROJECTION_HANDLED: &str = "es_projection_handled_total";
/// `es_projection_handling_seconds`: time in a projection's `apply`.
pub const PROJECTION_HANDLING_SECONDS: &str = "es_projection_handling_seconds";
/// `es_projection_lag_seconds`: age of a projection's last handled event.
pub const PROJECTION_LAG_SECONDS: &str = "es_projection_lag_seconds";
/// `es_read_model_lag_events`: events a versioned read model's generation has still to read.
pub const READ_MODEL_LAG_EVENTS: &str = "es_read_model_lag_events";
/// `es_read_model_lag_seconds`: age of the oldest event a read model's generation has still to
/// read.
pub const READ_MODEL_LAG_SECONDS: &str = "es_read_model_lag_seconds";
/// `es_store_append_seconds`: an append to one stream, end to end.
pub const STORE_APPEND_SECONDS: &str = "es_store_append_seconds";
/// `es_store_commit_seconds`: a unit of work's commit, end to end.
pub const STORE_COMMIT_SECONDS: &str = "es_store_commit_seconds";
/// `es_pool_connections`: a connection pool's connections, by `state` (`in_use`, `idle`).
pub const POOL_CONNECTIONS: &str = "es_pool_connections";

/// Every histogram above, for a recorder that wants buckets set per name.
pub const HISTOGRAMS: [&str; 4] = [
    MESSAGE_HANDLING_SECONDS,
    PROJECTION_HANDLING_SECONDS,
    STORE_APPEND_SECONDS,
    STORE_COMMIT_SECONDS,
];

/// How long ago `at` was, in seconds; 0 for a time in the future (clocks of two hosts).
#[cfg(feature = "metrics")]
fn age(at: DateTime<Utc>) -> f64 {
    let now: DateTime<Utc> = std::time::SystemTime::now().into();
    (now - at)
        .to_std()
        .map(|age| age.as_secs_f64())
        .unwrap_or(0.0)
}

/// The handles a bus consumer records its messages with (see the table in [this
/// module](self)). Bus implementations outside this crate use it too, so that every bus
/// reports the same names.
#[derive(Clone)]
pub struct ConsumerMetrics {
    #[cfg(feature = "metrics")]
    handled: metrics::Counter,
    #[cfg(feature = "metrics")]
    retried: metrics::Counter,
    #[cfg(feature = "metrics")]
    dead_lettered: metrics::Counter,
    #[cfg(feature = "metrics")]
    handling: metrics::Histogram,
    #[cfg(feature = "metrics")]
    batches: metrics::Counter,
    #[cfg(feature = "metrics")]
    batched: metrics::Counter,
    #[cfg(feature = "metrics")]
    fallbacks: metrics::Counter,
}

impl fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerMetrics").finish_non_exhaustive()
    }
}

impl ConsumerMetrics {
    /// The handles of `consumer`, from the recorder installed now.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(consumer: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let label = consumer.to_owned();
            ConsumerMetrics {
                handled: metrics::counter!(MESSAGES_HANDLED, "consumer" => label.clone()),
                retried: metrics::counter!(MESSAGES_RETRIED, "consumer" => label.clone()),
                dead_lettered: metrics::counter!(MESSAGES_DEAD_LETTERED, "consumer" => label.clone()),
                handling: metrics::histogram!(MESSAGE_HANDLING_SECONDS, "consumer" => label.clone()),
                batches: metrics::counter!(MESSAGE_BATCHES, "consumer" => label.clone()),
                batched: metrics::counter!(MESSAGES_BATCHED, "consumer" => label.clone()),
                fallbacks: metrics::counter!(MESSAGE_BATCH_FALLBACKS, "consumer" => label),
            }
        }
        #[cfg(not(feature = "metrics"))]
        ConsumerMetrics {}
    }

    /// The handler took a message after `took` in it.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn handled(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.handled.increment(1);
            self.handling.record(took);
        }
    }

    /// A batch of `size` messages was handled in one call after `took`: each counts as
    /// handled, and the batch as one batch.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn handled_batch(&self, size: usize, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.handled.increment(size as u64);
            self.handling.record(took);
            self.batches.increment(1);
            self.batched.increment(size as u64);
        }
    }

    /// A batch failed after `took` and its messages go one at a time.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn batch_fell_back(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.fallbacks.increment(1);
            self.handling.record(took);
        }
    }

    /// An attempt failed after `took` in the handler, and will be tried again.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn retried(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.retried.increment(1);
            self.handling.record(took);
        }
    }

    /// A message was dead-lettered; `took` is the time of its last attempt in the handler, or
    /// `None` when it never reached the handler (an undecodable message).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn dead_lettered(&self, took: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            self.dead_lettered.increment(1);
            if let Some(took) = took {
                self.handling.record(took);
            }
        }
    }
}

/// The handles a relay records its progress with.
#[derive(Clone)]
pub(crate) struct RelayMetrics {
    #[cfg(feature = "metrics")]
    published: metrics::Counter,
    #[cfg(feature = "metrics")]
    lag_events: metrics::Gauge,
    #[cfg(feature = "metrics")]
    lag_seconds: metrics::Gauge,
}

impl RelayMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(relay: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let label = relay.to_owned();
            RelayMetrics {
                published: metrics::counter!(RELAY_PUBLISHED, "relay" => label.clone()),
                lag_events: metrics::gauge!(RELAY_LAG_EVENTS, "relay" => label.clone()),
                lag_seconds: metrics::gauge!(RELAY_LAG_SECONDS, "relay" => label),
            }
        }
        #[cfg(not(feature = "metrics"))]
        RelayMetrics {}
    }

    /// A batch of `events` went out; the last of them was recorded at `last_recorded_at`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn published(&self, events: usize, last_recorded_at: DateTime<Utc>) {
        #[cfg(feature = "metrics")]
        {
            self.published.increment(events as u64);
            self.lag_events.set(events as f64);
            self.lag_seconds.set(age(last_recorded_at));
        }
    }
}

/// The handles a running projection records its progress with.
#[derive(Clone)]
pub(crate) struct ProjectionMetrics {
    #[cfg(feature = "metrics")]
    handled: metrics::Counter,
    #[cfg(feature = "metrics")]
    handling: metrics::Histogram,
    #[cfg(feature = "metrics")]
    lag_seconds: metrics::Gauge,
}

impl ProjectionMetrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(projection: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let label = projection.to_owned();
            ProjectionMetrics {
                handled: metrics::counter!(PROJECTION_HANDLED, "projection" => label.clone()),
                handling: metrics::histogram!(PROJECTION_HANDLING_SECONDS, "projection" => label.clone()),
                lag_seconds: metrics::gauge!(PROJECTION_LAG_SECONDS, "projection" => label),
            }
        }
        #[cfg(not(feature = "metrics"))]
        ProjectionMetrics {}
    }

    /// An event recorded at `recorded_at` was handled in `took` and checkpointed.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn handled(&self, took: Duration, recorded_at: DateTime<Utc>) {
        #[cfg(feature = "metrics")]
        {
            self.handled.increment(1);
            self.handling.record(took);
            self.lag_seconds.set(age(recorded_at));
        }
    }
}

/// The handles an event store records its write latency with. Store backends outside this
/// crate use it, so that every backend reports the same names.
#[derive(Clone)]
pub struct StoreMetrics {
    #[cfg(feature = "metrics")]
    append: metrics::Histogram,
    #[cfg(feature = "metrics")]
    commit: metrics::Histogram,
}

impl fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

impl StoreMetrics {
    /// The handles of the store backend `backend` (e.g. `"postgres"`), from the recorder
    /// installed now.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            StoreMetrics {
                append: metrics::histogram!(STORE_APPEND_SECONDS, "backend" => backend),
                commit: metrics::histogram!(STORE_COMMIT_SECONDS, "backend" => backend),
            }
        }
        #[cfg(not(feature = "metrics"))]
        StoreMetrics {}
    }

    /// An append to one stream took `took`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn append(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.append.record(took);
    }

    /// A unit of work's commit took `took`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn commit(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.commit.record(took);
    }
}

/// Sets the gauge of `backend`'s connection pool: `in_use` connections lent out and `idle`
/// ones waiting. Cheap: call it when metrics are read, or on a timer.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub fn pool_connections(backend: &'static str, in_use: usize, idle: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!(POOL_CONNECTIONS, "backend" => backend, "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!(POOL_CONNECTIONS, "backend" => backend, "state" => "idle").set(idle as f64);
    }
}

/// Sets the lag gauges of versioned read models from a [`ProjectionAdmin::status`]
/// answer: per projection and phase, the events still to read and the age of the oldest. A
/// phase a projection has no generation in (no rebuild under way) is set to 0, so a finished
/// rebuild does not leave its last lag standing. Counting the lag costs the backend a query:
/// call it when metrics are read, or on a timer.
///
/// [`ProjectionAdmin::status`]: crate::ProjectionAdmin::status
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub fn read_model_lag(status: &[crate::ProjectionInfo]) {
    #[cfg(feature = "metrics")]
    {
        use crate::ProjectionPhase;
        let mut names: Vec<&str> = status.iter().map(|info| info.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            for (phase, label) in [
                (ProjectionPhase::Active, "active"),
                (ProjectionPhase::Building, "building"),
            ] {
                let info = status
                    .iter()
                    .find(|info| info.name == name && info.phase == phase);
                let (events, seconds) = info.map_or((0.0, 0.0), |info| {
                    (info.events_behind as f64, info.time_behind.as_secs_f64())
                });
                let labels = [("projection", name.to_owned()), ("phase", label.to_owned())];
                metrics::gauge!(READ_MODEL_LAG_EVENTS, &labels).set(events);
                metrics::gauge!(READ_MODEL_LAG_SECONDS, &labels).set(seconds);
            }
        }
    }
}
