//! The run of one JobResult: its log writer, its heartbeat, and the one place a failed job ends.

use deadpool_postgres::Pool;
use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::job_result::{JobStatus, LogEntry, grouping};
use gitfleet_shared::sanitize::sanitize;
use serde_json::json;
use uuid::Uuid;

use super::error::{Failure, Step, StepError, TransientError};
use super::{JobContext, Notification};
use crate::lock::RepoLock;

/// Log lines written per statement.
const LOG_BATCH: usize = 2000;

/// Writes JobLogEntries as they happen, each on its own (auto-commit) so they survive a rolled-back sync.
pub(super) struct JobLog<'a> {
    pool: &'a Pool,
    id: Uuid,
}

impl<'a> JobLog<'a> {
    pub fn new(pool: &'a Pool, id: Uuid) -> Self {
        Self { pool, id }
    }

    pub async fn write(&self, entry: LogEntry) -> Result<(), TransientError> {
        tracing::debug!(level = %entry.level, grouping = %entry.grouping, message = %entry.message, "job log");
        let client = self.pool.get().await?;
        job_result::log(&**client, self.id, &entry).await?;
        Ok(())
    }

    /// Writes a batch, [`LOG_BATCH`] lines per statement (a type's loading lines can number in the thousands).
    pub async fn write_all(&self, entries: &[LogEntry]) -> Result<(), TransientError> {
        if entries.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        for chunk in entries.chunks(LOG_BATCH) {
            job_result::log_many(&**client, self.id, chunk).await?;
        }
        Ok(())
    }
}

/// Beats for a running job until dropped, on a pooled connection (the lock's connection is busy with the sync's
/// transaction). A killed worker stops beating, which is how the reaper knows.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(ctx: &JobContext, id: Uuid) -> Self {
        let (pool, every) = (ctx.pool.clone(), ctx.heartbeat);
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(client) = pool.get().await
                    && let Err(err) = job_result::heartbeat(&**client, id).await
                {
                    tracing::debug!(error = %err, "heartbeat failed");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One JobResult being run: the event, its log and its heartbeat (which stops when the run is dropped).
pub(super) struct JobRun<'a> {
    pub ctx: &'a JobContext,
    pub event: &'a Event,
    pub log: JobLog<'a>,
    _beating: Heartbeat,
}

impl<'a> JobRun<'a> {
    pub fn start(ctx: &'a JobContext, event: &'a Event) -> Self {
        let log = JobLog::new(&ctx.pool, event.event_id);
        Self { ctx, event, log, _beating: Heartbeat::start(ctx, event.event_id) }
    }

    pub fn id(&self) -> Uuid {
        self.event.event_id
    }

    /// Ends the JobResult SUCCESS with `result`, on `db` (the sync's transaction, or the lock's connection).
    pub async fn succeed(&self, db: &impl tokio_postgres::GenericClient, result: serde_json::Value) -> Step<()> {
        job_result::finish(db, self.id(), JobStatus::Success, Some(&result), None).await?;
        Ok(())
    }

    /// Loads the current definition on the lock's connection; a missing one (or a deleted one, except for a delete)
    /// fails the job.
    pub async fn definition(&self, lock: &mut RepoLock) -> Step<RepositoryRow> {
        let event = self.event;
        let row = repository::find_by_id(&***lock.client(), event.repository.id).await?;
        let problem = match row {
            None => format!("Git repository {} does not exist.", event.repository.id),
            Some(r) if r.is_deleted() && event.kind != EventKind::Delete => {
                format!("Git repository {} has been deleted.", r.name)
            }
            Some(row) => return Ok(row),
        };
        Err(StepError::Failed(Failure::new("DoesNotExist", problem, grouping::RUN)))
    }
}

/// The one ending of a failed job: the error line, "Changes to database records have been reverted." where records
/// had been touched (their transaction is already rolled back: dropping it did), the failure's epilogue, the
/// JobResult ended FAILURE with a sanitized `result`, and the notification a failed sync sends (none for a delete
/// or a dry-run).
pub(super) async fn end_failed(
    run: &JobRun<'_>,
    lock: &mut RepoLock,
    failure: Failure,
) -> Result<Notification, TransientError> {
    let mut lines = vec![LogEntry::error(failure.grouping, &failure.message)];
    if failure.reverted {
        lines.push(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted."));
    }
    lines.extend(failure.epilogue);
    run.log.write_all(&lines).await?;
    let message = sanitize(&failure.message);
    let result = json!({ "exc_type": failure.exc_type, "exc_message": message });
    job_result::finish(&***lock.client(), run.id(), JobStatus::Failure, Some(&result), Some(&message)).await?;
    let event = run.event;
    Ok(match event.kind {
        EventKind::Create | EventKind::Update | EventKind::Sync | EventKind::Poll => {
            let body = json!({
                "repository_id": event.repository.id, "slug": event.repository.slug, "job_result_id": event.event_id,
            });
            Some(("repo.sync_failed", body))
        }
        EventKind::Delete | EventKind::DryRun => None,
    })
}
