//! One connection per bus, re-opened (and the topology re-declared) when it is lost.

use std::sync::Arc;

use es_core::{Error, Result};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::config::{redact, AmqpConfig, QueueSpec, QueueType, Topology};

pub(crate) const BACKEND: &str = "rabbitmq";

/// Maps a lapin error: a channel-level refusal (a declare whose arguments clash, an access
/// refusal) will not go away by retrying; everything else is the broker being unreachable.
pub(crate) fn amqp_error(error: lapin::Error) -> Error {
    match &error {
        lapin::Error::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            Error::backend(BACKEND, error)
        }
        _ => Error::unavailable(BACKEND, error),
    }
}

/// Whether a lapin error says that the thing asked for does not exist.
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error, lapin::Error::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

/// Holds the bus's connection and its publishing channel; opens them again when they are lost.
pub(crate) struct Connector {
    config: Arc<AmqpConfig>,
    connection: Mutex<Option<Arc<Connection>>>,
    publisher: Mutex<Option<Channel>>,
}

impl Connector {
    pub(crate) fn new(config: Arc<AmqpConfig>) -> Self {
        Connector {
            config,
            connection: Mutex::new(None),
            publisher: Mutex::new(None),
        }
    }

    /// The live connection, or a new one (with the topology declared) when there is none.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
        }
        // The old connection is gone; drop it so its resources go too.
        *current = None;
        let mut last_error = None;
        let mut connected = None;
        // The nodes of a cluster in order: the first that answers wins.
        for url in std::iter::once(&self.config.url).chain(&self.config.fallback_urls) {
            match self.connect_to(url).await {
                Ok(connection) => {
                    connected = Some((connection, redact(url)));
                    break;
                }
                Err(error @ Error::InvalidInput(_)) => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        let Some((connection, url)) = connected else {
            return Err(last_error
                .unwrap_or_else(|| Error::unavailable(BACKEND, "no broker URL is configured")));
        };
        {
            let url = url.clone();
            connection.on_error(move |error| {
                tracing::warn!(%url, %error, "the RabbitMQ connection failed");
            });
        }
        let channel = connection.create_channel().await.map_err(amqp_error)?;
        declare_base(&channel, &self.config.topology).await?;
        // Closing a channel that the broker already closed is not an error worth reporting.
        let _ = channel.close(200, "topology declared").await;
        tracing::info!(%url, name = %self.config.connection_name, "connected to RabbitMQ");
        let connection = Arc::new(connection);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// One connection attempt to `url`, bounded by the connect timeout.
    async fn connect_to(&self, url: &str) -> Result<Connection> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(LongString::from(self.config.connection_name.as_str()));
        // A URL that does not parse will never connect: say so instead of retrying forever.
        let uri: AMQPUri = url.parse().map_err(|error| {
            Error::InvalidInput(format!("bad AMQP URL `{}`: {error}", redact(url)))
        })?;
        let attempt = Connection::connect_uri(uri, properties);
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => {
                tracing::warn!(url = %redact(url), %error, "cannot connect to RabbitMQ");
                Err(Error::unavailable(BACKEND, error))
            }
            Err(_) => {
                tracing::warn!(url = %redact(url), timeout = ?self.config.connect_timeout, "connecting to RabbitMQ timed out");
                Err(Error::unavailable(
                    BACKEND,
                    format!(
                        "no connection to {} within {:?}",
                        redact(url),
                        self.config.connect_timeout
                    ),
                ))
            }
        }
    }

    /// The channel that publishes, in confirm mode; a new one when the old one was closed.
    pub(crate) async fn publisher(&self) -> Result<Channel> {
        let mut current = self.publisher.lock().await;
        if let Some(channel) = current.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *current = None;
        let channel = self.confirm_channel().await?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    /// A new channel in confirm mode.
    pub(crate) async fn confirm_channel(&self) -> Result<Channel> {
        let connection = self.connection().await?;
        let channel = connection.create_channel().await.map_err(amqp_error)?;
        channel
            .confirm_select(Default::default())
            .await
            .map_err(amqp_error)?;
        Ok(channel)
    }

    /// Closes the connection (consumers reconnect when they are next used).
    pub(crate) async fn close(&self) {
        *self.publisher.lock().await = None;
        if let Some(connection) = self.connection.lock().await.take() {
            let _ = connection.close(200, "closed by the application").await;
        }
    }
}

