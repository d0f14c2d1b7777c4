//! The RabbitMQ topology and a confirming publisher.
//!
//! ```text
//! <prefix>.events (topic) --repo.#--> <prefix>.work (quorum, x-delivery-limit) --dead-letter--> <prefix>.dead
//! <prefix>.deferred (quorum, TTL) --expired, at least once, key repo.deferred--> <prefix>.events
//!     (deferred events come back after the delay)
//! <prefix>.retry.<N>s (quorum, TTL N s, one per delay of the retry schedule) --expired--> <prefix>.events
//!     (events that met a transient fault come back for their next try)
//! <prefix>.notifications (topic): repo.synced / repo.sync_failed / repo.deleted, published after commit
//! ```

use std::time::Duration;

use backon::Retryable;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use thiserror::Error;

use crate::settings::AmqpSettings;

/// Routing key of events coming back from the delay queue (the kind is in the payload).
pub const DEFERRED_ROUTING_KEY: &str = "repo.deferred";

/// Header that carries why a message was dead-lettered by a worker.
pub const REJECT_REASON_HEADER: &str = "x-gitfleet-reject-reason";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AmqpError {
    #[error("RabbitMQ error: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (publisher confirm nack) on {exchange} with key {routing_key}")]
    Nacked { exchange: String, routing_key: String },
    /// Published as mandatory and returned: no queue took it (during a broker restart, or a missing binding).
    #[error("RabbitMQ routed the message on {exchange} with key {routing_key} to no queue")]
    Unroutable { exchange: String, routing_key: String },
}

/// Names of every exchange and queue, derived from one prefix so tests and tenants can run side by side.
#[derive(Debug, Clone)]
pub struct Topology {
    pub events: String,
    pub work: String,
    pub dead_exchange: String,
    pub dead: String,
    pub delay: String,
    pub notifications: String,
    pub delivery_limit: u32,
    pub defer_delay_ms: u32,
    /// Retry schedule after transient faults, in seconds: the n-th retry waits `retry_delays[n - 1]`.
    pub retry_delays: Vec<u32>,
}

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Self {
        let p = &settings.prefix;
        Self {
            events: format!("{p}.events"),
            work: format!("{p}.work"),
            dead_exchange: format!("{p}.dead"),
            dead: format!("{p}.dead"),
            // `.deferred`, not `.delay`: the earlier classic delay queue cannot be redeclared as a quorum queue.
            delay: format!("{p}.deferred"),
            notifications: format!("{p}.notifications"),
            delivery_limit: settings.delivery_limit,
            defer_delay_ms: settings.defer_delay_ms,
            retry_delays: settings.retry_delays.clone(),
        }
    }

    /// The queue where an event waits `seconds` before its next try (one queue per delay: a queue's messages expire
    /// in order, so a long wait must never sit in front of a short one).
    pub fn retry_queue(&self, seconds: u32) -> String {
        format!("{}.retry.{seconds}s", self.events.trim_end_matches(".events"))
    }

    /// A quorum queue whose messages wait `ttl_ms` and then expire, at least once, back into the events exchange.
    fn waiting_queue_args(&self, ttl_ms: i64) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert("x-dead-letter-exchange".into(), long_string(&self.events));
        args.insert("x-dead-letter-routing-key".into(), long_string(DEFERRED_ROUTING_KEY));
        args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args
    }

    /// Declares everything (idempotent; both the producer and the worker call it at start-up).
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        for (name, kind) in [
            (&self.events, ExchangeKind::Topic),
            (&self.dead_exchange, ExchangeKind::Fanout),
            (&self.notifications, ExchangeKind::Topic),
        ] {
            channel.exchange_declare(name.as_str().into(), kind, durable, FieldTable::default()).await?;
        }

        let mut work = FieldTable::default();
        work.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(self.delivery_limit)));
        work.insert("x-dead-letter-exchange".into(), long_string(&self.dead_exchange));
        // At-least-once dead-lettering: a message is removed from the work queue only once the dead-letter queue has
        // it. RabbitMQ requires reject-publish overflow for that strategy.
        work.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
        work.insert("x-overflow".into(), long_string("reject-publish"));
        quorum_queue(channel, &self.work, work, Some((&self.events, "repo.#"))).await?;
        quorum_queue(channel, &self.dead, FieldTable::default(), Some((&self.dead_exchange, ""))).await?;

        // Deferred events wait here and expire back into the events exchange. A quorum queue with at-least-once
        // dead-lettering: a classic queue's expiry is at-most-once and loses the event if the broker stops just then
        // (the chaos test caught it).
        quorum_queue(channel, &self.delay, self.waiting_queue_args(i64::from(self.defer_delay_ms)), None).await?;
        // Retry queues, the same kind of queue with the schedule's delays.
        let mut delays = self.retry_delays.clone();
        delays.sort_unstable();
        delays.dedup();
        for seconds in delays {
            let retry = self.waiting_queue_args(i64::from(seconds) * 1000);
            quorum_queue(channel, &self.retry_queue(seconds), retry, None).await?;
        }
        Ok(())
    }
}

