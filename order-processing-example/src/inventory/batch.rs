//! The inventory's consumer on a batch of messages: every reservation and product stream the
//! batch changes, decided in order in memory and committed in one unit of work.

use std::collections::HashMap;

use chrono::Utc;
use es_core::bus::HandlerError;
use es_core::{
    Aggregate, CommitOutcome, Decision, ExpectedVersion, InboxEntry, Metadata, NewEvent,
    RecordedEvent, Repository, StreamAppend, UnitOfWork,
};
use uuid::Uuid;

use super::handler::{InventoryHandler, InventoryInput};
use super::product::{Product, ProductCommand};
use super::reservation::{Reservation, ReservationCommand, ReservationEvent};

/// One stream as a batch sees it: as loaded, and what the batch adds to it.
struct Slot<A: Aggregate> {
    stream: es_core::StreamId,
    loaded: A,
    version: u64,
    state: A,
    events: Vec<A::Event>,
    written: Vec<NewEvent>,
    /// Part of the commit: it changed, or a decision stands on its state (a refusal).
    checked: bool,
}

impl<A: Aggregate + Clone> Slot<A> {
    fn new(stream: es_core::StreamId, loaded: es_core::Loaded<A>) -> Self {
        Slot {
            stream,
            state: loaded.state.clone(),
            loaded: loaded.state,
            version: loaded.version,
            events: Vec::new(),
            written: Vec::new(),
            checked: false,
        }
    }

    fn push(&mut self, events: Vec<A::Event>, metadata: &Metadata) -> es_core::Result<()> {
        for event in events {
            self.written
                .push(NewEvent::from_domain(&event, metadata.clone())?);
            self.state.apply(&event);
            self.events.push(event);
        }
        self.checked = true;
        Ok(())
    }

    /// The append: the batch's events, expecting the version the stream was loaded at.
    fn append(&self) -> StreamAppend {
        StreamAppend::new(
            self.stream.clone(),
            ExpectedVersion::Exact(self.version),
            self.written.clone(),
        )
    }

    /// The slot as a committed [`Decision`], to fold into the repository's cache.
    fn decision(self) -> Decision<A> {
        Decision {
            append: self.append(),
            outcome: Ok(self.events),
            state: self.loaded,
            version: self.version,
        }
    }
}

/// Attempts of a contended batch before its messages go one at a time.
pub(super) const BATCH_ATTEMPTS: usize = 20;

