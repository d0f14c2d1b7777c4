//! The outbox relay: publishes committed outbox rows to the events exchange with publisher confirms, oldest first,
//! and marks them published only after the broker confirmed them. A row is published at least once; workers are
//! idempotent on `event_id`.
//!
//! It wakes on `NOTIFY gitfleet_outbox` (sent by the producer's transaction) and also polls, so a lost
//! notification or a broker outage only delays events, never loses them.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use gitfleet_infra::amqp::{self, Publisher, Topology};
use gitfleet_infra::settings::{AmqpSettings, DatabaseSettings};
use gitfleet_infra::store::outbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Rows published per transaction.
    pub batch: i64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_millis(500), batch: 200 }
    }
}

/// Runs until `shutdown` is cancelled. Broker and database outages are retried forever with backoff.
pub async fn run(
    pool: Pool,
    database: DatabaseSettings,
    amqp_settings: AmqpSettings,
    options: RelayOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = Topology::new(&amqp_settings);
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(database, wake.clone(), shutdown.clone()));
    let reconnect = Duration::from_millis(100);
    gitfleet_infra::retry::reconnecting("the outbox relay", reconnect, &shutdown, || async {
        let connection = amqp::connect(&amqp_settings, Duration::from_secs(5)).await?;
        let publisher = Publisher::new(&connection).await?;
        topology.declare(publisher.channel()).await?;
        tracing::info!("outbox relay connected to RabbitMQ");
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
    Ok(())
}

/// Publishes one batch inside a transaction that holds the claimed rows. Returns how many were published.
async fn relay_batch(pool: &Pool, publisher: &Publisher, topology: &Topology, batch: i64) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = outbox::claim(&*tx, batch).await?;
    if rows.is_empty() {
        return Ok(0);
    }
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
        // Recorded outside the rolled-back transaction, for operators looking at a stuck outbox.
        let client = pool.get().await?;
        outbox::mark_failed(&**client, &ids, &err.to_string()).await?;
        return Err(err.into());
    }
    outbox::mark_published(&*tx, &ids).await?;
    tx.commit().await?;
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
