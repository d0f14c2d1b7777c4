//! `producer dead-letters list` and `replay`: the events the fleet gave up on, from the `dead_letter` table the
//! workers fill from the dead-letter queue.
//!
//! A replay reopens the event's JobResult (PENDING again, its earlier log kept, a line saying who replayed it) and
//! writes the original event to the outbox in the same transaction, so the relay publishes it with confirms.

use deadpool_postgres::Pool;
use gitfleet_infra::amqp::new_traceparent;
use gitfleet_infra::store::dead_letter::{self, DeadLetter};
use gitfleet_infra::store::{job_result, outbox};
use gitfleet_shared::event::{Event, RequestedBy};
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("no dead letter with id {0}")]
    NotFound(i64),
    #[error("dead letter {0} was already replayed")]
    AlreadyReplayed(i64),
    #[error("dead letter {id} is not a valid event and cannot be replayed: {reason}")]
    NotAnEvent { id: i64, reason: String },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl ReplayError {
    /// Bad input exits 2; database trouble 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound(_) | Self::AlreadyReplayed(_) | Self::NotAnEvent { .. } => 2,
            _ => 1,
        }
    }
}

pub async fn list(pool: &Pool, include_replayed: bool) -> Result<Vec<DeadLetter>, ReplayError> {
    let client = pool.get().await?;
    Ok(dead_letter::list(&**client, include_replayed).await?)
}

/// Replays one dead letter, or with `None` every one not yet replayed that is a valid event. Returns the event
/// ids sent again.
pub async fn replay(pool: &Pool, id: Option<i64>, by: &RequestedBy) -> Result<Vec<Uuid>, ReplayError> {
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

async fn replay_one(pool: &Pool, id: i64, by: &RequestedBy) -> Result<Uuid, ReplayError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let letter = dead_letter::get_for_update(&*tx, id).await?.ok_or(ReplayError::NotFound(id))?;
    if letter.replayed_at.is_some() {
        return Err(ReplayError::AlreadyReplayed(id));
    }
    let event = Event::decode(&letter.payload)
        .map_err(|err| ReplayError::NotAnEvent { id, reason: format!("{} ({err})", letter.reason) })?;
    if !job_result::reopen(&*tx, event.event_id, by.as_str()).await? {
        // The JobResult is gone (retention); the event makes a new one when a worker picks it up.
        tracing::info!(event_id = %event.event_id, "replaying an event whose JobResult no longer exists");
    }
    // The outbox keeps one row per event id: the published original makes way for the replay.
    tx.execute("DELETE FROM outbox WHERE event_id = $1", &[&event.event_id]).await?;
    outbox::insert(&*tx, &event, &new_traceparent()).await?;
    dead_letter::mark_replayed(&*tx, id).await?;
    tx.commit().await?;
    Ok(event.event_id)
}
