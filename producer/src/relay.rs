//! The outbox relay: publishes committed outbox rows to the events exchange with publisher confirms, oldest first,
//! and marks them published only after the broker confirmed them. A row is published at least once; workers are
//! idempotent on `event_id`.
//!
//! It wakes on `NOTIFY gitfleet_outbox` (sent by the producer's transaction) and also polls, so a lost
//! notification or a broker outage only delays events, never loses them. It also runs the poll scheduler
//! (`scheduler.rs`) for repositories with a `sync_interval`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use gitfleet_infra::amqp::{self, Publisher, Topology};
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_infra::store::outbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Rows published per transaction.
    pub batch: i64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The poll scheduler's timing.
    pub scheduler: crate::scheduler::SchedulerOptions,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            batch: 200,
            metrics_addr: None,
            scheduler: crate::scheduler::SchedulerOptions::default(),
        }
    }
}

/// The relay's connection to the broker while it has one (what `/readyz` and the queue gauges use).
type BrokerSlot = Arc<std::sync::Mutex<Option<Arc<lapin::Connection>>>>;

/// Runs until `shutdown` is cancelled. Broker and database outages are retried forever with backoff. With
/// `metrics_addr`, serves `/metrics`, `/healthz` and `/readyz` there.
pub async fn run(
    pool: Pool,
    database: DatabaseSettings,
    amqp_settings: AmqpSettings,
    options: RelayOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = Topology::new(&amqp_settings);
    let wake = Arc::new(Notify::new());
    let broker: BrokerSlot = Arc::default();
    let probes_stop = CancellationToken::new();
    if let Some(addr) = options.metrics_addr {
        let ready = readiness(pool.clone(), broker.clone(), shutdown.clone());
        let render = render(pool.clone(), broker.clone(), topology.clone());
        gitfleet_infra::metrics::serve(addr, ready, render, probes_stop.clone()).await?;
    }
    let _stop_probes = probes_stop.drop_guard();
    let listener = tokio::spawn(listen(database, wake.clone(), shutdown.clone()));
    let scheduler = tokio::spawn(crate::scheduler::run(pool.clone(), options.scheduler.clone(), shutdown.clone()));
    let reconnect = Duration::from_millis(100);
    gitfleet_infra::retry::reconnecting("the outbox relay", reconnect, &shutdown, || async {
        let connection = Arc::new(amqp::connect(&amqp_settings, Duration::from_secs(5)).await?);
        let publisher = Publisher::new(&connection).await?;
        topology.declare(publisher.channel()).await?;
        tracing::info!("outbox relay connected to RabbitMQ");
        let _connected = Connected::new(&broker, connection.clone());
        loop {
            let published = relay_batch(&pool, &publisher, &topology, options.batch).await?;
            if published > 0 {
                tracing::debug!(published, "published outbox rows");
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(options.poll_interval) => {}
                () = shutdown.cancelled() => {
                    // The channel first, then the connection: closing a connection under an open channel makes
                    // the client log errors about it at every clean shutdown.
                    let _ = publisher.channel().close(200, "relay stopping".into()).await;
                    let _ = connection.close(200, "relay stopping".into()).await;
                    return Ok::<(), anyhow::Error>(());
                }
            }
        }
    })
    .await;
    listener.abort();
    let _ = scheduler.await;
    Ok(())
}

/// Holds the connection in the slot while a session lasts.
struct Connected<'a>(&'a BrokerSlot);

impl<'a> Connected<'a> {
    fn new(slot: &'a BrokerSlot, connection: Arc<lapin::Connection>) -> Self {
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection);
        crate::metrics::RELAY.broker_up.set(1);
        Self(slot)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        crate::metrics::RELAY.broker_up.set(0);
    }
}

fn connection(slot: &BrokerSlot) -> Option<Arc<lapin::Connection>> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone().filter(|c| c.status().connected())
}

/// `/readyz` of a relay: not while it stops, nor without the broker, nor when PostgreSQL does not answer.
fn readiness(pool: Pool, broker: BrokerSlot, shutdown: CancellationToken) -> gitfleet_infra::metrics::ReadyCheck {
    Arc::new(move || {
        let (pool, broker, shutdown) = (pool.clone(), broker.clone(), shutdown.clone());
        Box::pin(async move {
            if shutdown.is_cancelled() {
                return Err("draining: the relay is stopping".to_owned());
            }
            if connection(&broker).is_none() {
                return Err("not connected to the broker".to_owned());
            }
            gitfleet_infra::db::ping(&pool).await.map_err(|e| format!("the database does not answer: {e}"))
        })
    })
}

/// `/metrics` of a relay: the backlog gauges are read from PostgreSQL and the broker first (each within two
/// seconds; a source that does not answer leaves its gauges as they were).
fn render(pool: Pool, broker: BrokerSlot, topology: Topology) -> gitfleet_infra::metrics::Render {
    let topology = Arc::new(topology);
    Arc::new(move || {
        let (pool, broker, topology) = (pool.clone(), broker.clone(), topology.clone());
        Box::pin(async move {
            let m = &crate::metrics::RELAY;
            let limit = Duration::from_secs(2);
            let read = tokio::time::timeout(limit, async {
                let client = pool.get().await.ok()?;
                gitfleet_infra::store::gauges::read(&**client).await.ok()
            });
            if let Ok(Some(g)) = read.await {
                m.outbox_backlog.set(g.outbox_backlog);
                m.outbox_oldest_age.set(g.outbox_oldest_age_secs);
                m.started.set(g.started);
                m.started_oldest_heartbeat_age.set(g.started_oldest_heartbeat_age_secs);
                m.dead_letters.set(g.dead_letters);
            }
            if let Some(connection) = connection(&broker) {
                let _ = tokio::time::timeout(limit, queue_gauges(&connection, &topology)).await;
            }
            gitfleet_infra::metrics::encode(&m.registry)
        })
    })
}

