//! What the relay reads at each scrape of its `/metrics`: the fleet's backlog as the database sees it.

use tokio_postgres::GenericClient;

/// The fleet's state, for gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetGauges {
    /// Outbox rows not yet published.
    pub outbox_backlog: i64,
    /// Age of the oldest unpublished outbox row, in seconds (0 with none).
    pub outbox_oldest_age_secs: f64,
    /// JobResults a worker is running.
    pub started: i64,
    /// Seconds since the oldest running JobResult's last heartbeat (0 with none): past the reaper's limit, its
    /// worker is gone and nobody reaps it.
    pub started_oldest_heartbeat_age_secs: f64,
    /// Dead letters not replayed.
    pub dead_letters: i64,
}

/// One query over the partial indexes (unpublished outbox rows, running JobResults).
pub async fn read(db: &impl GenericClient) -> Result<FleetGauges, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                    (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created)), 0)::float8 FROM outbox
                      WHERE published_at IS NULL),
                    (SELECT count(*) FROM job_result WHERE status = 'STARTED'),
                    (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(COALESCE(heartbeat, date_started))), 0)::float8
                       FROM job_result WHERE status = 'STARTED'),
                    (SELECT count(*) FROM dead_letter WHERE replayed_at IS NULL)",
            &[],
        )
        .await?;
    Ok(FleetGauges {
        outbox_backlog: row.get(0),
        outbox_oldest_age_secs: row.get(1),
        started: row.get(2),
        started_oldest_heartbeat_age_secs: row.get(3),
        dead_letters: row.get(4),
    })
}
