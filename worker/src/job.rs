//! One event, in a worker (ARCHITECTURE section 4): JobResult bookkeeping, the repository lock, and the sync and
//! delete jobs with the log lines of spec f.3.

use std::path::PathBuf;

use deadpool_postgres::Pool;
use gitfleet_infra::amqp::{Publisher, Topology};
use gitfleet_infra::store::job_result::{self, NewJobResult, StartOutcome};
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::job_result::{
    DELETE_TASK_NAME, DRY_RUN_JOB_NAME, DRY_RUN_TASK_NAME, JobStatus, LogEntry, SYNC_JOB_NAME, SYNC_TASK_NAME, grouping,
};
use gitfleet_shared::repo::Branch;
use gitfleet_shared::sanitize::sanitize;
use serde_json::json;
use thiserror::Error;
use uuid::Uuid;

use crate::git::{GitError, Mirror};
use crate::lock::{LockError, RepoLock};

/// What the consumer does with the message once the event has been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a duplicate of something done): acknowledge.
    Ack,
    /// Another worker holds the repository: send it through the delay queue, then acknowledge.
    Defer,
}

/// Faults that may pass (database or broker trouble): the message goes back to the queue, and the quorum queue's
/// delivery limit dead-letters it if they do not.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransientError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("git worker thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Everything a job needs; built once per worker.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub pool: Pool,
    pub git_root: PathBuf,
    pub worker_name: String,
    pub topology: Topology,
}

/// Writes JobLogEntries as they happen, each on its own (auto-commit) so they survive a rolled-back sync.
struct JobLog<'a> {
    pool: &'a Pool,
    id: Uuid,
}

impl JobLog<'_> {
    async fn write(&self, entry: LogEntry) -> Result<(), TransientError> {
        tracing::debug!(level = %entry.level, grouping = %entry.grouping, message = %entry.message, "job log");
        let client = self.pool.get().await?;
        job_result::log(&**client, self.id, &entry).await?;
        Ok(())
    }
}

fn job_names(kind: EventKind, repository_name: &str) -> (String, &'static str) {
    match kind {
        EventKind::Delete => (repository_name.to_owned(), DELETE_TASK_NAME),
        EventKind::DryRun => (DRY_RUN_JOB_NAME.to_owned(), DRY_RUN_TASK_NAME),
        EventKind::Create | EventKind::Update | EventKind::Sync => (SYNC_JOB_NAME.to_owned(), SYNC_TASK_NAME),
    }
}

/// Handles one decoded event. `publisher` is used for the after-commit notification.
pub async fn handle(ctx: &JobContext, publisher: &Publisher, event: &Event) -> Result<Disposition, TransientError> {
    let repo = &event.repository;
    {
        // The producer created the JobResult; an event published by anything else gets one here.
        let client = ctx.pool.get().await?;
        let (name, task_name) = job_names(event.kind, repo.name.as_str());
        job_result::insert(
            &**client,
            &NewJobResult {
                id: event.event_id,
                name: &name,
                task_name,
                repository_id: None,
                kind: Some(event.kind),
                requested_by: event.requested_by.as_str(),
                status: JobStatus::Pending,
            },
        )
        .await?;
        if job_result::status(&**client, event.event_id).await?.is_some_and(JobStatus::is_terminal) {
            tracing::info!(event_id = %event.event_id, "duplicate delivery of a finished event");
            return Ok(Disposition::Ack);
        }
    }

    let Some(mut lock) =
        RepoLock::try_acquire(&ctx.pool, repo.id, repo.slug.as_str(), event.event_id, &ctx.worker_name).await?
    else {
        tracing::debug!(event_id = %event.event_id, slug = %repo.slug, "repository busy, deferring");
        return Ok(Disposition::Defer);
    };

    let outcome = run_locked(ctx, &mut lock, event).await;
    lock.release().await?;
    let notification = outcome?;
    if let Some((routing_key, body)) = notification {
        // After the commit (fixing Nautobot's h.7 race). Losing one is harmless: the database is the record.
        let properties = lapin::BasicProperties::default().with_content_type("application/json".into());
        if let Err(err) =
            publisher.publish(&ctx.topology.notifications, routing_key, body.to_string().as_bytes(), properties).await
        {
            tracing::warn!(error = %err, "could not publish the notification");
        }
    }
    Ok(Disposition::Ack)
}

