use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::bus::{HandlerError, MessageHandler};
use crate::event::RecordedEvent;

/// What a [`RecordingHandler`] does with the deliveries of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerBehaviour {
    /// Handles every delivery (the default for events without a behaviour of their own).
    Succeed,
    /// Fails the first `n` deliveries with a retryable error, then handles the next one.
    FailFirst(u32),
    /// Fails every delivery with a retryable error, so the bus ends up dead-lettering it.
    AlwaysFail,
    /// Rejects the first delivery as unprocessable, which the bus dead-letters without retries.
    Reject,
}

/// A [`MessageHandler`] for bus tests: it counts every delivery, records what it handled, and
/// fails the events it was told to fail.
///
/// The same handler serves the [`bus_conformance`](super::bus_conformance) suite and each
/// backend's own bus tests, so they all fail messages in the same way.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::memory::{MemoryEventBus, MemoryEventStore};
/// use es_core::testing::{sample_event, HandlerBehaviour, RecordingHandler};
/// use es_core::{EventBus, EventStore, ExpectedVersion, StreamId, Consumer};
///
/// let store = MemoryEventStore::new();
/// let stream = StreamId::for_aggregate("order", "1")?;
/// store
///     .append(&stream, ExpectedVersion::NoStream, vec![sample_event("Placed", 1)])
///     .await?;
/// let events = store.read_stream(&stream, 1, 10).await?;
///
/// let bus = MemoryEventBus::new();
/// let handler = RecordingHandler::new();
/// handler.set(events[0].event_id, HandlerBehaviour::FailFirst(1));
/// let consumer = bus
///     .subscribe(Consumer::new("audit", ["order.#"]), handler.clone())
///     .await?;
/// bus.publish(&events).await?;
///
/// assert_eq!(handler.wait_for(1, Duration::from_secs(5)).await, 1);
/// assert_eq!(handler.deliveries(events[0].event_id), 2, "failed once, then handled");
/// consumer.stop().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct RecordingHandler {
    behaviours: Mutex<HashMap<Uuid, HandlerBehaviour>>,
    deliveries: Mutex<HashMap<Uuid, u32>>,
    handled: Mutex<Vec<RecordedEvent>>,
    batches: Mutex<Vec<usize>>,
    delay: Duration,
}

impl RecordingHandler {
    /// A handler that handles every event at once until told otherwise with [`set`](Self::set).
    ///
    /// It comes in an [`Arc`] because a bus takes its handlers shared, and the test keeps a
    /// clone to look at.
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingHandler::default())
    }

    /// A handler that sleeps `delay` before each delivery, so that messages stay in flight
    /// long enough for competing consumers to share them or for a connection to drop mid-way.
    pub fn with_delay(delay: Duration) -> Arc<Self> {
        Arc::new(RecordingHandler {
            delay,
            ..RecordingHandler::default()
        })
    }

    /// Treats the deliveries of event `event_id` from now on as `behaviour` says; earlier
    /// deliveries still count towards [`HandlerBehaviour::FailFirst`].
    pub fn set(&self, event_id: Uuid, behaviour: HandlerBehaviour) {
        lock(&self.behaviours).insert(event_id, behaviour);
    }

    /// The events handled successfully so far, in the order they were handled.
    pub fn handled(&self) -> Vec<RecordedEvent> {
        lock(&self.handled).clone()
    }

    /// How many events were handled successfully so far (a redelivered event counts each time
    /// it is handled).
    pub fn handled_count(&self) -> usize {
        lock(&self.handled).len()
    }

    /// The sizes of the batches [`handle_batch`](MessageHandler::handle_batch) committed, in
    /// order (a batch that failed and fell back to single messages is not among them).
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.batches).clone()
    }

    /// How many times event `event_id` was delivered, failed attempts included.
    pub fn deliveries(&self, event_id: Uuid) -> u32 {
        lock(&self.deliveries).get(&event_id).copied().unwrap_or(0)
    }

    /// Waits until at least `count` events were handled or `within` passed, and returns how
    /// many were handled by then; the caller asserts on it, so a timeout fails with the count.
    pub async fn wait_for(&self, count: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let handled = self.handled_count();
            if handled >= count || tokio::time::Instant::now() >= deadline {
                return handled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl MessageHandler for RecordingHandler {
    /// All or nothing, as a batch committed in one unit of work: when any of the messages
    /// would fail its next delivery, the batch fails without counting a delivery, and the
    /// bus's one-by-one fallback then meets each message's behaviour.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        {
            let behaviours = lock(&self.behaviours);
            let deliveries = lock(&self.deliveries);
            for message in messages {
                let delivered = deliveries.get(&message.event_id).copied().unwrap_or(0);
                let fails = match behaviours.get(&message.event_id) {
                    None | Some(HandlerBehaviour::Succeed) => false,
                    Some(HandlerBehaviour::FailFirst(n)) => delivered < *n,
                    Some(HandlerBehaviour::AlwaysFail | HandlerBehaviour::Reject) => true,
                };
                if fails {
                    return Err(HandlerError::retry(format!(
                        "induced batch failure on {}",
                        message.event_id
                    )));
                }
            }
        }
        {
            let mut deliveries = lock(&self.deliveries);
            for message in messages {
                *deliveries.entry(message.event_id).or_default() += 1;
            }
        }
        lock(&self.handled).extend(messages.iter().cloned());
        lock(&self.batches).push(messages.len());
        Ok(())
    }

    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let delivery = {
            let mut deliveries = lock(&self.deliveries);
            let n = deliveries.entry(message.event_id).or_default();
            *n += 1;
            *n
        };
        let behaviour = lock(&self.behaviours)
            .get(&message.event_id)
            .copied()
            .unwrap_or(HandlerBehaviour::Succeed);
        match behaviour {
            HandlerBehaviour::Succeed => {}
            HandlerBehaviour::FailFirst(n) if delivery > n => {}
            HandlerBehaviour::FailFirst(_) | HandlerBehaviour::AlwaysFail => {
                return Err(HandlerError::retry(format!("induced failure {delivery}")))
            }
            HandlerBehaviour::Reject => return Err(HandlerError::reject("induced rejection")),
        }
        lock(&self.handled).push(message.clone());
        Ok(())
    }
}

/// Locks past poisoning, so that after a panic elsewhere in a test the handler still shows
/// what it recorded instead of failing on a poisoned lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
