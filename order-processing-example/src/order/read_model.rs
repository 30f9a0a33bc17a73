//! What the order service reads besides the order streams: the cache of order views, and the
//! projection that marks a cached view changed whenever its order moves.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{Aggregate, BoxError, Cache, Projection, RecordedEvent, StreamFilter};
use uuid::Uuid;

use super::domain::{Order, OrderEvent};

/// The cached order views: cache-aside, each stored with the order's version, and marked
/// changed (not merely deleted) whenever the order moves, so that a GET which loaded an older
/// version while the saga wrote a newer one cannot cache the older view afterwards.
#[derive(Debug, Clone)]
pub struct OrderCache {
    pub(super) cache: Option<Arc<dyn Cache>>,
}

impl OrderCache {
    /// How long a view, and a change mark, is kept. The mark only has to outlive a load that
    /// started before the change (bounded by the request timeout); keeping it as long as a
    /// view costs one small key per changed order.
    pub(super) const TTL: Duration = Duration::from_secs(300);

    pub(super) fn key(order_id: Uuid) -> String {
        format!("order:{order_id}")
    }

    /// The order is now at `version`: drop any older cached view, and refuse older loads.
    pub(super) async fn changed(&self, order_id: Uuid, version: u64) {
        if let Some(cache) = &self.cache {
            if let Err(error) = cache
                .mark_changed(&Self::key(order_id), version, Some(Self::TTL))
                .await
            {
                tracing::warn!(%order_id, %error, "cannot mark a cached order changed; it expires by itself");
            }
        }
    }
}

/// Marks each changed order's cached view in this instance's cache too (another instance may
/// have changed the order). The customers' listing is [`Listings`](crate::listing::Listings),
/// written inline.
#[derive(Debug, Default)]
pub struct OrderReadModel {
    pub(super) cache: Option<OrderCache>,
}

#[async_trait]
impl Projection for OrderReadModel {
    fn name(&self) -> &str {
        "order-read-model"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Order::TYPE)
    }

    async fn apply(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let event: OrderEvent = recorded.decode()?;
        let order_id = match &event {
            OrderEvent::OrderPlaced { order_id, .. }
            | OrderEvent::OrderInventoryReserved { order_id, .. }
            | OrderEvent::OrderPaymentProcessed { order_id, .. }
            | OrderEvent::OrderConfirmed { order_id, .. }
            | OrderEvent::OrderCancelled { order_id, .. } => *order_id,
        };
        if let Some(cache) = &self.cache {
            cache.changed(order_id, recorded.stream_version).await;
        }
        Ok(())
    }
}
