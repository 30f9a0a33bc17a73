use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    default_routing_key, topic_matches, Consumer, ConsumerHandle, DeadLetter, DeadLetterQueue,
    EventBus, HandlerError, MessageHandler, Router,
};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::telemetry::ConsumerMetrics;

/// An in-memory [`EventBus`] with topic routing, competing consumers, retries with backoff and
/// a dead-letter queue per consumer. Cloning shares it.
///
/// A queue exists from the first `subscribe` of its consumer name and keeps its messages while
/// no instance consumes (as a durable queue would, for the life of the process). Events that
/// no queue binds are dropped, as a topic exchange drops them.
#[derive(Clone)]
pub struct MemoryEventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    router: Router,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

#[derive(Default)]
struct Queue {
    bindings: Mutex<Vec<String>>,
    ready: Mutex<VecDeque<(RecordedEvent, u32)>>,
    notify: Notify,
    dead: Mutex<Vec<DeadLetter>>,
}

impl Queue {
    fn push(&self, event: RecordedEvent, attempts: u32) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((event, attempts));
        self.notify.notify_one();
    }

    /// Takes up to `limit` waiting messages, oldest first.
    fn pop_up_to(&self, limit: usize) -> Vec<(RecordedEvent, u32)> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let n = limit.min(ready.len());
        ready.drain(..n).collect()
    }
}

