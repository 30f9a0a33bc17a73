//! The inventory's consumer: reserves on `OrderPlaced`, releases on `PaymentFailed` and
//! `OrderCancelled`, commits on `OrderConfirmed`.
//!
//! A message, or a batch of them, is one [`MultiCommand`]: it loads each order's reservation
//! and every product the messages touch, decides the messages in order (a later one sees what
//! an earlier one recorded), and commits every change with every message's inbox entry, each
//! stream expecting the version it was loaded at. A product another writer changed meanwhile
//! makes it decide again on fresh state, so stock never goes below zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use es_core::bus::{HandlerError, MessageHandler};
use es_core::{
    Aggregate, CommandError, DomainEvent, Error, EventStore, InboxEntry, Metadata, MultiCommand,
    RecordedEvent, Repository, Slot, Workspace,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::product::{Product, ProductCommand};
use super::reservation::{Reservation, ReservationCommand, ReservationEvent, ReservedItem};
use super::stripes::ProductStripes;

/// What the inventory listens to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub(super) enum InventoryInput {
    OrderPlaced {
        order_id: Uuid,
        customer_id: Uuid,
        items: Vec<ReservedItem>,
        #[serde(with = "crate::money")]
        total_amount: Decimal,
    },
    OrderConfirmed {
        order_id: Uuid,
    },
    OrderCancelled {
        order_id: Uuid,
    },
    PaymentFailed {
        order_id: Uuid,
    },
}

impl DomainEvent for InventoryInput {}

impl InventoryInput {
    fn order_id(&self) -> Uuid {
        match self {
            InventoryInput::OrderPlaced { order_id, .. }
            | InventoryInput::OrderConfirmed { order_id }
            | InventoryInput::OrderCancelled { order_id }
            | InventoryInput::PaymentFailed { order_id } => *order_id,
        }
    }
}

/// Reserves on `OrderPlaced`, releases on `PaymentFailed` / `OrderCancelled`, commits on
/// `OrderConfirmed`; each effect commits with the message's inbox entry.
#[derive(Debug, Clone)]
pub struct InventoryHandler {
    pub(super) products: Repository<Product>,
    pub(super) reservations: Repository<Reservation>,
    consumer: String,
    stripes: Arc<ProductStripes>,
    /// One message: contended stock is decided again many times before the message goes
    /// back to the bus.
    single: MultiCommand,
    /// A batch: a few attempts, then its messages go one at a time.
    batch: MultiCommand,
}

/// Decisions again after a conflict before a message goes back to the bus for a later retry.
const MESSAGE_RETRIES: usize = 200;
/// Decisions again after a conflict before a batch's messages go one at a time.
const BATCH_RETRIES: usize = 20;

impl InventoryHandler {
    /// A handler consuming as `consumer`, deciding on `products` and `reservations` (their
    /// caches and snapshots), committing to `store`.
    pub(super) fn new(
        store: Arc<dyn EventStore>,
        products: Repository<Product>,
        reservations: Repository<Reservation>,
        consumer: String,
    ) -> Self {
        let command = |retries| {
            MultiCommand::new(store.clone())
                .with_max_retries(retries)
                .with_backoff(Duration::from_millis(5), Duration::from_millis(100))
        };
        InventoryHandler {
            products,
            reservations,
            consumer,
            stripes: Arc::new(ProductStripes::new()),
            single: command(MESSAGE_RETRIES),
            batch: command(BATCH_RETRIES),
        }
    }

    /// Carries out `inputs` in order, all in one commit. `Ok(false)`: a message among them
    /// was handled before, and nothing was written.
    async fn carry_out(
        &self,
        command: &MultiCommand,
        inputs: &[(&RecordedEvent, InventoryInput)],
    ) -> es_core::Result<bool> {
        let done = command
            .run(Metadata::default(), |mut work| async move {
                let mut orders: Vec<Uuid> =
                    inputs.iter().map(|(_, input)| input.order_id()).collect();
                orders.sort_unstable();
                orders.dedup();
                let order_ids: Vec<String> = orders.iter().map(Uuid::to_string).collect();
                let loaded = work.load_many(&self.reservations, &order_ids).await?;
                let reservations: HashMap<Uuid, Slot<Reservation>> =
                    orders.into_iter().zip(loaded).collect();
                // Every product placed, and every product a reservation holds.
                let mut touched: Vec<Uuid> = Vec::new();
                for (_, input) in inputs {
                    if let InventoryInput::OrderPlaced { items, .. } = input {
                        touched.extend(items.iter().map(|item| item.product_id));
                    }
                }
                for slot in reservations.values() {
                    touched.extend(work.state(*slot).items.iter().map(|item| item.product_id));
                }
                touched.sort_unstable();
                touched.dedup();
                // This process's handlers take turns on a product instead of conflicting on
                // it; the turn lasts until the commit (it is the run's answer, dropped after).
                let turn = self.stripes.lock(&touched).await;
                let product_ids: Vec<String> = touched.iter().map(Uuid::to_string).collect();
                let loaded = work.load_many(&self.products, &product_ids).await?;
                let products: HashMap<Uuid, Slot<Product>> =
                    touched.into_iter().zip(loaded).collect();
                for (message, input) in inputs {
                    work.set_metadata(Metadata::caused_by(message));
                    work.handled(InboxEntry::new(self.consumer.clone(), message.event_id));
                    let reservation = reservations[&input.order_id()];
                    decide(&mut work, reservation, &products, input)?;
                }
                Ok::<_, Error>((work, turn))
            })
            .await?;
        if !done.already_handled {
            tracing::info!(
                messages = inputs.len(),
                attempts = done.attempts,
                "inventory changed"
            );
        }
        Ok(!done.already_handled)
    }
}

