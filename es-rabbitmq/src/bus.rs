//! [`AmqpEventBus`]: publish with pipelined confirms, consume with retries and dead letters.

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use es_core::bus::{Consumer, ConsumerHandle, DeadLetter, HandlerError, MessageHandler};
use es_core::relay::Unset;
use es_core::telemetry::ConsumerMetrics;
use es_core::{
    Backoff, DeadLetterQueue, Error, EventBus, RecordedEvent, Relay, RelayBuilder, Result,
};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer as Deliveries};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, QueueSpec, Unroutable};
use crate::connection::{
    amqp_error, declare_consumer_queues, declare_dead_letter_queue, declare_exchanges,
    declare_retry_queue, is_not_found, Connector, BACKEND,
};
use crate::wire::{self, header_str, header_u32, text};

/// The RabbitMQ [`EventBus`] and [`DeadLetterQueue`]. Cloning shares the connection.
///
/// See the crate documentation for the topology, the wire format and the delivery guarantees.
#[derive(Clone)]
pub struct AmqpEventBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<AmqpConfig>,
    connector: Connector,
}

impl fmt::Debug for AmqpEventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpEventBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AmqpEventBus {
    /// A bus that connects on first use (and again whenever the connection is lost), so it can
    /// be created while the broker is still down.
    pub fn new(config: AmqpConfig) -> Self {
        let config = Arc::new(config);
        AmqpEventBus {
            inner: Arc::new(Inner {
                connector: Connector::new(config.clone()),
                config,
            }),
        }
    }

    /// A bus that connects now and declares the topology; fails with
    /// [`Error::Unavailable`] when the broker cannot be reached.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let bus = Self::new(config);
        bus.check().await?;
        Ok(bus)
    }

    /// The configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Makes sure the bus is connected (connecting if it is not): a health check.
    pub async fn check(&self) -> Result<()> {
        self.inner.connector.connection().await.map(|_| ())
    }

    /// Closes the connection. Running consumers see it as a lost connection and reconnect;
    /// stop them first to shut down.
    pub async fn close(&self) {
        self.inner.connector.close().await;
    }

    /// Starts a consumer like [`EventBus::subscribe`], but without waiting for the broker: when
    /// it cannot be reached now, the consumer keeps trying in the background (with the
    /// reconnection backoff) and starts consuming once it can. For services that must come up
    /// while the broker is down. Fails only on an empty consumer name.
    ///
    /// Unlike `subscribe`, the queue may not exist yet when this returns, so events published
    /// right away reach it only if the queue was declared before (for example with
    /// [`Topology::with_queue`](crate::Topology::with_queue)).
    pub fn subscribe_in_background(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle> {
        if subscription.consumer.is_empty() {
            return Err(Error::InvalidInput(
                "a consumer name cannot be empty".into(),
            ));
        }
        Ok(self.spawn_consumer(subscription, handler, None))
    }

    fn spawn_consumer(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
        first: Option<(Channel, Deliveries)>,
    ) -> ConsumerHandle {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_consumer(
            self.inner.clone(),
            subscription,
            handler,
            first,
            stop.clone(),
        ));
        ConsumerHandle::new(stop, task)
    }

    /// An outbox [`Relay`] onto this bus, its checkpoint saved under `name`: a
    /// [`Relay::builder`] with the bus given. Give it the store and the checkpoint store:
    /// `bus.relay("outbox").store(store.clone()).checkpoints(store.clone()).build()`.
    pub fn relay(&self, name: impl Into<String>) -> RelayBuilder<Unset, Arc<dyn EventBus>, Unset> {
        Relay::builder(name).bus(self.clone())
    }
}

/// Awaits a confirm and turns anything but a plain ack into an error.
async fn confirmed(confirm: PublisherConfirm, routing_key: &str) -> Result<()> {
    match confirm.await.map_err(amqp_error)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(Error::backend(
                BACKEND,
                format!(
                    "message to routing key `{routing_key}` was returned unroutable ({} {}): no queue binds it",
                    returned.reply_code, returned.reply_text
                ),
            ))
        }
        Confirmation::Nack(None) => Err(Error::backend(
            BACKEND,
            format!("the broker nacked the message to routing key `{routing_key}`"),
        )),
        Confirmation::NotRequested => Err(Error::backend(
            BACKEND,
            "the channel is not in confirm mode",
        )),
    }
}

