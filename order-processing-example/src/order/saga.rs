//! The order saga: reserve, pay, confirm; or cancel on a failure or the timeout. It reads the
//! other services' wire events and sends its commands to the order aggregate.

use async_trait::async_trait;
use chrono::Utc;
use es_core::{
    CommandContext, CommandDispatcher, DispatchError, DomainEvent, Envelope, Repository, Saga,
    SagaDecision,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use super::domain::{Order, OrderCommand};
use super::read_model::OrderCache;

/// What the order saga listens to: the wire events, read for their order id and reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FlowEvent {
    /// An order was placed: start its timeout.
    OrderPlaced(FlowRef),
    /// Its stock is reserved.
    InventoryReserved(FlowRef),
    /// Its stock could not be reserved.
    InventoryFailed(FlowRef),
    /// It was paid.
    PaymentProcessed(FlowRef),
    /// Its payment was declined.
    PaymentFailed(FlowRef),
}

/// The part of a wire event the saga reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRef {
    /// The order.
    pub order_id: Uuid,
    /// Why it failed, for failures.
    #[serde(default)]
    pub reason: Option<String>,
    /// The payment, for payments.
    #[serde(default)]
    pub payment_id: Option<Uuid>,
}

impl DomainEvent for FlowEvent {}

impl FlowEvent {
    fn order_ref(&self) -> &FlowRef {
        match self {
            FlowEvent::OrderPlaced(r)
            | FlowEvent::InventoryReserved(r)
            | FlowEvent::InventoryFailed(r)
            | FlowEvent::PaymentProcessed(r)
            | FlowEvent::PaymentFailed(r) => r,
        }
    }
}

/// A command the saga sends to an order.
#[derive(Debug, Clone)]
pub struct FlowCommand {
    /// The order.
    pub order_id: Uuid,
    /// What to do.
    pub action: FlowAction,
}

/// What the saga asks of an order.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowAction {
    /// Record the reservation.
    MarkInventoryReserved,
    /// Record the payment and confirm.
    Confirm(Option<Uuid>),
    /// Cancel for this reason.
    Cancel(String),
}

/// The order timeout: fires when an order is neither Confirmed nor Cancelled in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderTimeout {
    /// The order.
    pub order_id: Uuid,
}

/// The order saga: reserve, pay, confirm; or cancel on a failure or the timeout.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFulfillment {
    order_id: Option<Uuid>,
}

impl Saga for OrderFulfillment {
    const NAME: &'static str = "order-fulfillment";
    type Event = FlowEvent;
    type Command = FlowCommand;
    type Deadline = OrderTimeout;
    /// The order timeout.
    type Config = chrono::Duration;

    fn instance_id(event: &Envelope<FlowEvent>) -> Option<String> {
        Some(event.event.order_ref().order_id.to_string())
    }

    fn handle(
        &mut self,
        timeout: &chrono::Duration,
        event: &Envelope<FlowEvent>,
    ) -> SagaDecision<FlowCommand, OrderTimeout> {
        let order = event.event.order_ref();
        self.order_id = Some(order.order_id);
        let command = |action| FlowCommand {
            order_id: order.order_id,
            action,
        };
        let reason = order.reason.clone().unwrap_or_default();
        match &event.event {
            // Saturates instead of panicking when a huge timeout runs past the end of time.
            FlowEvent::OrderPlaced(_) => SagaDecision::none().schedule_after(
                "timeout",
                event.recorded_at,
                *timeout,
                OrderTimeout {
                    order_id: order.order_id,
                },
            ),
            FlowEvent::InventoryReserved(_) => {
                SagaDecision::none().send(command(FlowAction::MarkInventoryReserved))
            }
            FlowEvent::InventoryFailed(_) => SagaDecision::none()
                .send(command(FlowAction::Cancel(reason)))
                .cancel("timeout")
                .complete(),
            FlowEvent::PaymentProcessed(payment) => SagaDecision::none()
                .send(command(FlowAction::Confirm(payment.payment_id)))
                .cancel("timeout")
                .complete(),
            FlowEvent::PaymentFailed(_) => SagaDecision::none()
                .send(command(FlowAction::Cancel(format!(
                    "payment declined: {reason}"
                ))))
                .cancel("timeout")
                .complete(),
        }
    }

