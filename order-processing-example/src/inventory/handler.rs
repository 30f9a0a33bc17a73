//! The inventory's consumer: reserves on `OrderPlaced`, releases on `PaymentFailed` and
//! `OrderCancelled`, commits on `OrderConfirmed`, one message at a time (a batch at once is in
//! `batch.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use es_core::bus::{HandlerError, MessageHandler};
use es_core::{
    CommitOutcome, Decision, DomainEvent, EventStore, InboxEntry, Metadata, RecordedEvent,
    Repository, StreamAppend, UnitOfWork,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::batch::BATCH_ATTEMPTS;
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

/// Reserves on `OrderPlaced`, releases on `PaymentFailed` / `OrderCancelled`, commits on
/// `OrderConfirmed`; each effect commits with the message's inbox entry.
#[derive(Debug, Clone)]
pub struct InventoryHandler {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) products: Repository<Product>,
    pub(super) reservations: Repository<Reservation>,
    pub(super) consumer: String,
    pub(super) stripes: Arc<ProductStripes>,
}

/// What one message changes: the appends of one unit of work, and the product decisions in
/// it (folded and snapshotted once it committed).
#[derive(Debug)]
struct Plan {
    appends: Vec<StreamAppend>,
    products: Vec<Decision<Product>>,
}

/// Attempts before a contended reservation goes back to the bus for a later retry.
const MAX_ATTEMPTS: usize = 200;

impl InventoryHandler {
    /// Decides once on fresh state; `None` when there is nothing left to do.
    async fn decide(
        &self,
        message: &RecordedEvent,
        input: &InventoryInput,
    ) -> es_core::Result<Option<Plan>> {
        let metadata = Metadata::caused_by(message);
        let (order_id, reservation_command, product_command): (
            Uuid,
            ReservationCommand,
            fn(Uuid, u64) -> ProductCommand,
        ) = match input {
            InventoryInput::OrderPlaced {
                order_id,
                customer_id,
                items,
                total_amount,
            } => {
                return self
                    .decide_reservation(*order_id, *customer_id, items, *total_amount, &metadata)
                    .await
            }
            InventoryInput::OrderConfirmed { order_id } => (
                *order_id,
                ReservationCommand::Commit,
                |order_id, quantity| ProductCommand::Commit { order_id, quantity },
            ),
            InventoryInput::OrderCancelled { order_id }
            | InventoryInput::PaymentFailed { order_id } => (
                *order_id,
                ReservationCommand::Release,
                |order_id, quantity| ProductCommand::Release { order_id, quantity },
            ),
        };
        let reservation = self
            .reservations
            .decide(
                &order_id.to_string(),
                (order_id, reservation_command),
                metadata.clone(),
            )
            .await?;
        if reservation.append.events.is_empty() {
            return Ok(None);
        }
        let mut appends = Vec::new();
        let mut products = Vec::new();
        for item in &reservation.state.items {
            let product = self
                .products
                .decide(
                    &item.product_id.to_string(),
                    product_command(order_id, item.quantity),
                    metadata.clone(),
                )
                .await?;
            if let Err(error) = product.outcome {
                return Err(es_core::Error::InvalidInput(format!(
                    "cannot change the stock of order {order_id}: {error}"
                )));
            }
            appends.push(product.append.clone());
            products.push(product);
        }
        appends.insert(0, reservation.append);
        Ok(Some(Plan { appends, products }))
    }

