//! What housekeeping removes: rows past their retention, a batch per statement, each statement its own short
//! transaction (no lock is held across batches, and a large backlog is worked off a batch at a time).

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Rows per statement.
const BATCH: i64 = 1000;
/// Log entries per statement (a sync of a large repository writes one per file).
const LOG_BATCH: i64 = 5000;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished JobResults (with their logs), lock holdings, replayed dead letters and webhook deliveries. The
    /// latest JobResult of each live repository is kept whatever its age.
    pub records: Duration,
    /// Published outbox rows.
    pub published: Duration,
}

/// What one pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub job_results: u64,
    pub log_entries: u64,
    pub outbox_rows: u64,
    pub lock_holdings: u64,
    pub dead_letters: u64,
    pub webhook_deliveries: u64,
    /// UI sessions that expired or whose token was revoked.
    pub ui_sessions: u64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Removes, a batch at a time until none is left, everything past its retention.
pub async fn run(db: &impl GenericClient, retention: Retention) -> Result<Removed, tokio_postgres::Error> {
    let mut removed = Removed::default();
    let records = secs(retention.records);
    loop {
        let expired = expired_job_results(db, records).await?;
        if expired.is_empty() {
            break;
        }
        loop {
            let n = db
                .execute(
                    "DELETE FROM job_log_entry WHERE id IN
                        (SELECT id FROM job_log_entry WHERE job_result_id = ANY($1) LIMIT $2)",
                    &[&expired, &LOG_BATCH],
                )
                .await?;
            removed.log_entries += n;
            if n == 0 {
                break;
            }
        }
        removed.job_results += db.execute("DELETE FROM job_result WHERE id = ANY($1)", &[&expired]).await?;
    }
    let published = secs(retention.published);
    let rest: [(&mut u64, &str, &str, f64); 4] = [
        (&mut removed.outbox_rows, "outbox", "published_at < now() - make_interval(secs => $1)", published),
        (
            &mut removed.lock_holdings,
            "sync_lock_log",
            "acquired_at < now() - make_interval(secs => $1) AND released_at IS NOT NULL",
            records,
        ),
        (&mut removed.dead_letters, "dead_letter", "replayed_at < now() - make_interval(secs => $1)", records),
        (
            &mut removed.webhook_deliveries,
            "webhook_delivery",
            "received_at < now() - make_interval(secs => $1)",
            records,
        ),
    ];
    for (count, table, expired, age) in rest {
        let sql = format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {expired} LIMIT $2)");
        *count = batches(db, &sql, age).await?;
    }
    removed.ui_sessions = super::ui_session::purge(db).await?;
    Ok(removed)
}

/// Runs a `DELETE ... LIMIT $2` statement until it removes nothing; returns the rows removed.
async fn batches(db: &impl GenericClient, sql: &str, age_secs: f64) -> Result<u64, tokio_postgres::Error> {
    let mut total = 0;
    loop {
        let n = db.execute(sql, &[&age_secs, &BATCH]).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// A batch of finished JobResults created before the retention, leaving the latest JobResult of each live
/// repository (what `repo list` and the API show as its last sync). Running ones are never removed.
async fn expired_job_results(db: &impl GenericClient, age_secs: f64) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT jr.id FROM job_result jr
              WHERE jr.date_created < now() - make_interval(secs => $1)
                AND jr.status IN ('SUCCESS', 'FAILURE', 'REVOKED')
                AND (jr.repository_id IS NULL
                     OR NOT EXISTS (SELECT 1 FROM git_repository r
                                     WHERE r.id = jr.repository_id AND r.deleted_at IS NULL)
                     OR EXISTS (SELECT 1 FROM job_result newer
                                 WHERE newer.repository_id = jr.repository_id
                                   AND (newer.date_created, newer.id) > (jr.date_created, jr.id)))
              ORDER BY jr.date_created LIMIT $2",
            &[&age_secs, &BATCH],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