impl fmt::Debug for MemoryEventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("MemoryEventBus")
            .field("queues", &queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEventBus {
    /// A bus routing with [`default_routing_key`].
    pub fn new() -> Self {
        Self::with_router(Arc::new(default_routing_key))
    }

    /// A bus routing with `router`.
    pub fn with_router(router: Router) -> Self {
        MemoryEventBus {
            inner: Arc::new(BusInner {
                router,
                queues: Mutex::default(),
            }),
        }
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Messages waiting on `consumer`'s queue.
    pub fn pending(&self, consumer: &str) -> usize {
        self.queue(consumer)
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[async_trait]
impl DeadLetterQueue for MemoryEventBus {
    async fn dead_letters(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = self.queue(consumer);
        let dead = queue.dead.lock().unwrap_or_else(|e| e.into_inner());
        Ok(dead.iter().take(limit).cloned().collect())
    }

    async fn requeue_dead_letters(&self, consumer: &str, limit: usize) -> Result<usize> {
        let queue = self.queue(consumer);
        let moved: Vec<DeadLetter> = {
            let mut dead = queue.dead.lock().unwrap_or_else(|e| e.into_inner());
            let n = limit.min(dead.len());
            dead.drain(..n).collect()
        };
        let count = moved.len();
        for event in moved.into_iter().filter_map(|d| d.event) {
            queue.push(event, 0);
        }
        Ok(count)
    }

    async fn purge_dead_letters(&self, consumer: &str) -> Result<usize> {
        let queue = self.queue(consumer);
        let mut dead = queue.dead.lock().unwrap_or_else(|e| e.into_inner());
        let count = dead.len();
        dead.clear();
        Ok(count)
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        let queues: Vec<Arc<Queue>> = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for event in events {
            let key = (self.inner.router)(event);
            for queue in &queues {
                let bound = queue
                    .bindings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|pattern| topic_matches(pattern, &key));
                if bound {
                    queue.push(event.clone(), 0);
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle> {
        let queue = self.queue(&subscription.consumer);
        {
            let mut bindings = queue.bindings.lock().unwrap_or_else(|e| e.into_inner());
            for key in &subscription.routing_keys {
                if !bindings.contains(key) {
                    bindings.push(key.clone());
                }
            }
        }
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        // With batches, fewer workers each take more: see `Consumer::with_batch`.
        let workers = subscription.concurrency().clamp(1, 64);
        let metrics = ConsumerMetrics::new(&subscription.consumer);
        let gathering = Arc::new(Gathering::default());
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..workers {
                tasks.spawn(worker(
                    queue.clone(),
                    subscription.clone(),
                    handler.clone(),
                    stopped.clone(),
                    metrics.clone(),
                    gathering.clone(),
                ));
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(ConsumerHandle::new(stop, task))
    }
}

/// How a consumer's workers gather batches when it lingers.
#[derive(Default)]
struct Gathering {
    /// One worker gathers a batch at a time, as the RabbitMQ consumer does: otherwise the
    /// workers waiting idle would each take one of the messages a lingering batch waits for.
    turn: tokio::sync::Mutex<()>,
    /// Handler calls running: a batch lingers only while another call runs.
    running: AtomicUsize,
    /// Told when a handler call ends: a lingering batch goes then.
    call_ended: tokio::sync::Notify,
}

/// One of a consumer's handler calls at a time.
async fn worker(
    queue: Arc<Queue>,
    subscription: Consumer,
    handler: Arc<dyn MessageHandler>,
    stop: CancellationToken,
    metrics: ConsumerMetrics,
    gathering: Arc<Gathering>,
) {
    let batch = usize::from(subscription.batch.max(1));
    let lingers = batch > 1 && !subscription.linger.is_zero();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let gatherer = if lingers {
            tokio::select! {
                _ = stop.cancelled() => return,
                gatherer = gathering.turn.lock() => Some(gatherer),
            }
        } else {
            None
        };
        // What is waiting now, up to a batch; no wait for more unless the consumer lingers.
        let mut taken = queue.pop_up_to(batch);
        if taken.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = queue.notify.notified() => {}
                // A notification can go to a worker that is busy; look again now and then.
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
            continue;
        }
        // Nagle's rule: a message that finds no call running goes at once, and one that finds
        // calls running goes when one of them ends (or the linger runs out, or the batch fills).
        if lingers {
            let call_ended = gathering.call_ended.notified();
            tokio::pin!(call_ended);
            // Listening before looking, so that a call ending right after the look is heard.
            call_ended.as_mut().enable();
            if gathering.running.load(Ordering::SeqCst) > 0 {
                let linger_until = tokio::time::Instant::now() + subscription.linger;
                while taken.len() < batch {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep_until(linger_until) => break,
                        _ = &mut call_ended => break,
                        _ = queue.notify.notified() => {}
                    }
                    taken.extend(queue.pop_up_to(batch - taken.len()));
                }
                // What arrived as the wait ended goes too.
                taken.extend(queue.pop_up_to(batch - taken.len()));
            }
        }
        // Counted before the turn passes on, so the next gatherer sees this call running.
        let _running = Running::start(&gathering);
        drop(gatherer);
        if taken.len() > 1 {
            let events: Vec<RecordedEvent> = taken.iter().map(|(event, _)| event.clone()).collect();
            let started = std::time::Instant::now();
            let outcome = AssertUnwindSafe(handler.handle_batch(&events))
                .catch_unwind()
                .await;
            if let Ok(Ok(())) = outcome {
                metrics.handled_batch(events.len(), started.elapsed());
                continue;
            }
            // One of them failed the batch: each goes on its own, so a poison message meets
            // its retries and dead letter alone and the others commit.
            let failure = match outcome {
                Ok(Err(error)) => error.to_string(),
                Err(panic) => format!("the handler panicked: {}", panic_message(&*panic)),
                Ok(Ok(())) => unreachable!("handled above"),
            };
            tracing::debug!(consumer = %subscription.consumer, size = events.len(), error = %failure, "batch failed; handling its messages one by one");
            metrics.batch_fell_back(started.elapsed());
        }
        for (event, attempts) in taken.drain(..) {
            handle_one(&queue, &subscription, &*handler, &metrics, event, attempts).await;
        }
    }
}

/// Counts a handler call as running while it lives, and tells a lingering batch when it ends.
struct Running<'a>(&'a Gathering);

impl<'a> Running<'a> {
    fn start(gathering: &'a Gathering) -> Self {
        gathering.running.fetch_add(1, Ordering::SeqCst);
        Running(gathering)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.call_ended.notify_waiters();
    }
}

/// Handles one message with [`MessageHandler::handle`]: acked on success, else retried with
/// backoff or dead-lettered.
async fn handle_one(
    queue: &Arc<Queue>,
    subscription: &Consumer,
    handler: &dyn MessageHandler,
    metrics: &ConsumerMetrics,
    event: RecordedEvent,
    attempts: u32,
) {
    let attempts = attempts + 1;
    // A panicking handler is a failed attempt, as on the RabbitMQ bus: the message is
    // retried, then dead-lettered, and this worker goes on consuming.
    let started = std::time::Instant::now();
    let outcome = AssertUnwindSafe(handler.handle(&event))
        .catch_unwind()
        .await;
    let took = started.elapsed();
    let (failure, retry) = match outcome {
        Ok(Ok(())) => {
            metrics.handled(took);
            return;
        }
        Ok(Err(HandlerError::Reject(error))) => (error.to_string(), false),
        Ok(Err(HandlerError::Retry(error))) => (error.to_string(), true),
        Err(panic) => (
            format!("the handler panicked: {}", panic_message(&*panic)),
            true,
        ),
    };
    if retry && attempts < subscription.retry.max_attempts {
        tracing::debug!(consumer = %subscription.consumer, event_id = %event.event_id, attempts, error = %failure, "handler failed; retrying");
        metrics.retried(took);
        let delay = subscription.retry.backoff(attempts);
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.push(event, attempts);
        });
        return;
    }
    tracing::warn!(consumer = %subscription.consumer, event_id = %event.event_id, attempts, error = %failure, "message dead-lettered");
    metrics.dead_lettered(Some(took));
    queue
        .dead
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(DeadLetter {
            body: event.payload.clone(),
            event: Some(event),
            reason: failure,
            attempts,
        });
}

/// The message a panic was raised with, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