/// Publishes one message with the mandatory flag and waits for its confirm.
async fn publish_one(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(exchange, routing_key, options, body, properties)
        .await
        .map_err(amqp_error)?;
    confirmed(confirm, routing_key).await
}

#[async_trait]
impl EventBus for AmqpEventBus {
    /// Publishes the events with up to `max_in_flight` confirms outstanding at once, then
    /// awaits the rest; `Ok` only when the broker confirmed them all. An unroutable event fails the call under
    /// [`Unroutable::Fail`]. On an error, some events may have gone out: publish the batch
    /// again (consumers drop the duplicates with their inbox).
    ///
    /// The errors say what to do:
    /// - an event the wire can never carry (a payload that is not JSON:
    ///   [`Error::Serialization`]; a routing key or event type over 255 bytes:
    ///   [`Error::InvalidInput`]) fails the batch before anything is sent, and will fail every
    ///   time ([`Error::is_bad_input`]): the [`Relay`] parks such an event and goes on;
    /// - a broker that cannot be reached, or a confirm that does not come in time:
    ///   [`Error::Unavailable`];
    /// - a broker that refuses (a nack, an unroutable event under [`Unroutable::Fail`], a
    ///   refused channel operation): [`Error::Backend`].
    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let config = &self.inner.config;
        // Encode everything first: an event the wire cannot carry fails the batch, with an
        // error for which `is_bad_input` holds, before anything is sent.
        let messages = events
            .iter()
            .map(|event| {
                let routing_key = (config.router)(event);
                wire::check_fits(event, &routing_key)?;
                Ok((
                    routing_key,
                    wire::encode_body(event)?,
                    wire::properties(event),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let channel = self.inner.connector.publisher().await?;
        let options = BasicPublishOptions {
            mandatory: config.unroutable == Unroutable::Fail,
            immediate: false,
        };
        let window = config.max_in_flight.max(1);
        let mut pending: VecDeque<(String, PublisherConfirm)> =
            VecDeque::with_capacity(window.min(messages.len()));
        let mut first_error = None;
        let mut timed_out = false;
        for (routing_key, body, properties) in messages {
            if pending.len() >= window {
                if let Some((key, confirm)) = pending.pop_front() {
                    if let Err(error) = self.confirmed_in_time(confirm, &key, &mut timed_out).await
                    {
                        first_error = Some(error);
                        break;
                    }
                }
            }
            match channel
                .basic_publish(
                    &config.topology.exchange,
                    &routing_key,
                    options,
                    &body,
                    properties,
                )
                .await
            {
                Ok(confirm) => pending.push_back((routing_key, confirm)),
                Err(error) => {
                    first_error = Some(amqp_error(error));
                    break;
                }
            }
        }
        // Await every confirm, even after a failure, so none is left behind on the channel.
        for (key, confirm) in pending {
            if let Err(error) = self.confirmed_in_time(confirm, &key, &mut timed_out).await {
                first_error.get_or_insert(error);
            }
        }
        if timed_out {
            // The channel may be wedged; the next publish opens a fresh one.
            let _ = channel.close(200, "confirms timed out").await;
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    /// Declares the consumer's queues, starts consuming, and returns once the consumer is
    /// registered with the broker (so events published afterwards reach it). Fails with
    /// [`Error::Unavailable`] when the broker cannot be reached now; after that, the consumer
    /// reconnects by itself whenever the connection is lost.
    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle> {
        if subscription.consumer.is_empty() {
            return Err(Error::InvalidInput(
                "a consumer name cannot be empty".into(),
            ));
        }
        let first = open_consumer(&self.inner, &subscription).await?;
        Ok(self.spawn_consumer(subscription, handler, Some(first)))
    }
}

/// Opens a channel, declares the consumer's queues, sets the prefetch and starts consuming.
async fn open_consumer(inner: &Inner, subscription: &Consumer) -> Result<(Channel, Deliveries)> {
    let connection = inner.connector.connection().await?;
    let channel = connection.create_channel().await.map_err(amqp_error)?;
    let topology = &inner.config.topology;
    let spec = QueueSpec {
        consumer: subscription.consumer.clone(),
        routing_keys: subscription.routing_keys.clone(),
    };
    // The exchanges too: they may have been deleted while the connection stayed up.
    declare_exchanges(&channel, topology).await?;
    declare_consumer_queues(&channel, topology, &spec).await?;
    // Retries and dead letters are republished from this channel, with confirms.
    channel
        .confirm_select(Default::default())
        .await
        .map_err(amqp_error)?;
    channel
        .basic_qos(subscription.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(amqp_error)?;
    let tag = format!(
        "{}-{}",
        subscription.consumer,
        uuid::Uuid::new_v4().simple()
    );
    let consumer = channel
        .basic_consume(
            &topology.queue(&subscription.consumer),
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error)?;
    Ok((channel, consumer))
}

enum Ended {
    Stopped,
    Lost(String),
}

async fn run_consumer(
    inner: Arc<Inner>,
    subscription: Consumer,
    handler: Arc<dyn MessageHandler>,
    first: Option<(Channel, Deliveries)>,
    // Never cancelled when the handle was dropped: the consumer then runs on, detached.
    stop: CancellationToken,
) {
    let policy = inner.config.reconnect;
    let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
    let mut current = first;
    let metrics = ConsumerMetrics::new(&subscription.consumer);
    loop {
        let (channel, consumer) = match current.take() {
            Some(opened) => opened,
            None => match tokio::select! {
                _ = stop.cancelled() => return,
                opened = open_consumer(&inner, &subscription) => opened,
            } {
                Ok(opened) => {
                    tracing::info!(consumer = %subscription.consumer, "consumer resumed");
                    backoff.reset();
                    opened
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(consumer = %subscription.consumer, %error, retry_in = ?wait, "cannot resume the consumer");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        let context = Arc::new(DeliveryContext {
            inner: inner.clone(),
            subscription: subscription.clone(),
            handler: handler.clone(),
            channel,
            metrics: metrics.clone(),
        });
        match consume(context, consumer, &stop).await {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                tracing::warn!(consumer = %subscription.consumer, %reason, "consumer lost its channel; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.sleep() => {}
                }
            }
        }
    }
}

/// Handles deliveries (as many at once as the prefetch lets in) until stopped or the channel
/// is lost.
async fn consume(
    context: Arc<DeliveryContext>,
    mut consumer: Deliveries,
    stop: &CancellationToken,
) -> Ended {
    let mut in_flight = JoinSet::new();
    let batch = usize::from(context.subscription.batch.max(1));
    // One message at a time: as many handler calls as the prefetch lets in. In batches: a
    // few calls, so that while they run deliveries pile up in the prefetch window and the
    // next call takes them together.
    let slots = if batch > 1 {
        context.subscription.concurrency()
    } else {
        usize::MAX
    };
    // lapin ends a consumer's stream when its channel closes, but a look now and then also
    // catches a connection that died without a word.
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ended::Stopped,
            next = consumer.next(), if in_flight.len() < slots => match next {
                Some(Ok(delivery)) if batch == 1 => {
                    in_flight.spawn(handle_delivery(context.clone(), delivery));
                }
                Some(Ok(delivery)) => {
                    // Add what lapin already holds, and what arrives within the linger.
                    let mut deliveries = vec![delivery];
                    let mut ended = None;
                    // Linger only while another call runs (Nagle's rule): a message that
                    // finds the consumer idle goes at once, so a low rate pays no latency, and
                    // one that finds calls running goes when one of them ends.
                    while in_flight.try_join_next().is_some() {}
                    let linger = if in_flight.is_empty() {
                        Duration::ZERO
                    } else {
                        context.subscription.linger
                    };
                    let linger_until = tokio::time::Instant::now() + linger;
                    while deliveries.len() < batch {
                        let next = match consumer.next().now_or_never() {
                            Some(next) => Some(next),
                            None if linger.is_zero() => None,
                            None => tokio::select! {
                                biased;
                                () = stop.cancelled() => None,
                                Some(_) = in_flight.join_next() => None,
                                next = tokio::time::timeout_at(linger_until, consumer.next()) => {
                                    next.ok()
                                }
                            },
                        };
                        match next {
                            Some(Some(Ok(delivery))) => deliveries.push(delivery),
                            Some(Some(Err(error))) => {
                                ended = Some(error.to_string());
                                break;
                            }
                            Some(None) => {
                                ended = Some("the consumer was cancelled".to_owned());
                                break;
                            }
                            None => break,
                        }
                    }
                    in_flight.spawn(handle_deliveries(context.clone(), deliveries));
                    if let Some(reason) = ended {
                        break Ended::Lost(reason);
                    }
                }
                Some(Err(error)) => break Ended::Lost(error.to_string()),
                None => break Ended::Lost("the consumer was cancelled".into()),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = health.tick() => {
                if !context.channel.status().connected() {
                    break Ended::Lost("the channel is closed".into());
                }
            }
        }
    };
    if matches!(ended, Ended::Stopped) {
        let _ = context
            .channel
            .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
            .await;
    }
    // Let the messages in hand finish (on a lost channel their acks fail and the broker
    // redelivers them).
    while in_flight.join_next().await.is_some() {}
    // Closing hands any message delivered but not handled back to the queue.
    let _ = context.channel.close(200, "consumer stopped").await;
    ended
}

struct DeliveryContext {
    inner: Arc<Inner>,
    subscription: Consumer,
    handler: Arc<dyn MessageHandler>,
    channel: Channel,
    metrics: ConsumerMetrics,
}

enum Failure {
    Transient(String),
    Permanent(String),
}

/// A delivery decoded: the event, the routing key it was published with, and which attempt
/// this is.
struct Decoded {
    delivery: Delivery,
    event: RecordedEvent,
    routing_key: String,
    attempt: u32,
}

/// Decodes a delivery; one that cannot be decoded goes straight to the dead-letter queue
/// (and `None` comes back).
async fn decode(context: &DeliveryContext, delivery: Delivery) -> Option<Decoded> {
    let consumer = &context.subscription.consumer;
    let failed_before = header_u32(&delivery.properties, wire::ATTEMPTS_HEADER).unwrap_or(0);
    let attempt = failed_before.saturating_add(1);
    let routing_key = header_str(&delivery.properties, wire::ROUTING_KEY_HEADER)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    match wire::decode(&delivery.data, &delivery.properties, &routing_key) {
        Ok(event) => Some(Decoded {
            delivery,
            event,
            routing_key,
            attempt,
        }),
        Err(error) => {
            tracing::warn!(%consumer, %error, "undecodable message; dead-lettering it");
            context.metrics.dead_lettered(None);
            let reason = format!("undecodable message: {error}");
            let result = context
                .dead_letter(&delivery, &routing_key, &reason, attempt)
                .await;
            settle(context, delivery, result).await;
            None
        }
    }
}

async fn handle_delivery(context: Arc<DeliveryContext>, delivery: Delivery) {
    if let Some(decoded) = decode(&context, delivery).await {
        handle_decoded(&context, decoded).await;
    }
}

/// Hands the decoded deliveries to `handle_batch` together and acks them all after it
/// succeeded; when it fails, handles each one alone (its own retries, its own dead letter).
async fn handle_deliveries(context: Arc<DeliveryContext>, deliveries: Vec<Delivery>) {
    let mut decoded = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        if let Some(one) = decode(&context, delivery).await {
            decoded.push(one);
        }
    }
    if decoded.len() > 1 {
        let events: Vec<RecordedEvent> = decoded.iter().map(|d| d.event.clone()).collect();
        let started = std::time::Instant::now();
        let outcome = AssertUnwindSafe(context.handler.handle_batch(&events))
            .catch_unwind()
            .await;
        if let Ok(Ok(())) = outcome {
            context
                .metrics
                .handled_batch(events.len(), started.elapsed());
            // Acks go out together; the channel keeps their order.
            let acks = decoded
                .iter()
                .map(|d| d.delivery.acker.ack(BasicAckOptions::default()));
            for (result, d) in futures_util::future::join_all(acks)
                .await
                .into_iter()
                .zip(&decoded)
            {
                if let Err(error) = result {
                    // The channel is gone: the broker redelivers, and the inbox absorbs it.
                    tracing::warn!(consumer = %context.subscription.consumer, event_id = %d.event.event_id, %error, "ack failed");
                }
            }
            return;
        }
        let failure = match outcome {
            Ok(Err(error)) => error.to_string(),
            _ => "the handler panicked".to_owned(),
        };
        tracing::debug!(consumer = %context.subscription.consumer, size = events.len(), error = %failure, "batch failed; handling its messages one by one");
        context.metrics.batch_fell_back(started.elapsed());
    }
    for one in decoded {
        handle_decoded(&context, one).await;
    }
}

async fn handle_decoded(context: &DeliveryContext, decoded: Decoded) {
    let Decoded {
        delivery,
        event,
        routing_key,
        attempt,
    } = decoded;
    let consumer = &context.subscription.consumer;
    let started = std::time::Instant::now();
    let outcome = AssertUnwindSafe(context.handler.handle(&event))
        .catch_unwind()
        .await;
    let took = started.elapsed();
    let failure = match outcome {
        Ok(Ok(())) => {
            context.metrics.handled(took);
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The channel is gone: the broker redelivers, and the inbox absorbs it.
                tracing::warn!(%consumer, event_id = %event.event_id, %error, "ack failed");
            }
            return;
        }
        Ok(Err(HandlerError::Reject(error))) => Failure::Permanent(error.to_string()),
        Ok(Err(HandlerError::Retry(error))) => Failure::Transient(error.to_string()),
        Ok(Err(other)) => Failure::Transient(other.to_string()),
        Err(_) => Failure::Transient("the handler panicked".to_owned()),
    };
    let result = match failure {
        Failure::Transient(reason) if attempt < context.subscription.retry.max_attempts => {
            tracing::debug!(%consumer, event_id = %event.event_id, attempt, %reason, "handler failed; retrying later");
            context.metrics.retried(took);
            context
                .retry(&delivery, &routing_key, &reason, attempt)
                .await
        }
        Failure::Transient(reason) | Failure::Permanent(reason) => {
            tracing::warn!(%consumer, event_id = %event.event_id, attempt, %reason, "message dead-lettered");
            context.metrics.dead_lettered(Some(took));
            context
                .dead_letter(&delivery, &routing_key, &reason, attempt)
                .await
        }
    };
    settle(context, delivery, result).await;
}

/// Acks a message once its copy (retry or dead letter) is confirmed; otherwise hands it back
/// to the queue, after a pause, so it is neither lost nor spun on.
async fn settle(context: &DeliveryContext, delivery: Delivery, moved: Result<()>) {
    let consumer = &context.subscription.consumer;
    match moved {
        Ok(()) => {
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%consumer, %error, "ack after moving the message failed; it may come twice");
            }
        }
        Err(error) => {
            tracing::warn!(%consumer, %error, "cannot move the message to its retry or dead-letter queue; requeueing it");
            tokio::time::sleep(context.inner.config.reconnect.initial_backoff).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = delivery.acker.nack(requeue).await;
        }
    }
}

fn count(value: u32) -> AMQPValue {
    AMQPValue::LongLongInt(value.into())
}

impl DeliveryContext {
    /// Parks a copy of the message in the retry queue of its backoff delay, from where the
    /// broker moves it back onto the work queue when its TTL runs out.
    async fn retry(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        reason: &str,
        attempt: u32,
    ) -> Result<()> {
        let topology = &self.inner.config.topology;
        let delay = self.subscription.retry.backoff(attempt);
        // Declared before each use: it re-creates the queue after a reconnect or an expiry.
        let retry_queue =
            declare_retry_queue(&self.channel, topology, &self.subscription.consumer, delay)
                .await?;
        let properties = wire::with_headers(
            &delivery.properties,
            [
                (wire::ATTEMPTS_HEADER, count(attempt)),
                (wire::ERROR_HEADER, text(reason)),
                (wire::ROUTING_KEY_HEADER, text(routing_key)),
            ],
        );
        publish_one(&self.channel, "", &retry_queue, &delivery.data, properties).await
    }

    /// Publishes a copy of the message to the dead-letter queue with the error and the count
    /// of attempts in its headers.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        reason: &str,
        attempt: u32,
    ) -> Result<()> {
        let topology = &self.inner.config.topology;
        // Dead letters are rare; declaring first re-creates a dead-letter queue that expired or
        // was deleted, instead of failing on it forever.
        declare_dead_letter_queue(&self.channel, topology, &self.subscription.consumer).await?;
        let properties = wire::with_headers(
            &delivery.properties,
            [
                (wire::ATTEMPTS_HEADER, count(attempt)),
                (wire::ERROR_HEADER, text(reason)),
                (wire::ROUTING_KEY_HEADER, text(routing_key)),
                (
                    wire::DEAD_LETTERED_AT_HEADER,
                    text(chrono::Utc::now().to_rfc3339()),
                ),
            ],
        );
        publish_one(
            &self.channel,
            &topology.dead_letter_exchange(),
            &topology.queue(&self.subscription.consumer),
            &delivery.data,
            properties,
        )
        .await
    }
}

/// A message on a dead-letter queue as a [`DeadLetter`].
fn dead_letter_of(delivery: &Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    let routing_key = header_str(properties, wire::ROUTING_KEY_HEADER)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let reason = header_str(properties, wire::ERROR_HEADER)
        .or_else(|| {
            header_str(properties, "x-first-death-reason")
                .map(|reason| format!("dead-lettered by the broker: {reason}"))
        })
        .unwrap_or_default();
    DeadLetter {
        event: wire::decode(&delivery.data, properties, &routing_key).ok(),
        body: Bytes::from(delivery.data.clone()),
        reason,
        attempts: header_u32(properties, wire::ATTEMPTS_HEADER).unwrap_or(0),
    }
}

impl AmqpEventBus {
    /// Awaits one confirm for at most the confirm timeout (once one timed out, the rest get no
    /// time at all: the channel is about to be closed, which fails them).
    async fn confirmed_in_time(
        &self,
        confirm: PublisherConfirm,
        routing_key: &str,
        timed_out: &mut bool,
    ) -> Result<()> {
        let limit = if *timed_out {
            Duration::ZERO
        } else {
            self.inner.config.confirm_timeout
        };
        match tokio::time::timeout(limit, confirmed(confirm, routing_key)).await {
            Ok(result) => result,
            Err(_) => {
                *timed_out = true;
                Err(Error::unavailable(
                    BACKEND,
                    format!(
                        "no confirm within {:?}: the message may or may not have been published",
                        self.inner.config.confirm_timeout
                    ),
                ))
            }
        }
    }

    /// Opens a channel on `consumer`'s dead-letter queue, with the number of messages ready on
    /// it now; `None` when the queue does not exist (the consumer never subscribed).
    async fn dead_letter_channel(
        &self,
        consumer: &str,
    ) -> Result<Option<(Channel, String, usize)>> {
        let channel = self.inner.connector.confirm_channel().await?;
        let queue = self.inner.config.topology.dead_letter_queue(consumer);
        Ok(ready_messages(&channel, &queue)
            .await?
            .map(|held| (channel, queue, held)))
    }

    /// Waits until `consumer`'s dead-letter queue holds at least `held` ready messages again,
    /// for at most [`RETURN_WAIT`].
    ///
    /// Closing a channel gives the broker back what it fetched unacknowledged, but a quorum
    /// queue puts those messages back through its log, after the close is answered: a listing
    /// or a requeue right after would miss them (a requeue moves only what is ready).
    async fn wait_for_return(&self, consumer: &str, held: usize) -> Result<()> {
        let Some((channel, queue, mut ready)) = self.dead_letter_channel(consumer).await? else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        // Fewer than before once the deadline passes: someone else took them (a requeue or a
        // purge running beside this listing), and they are not coming back.
        while ready < held && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match ready_messages(&channel, &queue).await? {
                Some(now) => ready = now,
                None => return Ok(()),
            }
        }
        let _ = channel.close(200, "dead letters counted").await;
        Ok(())
    }
}

/// How long a dead-letter listing waits for the messages it fetched to be back on their queue.
const RETURN_WAIT: Duration = Duration::from_secs(2);

/// The number of messages ready on `queue`, or `None` when it does not exist (the broker then
/// closes `channel`).
async fn ready_messages(channel: &Channel, queue: &str) -> Result<Option<usize>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue, passive, FieldTable::default())
        .await
    {
        Ok(declared) => Ok(Some(
            usize::try_from(declared.message_count()).unwrap_or(usize::MAX),
        )),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(amqp_error(error)),
    }
}

