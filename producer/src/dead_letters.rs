//! `producer dead-letters list` and `replay`: the events the fleet gave up on, from the `dead_letter` table the
//! workers fill from the dead-letter queue.
//!
//! A replay reopens the event's JobResult (PENDING again, its earlier log kept, a line saying who replayed it) and
//! writes the original event to the outbox in the same transaction, so the relay publishes it with confirms.

use deadpool_postgres::Pool;
use gitfleet_infra::store::dead_letter::{self, DeadLetter};
use gitfleet_infra::store::{job_result, outbox};
use gitfleet_infra::telemetry::current_traceparent;
use gitfleet_shared::event::{Event, RequestedBy};
use uuid::Uuid;

use crate::commands::CommandError;

pub async fn list(pool: &Pool, include_replayed: bool) -> Result<Vec<DeadLetter>, CommandError> {
    let client = pool.get().await?;
    Ok(dead_letter::list(&**client, include_replayed).await?)
}

/// Replays one dead letter, or with `None` every one not yet replayed that is a valid event. Returns the event
/// ids sent again.
pub async fn replay(pool: &Pool, id: Option<i64>, by: &RequestedBy) -> Result<Vec<Uuid>, CommandError> {
    let ids: Vec<i64> = match id {
        Some(id) => vec![id],
        None => list(pool, false).await?.into_iter().filter(|d| d.event_id.is_some()).map(|d| d.id).collect(),
    };
    let mut replayed = Vec::new();
    for id in ids {
        replayed.push(replay_one(pool, id, by).await?);
    }
    Ok(replayed)
}

async fn replay_one(pool: &Pool, id: i64, by: &RequestedBy) -> Result<Uuid, CommandError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let letter = dead_letter::get_for_update(&*tx, id)
        .await?
        .ok_or(CommandError::Absent(format!("no dead letter with id {id}")))?;
    if letter.replayed_at.is_some() {
        return Err(CommandError::Refused(format!("dead letter {id} was already replayed")));
    }
    let event = Event::decode(&letter.payload).map_err(|err| {
        let reason = format!("{} ({err})", letter.reason);
        CommandError::Refused(format!("dead letter {id} is not a valid event and cannot be replayed: {reason}"))
    })?;
    if !job_result::reopen(&*tx, event.event_id, by.as_str()).await? {
        // The JobResult is gone (retention); the event makes a new one when a worker picks it up.
        tracing::info!(event_id = %event.event_id, "replaying an event whose JobResult no longer exists");
    }
    // The outbox keeps one row per event id: the published original makes way for the replay.
    outbox::discard(&*tx, event.event_id).await?;
    outbox::insert(&*tx, &event, &current_traceparent()).await?;
    dead_letter::mark_replayed(&*tx, id).await?;
    tx.commit().await?;
    Ok(event.event_id)
}