/// Declares the exchanges and the queues named up front.
async fn declare_base(channel: &Channel, topology: &Topology) -> Result<()> {
    declare_exchanges(channel, topology).await?;
    for spec in &topology.queues {
        declare_consumer_queues(channel, topology, spec).await?;
    }
    Ok(())
}

/// Declares the topic exchange and the dead-letter exchange.
pub(crate) async fn declare_exchanges(channel: &Channel, topology: &Topology) -> Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &topology.exchange,
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error)?;
    channel
        .exchange_declare(
            &topology.dead_letter_exchange(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error)?;
    Ok(())
}

/// The arguments every queue of the topology shares.
fn queue_arguments(topology: &Topology) -> FieldTable {
    let mut arguments = FieldTable::default();
    if topology.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(topology.queue_type.as_str().into()),
        );
    }
    if let Some(expires) = topology.queue_expires {
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(i64::try_from(expires.as_millis()).unwrap_or(i64::MAX)),
        );
    }
    arguments
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares a consumer's work queue (bound by its routing keys, dead-lettering to the DLX) and
/// its dead-letter queue.
pub(crate) async fn declare_consumer_queues(
    channel: &Channel,
    topology: &Topology,
    spec: &QueueSpec,
) -> Result<()> {
    declare_dead_letter_queue(channel, topology, &spec.consumer).await?;
    let queue = topology.queue(&spec.consumer);
    let dead_letter_exchange = topology.dead_letter_exchange();

    // Messages the broker itself dead-letters (a rejection without requeue, a length limit)
    // land in the dead-letter queue too.
    let mut arguments = queue_arguments(topology);
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead_letter_exchange.as_str().into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.as_str().into()),
    );
    channel
        .queue_declare(&queue, durable_queue(), arguments)
        .await
        .map_err(amqp_error)?;
    for key in &spec.routing_keys {
        channel
            .queue_bind(
                &queue,
                &topology.exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error)?;
    }
    Ok(())
}

/// Declares `consumer`'s dead-letter queue and binds it to the dead-letter exchange.
pub(crate) async fn declare_dead_letter_queue(
    channel: &Channel,
    topology: &Topology,
    consumer: &str,
) -> Result<()> {
    let dead_letter_queue = topology.dead_letter_queue(consumer);
    channel
        .queue_declare(
            &dead_letter_queue,
            durable_queue(),
            queue_arguments(topology),
        )
        .await
        .map_err(amqp_error)?;
    channel
        .queue_bind(
            &dead_letter_queue,
            &topology.dead_letter_exchange(),
            &topology.queue(consumer),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error)
}

/// Declares the retry queue that holds `consumer`'s messages for `delay_ms` and then
/// dead-letters them back onto its work queue through the default exchange.
pub(crate) async fn declare_retry_queue(
    channel: &Channel,
    topology: &Topology,
    consumer: &str,
    delay: std::time::Duration,
) -> Result<String> {
    let name = topology.retry_queue(consumer, delay);
    let mut arguments = queue_arguments(topology);
    arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(topology.queue(consumer).as_str().into()),
    );
    if let Some(expires) = topology.queue_expires {
        // A retry queue has no consumer, so it counts as unused from its last declaration: it
        // must outlive the messages it holds. The caller declares it before each use.
        let floor = delay.saturating_mul(2) + std::time::Duration::from_secs(10);
        arguments.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(
                i64::try_from(expires.max(floor).as_millis()).unwrap_or(i64::MAX),
            ),
        );
    }
    channel
        .queue_declare(&name, durable_queue(), arguments)
        .await
        .map_err(amqp_error)?;
    Ok(name)
}