/// Decides one message on the workspace's current state.
fn decide(
    work: &mut Workspace,
    reservation: Slot<Reservation>,
    products: &HashMap<Uuid, Slot<Product>>,
    input: &InventoryInput,
) -> es_core::Result<()> {
    let product = |id: &Uuid| {
        products
            .get(id)
            .copied()
            .ok_or_else(|| Error::InvalidInput(format!("product {id} was not loaded")))
    };
    match input {
        InventoryInput::OrderPlaced {
            order_id,
            customer_id,
            items,
            total_amount,
        } => {
            // Decided before: reserved, failed, or a cancellation overtook the order.
            if work.state(reservation).decided {
                return Ok(());
            }
            // All lines or none: decide every product first, record only if all can.
            let mut wanted: Vec<(Uuid, u64)> = Vec::new();
            for item in items {
                match wanted.iter_mut().find(|(id, _)| *id == item.product_id) {
                    Some((_, quantity)) => *quantity += item.quantity,
                    None => wanted.push((item.product_id, item.quantity)),
                }
            }
            let mut reserved = Vec::with_capacity(wanted.len());
            let mut failure = None;
            for (product_id, quantity) in wanted {
                let slot = product(&product_id)?;
                let command = ProductCommand::Reserve {
                    order_id: *order_id,
                    quantity,
                };
                // A refusal stands on the version it read: the commit checks it too.
                match work.state(slot).handle(command) {
                    Ok(events) => reserved.push((slot, events)),
                    Err(error) => {
                        failure = Some(format!("{error} {product_id}"));
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
                        work.record(slot, events)?;
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
            work.record(reservation, vec![decision])?;
        }
        InventoryInput::OrderConfirmed { order_id }
        | InventoryInput::OrderCancelled { order_id }
        | InventoryInput::PaymentFailed { order_id } => {
            let confirmed = matches!(input, InventoryInput::OrderConfirmed { .. });
            let command = if confirmed {
                ReservationCommand::Commit
            } else {
                ReservationCommand::Release
            };
            let items = work.state(reservation).items.clone();
            let Ok(events) = work.state(reservation).handle((*order_id, command));
            if work.record(reservation, events)?.is_empty() {
                return Ok(());
            }
            for item in items {
                let (order_id, quantity) = (*order_id, item.quantity);
                let command = if confirmed {
                    ProductCommand::Commit { order_id, quantity }
                } else {
                    ProductCommand::Release { order_id, quantity }
                };
                work.execute(product(&item.product_id)?, command)
                    .map_err(|error| match error {
                        CommandError::Rejected(error) => Error::InvalidInput(format!(
                            "cannot change the stock of order {order_id}: {error}"
                        )),
                        CommandError::Store(error) => error,
                    })?;
            }
        }
    }
    Ok(())
}

/// The messages the inventory listens to, each with its decoded input; types it does not
/// listen to are skipped.
fn decode(
    messages: &[RecordedEvent],
) -> Result<Vec<(&RecordedEvent, InventoryInput)>, HandlerError> {
    let mut inputs = Vec::with_capacity(messages.len());
    for message in messages {
        match message.decode::<InventoryInput>() {
            Ok(input) => inputs.push((message, input)),
            Err(Error::UnknownEventType { .. }) => {}
            Err(error) => return Err(HandlerError::reject(error)),
        }
    }
    Ok(inputs)
}

#[async_trait]
impl MessageHandler for InventoryHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let inputs = decode(std::slice::from_ref(message))?;
        if inputs.is_empty() {
            return Ok(());
        }
        match self.carry_out(&self.single, &inputs).await {
            // Carried out, or handled before: either way done.
            Ok(_) => Ok(()),
            Err(error) if error.is_conflict() => Err(HandlerError::retry(
                "stock stayed contended; retrying the message later",
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// The whole batch in one unit of work: every reservation and product stream it changes,
    /// each expecting the version it was decided on, with every message's inbox entry.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let inputs = decode(messages)?;
        if inputs.is_empty() {
            return Ok(());
        }
        match self.carry_out(&self.batch, &inputs).await {
            Ok(true) => Ok(()),
            // A message of the batch was handled before (a redelivery): one at a time.
            Ok(false) => Err(HandlerError::retry(
                "a message of the batch was handled before; handling them one by one",
            )),
            Err(error) if error.is_conflict() => Err(HandlerError::retry(
                "stock stayed contended; handling the batch's messages one by one",
            )),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use es_core::bus::{HandlerError, MessageHandler};
    use es_core::memory::MemoryEventStore;
    use es_core::{EventStore, RecordedEvent, Repository, StreamFilter};
    use uuid::Uuid;

    use super::super::reservation::{Reservation, ReservationStatus};
    use super::super::testing::{cancelled, confirmed, handler, placed, placed_lines, stock};

    #[tokio::test]
    async fn a_cancellation_that_overtakes_the_order_leaves_its_stock_untouched() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let inventory = handler(&store).await;
        let order_id = Uuid::now_v7();

        inventory.handle(&cancelled(order_id)).await.unwrap();
        inventory.handle(&placed(order_id, 5)).await.unwrap();

        assert_eq!(stock(&inventory).await, (100, 0), "nothing may stay held");
        let reservation = inventory
            .reservations
            .load(&order_id.to_string())
            .await
            .unwrap()
            .state;
        assert_eq!(reservation.status, ReservationStatus::Released);
        assert!(reservation.items.is_empty(), "nothing was ever reserved");
        // Nothing went on the wire for the refused reservation.
        let events = store
            .read_stream_to_end(
                &Repository::<Reservation>::stream_id(&order_id.to_string()).unwrap(),
                0,
            )
            .await
            .unwrap();
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["ReservationCancelled"]);
    }

    #[tokio::test]
    async fn an_order_naming_a_product_on_two_lines_reserves_their_sum_or_nothing() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let inventory = handler(&store).await;
        // 60 + 60 of 100 laptops: each line fits alone, both together do not.
        let too_many = Uuid::now_v7();
        inventory
            .handle(&placed_lines(too_many, &[60, 60]))
            .await
            .unwrap();
        assert_eq!(stock(&inventory).await, (100, 0), "nothing held");
        let refused = inventory
            .reservations
            .load(&too_many.to_string())
            .await
            .unwrap()
            .state;
        assert_eq!(
            refused.status,
            ReservationStatus::None,
            "the reservation failed"
        );
        // 30 + 30 fit, and releasing gives both lines back.
        let fits = Uuid::now_v7();
        inventory
            .handle(&placed_lines(fits, &[30, 30]))
            .await
            .unwrap();
        assert_eq!(stock(&inventory).await, (40, 60));
        inventory.handle(&cancelled(fits)).await.unwrap();
        assert_eq!(stock(&inventory).await, (100, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancellation_racing_the_reservation_never_leaves_stock_held() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        cancellations_race_reservations(store).await;
    }

    /// The same race on PostgreSQL, where the expected versions are the store's to check
    /// (as `es-test-services` finds it; a schema of its own, dropped after).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_a_cancellation_racing_the_reservation_never_leaves_stock_held() {
        crate::backends::testing::on_postgres(|backends| {
            cancellations_race_reservations(backends.store.clone())
        })
        .await;
    }

    async fn cancellations_race_reservations(store: Arc<dyn EventStore>) {
        // Two processes' handlers: the stripes of one do not order the other's work.
        let first = Arc::new(handler(&store).await);
        let second = Arc::new(handler(&store).await);
        // A few rounds, as each pair races only once.
        for _round in 0..3 {
            let orders: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
            let mut tasks = Vec::new();
            for (i, &order_id) in orders.iter().enumerate() {
                let (a, b) = if i % 2 == 0 {
                    (first.clone(), second.clone())
                } else {
                    (second.clone(), first.clone())
                };
                tasks.push(tokio::spawn(async move {
                    let place = placed(order_id, 2);
                    a.handle(&place).await
                }));
                tasks.push(tokio::spawn(async move {
                    let cancel = cancelled(order_id);
                    b.handle(&cancel).await
                }));
            }
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            assert_eq!(
                stock(&first).await,
                (100, 0),
                "every cancelled order's stock is back"
            );
            for order_id in orders {
                let reservation = first
                    .reservations
                    .load(&order_id.to_string())
                    .await
                    .unwrap()
                    .state;
                // Released, or refused for too little stock while others held it: never held.
                assert!(
                    matches!(
                        reservation.status,
                        ReservationStatus::Released | ReservationStatus::None
                    ),
                    "order {order_id}: {:?}",
                    reservation.status
                );
            }
        }
    }

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
