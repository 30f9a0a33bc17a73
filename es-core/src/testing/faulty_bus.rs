//! A bus that fails on purpose, for testing what publishes to it (a relay).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::bus::{Consumer, ConsumerHandle, EventBus, MessageHandler};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;

/// An [`EventBus`] in front of another that fails the way a real broker does, on demand.
///
/// - It refuses any batch holding an event of a type set with [`refuse`](Self::refuse), with
///   [`Error::Serialization`], as a broker's wire format refuses an event it cannot carry: a
///   permanent failure of that one event.
/// - While [`set_down`](Self::set_down)`(true)`, it fails every publish with
///   [`Error::Unavailable`], as a broker that cannot be reached.
///
/// Everything else goes through to the inner bus.
#[derive(Debug)]
pub struct FaultyBus {
    inner: Arc<dyn EventBus>,
    refused: Mutex<HashSet<String>>,
    down: AtomicBool,
    attempts: AtomicUsize,
}

impl FaultyBus {
    /// A bus passing everything on to `inner` until told otherwise.
    pub fn new(inner: Arc<dyn EventBus>) -> Arc<Self> {
        Arc::new(FaultyBus {
            inner,
            refused: Mutex::default(),
            down: AtomicBool::new(false),
            attempts: AtomicUsize::new(0),
        })
    }

    /// Refuses, from now on, every batch that holds an event of type `event_type`.
    pub fn refuse(&self, event_type: impl Into<String>) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event_type.into());
    }

    /// Takes the bus down (every publish fails as unavailable) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many times `publish` was called, failed calls included.
    pub fn publish_attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventBus for FaultyBus {
    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("faulty-bus", "the bus is down"));
        }
        let refused = events.iter().find(|event| {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&event.event_type)
        });
        if let Some(event) = refused {
            return Err(Error::serialization(
                event.event_type.clone(),
                format!("the wire cannot carry event {}", event.event_id),
            ));
        }
        self.inner.publish(events).await
    }

    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle> {
        self.inner.subscribe(subscription, handler).await
    }
}
