//! The [`EventBus`]: publish stored events to other services, consume them with retries and a
//! dead-letter queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::{BoxError, Result};
use crate::event::RecordedEvent;

/// Why a handler did not handle a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Try again later (with backoff, up to the retry bound; then the dead-letter queue).
    #[error("retryable: {0}")]
    Retry(#[source] BoxError),
    /// Never going to work: straight to the dead-letter queue.
    #[error("rejected: {0}")]
    Reject(#[source] BoxError),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        HandlerError::Retry(error.into())
    }

    /// A permanent failure.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        HandlerError::Reject(error.into())
    }
}

impl From<crate::Error> for HandlerError {
    /// Transient store errors (conflicts, outages) retry; the others are permanent.
    fn from(error: crate::Error) -> Self {
        if error.is_transient() {
            HandlerError::Retry(error.into())
        } else {
            HandlerError::Reject(error.into())
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<crate::CommandError<E>> for HandlerError {
    /// A store failure keeps its kind (a transient one retries); the aggregate's refusal is
    /// [`HandlerError::Reject`]: the same message would be refused again. So a consumer that
    /// runs a command writes `repository.execute(..).await?`.
    fn from(error: crate::CommandError<E>) -> Self {
        match error {
            crate::CommandError::Rejected(error) => HandlerError::Reject(Box::new(error)),
            crate::CommandError::Store(error) => error.into(),
        }
    }
}

/// Handles the messages of one consumer.
///
/// The bus acknowledges a message only after `handle` returned `Ok`, so commit the handler's
/// effects before returning. A message can arrive more than once (redelivery after a crash,
/// the relay's at-least-once publishing): record it in an inbox with the effects
/// ([`CommandContext::caused_by`](crate::CommandContext::caused_by)) to handle it once. The
/// guide's messaging page (`docs/concepts/messaging.md`) has the whole pattern: decode, skip
/// unknown types, execute with an inbox entry, answer retry or reject.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Mutex;
/// use es_core::bus::{HandlerError, MessageHandler};
/// use es_core::memory::MemoryEventStore;
/// use es_core::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
///
/// /// Counts the orders it hears of; a real handler commits its effect with an inbox entry.
/// #[derive(Default)]
/// struct OrderCounter(Mutex<u32>);
///
/// #[es_core::async_trait]
/// impl MessageHandler for OrderCounter {
///     async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
///         match message.event_type.as_str() {
///             "OrderPlaced" => *self.0.lock().map_err(|_| HandlerError::retry("poisoned"))? += 1,
///             _ => {} // a type this consumer does not read: ack and move on
///         }
///         Ok(()) // acked only now
///     }
/// }
///
/// // Any handler can be called directly, as a test would:
/// let store = MemoryEventStore::new();
/// store
///     .append(&StreamId::new("order-1")?, ExpectedVersion::NoStream, vec![NewEvent::raw("OrderPlaced", "{}")])
///     .await?;
/// let message = store.read_all(&es_core::StreamFilter::All, es_core::Position::START, 1).await?.remove(0);
/// let counter = OrderCounter::default();
/// counter.handle(&message).await?;
/// assert_eq!(*counter.0.lock().unwrap(), 1);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Handles one message.
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError>;

    /// Handles several messages at once: the bus calls it, for a subscription
    /// [`with_batch`](Consumer::with_batch) above 1, with the messages already delivered
    /// (up to the batch size, never waiting for more), and acks them all after it returned
    /// `Ok`. Commit their effects in one unit of work, with one inbox entry per message
    /// ([`UnitOfWork::handled`](crate::UnitOfWork::handled)), so that under load a consumer
    /// pays one transaction per batch instead of one per message.
    ///
    /// On an `Err` (or a panic) the bus handles the same messages again one at a time with
    /// [`handle`](Self::handle), each with its own retries and dead letter: one poison message
    /// ends in the dead-letter queue alone and the others still commit. So a batch must
    /// either commit everything or nothing, or be safe to repeat (an inbox makes it so).
    ///
    /// The default handles the messages one after the other and stops at the first failure;
    /// with an inbox the fallback then skips those already handled.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        for message in messages {
            self.handle(message).await?;
        }
        Ok(())
    }
}

