//! Webhook deliveries: recorded once each (by provider and delivery id), with what they matched and started.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::GenericClient;

type Db = tokio_postgres::Error;

/// A delivery as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub provider: String,
    pub delivery_id: String,
    pub event: String,
    pub received_at: DateTime<Utc>,
    pub remote_url: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub commit_id: Option<String>,
    pub matched: Vec<String>,
    pub job_result_ids: Vec<Uuid>,
    pub outcome: String,
}

/// What a new delivery is, before its outcome is known.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub provider: &'a str,
    pub delivery_id: &'a str,
    pub event: &'a str,
    pub remote_url: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub commit_id: Option<&'a str>,
}

/// Records a delivery with what it did; `false` when its id was recorded before (in a transaction, the caller
/// then rolls back what it did: a concurrent duplicate waits here for the first one's commit).
pub async fn record(
    db: &impl GenericClient,
    new: &NewDelivery<'_>,
    matched: &[String],
    job_result_ids: &[Uuid],
    outcome: &str,
) -> Result<bool, Db> {
    use tokio_postgres::types::Type;
    let n = db
        .execute_typed(
            "INSERT INTO webhook_delivery (provider, delivery_id, event, remote_url, ref, commit_id, matched,
                 job_result_ids, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (provider, delivery_id) DO NOTHING",
            &[
                (&new.provider, Type::TEXT),
                (&new.delivery_id, Type::TEXT),
                (&new.event, Type::TEXT),
                (&new.remote_url, Type::TEXT),
                (&new.reference, Type::TEXT),
                (&new.commit_id, Type::TEXT),
                (&matched, Type::TEXT_ARRAY),
                (&job_result_ids, Type::UUID_ARRAY),
                (&outcome, Type::TEXT),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The newest deliveries first, at most `limit`.
pub async fn recent(db: &impl GenericClient, limit: i64) -> Result<Vec<Delivery>, Db> {
    let rows =
        db.query("SELECT * FROM webhook_delivery ORDER BY received_at DESC, id DESC LIMIT $1", &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get("id"),
            provider: r.get("provider"),
            delivery_id: r.get("delivery_id"),
            event: r.get("event"),
            received_at: r.get("received_at"),
            remote_url: r.get("remote_url"),
            reference: r.get("ref"),
            commit_id: r.get("commit_id"),
            matched: r.get("matched"),
            job_result_ids: r.get("job_result_ids"),
            outcome: r.get("outcome"),
        })
        .collect())
}
