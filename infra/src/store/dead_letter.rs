//! Dead letters: messages the broker gave up on (the work queue's delivery limit) or a worker refused (not a valid
//! event), recorded from the dead-letter queue so operators can list and replay them from the database.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::GenericClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: Option<Uuid>,
    pub routing_key: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub headers: Value,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            event_id: row.get("event_id"),
            routing_key: row.get("routing_key"),
            reason: row.get("reason"),
            payload: row.get("payload"),
            headers: row.get("headers"),
            received_at: row.get("received_at"),
            replayed_at: row.get("replayed_at"),
        }
    }
}

pub struct NewDeadLetter<'a> {
    pub event_id: Option<Uuid>,
    pub routing_key: &'a str,
    pub reason: &'a str,
    pub payload: &'a [u8],
    pub headers: &'a Value,
}

/// Records a dead letter. Returns false when the same event is already recorded and not yet replayed.
pub async fn insert(db: &impl GenericClient, new: &NewDeadLetter<'_>) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "INSERT INTO dead_letter (event_id, routing_key, reason, payload, headers) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (event_id) WHERE event_id IS NOT NULL AND replayed_at IS NULL DO NOTHING",
            &[&new.event_id, &new.routing_key, &new.reason, &new.payload, new.headers],
        )
        .await?;
    Ok(n == 1)
}

const COLUMNS: &str = "id, event_id, routing_key, reason, payload, headers, received_at, replayed_at";

/// Dead letters, newest first; `include_replayed` also lists those already replayed.
pub async fn list(db: &impl GenericClient, include_replayed: bool) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM dead_letter WHERE $1 OR replayed_at IS NULL ORDER BY received_at DESC, id DESC");
    Ok(db.query(&sql, &[&include_replayed]).await?.iter().map(DeadLetter::from_row).collect())
}

/// One dead letter, locked for a replay.
pub async fn get_for_update(db: &impl GenericClient, id: i64) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letter WHERE id = $1 FOR UPDATE");
    Ok(db.query_opt(&sql, &[&id]).await?.as_ref().map(DeadLetter::from_row))
}

pub async fn mark_replayed(db: &impl GenericClient, id: i64) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE dead_letter SET replayed_at = now() WHERE id = $1", &[&id]).await
}