/// Ready messages and consumers of the queues of one role (`work`, `deferred`, `retry`, `dead`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub role: &'static str,
    pub messages: i64,
    pub consumers: i64,
}

/// Ready messages and consumers of each of the topology's queues, by role, asked with passive declarations on a
/// channel of their own (a queue someone deleted closes that channel, not the publisher's).
pub async fn queue_depths(connection: &lapin::Connection, topology: &Topology) -> anyhow::Result<Vec<QueueDepth>> {
    let channel = connection.create_channel().await?;
    let mut queues = vec![("work", topology.work.clone()), ("deferred", topology.delay.clone())];
    queues.extend(topology.retry_delays.iter().map(|d| ("retry", topology.retry_queue(*d))));
    queues.push(("dead", topology.dead.clone()));
    let (mut messages, mut consumers) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for (role, name) in queues {
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(name.as_str().into(), options, Default::default()).await?;
        *messages.entry(role).or_insert(0_i64) += i64::from(queue.message_count());
        *consumers.entry(role).or_insert(0_i64) += i64::from(queue.consumer_count());
    }
    let _ = channel.close(200, "queue depths read".into()).await;
    Ok(["work", "deferred", "retry", "dead"]
        .into_iter()
        .map(|role| QueueDepth {
            role,
            messages: messages.get(role).copied().unwrap_or(0),
            consumers: consumers.get(role).copied().unwrap_or(0),
        })
        .collect())
}

/// The relay's queue gauges, from [`queue_depths`].
async fn queue_gauges(connection: &lapin::Connection, topology: &Topology) -> anyhow::Result<()> {
    let m = &crate::metrics::RELAY;
    for depth in queue_depths(connection, topology).await? {
        let label = crate::metrics::QueueLabel { queue: depth.role };
        m.queue_messages.get_or_create(&label).set(depth.messages);
        m.queue_consumers.get_or_create(&label).set(depth.consumers);
    }
    Ok(())
}

/// Publishes one batch inside a transaction that holds the claimed rows. Returns how many were published. The
/// batch is one span, linked to the span of each request that wrote a row (the events' traces go on in the
/// workers, from the rows' own `traceparent`).
async fn relay_batch(pool: &Pool, publisher: &Publisher, topology: &Topology, batch: i64) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = outbox::claim(&*tx, batch).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let span = tracing::info_span!(
        "relay publish",
        otel.name = "publish outbox",
        otel.kind = "producer",
        messaging.batch.message_count = rows.len(),
        messaging.destination.name = %topology.events,
    );
    for row in &rows {
        gitfleet_infra::telemetry::link_to(&span, &row.traceparent);
    }
    relay_rows(tx, pool, publisher, topology, rows).instrument(span).await
}

async fn relay_rows(
    tx: deadpool_postgres::Transaction<'_>,
    pool: &Pool,
    publisher: &Publisher,
    topology: &Topology,
    rows: Vec<outbox::Pending>,
) -> anyhow::Result<usize> {
    // Pipelined: every publish is sent, then every confirm awaited.
    let bodies: Vec<Vec<u8>> = rows.iter().map(|r| r.payload.to_string().into_bytes()).collect();
    let sends = rows.iter().zip(&bodies).map(|(row, body)| {
        let properties = amqp::event_properties(&row.event_id.to_string(), &row.traceparent);
        publisher.publish(&topology.events, &row.routing_key, body, properties)
    });
    let results = join_all(sends).await;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    if let Some(Err(err)) = results.into_iter().find(Result::is_err) {
        drop(tx);
        crate::metrics::RELAY.publish_failures.inc();
        // Recorded outside the rolled-back transaction, for operators looking at a stuck outbox.
        let client = pool.get().await?;
        outbox::mark_failed(&**client, &ids, &err.to_string()).await?;
        return Err(err.into());
    }
    outbox::mark_published(&*tx, &ids).await?;
    tx.commit().await?;
    crate::metrics::RELAY.published.inc_by(rows.len() as u64);
    Ok(rows.len())
}

/// Holds a dedicated connection that LISTENs for outbox notifications and wakes the relay on each.
async fn listen(database: DatabaseSettings, wake: Arc<Notify>, shutdown: CancellationToken) {
    use futures_util::StreamExt;
    use std::str::FromStr;
    use tokio_postgres::AsyncMessage;

    while !shutdown.is_cancelled() {
        let attempt = async {
            let config = tokio_postgres::Config::from_str(&database.url)?;
            let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
            let waker = wake.clone();
            // The connection must be polled for the LISTEN to complete and for notifications to arrive.
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    if let AsyncMessage::Notification(_) = message? {
                        waker.notify_one();
                    }
                }
                Ok::<(), tokio_postgres::Error>(())
            });
            client.batch_execute("LISTEN gitfleet_outbox").await?;
            tokio::select! {
                ended = driver => ended??,
                () = shutdown.cancelled() => {}
            }
            Ok::<(), anyhow::Error>(())
        };
        if let Err(err) = attempt.await {
            tracing::debug!(error = %err, "outbox LISTEN connection lost; polling until it is back");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => {}
        }
    }
}