    async fn decide_reservation(
        &self,
        order_id: Uuid,
        customer_id: Uuid,
        items: &[ReservedItem],
        total_amount: Decimal,
        metadata: &Metadata,
    ) -> es_core::Result<Option<Plan>> {
        let reservation = self.reservations.load(&order_id.to_string()).await?;
        if reservation.state.decided {
            return Ok(None);
        }
        let mut product_appends = Vec::new();
        let mut products = Vec::new();
        let mut failure = None;
        for item in items {
            let command = ProductCommand::Reserve {
                order_id,
                quantity: item.quantity,
            };
            let product = self
                .products
                .decide(&item.product_id.to_string(), command, metadata.clone())
                .await?;
            // A refusal writes no stock, but its append still expects the version it was
            // decided on, so a refusal on stale state is a conflict and is decided again.
            product_appends.push(product.append.clone());
            if let Err(error) = &product.outcome {
                failure = Some(format!("{error} {}", item.product_id));
                break;
            }
            products.push(product);
        }
        let at = Utc::now();
        let decision = match failure {
            Some(reason) => {
                // Nothing is reserved: keep only the expectations.
                product_appends.iter_mut().for_each(|a| a.events.clear());
                products.clear();
                ReservationEvent::InventoryFailed {
                    order_id,
                    customer_id,
                    reason,
                    at,
                }
            }
            None => ReservationEvent::InventoryReserved {
                order_id,
                customer_id,
                items: items.to_vec(),
                total_amount,
                at,
            },
        };
        let reservation = self
            .reservations
            .decide(
                &order_id.to_string(),
                (order_id, ReservationCommand::Decide(decision)),
                metadata.clone(),
            )
            .await?;
        // Decided meanwhile (a cancellation's tombstone, say): this reload saw it, so reserve
        // nothing. The stock decisions above must not commit on their own.
        if reservation.append.events.is_empty() {
            return Ok(None);
        }
        let mut appends = vec![reservation.append];
        appends.extend(product_appends);
        Ok(Some(Plan { appends, products }))
    }
}

#[async_trait]
impl MessageHandler for InventoryHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let input = match message.decode::<InventoryInput>() {
            Ok(input) => input,
            Err(es_core::Error::UnknownEventType { .. }) => return Ok(()),
            Err(error) => return Err(HandlerError::reject(error)),
        };
        let inbox = InboxEntry::new(self.consumer.clone(), message.event_id);
        let touched = match &input {
            InventoryInput::OrderPlaced { items, .. } => {
                items.iter().map(|item| item.product_id).collect()
            }
            InventoryInput::OrderConfirmed { order_id }
            | InventoryInput::OrderCancelled { order_id }
            | InventoryInput::PaymentFailed { order_id } => self
                .reservations
                .load(&order_id.to_string())
                .await?
                .state
                .items
                .iter()
                .map(|item| item.product_id)
                .collect::<Vec<_>>(),
        };
        let _turn = self.stripes.lock(&touched).await;
        let mut backoff = es_core::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(100),
        );
        for attempt in 0..MAX_ATTEMPTS {
            let (unit, products) = match self.decide(message, &input).await? {
                Some(plan) => (
                    UnitOfWork {
                        appends: plan.appends,
                        inbox: vec![inbox.clone()],
                        checkpoint: None,
                    },
                    plan.products,
                ),
                // Nothing to change; still remember the message as handled.
                None => (UnitOfWork::new().handled(inbox.clone()), Vec::new()),
            };
            match self.store.commit(unit).await {
                Ok(CommitOutcome::Committed(results)) => {
                    if let Some(first) = results.first() {
                        tracing::info!(stream = %first.stream_id, attempt, "inventory changed");
                    }
                    // Snapshot busy products, so loading one reads only a short tail.
                    for product in products {
                        self.products.committed(product).await;
                    }
                    return Ok(());
                }
                Ok(CommitOutcome::AlreadyHandled) => return Ok(()),
                Err(error) if error.is_conflict() => {
                    backoff.sleep().await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(HandlerError::retry(
            "stock stayed contended; retrying the message later",
        ))
    }

    /// The whole batch in one unit of work: every reservation and product stream it changes,
    /// each expecting the version it was decided on, with every message's inbox entry.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let mut inputs = Vec::with_capacity(messages.len());
        for message in messages {
            match message.decode::<InventoryInput>() {
                Ok(input) => inputs.push((message, input)),
                Err(es_core::Error::UnknownEventType { .. }) => {}
                Err(error) => return Err(HandlerError::reject(error)),
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let mut backoff = es_core::Backoff::new(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(100),
        );
        for _ in 0..BATCH_ATTEMPTS {
            if self.try_batch(&inputs).await? {
                return Ok(());
            }
            backoff.sleep().await;
        }
        Err(HandlerError::retry(
            "stock stayed contended; handling the batch's messages one by one",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use es_core::bus::MessageHandler;
    use es_core::memory::MemoryEventStore;
    use es_core::{EventStore, Repository};
    use uuid::Uuid;

    use super::super::reservation::{Reservation, ReservationStatus};
    use super::super::testing::{cancelled, handler, placed, stock};

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
}
