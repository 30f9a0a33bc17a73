//! The notification service (5004): one notification per order and kind.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use es_core::bus::{HandlerError, MessageHandler};
use es_core::{
    Aggregate, BoxError, CommandContext, DomainEvent, Projection, RecordedEvent, Repository,
    StreamFilter,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::{finish_router, ApiPath, ApiQuery, AppError};
use crate::listing::{page_of, Cursor, Listings, Page, PageQuery};
use crate::service_kind::ServiceKind;

/// A notification as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    /// The notification.
    pub notification_id: Uuid,
    /// Who it is for.
    pub customer_id: Uuid,
    /// The order it is about.
    pub order_id: Uuid,
    /// `OrderPlaced`, `OrderConfirmed` or `OrderCancelled`.
    pub kind: String,
    /// The text.
    pub message: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// What the notification service records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NotificationEvent {
    /// A notification was sent.
    NotificationSent(NotificationView),
}

impl DomainEvent for NotificationEvent {}

/// The notifications of one order: at most one per kind.
#[derive(Debug, Clone, Default)]
pub struct OrderNotifications {
    sent: BTreeSet<String>,
}

impl Aggregate for OrderNotifications {
    const TYPE: &'static str = "notification";
    type Command = NotificationView;
    type Event = NotificationEvent;
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        notification: NotificationView,
    ) -> Result<Vec<NotificationEvent>, std::convert::Infallible> {
        if self.sent.contains(&notification.kind) {
            return Ok(Vec::new());
        }
        Ok(vec![NotificationEvent::NotificationSent(notification)])
    }

    fn apply(&mut self, event: &NotificationEvent) {
        let NotificationEvent::NotificationSent(notification) = event;
        self.sent.insert(notification.kind.clone());
    }
}

// The variant names are the stored event types, which all start with `Order`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
enum NotificationInput {
    OrderPlaced {
        order_id: Uuid,
        customer_id: Uuid,
        #[serde(with = "crate::money")]
        total_amount: Decimal,
    },
    OrderConfirmed {
        order_id: Uuid,
        customer_id: Uuid,
    },
    OrderCancelled {
        order_id: Uuid,
        customer_id: Uuid,
        reason: String,
    },
}

impl DomainEvent for NotificationInput {}

/// Notifies the customer of placed, confirmed and cancelled orders; other events are heard
/// and acknowledged.
#[derive(Debug, Clone)]
struct NotificationHandler {
    notifications: Repository<OrderNotifications>,
    consumer: String,
}

impl NotificationHandler {
    /// The notification one message asks for, on its order's stream, with its inbox entry;
    /// `None` for an event this service does not notify of.
    #[allow(clippy::type_complexity)]
    fn command(
        &self,
        message: &RecordedEvent,
    ) -> Result<Option<(String, NotificationView, CommandContext)>, HandlerError> {
        let input = match message.decode::<NotificationInput>() {
            Ok(input) => input,
            Err(es_core::Error::UnknownEventType { .. }) => return Ok(None),
            Err(error) => return Err(HandlerError::reject(error)),
        };
        let (order_id, customer_id, kind, text) = match input {
            NotificationInput::OrderPlaced {
                order_id,
                customer_id,
                total_amount,
            } => (
                order_id,
                customer_id,
                "OrderPlaced",
                format!(
                    "We received your order {order_id} of {}.",
                    crate::money::to_cents(total_amount)
                ),
            ),
            NotificationInput::OrderConfirmed {
                order_id,
                customer_id,
            } => (
                order_id,
                customer_id,
                "OrderConfirmed",
                format!("Your order {order_id} is confirmed."),
            ),
            NotificationInput::OrderCancelled {
                order_id,
                customer_id,
                reason,
            } => (
                order_id,
                customer_id,
                "OrderCancelled",
                format!("Your order {order_id} was cancelled: {reason}."),
            ),
        };
        let notification = NotificationView {
            notification_id: Uuid::now_v7(),
            customer_id,
            order_id,
            kind: kind.into(),
            message: text,
            created_at: Utc::now(),
        };
        let context = CommandContext::caused_by(message, self.consumer.clone());
        Ok(Some((order_id.to_string(), notification, context)))
    }
}