type Notification = Option<(&'static str, serde_json::Value)>;

async fn run_locked(ctx: &JobContext, lock: &mut RepoLock, event: &Event) -> Result<Notification, TransientError> {
    let started = job_result::start(&***lock.client(), event.event_id, &ctx.worker_name).await?;
    if let StartOutcome::AlreadyTerminal(status) = started {
        tracing::info!(event_id = %event.event_id, %status, "event already finished");
        return Ok(None);
    }
    let log = JobLog { pool: &ctx.pool, id: event.event_id };
    match event.kind {
        EventKind::Delete => delete(ctx, lock, event, &log).await,
        EventKind::DryRun => {
            let message = "Dry-run events are not supported by this worker version yet; nothing was fetched.";
            log.write(LogEntry::error(grouping::RUN, message)).await?;
            fail(lock, event.event_id, "NotImplementedError", message).await?;
            Ok(None)
        }
        EventKind::Create | EventKind::Update | EventKind::Sync => sync(ctx, lock, event, &log).await,
    }
}

/// Ends the JobResult FAILURE with a sanitized `result` (spec b.6 lifecycle).
async fn fail(lock: &mut RepoLock, id: Uuid, exc_type: &str, message: &str) -> Result<(), TransientError> {
    let result = json!({ "exc_type": exc_type, "exc_message": sanitize(message) });
    job_result::finish(&***lock.client(), id, JobStatus::Failure, Some(&result), Some(&sanitize(message))).await?;
    Ok(())
}

/// Loads the current definition on the lock's connection; a missing or deleted one fails the job.
async fn current_definition(
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Option<RepositoryRow>, TransientError> {
    let row = repository::find_by_id(&***lock.client(), event.repository.id).await?;
    let problem = match &row {
        None => format!("Git repository {} does not exist.", event.repository.id),
        Some(r) if r.is_deleted() && event.kind != EventKind::Delete => {
            format!("Git repository {} has been deleted.", r.name)
        }
        Some(_) => return Ok(row),
    };
    log.write(LogEntry::error(grouping::RUN, &problem)).await?;
    fail(lock, event.event_id, "DoesNotExist", &problem).await?;
    Ok(None)
}

async fn sync(
    ctx: &JobContext,
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Notification, TransientError> {
    log.write(LogEntry::info(grouping::INITIALIZATION, "Running job")).await?;
    let Some(repo) = current_definition(lock, event, log).await? else {
        return Ok(None);
    };
    let name = repo.name.as_str();
    log.write(LogEntry::info(grouping::RUN, format!("Creating/refreshing local copy of Git repository \"{name}\"...")))
        .await?;
    if let Some(group) = &repo.secrets_group {
        log.write(LogEntry::warning(
            grouping::ENSURE,
            format!("Secrets group \"{group}\" is not used yet by this worker version: fetching without credentials."),
        ))
        .await?;
    }

    let checkout = match Branch::parse(repo.branch.clone()) {
        Err(err) => Err(GitError::InvalidRef(err)),
        Ok(branch) => {
            let mirror = Mirror::new(&ctx.git_root, &repo.slug);
            let url = repo.remote_url.clone();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || span.in_scope(|| mirror.fetch_and_checkout(&url, &branch, None)))
                .await?
        }
    };
    let checkout = match checkout {
        Ok(checkout) => checkout,
        Err(err) => {
            let message = err.to_string();
            log.write(LogEntry::error(grouping::ENSURE, &message)).await?;
            log.write(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted.")).await?;
            fail(lock, event.event_id, err.exc_type(), &message).await?;
            let body = json!({ "repository_id": repo.id, "slug": repo.slug, "job_result_id": event.event_id });
            return Ok(Some(("repo.sync_failed", body)));
        }
    };

    let head = checkout.head.as_str();
    log.write(LogEntry::info(grouping::ENSURE, "Repository successfully refreshed")).await?;
    log.write(
        LogEntry::info(grouping::ENSURE, format!("{name}: the current Git repository hash is \"{head}\"")).about(name),
    )
    .await?;
    log.write(LogEntry::info(grouping::MAIN, format!("Refreshing data provided by {name}...")).about(name)).await?;
    log.write(LogEntry::info(
        grouping::MAIN,
        "This worker version loads no data types yet: nothing was read from the repository.",
    ))
    .await?;
    log.write(LogEntry::info(grouping::MAIN, format!("Data refresh from {name} complete!")).about(name)).await?;
    log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;

    // One transaction on the lock's connection: the new head and the JobResult's end commit together or not at all.
    let result =
        json!({ "current_head": head, "applied_version": repo.version, "ref_kind": format!("{:?}", checkout.kind) });
    let client = lock.client();
    let tx = client.transaction().await?;
    repository::record_sync(&*tx, repo.id, head, repo.version).await?;
    job_result::finish(&*tx, event.event_id, JobStatus::Success, Some(&result), None).await?;
    tx.commit().await?;
    let body = json!({
        "repository_id": repo.id, "slug": repo.slug, "current_head": head, "job_result_id": event.event_id,
    });
    Ok(Some(("repo.synced", body)))
}

async fn delete(
    ctx: &JobContext,
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Notification, TransientError> {
    let Some(repo) = current_definition(lock, event, log).await? else {
        return Ok(None);
    };
    let name = repo.name.as_str();
    if repo.is_deleted() {
        log.write(LogEntry::info(
            grouping::MAIN,
            format!("Git repository \"{name}\" is already deleted; nothing to do."),
        ))
        .await?;
        job_result::finish(&***lock.client(), event.event_id, JobStatus::Success, None, None).await?;
        return Ok(None);
    }
    log.write(LogEntry::info(grouping::MAIN, format!("Deleting Git repository \"{name}\"...")).about(name)).await?;
    log.write(LogEntry::info(grouping::MAIN, format!("Refreshing data provided by {name}...")).about(name)).await?;
    log.write(LogEntry::info(grouping::MAIN, "This worker version loads no data types yet: no records to remove."))
        .await?;

    let mirror = Mirror::new(&ctx.git_root, &repo.slug);
    match tokio::task::spawn_blocking(move || mirror.remove()).await? {
        Ok(true) => log.write(LogEntry::info(grouping::MAIN, "Removed the local mirror.")).await?,
        Ok(false) => {}
        Err(err) => {
            // The definition is still tombstoned: a leftover mirror is only cache, removed at the next start-up.
            log.write(LogEntry::warning(grouping::MAIN, format!("Could not remove the local mirror: {err}"))).await?;
        }
    }

    let client = lock.client();
    let tx = client.transaction().await?;
    repository::tombstone(&*tx, repo.id, event.version.get()).await?;
    log.write(LogEntry::info(grouping::MAIN, format!("Git repository \"{name}\" deleted.")).about(name)).await?;
    job_result::finish(&*tx, event.event_id, JobStatus::Success, Some(&json!({ "deleted": repo.id })), None).await?;
    tx.commit().await?;
    Ok(Some(("repo.deleted", json!({ "repository_id": repo.id, "slug": repo.slug, "job_result_id": event.event_id }))))
}