#[async_trait]
impl DeadLetterQueue for AmqpEventBus {
    /// Takes up to `limit` messages off the dead-letter queue without acknowledging them, then
    /// closes the channel, which puts them all back in place, and returns once they are back.
    async fn dead_letters(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((channel, queue, held)) = self.dead_letter_channel(consumer).await? else {
            return Ok(Vec::new());
        };
        let mut letters = Vec::new();
        while letters.len() < limit {
            match channel
                .basic_get(&queue, BasicGetOptions { no_ack: false })
                .await
                .map_err(amqp_error)?
            {
                Some(message) => letters.push(dead_letter_of(&message.delivery)),
                None => break,
            }
        }
        channel
            .close(200, "dead letters listed")
            .await
            .map_err(amqp_error)?;
        if !letters.is_empty() {
            // Best effort: the listing itself succeeded, and what was not back yet comes back.
            if let Err(error) = self.wait_for_return(consumer, held).await {
                tracing::debug!(%consumer, %error, "could not see the listed dead letters back");
            }
        }
        Ok(letters)
    }

    /// Moves dead letters one by one: publishes each to the work queue (without its retry
    /// bookkeeping, so it gets a fresh set of attempts), and acks it on the dead-letter queue
    /// only after the broker confirmed the copy.
    async fn requeue_dead_letters(&self, consumer: &str, limit: usize) -> Result<usize> {
        let Some((channel, queue, held)) = self.dead_letter_channel(consumer).await? else {
            return Ok(0);
        };
        let work_queue = self.inner.config.topology.queue(consumer);
        // Only what the queue held when the call started: a handler that still fails sends the
        // requeued messages straight back, and fetching "until empty" would never end.
        let limit = limit.min(held);
        let mut moved = 0;
        while moved < limit {
            let Some(message) = channel
                .basic_get(&queue, BasicGetOptions { no_ack: false })
                .await
                .map_err(amqp_error)?
            else {
                break;
            };
            let delivery = message.delivery;
            let properties = wire::without_bookkeeping(&delivery.properties);
            publish_one(&channel, "", &work_queue, &delivery.data, properties).await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp_error)?;
            moved += 1;
        }
        let _ = channel.close(200, "dead letters requeued").await;
        Ok(moved)
    }

    async fn purge_dead_letters(&self, consumer: &str) -> Result<usize> {
        let Some((channel, queue, _)) = self.dead_letter_channel(consumer).await? else {
            return Ok(0);
        };
        let purged = channel
            .queue_purge(&queue, QueuePurgeOptions::default())
            .await
            .map_err(amqp_error)?;
        let _ = channel.close(200, "dead letters purged").await;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }
}
