//! The transactional outbox: an event is written in the same transaction as the definition change it announces,
//! and the relay publishes it afterwards, so a committed change is never without its event and vice versa.

use gitfleet_shared::event::Event;
use tokio_postgres::Row;
use uuid::Uuid;

use super::GenericClient;

pub async fn insert(db: &impl GenericClient, event: &Event, traceparent: &str) -> anyhow::Result<()> {
    let payload = serde_json::to_value(event)?;
    use tokio_postgres::types::Type;
    db.execute_typed(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent) VALUES ($1, $2, $3, $4)",
        &[
            (&event.event_id, Type::UUID),
            (&event.kind.routing_key(), Type::TEXT),
            (&payload, Type::JSONB),
            (&traceparent, Type::TEXT),
        ],
    )
    .await?;
    // The table's trigger wakes the relay when the transaction commits.
    Ok(())
}

/// One row waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub traceparent: String,
}

impl Pending {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            event_id: row.get("event_id"),
            routing_key: row.get("routing_key"),
            payload: row.get("payload"),
            traceparent: row.get("traceparent"),
        }
    }
}

/// Claims up to `limit` unpublished rows, oldest first. Rows claimed by another relay's open transaction are
/// skipped, so several relays can run side by side.
pub async fn claim(db: &impl GenericClient, limit: i64) -> Result<Vec<Pending>, tokio_postgres::Error> {
    Ok(db
        .query(
            "SELECT id, event_id, routing_key, payload, traceparent FROM outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await?
        .iter()
        .map(Pending::from_row)
        .collect())
}

pub async fn mark_published(db: &impl GenericClient, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)", &[&ids]).await
}

pub async fn mark_failed(db: &impl GenericClient, ids: &[i64], error: &str) -> Result<u64, tokio_postgres::Error> {
    db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)", &[&ids, &error]).await
}

/// How many events wait to be published.
pub async fn backlog(db: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(db.query_one("SELECT count(*) FROM outbox WHERE published_at IS NULL", &[]).await?.get(0))
}

/// Removes an event's row (the outbox keeps one row per event id: a replay takes the published original's place).
pub async fn discard(db: &impl GenericClient, event_id: uuid::Uuid) -> Result<u64, tokio_postgres::Error> {
    db.execute("DELETE FROM outbox WHERE event_id = $1", &[&event_id]).await
}
