//! The poll scheduler, inside `producer relay`: once a second it takes the repositories whose poll is due and
//! records a `poll` event for each in the outbox (the relay publishes it; a worker asks the remote for the branch's
//! tip and syncs only when it moved).
//!
//! One relay schedules at a time: the one holding a PostgreSQL session advisory lock (named after the schema, so
//! fleets sharing a database do not share it). The others try for it every few seconds; when the scheduling relay
//! dies, its connection closes, the lock is free, and the next to try takes over. Even with two schedulers for a
//! moment, a due repository is taken once: its row is locked (`SKIP LOCKED`) and its poll time moved on in the
//! transaction that records the event.
//!
//! The scheduling relay also keeps house: every few minutes it removes finished JobResults (with their logs) older
//! than the retention, except the latest of each live repository, published outbox rows after a day, and lock
//! holdings, replayed dead letters and webhook deliveries past the same retention.

use std::time::Duration;

use deadpool_postgres::Pool;
use gitfleet_infra::store::{housekeeping, outbox, repository};
use gitfleet_shared::event::{Event, EventKind, RequestedBy, SchemaVersion, Version};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How often due polls are looked for.
    pub tick: Duration,
    /// How often a relay that does not schedule tries to take over.
    pub takeover: Duration,
    /// Polls recorded per transaction (more wait for the next round, a moment later).
    pub batch: i64,
    /// How often housekeeping removes what is past its retention.
    pub housekeeping_every: Duration,
    pub retention: housekeeping::Retention,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            takeover: Duration::from_secs(3),
            batch: 500,
            housekeeping_every: Duration::from_secs(600),
            retention: housekeeping::Retention {
                records: Duration::from_secs(30 * 86_400),
                published: Duration::from_secs(86_400),
            },
        }
    }
}

/// Schedules polls while this process holds the lock, until `shutdown`.
pub async fn run(pool: Pool, options: SchedulerOptions, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match lead(&pool, &options, &shutdown).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::select! {
                    () = tokio::time::sleep(options.takeover) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the poll scheduler stopped; trying again");
                tokio::select! {
                    () = tokio::time::sleep(options.takeover) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// Takes the lock if it is free and schedules until shutdown or until its connection fails. Returns false when
/// another relay schedules.
async fn lead(pool: &Pool, options: &SchedulerOptions, shutdown: &CancellationToken) -> anyhow::Result<bool> {
    // The lock lives as long as this connection: taken out of the pool, so that it is closed (and the lock freed)
    // when leadership ends, never handed to another user with the lock still held.
    let holder = deadpool_postgres::Object::take(pool.get().await?);
    let locked: bool = holder
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended('gitfleet poll scheduler ' || current_schema(), 0))",
            &[],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(false);
    }
    tracing::info!("this relay schedules the polls");
    crate::metrics::RELAY.scheduling.set(1);
    let _not_leading = NotLeading;
    let mut housekept: Option<std::time::Instant> = None;
    loop {
        // The lock's connection still answers: leadership holds.
        holder.simple_query("SELECT 1").await?;
        if housekept.is_none_or(|at| at.elapsed() >= options.housekeeping_every) {
            housekept = Some(std::time::Instant::now());
            keep_house(pool, options.retention).await?;
        }
        loop {
            let scheduled = schedule_due(pool, options.batch).await?;
            if scheduled < usize::try_from(options.batch).unwrap_or(usize::MAX) {
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(options.tick) => {}
            () = shutdown.cancelled() => return Ok(true),
        }
    }
}

/// One housekeeping pass: what it removed is counted and logged.
pub async fn keep_house(pool: &Pool, retention: housekeeping::Retention) -> anyhow::Result<housekeeping::Removed> {
    let client = pool.get().await?;
    let removed = housekeeping::run(&**client, retention).await?;
    let m = &crate::metrics::RELAY;
    for (kind, n) in [
        ("job_results", removed.job_results),
        ("log_entries", removed.log_entries),
        ("outbox_rows", removed.outbox_rows),
        ("lock_holdings", removed.lock_holdings),
        ("dead_letters", removed.dead_letters),
        ("webhook_deliveries", removed.webhook_deliveries),
        ("ui_sessions", removed.ui_sessions),
    ] {
        m.housekeeping_removed.get_or_create(&crate::metrics::KindLabel { kind }).inc_by(n);
    }
    if removed != housekeeping::Removed::default() {
        tracing::info!(
            job_results = removed.job_results,
            log_entries = removed.log_entries,
            outbox_rows = removed.outbox_rows,
            lock_holdings = removed.lock_holdings,
            dead_letters = removed.dead_letters,
            webhook_deliveries = removed.webhook_deliveries,
            ui_sessions = removed.ui_sessions,
            "housekeeping removed what was past its retention"
        );
    }
    Ok(removed)
}

/// Resets the leadership gauge when this relay stops scheduling, however it stops.
struct NotLeading;

impl Drop for NotLeading {
    fn drop(&mut self) {
        crate::metrics::RELAY.scheduling.set(0);
    }
}

/// Records a poll event for each due repository (up to `batch`), in one transaction that also moves their poll
/// times on. Returns how many.
async fn schedule_due(pool: &Pool, batch: i64) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let due = repository::take_due_polls(&*tx, batch).await?;
    for row in &due {
        let Ok(repository) = row.to_ref() else {
            tracing::warn!(repository = %row.id, "a stored definition does not parse; not polling it");
            continue;
        };
        let event = Event {
            schema: SchemaVersion,
            event_id: Uuid::new_v4(),
            kind: EventKind::Poll,
            repository,
            version: Version::new(row.version)?,
            target_commit: None,
            requested_at: chrono::Utc::now(),
            requested_by: RequestedBy::parse("poll")?,
        };
        // No JobResult: a poll makes one only when it finds something to sync.
        outbox::insert(&*tx, &event, &gitfleet_infra::telemetry::current_traceparent()).await?;
    }
    tx.commit().await?;
    crate::metrics::RELAY.polls_scheduled.inc_by(due.len() as u64);
    Ok(due.len())
}