#[async_trait]
impl MessageHandler for NotificationHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let Some((order_id, notification, context)) = self.command(message)? else {
            return Ok(());
        };
        self.notifications
            .execute(&order_id, notification, context)
            .await?;
        Ok(())
    }

    /// The batch's notifications in one load of the orders' streams and one commit with every
    /// inbox entry.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let mut commands = Vec::with_capacity(messages.len());
        for message in messages {
            commands.extend(self.command(message)?);
        }
        if commands.is_empty() {
            return Ok(());
        }
        self.notifications.execute_batch(commands).await?;
        Ok(())
    }
}

/// Every notification by customer.
#[derive(Debug, Default)]
pub struct NotificationInbox {
    by_customer: Mutex<HashMap<Uuid, Vec<NotificationView>>>,
}

#[async_trait]
impl Projection for NotificationInbox {
    fn name(&self) -> &str {
        "notification-inbox"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(OrderNotifications::TYPE)
    }

    async fn apply(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let NotificationEvent::NotificationSent(notification) = recorded.decode()?;
        let mut by_customer = self.by_customer.lock().unwrap_or_else(|e| e.into_inner());
        let list = by_customer.entry(notification.customer_id).or_default();
        if !list
            .iter()
            .any(|n| n.notification_id == notification.notification_id)
        {
            list.push(notification);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct NotificationState {
    /// The listing in memory (embedded backends).
    inbox: Arc<NotificationInbox>,
    /// The listing on PostgreSQL, when there.
    listings: Listings,
}

/// A customer's notifications, newest first, in pages.
#[utoipa::path(get, path = "/api/notifications/customer/{customerId}", tag = "notifications",
    params(("customerId" = Uuid, Path, description = "The customer"), PageQuery),
    responses(
        (status = 200, body = [NotificationView], headers(("Link" = String, description = "`<…?limit=N&cursor=C>; rel=\"next\"` when more notifications follow"))),
        (status = 400, description = "Bad customer id, limit or cursor", content_type = "application/problem+json"),
    ))]
async fn customer_notifications(
    State(state): State<NotificationState>,
    ApiPath(customer_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, AppError> {
    let page = Page::from_query(&query)?;
    let path = format!("/api/notifications/customer/{customer_id}");
    if let Some(answer) = state.listings.notification_page(customer_id, &page).await {
        let (items, next) = answer?;
        return Ok(page.respond(&path, items, next));
    }
    let inbox = &state.inbox;
    let mut list: Vec<(Cursor, NotificationView)> = inbox
        .by_customer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&customer_id)
        .map(|list| {
            list.iter()
                .map(|n| (Cursor::new(n.created_at, n.notification_id), n.clone()))
                .collect()
        })
        .unwrap_or_default();
    list.sort_by_key(|(key, _)| std::cmp::Reverse(*key));
    let (items, next) = page_of(&page, list.into_iter());
    Ok(page.respond(&path, items, next))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Notification service",
        description = "One notification per order and kind."
    ),
    paths(customer_notifications),
    components(schemas(NotificationView))
)]
struct NotificationApi;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    NotificationApi::openapi()
}

/// Starts the notification service: its consumer and read model.
pub(crate) async fn start(
    backends: &Backends,
    _settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    let notifications = Repository::<OrderNotifications>::new(backends.store.clone())
        .with_trusted_cache(crate::service::AGGREGATE_CACHE);
    let inbox = Arc::new(NotificationInbox::default());
    // On PostgreSQL the listing is the table `notification_listing`.
    background
        .read_model(
            backends,
            Arc::new(crate::listing::PgNotificationListing::default()),
            inbox.clone(),
        )
        .await?;
    let consumer = backends.consumer(ServiceKind::Notification);
    let handler = Arc::new(NotificationHandler {
        notifications,
        consumer: consumer.clone(),
    });
    background
        .consume_batched(
            &backends.bus,
            consumer,
            crate::events::bindings(ServiceKind::Notification),
            handler,
            crate::background::CONSUMER_BATCH,
        )
        .await?;
    let api = Router::new()
        .route(
            "/api/notifications/customer/{customer_id}",
            get(customer_notifications),
        )
        .with_state(NotificationState {
            inbox,
            listings: backends.listings.clone(),
        });
    Ok(finish_router(api, openapi(), backends.health.clone()))
}
