//! How the bus connects and which exchanges and queues it declares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use es_core::bus::{default_routing_key, Router};

/// The kind of queue declared for consumers, their retries and dead letters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Durable classic queues: one node holds each queue. Right for a single broker.
    #[default]
    Classic,
    /// Quorum queues (`x-queue-type=quorum`): replicated over a RabbitMQ cluster with Raft, they
    /// survive the loss of a minority of nodes. Needs RabbitMQ 3.10 or newer (message TTL on
    /// quorum queues, used by the retry queues).
    Quorum,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// What `publish` does with an event that no queue binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unroutable {
    /// Publish with the `mandatory` flag: the broker returns a message that no queue binds,
    /// and `publish` fails with [`Error::Backend`](es_core::Error::Backend) naming its routing
    /// key. Nothing disappears without a trace; the relay retries the batch until a queue binds
    /// the key (declare the queues up front with [`Topology::with_queue`] so that start-up
    /// order does not matter).
    #[default]
    Fail,
    /// Topic-exchange semantics: a message that no queue binds is dropped by the broker. Use it
    /// when some events interest no consumer on purpose.
    Ignore,
}

/// A consumer queue declared with the topology, before anything is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The consumer name, which is also the queue name.
    pub consumer: String,
    /// The routing-key patterns the queue binds.
    pub routing_keys: Vec<String>,
}

/// The names and kinds of the exchanges and queues.
///
/// For an exchange `E` and a consumer `C`:
///
/// | what | name | kind |
/// |---|---|---|
/// | events | `E` | durable topic exchange |
/// | dead letters | `E.dlx` | durable direct exchange |
/// | work queue | `C` | durable, bound to `E` by the consumer's routing keys; dead-letters to `E.dlx` |
/// | dead-letter queue | `C.dlq` | durable, bound to `E.dlx` by the key `C` |
/// | retry queue per delay | `C.retry.<ms>ms` | durable, message TTL `<ms>`, dead-letters back to `C` |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The topic exchange events are published to.
    pub exchange: String,
    /// Classic or quorum queues.
    pub queue_type: QueueType,
    /// Deletes a queue after it has gone unused this long (`x-expires`). `None` (the default)
    /// keeps queues forever; short-lived consumers and tests set it so their queues clean up.
    pub queue_expires: Option<Duration>,
    /// Consumer queues declared when the bus connects, so that events published before the
    /// consumer first starts wait for it in its queue.
    pub queues: Vec<QueueSpec>,
}

impl Topology {
    /// A topology around the topic exchange `exchange`, classic queues, no queues declared up
    /// front.
    pub fn new(exchange: impl Into<String>) -> Self {
        Topology {
            exchange: exchange.into(),
            queue_type: QueueType::Classic,
            queue_expires: None,
            queues: Vec::new(),
        }
    }

    /// The same topology with quorum queues (for a RabbitMQ cluster).
    pub fn quorum(mut self) -> Self {
        self.queue_type = QueueType::Quorum;
        self
    }

    /// The same topology with another queue type.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The same topology with queues that expire after `expires` unused.
    pub fn with_queue_expires(mut self, expires: Duration) -> Self {
        self.queue_expires = Some(expires);
        self
    }

    /// Declares `consumer`'s queue, bound by `routing_keys`, whenever the bus connects.
    pub fn with_queue<I, S>(mut self, consumer: impl Into<String>, routing_keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.push(QueueSpec {
            consumer: consumer.into(),
            routing_keys: routing_keys.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// The dead-letter exchange: `{exchange}.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }

    /// The work queue of `consumer`: the consumer's name itself.
    pub fn queue(&self, consumer: &str) -> String {
        consumer.to_owned()
    }

    /// The dead-letter queue of `consumer`: `{consumer}.dlq`.
    pub fn dead_letter_queue(&self, consumer: &str) -> String {
        format!("{consumer}.dlq")
    }

    /// The retry queue of `consumer` that holds messages for `delay`: `{consumer}.retry.{ms}ms`.
    pub fn retry_queue(&self, consumer: &str, delay: Duration) -> String {
        format!("{consumer}.retry.{}ms", delay.as_millis())
    }
}

/// How long to wait between reconnection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait; doubles after each failed attempt (each wait drawn between half and all
    /// of it, as [`es_core::Backoff`] does).
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Everything [`AmqpEventBus`](crate::AmqpEventBus) needs: where the broker is, what to call
/// the connection, the topology, how events are routed and what happens to unroutable ones.
#[derive(Clone)]
pub struct AmqpConfig {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Other nodes of the same cluster, tried in order when `url` does not answer.
    pub fallback_urls: Vec<String>,
    /// The client-provided connection name, shown by the management UI and by
    /// `rabbitmqctl list_connections client_properties`.
    pub connection_name: String,
    /// Exchanges and queues.
    pub topology: Topology,
    /// Maps each event to its routing key.
    pub router: Router,
    /// What `publish` does with an event no queue binds.
    pub unroutable: Unroutable,
    /// Waits between reconnection attempts of the consumers.
    pub reconnect: ReconnectPolicy,
    /// The longest `publish` waits for one confirm before it reports the batch failed.
    pub confirm_timeout: Duration,
    /// How many published messages may await their confirm at once (the pipeline's depth).
    pub max_in_flight: usize,
    /// The longest a connection attempt may take (a broker behind a black hole would otherwise
    /// hold it for the operating system's TCP timeout).
    pub connect_timeout: Duration,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact(&self.url))
            .field(
                "fallback_urls",
                &self
                    .fallback_urls
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>(),
            )
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .field("unroutable", &self.unroutable)
            .field("reconnect", &self.reconnect)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl AmqpConfig {
    /// A configuration for the broker at `url` with the topic exchange `exchange`, routing with
    /// [`default_routing_key`], failing on unroutable events, connection name `es-rabbitmq`.
    pub fn new(url: impl Into<String>, exchange: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            connection_name: "es-rabbitmq".to_owned(),
            topology: Topology::new(exchange),
            router: Arc::new(default_routing_key),
            unroutable: Unroutable::Fail,
            reconnect: ReconnectPolicy::default(),
            confirm_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
        }
    }

    /// The same configuration with other nodes of the cluster to try, in order, when `url`
    /// does not answer.
    pub fn with_fallback_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The same configuration with another client-provided connection name.
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// The same configuration with another topology.
    pub fn with_topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// The same configuration routing with `router`.
    pub fn with_router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// The same configuration with another policy for unroutable events.
    pub fn with_unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }

    /// The same configuration with another reconnection policy.
    pub fn with_reconnect(mut self, reconnect: ReconnectPolicy) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The same configuration with another pipeline depth (at least 1).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// The same configuration with another connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The same configuration with another confirm timeout.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_wire_contract() {
        let topology = Topology::new("order-processing-events");
        assert_eq!(
            topology.dead_letter_exchange(),
            "order-processing-events.dlx"
        );
        assert_eq!(topology.queue("order-service"), "order-service");
        assert_eq!(
            topology.dead_letter_queue("order-service"),
            "order-service.dlq"
        );
        assert_eq!(
            topology.retry_queue("order-service", Duration::from_millis(1500)),
            "order-service.retry.1500ms"
        );
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let config = AmqpConfig::new("amqp://guest:secret@host:5672/%2f", "x");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("amqp://guest:***@host:5672/%2f"), "{shown}");
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
    }
}