/// How often a failing message is retried, and how long the waits are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included, before the message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before delivery number `attempt + 1` (after `attempt` failed deliveries).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// [`backoff`](Self::backoff) with jitter: a random wait between half of it and all of it,
    /// so that failures that happened together do not come back together, and the wait never
    /// shrinks to nothing.
    pub fn jittered_backoff(&self, attempt: u32) -> Duration {
        let full = self.backoff(attempt);
        let half = full / 2;
        let span = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        // Random bits without a random-number crate: a v4 uuid is 122 random bits.
        let random = uuid::Uuid::new_v4().as_u128() as u64;
        half + Duration::from_nanos(random % span.saturating_add(1))
    }
}

/// A named consumer of the bus: its queue name, the routing keys it binds, how it retries, and
/// how many messages it takes at once. [`EventBus::subscribe`] starts it.
///
/// (Not to be confused with the store's [`EventSubscription`](crate::EventSubscription), a
/// stream of the log itself.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name; its queue is named after it. Instances with the same name share the
    /// work (competing consumers).
    pub consumer: String,
    /// Routing-key patterns, topic-exchange style: `*` matches one word, `#` zero or more
    /// (`order.*`, `#`).
    pub routing_keys: Vec<String>,
    /// Messages in flight per consumer instance.
    pub prefetch: u16,
    /// Most messages handed to [`MessageHandler::handle_batch`] at once; 1 (the default)
    /// hands each message to [`MessageHandler::handle`]. A batch forms only from messages
    /// already delivered, so at low load it is one message and nothing waits (unless
    /// `linger` says to).
    pub batch: u16,
    /// How long at most a batch, once its first message is in hand, may wait for more while
    /// another handler call of the consumer runs: it goes when a running call ends, when it is
    /// full, or when the linger runs out, whichever comes first. Zero, the default, never waits.
    /// Only with `batch` above 1. See [`with_linger`](Self::with_linger).
    pub linger: Duration,
    /// Retries before the dead-letter queue.
    pub retry: RetryPolicy,
}

impl Consumer {
    /// A subscription of `consumer` to `routing_keys` with default prefetch and retries.
    pub fn new<I, S>(consumer: impl Into<String>, routing_keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Consumer {
            consumer: consumer.into(),
            routing_keys: routing_keys.into_iter().map(Into::into).collect(),
            prefetch: 32,
            batch: 1,
            linger: Duration::ZERO,
            retry: RetryPolicy::default(),
        }
    }

    /// The same subscription with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same subscription with another prefetch.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The same subscription handing up to `batch` messages at once to
    /// [`MessageHandler::handle_batch`] (see there).
    ///
    /// A consumer instance then runs `prefetch / batch` handler calls at a time (at least
    /// one): when they are all busy, deliveries wait in the prefetch window and the next call
    /// takes them together, so the batches grow with the load.
    pub fn with_batch(mut self, batch: u16) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The same subscription letting a batch wait up to `linger` for more messages once its
    /// first is in hand, while another of the consumer's handler calls runs (with
    /// [`with_batch`](Self::with_batch) above 1).
    ///
    /// Without it, batches grow only when the handler calls are all busy: at a steady rate
    /// below what the consumer can take, a message mostly arrives to a free call and goes
    /// alone, one unit of work each. With it, the messages that arrive while a call runs
    /// gather until a running call ends (at most `linger`, or until the batch is full) and
    /// share the next call.
    ///
    /// It follows Nagle's rule: a message that finds no call running goes at once, so a low
    /// rate pays no latency; one that finds calls running waits for one to end, so the wait
    /// is at most a call's time and the batches grow with the load by themselves. `linger`
    /// bounds the wait behind a call that takes long. Worth it where a call's fixed cost (a
    /// transaction, a round trip) outweighs a message's.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How many handler calls a consumer instance runs at once: `prefetch / batch`, rounded
    /// up, at least one.
    pub fn concurrency(&self) -> usize {
        let prefetch = usize::from(self.prefetch.max(1));
        prefetch.div_ceil(usize::from(self.batch.max(1)))
    }
}