impl InventoryHandler {
    /// Decides the batch in order on the loaded state (a later message sees what an earlier
    /// one decided), in memory; the caller commits it.
    fn decide_batch(
        inputs: &[(&RecordedEvent, InventoryInput)],
        reservations: &mut [Slot<Reservation>],
        order_slot: &HashMap<Uuid, usize>,
        products: &mut [Slot<Product>],
        product_slot: &HashMap<Uuid, usize>,
    ) -> es_core::Result<()> {
        for (message, input) in inputs {
            let metadata = Metadata::caused_by(message);
            match input {
                InventoryInput::OrderPlaced {
                    order_id,
                    customer_id,
                    items,
                    total_amount,
                } => {
                    let reservation = &mut reservations[order_slot[order_id]];
                    if reservation.state.decided {
                        continue;
                    }
                    let mut failure = None;
                    let mut reserved = Vec::with_capacity(items.len());
                    for item in items {
                        let product = &mut products[product_slot[&item.product_id]];
                        // A refusal stands on this version too: it is checked at the commit.
                        product.checked = true;
                        let command = ProductCommand::Reserve {
                            order_id: *order_id,
                            quantity: item.quantity,
                        };
                        match product.state.handle(command) {
                            Ok(events) => reserved.push((product_slot[&item.product_id], events)),
                            Err(error) => {
                                failure = Some(format!("{error} {}", item.product_id));
                                break;
                            }
                        }
                    }
                    let at = Utc::now();
                    let decision = match failure {
                        Some(reason) => ReservationEvent::InventoryFailed {
                            order_id: *order_id,
                            customer_id: *customer_id,
                            reason,
                            at,
                        },
                        None => {
                            for (slot, events) in reserved {
                                products[slot].push(events, &metadata)?;
                            }
                            ReservationEvent::InventoryReserved {
                                order_id: *order_id,
                                customer_id: *customer_id,
                                items: items.clone(),
                                total_amount: *total_amount,
                                at,
                            }
                        }
                    };
                    let events = reservation
                        .state
                        .handle((*order_id, ReservationCommand::Decide(decision)))
                        .unwrap_or_default();
                    reservation.push(events, &metadata)?;
                }
                InventoryInput::OrderConfirmed { order_id }
                | InventoryInput::OrderCancelled { order_id }
                | InventoryInput::PaymentFailed { order_id } => {
                    let confirmed = matches!(input, InventoryInput::OrderConfirmed { .. });
                    let reservation = &mut reservations[order_slot[order_id]];
                    let command = if confirmed {
                        ReservationCommand::Commit
                    } else {
                        ReservationCommand::Release
                    };
                    let items = reservation.state.items.clone();
                    let events = reservation
                        .state
                        .handle((*order_id, command))
                        .unwrap_or_default();
                    if events.is_empty() {
                        continue;
                    }
                    reservation.push(events, &metadata)?;
                    for item in items {
                        let product = &mut products[product_slot[&item.product_id]];
                        let command = if confirmed {
                            ProductCommand::Commit {
                                order_id: *order_id,
                                quantity: item.quantity,
                            }
                        } else {
                            ProductCommand::Release {
                                order_id: *order_id,
                                quantity: item.quantity,
                            }
                        };
                        let events = product.state.handle(command).map_err(|error| {
                            es_core::Error::InvalidInput(format!(
                                "cannot change the stock of order {order_id}: {error}"
                            ))
                        })?;
                        product.push(events, &metadata)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One attempt at a batch: load what it touches, decide, commit. `Ok(false)` on a
    /// version conflict (decide again).
    pub(super) async fn try_batch(
        &self,
        inputs: &[(&RecordedEvent, InventoryInput)],
    ) -> Result<bool, HandlerError> {
        let mut orders: Vec<Uuid> = Vec::new();
        for (_, input) in inputs {
            let order_id = match input {
                InventoryInput::OrderPlaced { order_id, .. }
                | InventoryInput::OrderConfirmed { order_id }
                | InventoryInput::OrderCancelled { order_id }
                | InventoryInput::PaymentFailed { order_id } => *order_id,
            };
            if !orders.contains(&order_id) {
                orders.push(order_id);
            }
        }
        let order_ids: Vec<String> = orders.iter().map(Uuid::to_string).collect();
        let loaded = self.reservations.load_many(&order_ids).await?;
        let mut touched: Vec<Uuid> = Vec::new();
        let mut touch = |id: Uuid| {
            if !touched.contains(&id) {
                touched.push(id);
            }
        };
        for (_, input) in inputs {
            if let InventoryInput::OrderPlaced { items, .. } = input {
                items.iter().for_each(|item| touch(item.product_id));
            }
        }
        for reservation in &loaded {
            reservation
                .state
                .items
                .iter()
                .for_each(|item| touch(item.product_id));
        }
        let mut reservations = Vec::with_capacity(orders.len());
        for (id, loaded) in order_ids.iter().zip(loaded) {
            reservations.push(Slot::new(Repository::<Reservation>::stream_id(id)?, loaded));
        }
        let order_slot = orders.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        // Products are decided under their stripes' locks, so that this process's batches
        // take turns on a product instead of conflicting on it.
        let _turn = self.stripes.lock(&touched).await;
        let product_ids: Vec<String> = touched.iter().map(Uuid::to_string).collect();
        let loaded = self.products.load_many(&product_ids).await?;
        let mut products = Vec::with_capacity(touched.len());
        for (id, loaded) in product_ids.iter().zip(loaded) {
            products.push(Slot::new(Repository::<Product>::stream_id(id)?, loaded));
        }
        let product_slot = touched.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self::decide_batch(
            inputs,
            &mut reservations,
            &order_slot,
            &mut products,
            &product_slot,
        )
        .map_err(HandlerError::from)?;
        let mut unit = UnitOfWork::new();
        for slot in reservations.iter().filter(|slot| slot.checked) {
            unit = unit.append(slot.append());
        }
        for slot in products.iter().filter(|slot| slot.checked) {
            unit = unit.append(slot.append());
        }
        for (message, _) in inputs {
            unit = unit.handled(InboxEntry::new(self.consumer.clone(), message.event_id));
        }
        match self.store.commit(unit).await {
            Ok(CommitOutcome::Committed(_)) => {
                tracing::info!(messages = inputs.len(), "inventory changed");
                for slot in products.into_iter().filter(|slot| !slot.events.is_empty()) {
                    self.products.committed(slot.decision()).await;
                }
                Ok(true)
            }
            // A message of the batch was handled before (a redelivery): one at a time.
            Ok(CommitOutcome::AlreadyHandled) => Err(HandlerError::retry(
                "a message of the batch was handled before; handling them one by one",
            )),
            Err(error) if error.is_conflict() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use es_core::bus::{HandlerError, MessageHandler};
    use es_core::memory::MemoryEventStore;
    use es_core::{EventStore, RecordedEvent, StreamFilter};
    use uuid::Uuid;

    use super::super::reservation::ReservationStatus;
    use super::super::testing::{cancelled, confirmed, handler, placed, stock};

    #[tokio::test]
    async fn a_batch_on_one_product_reserves_what_there_is_in_order_and_never_oversells() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let inventory = handler(&store).await;
        let orders: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        // 8 × 30 of 100 laptops: the first three fit; a cancellation overtakes the fourth
        // order; the first order is confirmed in the same batch.
        let mut batch: Vec<RecordedEvent> = Vec::new();
        batch.push(cancelled(orders[3]));
        batch.extend(orders.iter().map(|&id| placed(id, 30)));
        batch.push(confirmed(orders[0]));
        let head = store.head().await.unwrap();
        inventory.handle_batch(&batch).await.unwrap();
        let written = store
            .read_all(&StreamFilter::All, head, 1000)
            .await
            .unwrap();
        assert!(
            written
                .iter()
                .all(|e| e.position.commit == written[0].position.commit),
            "one commit for the whole batch"
        );
        assert_eq!(
            stock(&inventory).await,
            (10, 60),
            "30 sold, 60 held, never below zero"
        );
        let mut statuses = Vec::new();
        for id in &orders {
            let reservation = inventory
                .reservations
                .load(&id.to_string())
                .await
                .unwrap()
                .state;
            statuses.push(reservation.status);
        }
        use ReservationStatus::*;
        assert_eq!(
            statuses,
            [Committed, Reserved, Reserved, Released, None, None, None, None],
            "in the batch's order: the overtaken order reserves nothing, the rest fail"
        );
        // A redelivery of the whole batch changes nothing: its messages are handled one by one
        // and each is skipped.
        inventory.handle(&batch[1]).await.unwrap();
        assert!(
            inventory.handle_batch(&batch).await.is_err(),
            "handled before: one by one"
        );
        for message in &batch {
            inventory.handle(message).await.unwrap();
        }
        assert_eq!(stock(&inventory).await, (10, 60));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_racing_single_messages_keep_the_stock_whole() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        batches_race_single_messages(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_batches_racing_single_messages_keep_the_stock_whole() {
        crate::backends::testing::on_postgres(|backends| {
            batches_race_single_messages(backends.store.clone())
        })
        .await;
    }

    /// Two processes: one takes batches, the other single messages, over the same orders.
    async fn batches_race_single_messages(store: Arc<dyn EventStore>) {
        let batched = Arc::new(handler(&store).await);
        let single = Arc::new(handler(&store).await);
        let orders: Vec<Uuid> = (0..120).map(|_| Uuid::now_v7()).collect();
        let mut tasks = Vec::new();
        for chunk in orders.chunks(8) {
            let (a, b) = (batched.clone(), single.clone());
            let places: Vec<RecordedEvent> = chunk.iter().map(|&id| placed(id, 1)).collect();
            let cancels: Vec<RecordedEvent> = chunk.iter().map(|&id| cancelled(id)).collect();
            tasks.push(tokio::spawn(async move {
                // A failed batch is handled one by one, as the bus would.
                if a.handle_batch(&places).await.is_err() {
                    for message in &places {
                        a.handle(message).await?;
                    }
                }
                Ok::<_, HandlerError>(())
            }));
            tasks.push(tokio::spawn(async move {
                for message in &cancels {
                    b.handle(message).await?;
                }
                Ok(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            stock(&batched).await,
            (100, 0),
            "every cancelled order's stock is back"
        );
    }
}