    fn on_deadline(
        &mut self,
        _timeout: &chrono::Duration,
        deadline: OrderTimeout,
    ) -> SagaDecision<FlowCommand, OrderTimeout> {
        SagaDecision::none()
            .send(FlowCommand {
                order_id: deadline.order_id,
                action: FlowAction::Cancel("timed out".into()),
            })
            .complete()
    }
}

/// Carries out the saga's commands on the order repository, and drops the cached order.
#[derive(Debug, Clone)]
pub struct OrderDispatcher {
    pub(super) orders: Repository<Order>,
    pub(super) cache: OrderCache,
}

#[async_trait]
impl CommandDispatcher<FlowCommand> for OrderDispatcher {
    async fn dispatch(
        &self,
        command: FlowCommand,
        context: CommandContext,
    ) -> Result<(), DispatchError> {
        let at = Utc::now();
        let order_command = match command.action.clone() {
            FlowAction::MarkInventoryReserved => OrderCommand::MarkInventoryReserved { at },
            FlowAction::Confirm(payment_id) => OrderCommand::ConfirmPayment { payment_id, at },
            FlowAction::Cancel(reason) => OrderCommand::Cancel { reason, at },
        };
        let span = tracing::info_span!("saga", correlation_id = %context.metadata.correlation_id.unwrap_or(command.order_id), order_id = %command.order_id);
        async {
            // `?` keeps the store error's kind: an outage is retried, a refusal dead-letters.
            let executed = self
                .orders
                .execute(&command.order_id.to_string(), order_command, context)
                .await?;
            if !executed.events.is_empty() {
                tracing::info!(action = ?command.action, status = ?executed.state.status, "order moved");
                self.cache
                    .changed(command.order_id, executed.version)
                    .await;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The saga's commands of a batch, on every order they touch, in one commit.
    async fn dispatch_many(
        &self,
        commands: Vec<(FlowCommand, CommandContext)>,
    ) -> Result<(), DispatchError> {
        let at = Utc::now();
        let batch: Vec<_> = commands
            .iter()
            .map(|(command, context)| {
                let order_command = match command.action.clone() {
                    FlowAction::MarkInventoryReserved => OrderCommand::MarkInventoryReserved { at },
                    FlowAction::Confirm(payment_id) => {
                        OrderCommand::ConfirmPayment { payment_id, at }
                    }
                    FlowAction::Cancel(reason) => OrderCommand::Cancel { reason, at },
                };
                (command.order_id.to_string(), order_command, context.clone())
            })
            .collect();
        let executed = self.orders.execute_batch(batch).await?;
        for ((command, _), executed) in commands.iter().zip(executed) {
            if !executed.events.is_empty() {
                tracing::info!(order_id = %command.order_id, action = ?command.action, status = ?executed.state.status, "order moved");
                self.cache.changed(command.order_id, executed.version).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_past_the_end_of_time_saturates_instead_of_panicking() {
        let placed = es_core::testing::envelope(
            "order-1",
            1,
            FlowEvent::OrderPlaced(FlowRef {
                order_id: Uuid::nil(),
                reason: None,
                payment_id: None,
            }),
            es_core::Metadata::default(),
        );
        // `--order-timeout 100000000d`: past the last representable time.
        let timeout = chrono::Duration::from_std(
            crate::config::parse_duration("100000000d").expect("a long but valid timeout"),
        )
        .expect("fits a chrono duration");
        let decision = OrderFulfillment::default().handle(&timeout, &placed);
        assert_eq!(decision.schedule[0].1, chrono::DateTime::<Utc>::MAX_UTC);
    }
}