/// Maps an event to its routing key.
pub type Router = Arc<dyn Fn(&RecordedEvent) -> String + Send + Sync>;

/// The default routing key: `{category}.{rest of the event type, snake_case}`, where the rest is
/// the event type without a leading category name: `OrderPlaced` in stream `order-1` routes as
/// `order.placed`; `PaymentFailed` in stream `order-1` as `order.payment_failed`.
pub fn default_routing_key(event: &RecordedEvent) -> String {
    let category = event.stream_id.category();
    let ty = event.event_type.as_str();
    // `get` rather than slicing: the category's length may fall inside a multi-byte character
    // of the event type, and any event type must route without a panic.
    let rest = match (ty.get(..category.len()), ty.get(category.len()..)) {
        (Some(head), Some(rest)) if !rest.is_empty() && head.eq_ignore_ascii_case(category) => rest,
        _ => ty,
    };
    format!("{}.{}", category.to_ascii_lowercase(), snake_case(rest))
}

/// `OrderPlaced` → `order_placed`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a routing key matches a topic pattern (`*` one word, `#` zero or more words).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(word), Some(key_word)) if word == key_word => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// The former name of [`Consumer`].
#[deprecated(since = "0.2.0", note = "renamed to `Consumer`")]
pub type Subscription = Consumer;

/// A consumer running in the background.
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Wraps a consumer task that stops taking messages once `stop` is cancelled. A bus gives
    /// it a child of a token of its own, or of the service's, so one cancel stops every part.
    pub fn new(stop: CancellationToken, task: tokio::task::JoinHandle<()>) -> Self {
        ConsumerHandle { stop, task }
    }

    /// Stops taking new messages, lets the one in hand finish, and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Whether the consumer task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// A message on a dead-letter queue.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The message, when it could be decoded.
    pub event: Option<RecordedEvent>,
    /// The raw body.
    pub body: bytes::Bytes,
    /// Why it was dead-lettered (the last error).
    pub reason: String,
    /// How many deliveries were tried.
    pub attempts: u32,
}

/// Tools for a bus's dead-letter queues: list, move back for reprocessing, purge.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync + fmt::Debug {
    /// The dead letters of `consumer`, oldest first, at most `limit`, left in place.
    async fn dead_letters(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Moves up to `limit` dead letters of `consumer` back onto its queue; returns how many.
    ///
    /// Moves at most the dead letters there when the call starts: one that is dead-lettered
    /// again while it runs (its handler still fails) waits for the next call.
    async fn requeue_dead_letters(&self, consumer: &str, limit: usize) -> Result<usize>;

    /// Deletes every dead letter of `consumer`; returns how many.
    async fn purge_dead_letters(&self, consumer: &str) -> Result<usize>;
}