/// Declares a durable quorum queue with `args`, bound to `bind` (exchange, routing key) when given.
async fn quorum_queue(
    channel: &Channel,
    name: &str,
    mut args: FieldTable,
    bind: Option<(&str, &str)>,
) -> Result<(), AmqpError> {
    args.insert("x-queue-type".into(), long_string("quorum"));
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(name.into(), durable, args).await?;
    if let Some((exchange, key)) = bind {
        channel
            .queue_bind(name.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Reads a string header, whatever string type the sender used.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The broker addresses of `GITFLEET_AMQP_URL`: one URL, or several separated by commas (the nodes of a cluster).
pub fn broker_urls(settings: &AmqpSettings) -> Vec<&str> {
    settings.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// Connects to a live broker of the list, retrying with exponential backoff and jitter for up to `wait`. Each
/// round tries every address once, starting at a different one per process, so a fleet spreads over a cluster's
/// nodes and a stopped node costs one refused connection.
pub async fn connect(settings: &AmqpSettings, wait: Duration) -> Result<Connection, AmqpError> {
    let mut urls = broker_urls(settings);
    if urls.is_empty() {
        urls.push(settings.url.as_str());
    }
    let start = usize::try_from(std::process::id()).unwrap_or(0) % urls.len();
    urls.rotate_left(start);
    let urls = &urls;
    let attempt = || async move {
        let mut result = Connection::connect(urls[0], ConnectionProperties::default()).await;
        for (i, url) in urls.iter().enumerate().skip(1) {
            let Err(err) = &result else { break };
            // The URL carries a password: only its place in the list is logged.
            tracing::debug!(error = %err, broker = (start + i - 1) % urls.len(), "broker refused; trying the next");
            result = Connection::connect(url, ConnectionProperties::default()).await;
        }
        result
    };
    let backoff = crate::retry::until_ready(wait);
    let connection = attempt
        .retry(backoff)
        .notify(|err, after| tracing::warn!(error = %err, ?after, "RabbitMQ not ready, retrying"))
        .await?;
    Ok(connection)
}

/// A channel in confirm mode: `publish` returns only once the broker has taken responsibility for the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("channel", &self.channel.id()).finish()
    }
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, AmqpError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes persistently and waits for the broker's confirm; a nack is an error.
    /// Publishes a persistent, mandatory message and waits for its confirm. A confirm only counts when a queue took
    /// the message: an unroutable one is acked by the broker too (and returned), which would lose it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), AmqpError> {
        self.publish_with(exchange, routing_key, payload, properties, true).await
    }

    /// The same for a message nobody has to receive (notifications): not mandatory.
    pub async fn publish_optional(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), AmqpError> {
        self.publish_with(exchange, routing_key, payload, properties, false).await
    }

    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        let properties = properties.with_delivery_mode(2);
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, payload, properties)
            .await?
            .await?;
        let (exchange, routing_key) = (exchange.to_owned(), routing_key.to_owned());
        match confirm {
            lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(AmqpError::Unroutable { exchange, routing_key }),
            lapin::Confirmation::Nack(_) => Err(AmqpError::Nacked { exchange, routing_key }),
        }
    }
}

/// Properties of an event message (ARCHITECTURE section 2).
pub fn event_properties(event_id: &str, traceparent: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("traceparent".into(), long_string(traceparent));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(event_id.into())
        .with_headers(headers)
}
