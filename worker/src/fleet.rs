//! What keeps the fleet honest when things go wrong (ARCHITECTURE 4.1, 4.7): the dead-letter recorder, which turns
//! each dead-lettered message into a `dead_letter` row and ends its JobResult FAILURE with the reason, and the
//! reaper, which ends JobResults whose worker stopped beating (killed) and no longer holds the repository lock.

use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_infra::amqp::{self, REJECT_REASON_HEADER};
use gitfleet_infra::store::{dead_letter, job_result};
use gitfleet_shared::event::Event;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::JobContext;

/// Consumes the dead-letter queue on its own channel until the connection fails or `shutdown` fires.
pub async fn record_dead_letters(
    ctx: &JobContext,
    channel: lapin::Channel,
    delivery_limit: u32,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let tag = format!("{}-dead-letters", ctx.worker_name);
    let mut consumer = channel
        .basic_consume(
            ctx.topology.dead.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => match record(ctx, &delivery, delivery_limit).await {
                    Ok(()) => {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not record a dead letter; it stays queued");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    }
                },
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(()),
            },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

async fn record(ctx: &JobContext, delivery: &Delivery, delivery_limit: u32) -> anyhow::Result<()> {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let event = Event::decode(&delivery.data).ok();
    let reason = match amqp::header_str(&delivery.properties, REJECT_REASON_HEADER) {
        Some(refused) => refused,
        None => match amqp::header_str(&delivery.properties, "x-first-death-reason").as_deref() {
            Some("delivery_limit") => {
                format!("the work queue's delivery limit of {delivery_limit} was reached without a result")
            }
            Some(other) => format!("dead-lettered by the broker: {other}"),
            None => "dead-lettered".to_owned(),
        },
    };
    let routing_key = amqp::header_str(&delivery.properties, "x-original-routing-key")
        .or_else(|| event.as_ref().map(|e| e.kind.routing_key()))
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let mut headers = table_json(&headers);
    if let (Some(id), Value::Object(map)) = (delivery.properties.message_id(), &mut headers) {
        map.insert("message_id".to_owned(), json!(id.as_str()));
    }
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let new = dead_letter::NewDeadLetter {
        event_id: event.as_ref().map(|e| e.event_id),
        routing_key: &routing_key,
        reason: &reason,
        payload: &delivery.data,
        headers: &headers,
    };
    let recorded = dead_letter::insert(&*tx, &new).await?;
    if let Some(event) = &event {
        job_result::fail_dead_lettered(&*tx, event.event_id, &reason).await?;
    }
    tx.commit().await?;
    tracing::warn!(event_id = ?event.map(|e| e.event_id), %reason, recorded, "dead letter recorded");
    Ok(())
}

fn table_json(table: &FieldTable) -> Value {
    Value::Object(table.inner().iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
}

fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(table) => table_json(table),
        other => json!(format!("{other:?}")),
    }
}

/// Every `interval`, ends the JobResults whose worker is gone: STARTED, no heartbeat for `stale_after`, and their
/// repository's lock free (a live worker holds it for as long as it works). Runs until `shutdown`.
pub async fn reap(ctx: &JobContext, interval: Duration, stale_after: Duration, shutdown: &CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        match reap_once(ctx, stale_after).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "ended the results of lost workers"),
            Err(err) => tracing::debug!(error = %err, "reaper pass failed; trying again later"),
        }
    }
}

/// One reaper pass. Returns how many results it ended.
pub async fn reap_once(ctx: &JobContext, stale_after: Duration) -> anyhow::Result<usize> {
    let stale = stale_after.as_secs_f64();
    let client = ctx.pool.get().await?;
    let candidates = job_result::stale_started(&**client, stale).await?;
    let mut ended = 0;
    for (id, slug) in candidates {
        let message = format!(
            "worker lost: the worker running this job stopped reporting for more than {} seconds and released its \
             lock (it was killed or lost its connection).",
            stale_after.as_secs()
        );
        let Some(slug) = slug else {
            ended += usize::from(job_result::fail_lost(&**client, id, stale, &message).await?);
            continue;
        };
        // Holding the lock proves no worker is still on it; if one is, it will finish the job itself.
        let key = crate::lock::key(&slug);
        let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
        if !got {
            continue;
        }
        let outcome = job_result::fail_lost(&**client, id, stale, &message).await;
        if client.query_one("SELECT pg_advisory_unlock($1)", &[&key]).await.is_err() {
            // Never hand a connection that may still hold the lock back to the pool.
            drop(deadpool_postgres::Object::take(client));
            return Err(anyhow::anyhow!("could not release a repository lock after reaping"));
        }
        ended += usize::from(outcome?);
    }
    Ok(ended)
}