/// Carries events between services.
///
/// Backends: [`MemoryEventBus`](crate::memory::MemoryEventBus) here, `AmqpEventBus` in
/// `es-rabbitmq`. Publish events from the store's log through the relay (the log is the outbox),
/// not straight after an append.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::sync::Arc;
/// use es_core::bus::{HandlerError, MessageHandler, RetryPolicy, Consumer};
/// use es_core::memory::{MemoryEventBus, MemoryEventStore};
/// use es_core::{EventBus, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamFilter, StreamId};
/// use tokio::sync::mpsc;
///
/// struct Forward(mpsc::UnboundedSender<String>);
/// #[es_core::async_trait]
/// impl MessageHandler for Forward {
///     async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
///         self.0.send(message.event_type.clone()).map_err(HandlerError::retry)
///     }
/// }
///
/// let bus = MemoryEventBus::new(); // es_rabbitmq::AmqpEventBus on RabbitMQ
/// let (tx, mut rx) = mpsc::unbounded_channel();
/// // Routing keys are `{category}.{event}`: `OrderPlaced` in `order-1` routes as `order.placed`.
/// // Instances subscribing the same consumer name share its queue (competing consumers).
/// let subscription = Consumer::new("shipping", ["order.placed"])
///     .with_retry(RetryPolicy { max_attempts: 5, ..RetryPolicy::default() });
/// let consumer = bus.subscribe(subscription, Arc::new(Forward(tx))).await?;
///
/// // Events come from the store's log (in a service, the `Relay` publishes them).
/// let store = MemoryEventStore::new();
/// let events = vec![NewEvent::raw("OrderNoted", "{}"), NewEvent::raw("OrderPlaced", "{}")];
/// store.append(&StreamId::new("order-1")?, ExpectedVersion::NoStream, events).await?;
/// bus.publish(&store.read_all(&StreamFilter::All, Position::START, 10).await?).await?;
///
/// // The first message is the second event: `order.noted` is bound by no queue.
/// assert_eq!(rx.recv().await.as_deref(), Some("OrderPlaced"));
/// consumer.stop().await;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Publishes events; `Ok` means the bus has them (a broker confirmed them).
    async fn publish(&self, events: &[RecordedEvent]) -> Result<()>;

    /// Starts a consumer: `handler` gets each message bound by `subscription`, which is acked
    /// after `handle` returned `Ok`, retried on [`HandlerError::Retry`] and dead-lettered on
    /// [`HandlerError::Reject`] or when the retries are used up.
    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    #[test]
    fn a_command_error_answers_the_bus_by_its_kind() {
        let refused: HandlerError = crate::CommandError::Rejected(Refused).into();
        assert!(
            matches!(refused, HandlerError::Reject(_)),
            "a refusal is final"
        );
        let outage: HandlerError =
            crate::CommandError::<Refused>::Store(crate::Error::unavailable("db", "down")).into();
        assert!(
            matches!(outage, HandlerError::Retry(_)),
            "an outage retries"
        );
        let broken: HandlerError =
            crate::CommandError::<Refused>::Store(crate::Error::backend("db", "bad sql")).into();
        assert!(
            matches!(broken, HandlerError::Reject(_)),
            "a permanent store error is final"
        );
    }

    #[test]
    fn topic_patterns_match_like_amqp() {
        assert!(topic_matches("order.*", "order.placed"));
        assert!(!topic_matches("order.*", "order.placed.x"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("*.failed", "payment.failed"));
        assert!(!topic_matches("payment.failed", "payment.processed"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
    }

    #[test]
    fn jittered_backoff_stays_between_half_and_all_of_the_backoff() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for attempt in 1..8 {
            for _ in 0..50 {
                let wait = p.jittered_backoff(attempt);
                let full = p.backoff(attempt);
                assert!(wait >= full / 2 && wait <= full, "{wait:?} for {full:?}");
            }
        }
    }

    #[test]
    fn any_event_type_routes_without_a_panic() {
        let event = |stream: &str, ty: &str| RecordedEvent {
            event_id: uuid::Uuid::new_v4(),
            stream_id: crate::StreamId::new(stream).unwrap(),
            stream_version: 1,
            position: crate::Position::default(),
            recorded_at: chrono::Utc::now(),
            event_type: ty.to_owned(),
            schema_version: 1,
            payload: bytes::Bytes::from_static(b"{}"),
            metadata: crate::Metadata::default(),
        };
        // The category's length ends inside `é` (bytes 1..3) and inside the emoji.
        assert_eq!(default_routing_key(&event("ab-1", "aé")), "ab.aé");
        assert_eq!(default_routing_key(&event("ab-1", "a🎉x")), "ab.a🎉x");
        assert_eq!(
            default_routing_key(&event("bestellung-1", "BestellunéAufgegeben")),
            "bestellung.bestelluné_aufgegeben"
        );
        assert_eq!(
            default_routing_key(&event("bestellung-1", "BestellungéAufgegeben")),
            "bestellung.é_aufgegeben"
        );
        assert_eq!(default_routing_key(&event("order-1", "🎉")), "order.🎉");
        assert_eq!(default_routing_key(&event("order-1", "")), "order.");
        assert_eq!(
            default_routing_key(&event("order-1", "OrderPlaced")),
            "order.placed"
        );
        assert_eq!(
            default_routing_key(&event("order-1", "Order")),
            "order.order"
        );
    }

    #[test]
    fn snake_case_splits_words() {
        assert_eq!(snake_case("Placed"), "placed");
        assert_eq!(snake_case("PaymentFailed"), "payment_failed");
    }
}
