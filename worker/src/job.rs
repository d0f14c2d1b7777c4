//! One event, in a worker (ARCHITECTURE section 4): JobResult bookkeeping, the repository lock, and the sync and
//! delete jobs with the log lines of spec f.3.

use std::path::PathBuf;

use deadpool_postgres::Pool;
use gitfleet_infra::amqp::{Publisher, Topology};
use gitfleet_infra::store::inventory;
use gitfleet_infra::store::job_result::{self, NewJobResult, StartOutcome};
use gitfleet_infra::store::repository::{self, RepositoryRow};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::inventory::Inventory;
use gitfleet_shared::job_result::{
    DELETE_TASK_NAME, DRY_RUN_JOB_NAME, DRY_RUN_TASK_NAME, JobStatus, LogEntry, SYNC_JOB_NAME, SYNC_TASK_NAME, grouping,
};
use gitfleet_shared::job_result::{LogLevel, format_duration};
use gitfleet_shared::loaders::{LoadInput, Loaded, Registry, ScopeMode, summary};
use gitfleet_shared::repo::Branch;
use gitfleet_shared::sanitize::sanitize;
use gitfleet_shared::tree::RepoTree;
use gitfleet_shared::yaml::Limits;
use serde_json::json;
use std::sync::Arc;
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::git::{Credentials, GitError, Mirror};
use crate::lock::{LockError, RepoLock};
use crate::reconcile::{self, Owner};
use crate::secrets::{self, Secrets};

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
    /// A network fault reaching the remote (connection refused or reset, a 5xx answer): tried again.
    #[error("fetching from the remote: {0}")]
    Git(String),
    /// Storage unreachable or answering 5xx: tried again.
    #[error("storage: {0}")]
    Storage(String),
    /// PostgreSQL refused what a data type wrote (a data or integrity error): not transient, the sync fails at once.
    #[error("saving {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TransientError {
    /// A refusal by PostgreSQL that no retry can change (SQLSTATE classes of data, integrity, syntax and limit
    /// errors); connection, serialization and resource errors stay transient.
    fn refusal(&self) -> Option<(&str, &tokio_postgres::Error)> {
        match self {
            Self::Refused { what, source } => Some((what.as_str(), source)),
            Self::Db(source) if is_permanent(source) => Some(("records", source)),
            _ => None,
        }
    }
}

/// Whether PostgreSQL refused the statement itself (retrying sends the same data and is refused the same way).
pub fn is_permanent(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|state| matches!(&state.code()[..2], "0A" | "21" | "22" | "23" | "42" | "44" | "54"))
}

/// The server's own words for a refusal: message, detail and hint, without the driver's "db error" prefix.
fn server_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            if let Some(column) = db.column() {
                message.push_str(&format!(" [column {column}]"));
            }
            message
        }
        None => err.to_string(),
    }
}

/// Django's exception class for a PostgreSQL error class.
fn refusal_type(err: &tokio_postgres::Error) -> &'static str {
    match err.code().map(|c| &c.code()[..2]) {
        Some("22") => "DataError",
        Some("23") => "IntegrityError",
        Some("42") => "ProgrammingError",
        _ => "DatabaseError",
    }
}

/// Everything a job needs; built once per worker.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub pool: Pool,
    pub git_root: PathBuf,
    pub worker_name: String,
    pub topology: Topology,
    pub registry: Arc<Registry>,
    pub secrets: Arc<Secrets>,
    pub max_mirror_bytes: u64,
    pub tls: crate::git::TlsPolicy,
    pub host_keys: crate::known_hosts::HostKeyPolicy,
    /// Fetch depth 1 where the transport allows it.
    pub shallow: bool,
    /// Default limit for a git operation; a repository's `git_timeout_secs` overrides it.
    pub git_timeout: std::time::Duration,
    pub scope_mode: ScopeMode,
    pub limits: Limits,
    /// How often a running job beats (`job_result.heartbeat`).
    pub heartbeat: std::time::Duration,
    pub storage: Arc<crate::storage::Storage>,
}

impl JobContext {
    fn scope_mode_name(&self) -> &'static str {
        match self.scope_mode {
            ScopeMode::Strict => "strict",
            ScopeMode::Lenient => "lenient",
        }
    }
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

    /// Writes a batch in one statement (a type's loading lines can number in the thousands).
    async fn write_all(&self, entries: &[LogEntry]) -> Result<(), TransientError> {
        let client = self.pool.get().await?;
        job_result::log_many(&**client, self.id, entries).await?;
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

    // A sync superseded by a newer queued one needs neither the lock nor a turn in the delay queue.
    if matches!(event.kind, EventKind::Create | EventKind::Update | EventKind::Sync) {
        let client = ctx.pool.get().await?;
        if let Some(newer) = newer_queued(&**client, event).await?
            && job_result::start(&**client, event.event_id, &ctx.worker_name).await? == StartOutcome::Started
        {
            let log = JobLog { pool: &ctx.pool, id: event.event_id };
            finish_superseded(&**client, &log, event, newer, json!({})).await?;
            return Ok(Disposition::Ack);
        }
    }

    let Some(mut lock) =
        RepoLock::try_acquire(&ctx.pool, repo.id, repo.slug.as_str(), event.event_id, &ctx.worker_name).await?
    else {
        let client = ctx.pool.get().await?;
        tracing::debug!(event_id = %event.event_id, slug = %repo.slug, "repository busy, deferring");
        // Started by an earlier try of this delivery: nobody is on it while it waits in the delay queue.
        client
            .execute(
                "UPDATE job_result SET status = 'PENDING', heartbeat = NULL WHERE id = $1 AND status = 'STARTED'",
                &[&event.event_id],
            )
            .await?;
        return Ok(Disposition::Defer);
    };

    let outcome = run_locked(ctx, &mut lock, event).await;
    lock.release().await?;
    let notification = outcome?;
    if let Some((routing_key, body)) = notification {
        // After the commit (fixing Nautobot's h.7 race). Losing one is harmless: the database is the record.
        let properties = lapin::BasicProperties::default().with_content_type("application/json".into());
        if let Err(err) = publisher
            .publish_optional(&ctx.topology.notifications, routing_key, body.to_string().as_bytes(), properties)
            .await
        {
            tracing::warn!(error = %err, "could not publish the notification");
        }
    }
    Ok(Disposition::Ack)
}

type Notification = Option<(&'static str, serde_json::Value)>;

/// The `repo.sync_failed` notification of a failed sync.
fn sync_failed(repo: &RepositoryRow, event: &Event) -> Notification {
    let body = json!({ "repository_id": repo.id, "slug": repo.slug, "job_result_id": event.event_id });
    Some(("repo.sync_failed", body))
}

async fn run_locked(ctx: &JobContext, lock: &mut RepoLock, event: &Event) -> Result<Notification, TransientError> {
    let started = job_result::start(&***lock.client(), event.event_id, &ctx.worker_name).await?;
    if let StartOutcome::AlreadyTerminal(status) = started {
        tracing::info!(event_id = %event.event_id, %status, "event already finished");
        return Ok(None);
    }
    let log = JobLog { pool: &ctx.pool, id: event.event_id };
    let _beating = Heartbeat::start(ctx, event.event_id);
    let outcome = match event.kind {
        EventKind::Delete => delete(ctx, lock, event, &log).await,
        EventKind::DryRun => dry_run(ctx, lock, event, &log).await,
        EventKind::Create | EventKind::Update | EventKind::Sync => sync(ctx, lock, event, &log).await,
    };
    let err = match outcome {
        Err(err) if err.refusal().is_some() => err,
        other => return other,
    };
    // The database refused the data: the transaction is rolled back (dropping it did), and trying again would be
    // refused the same way, so the job fails now with the server's words.
    let Some((what, source)) = err.refusal() else { return Err(err) };
    let message = format!("The database refused {what}: {}", server_message(source));
    tracing::warn!(event_id = %event.event_id, %message, "database refusal: failing the job");
    log.write(LogEntry::error(grouping::MAIN, &message)).await?;
    log.write(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted.")).await?;
    fail(lock, event.event_id, refusal_type(source), &message).await?;
    if event.kind == EventKind::Delete || event.kind == EventKind::DryRun {
        return Ok(None);
    }
    let body =
        json!({ "repository_id": event.repository.id, "slug": event.repository.slug, "job_result_id": event.event_id });
    Ok(Some(("repo.sync_failed", body)))
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

/// The newest sync, create or update of the same repository that is still queued and was made after this event.
async fn newer_queued(db: &impl GenericClient, event: &Event) -> Result<Option<Uuid>, TransientError> {
    Ok(db
        .query_opt(
            "SELECT n.id FROM job_result n JOIN job_result me ON me.id = $2
             WHERE n.repository_id = $1 AND n.id <> $2 AND n.status = 'PENDING'
               AND n.event_kind IN ('create', 'update', 'sync') AND n.date_created > me.date_created
             ORDER BY n.date_created DESC LIMIT 1",
            &[&event.repository.id, &event.event_id],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Ends a sync that a newer queued event makes unnecessary: SUCCESS, no fetch, naming the newer event.
async fn finish_superseded(
    db: &impl GenericClient,
    log: &JobLog<'_>,
    event: &Event,
    newer: Uuid,
    extra: serde_json::Value,
) -> Result<(), TransientError> {
    let name = event.repository.name.as_str();
    log.write(LogEntry::info(
        grouping::MAIN,
        format!("A newer event ({newer}) for {name} is queued: it will fetch and load, so this one ends here."),
    ))
    .await?;
    log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;
    let mut result = json!({
        "fetched": false, "coalesced": "superseded by a newer queued event", "superseded_by": newer,
    });
    if let (Some(result), serde_json::Value::Object(extra)) = (result.as_object_mut(), extra) {
        result.extend(extra);
    }
    job_result::finish(db, event.event_id, JobStatus::Success, Some(&result), None).await?;
    Ok(())
}

/// Why a sync event needs no fetch, if it does not (ARCHITECTURE 4.3): its definition version is older than the
/// applied one; or the applied version is current and a fetch began after the event was made (a burst of events
/// costs one fetch per wave, not one each); or it names the commit that is already live (a push webhook).
fn coalesce(
    repo: &RepositoryRow,
    event: &Event,
    requested: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<&'static str> {
    let version = event.version.get();
    if repo.current_head.is_empty() {
        return None;
    }
    if version < repo.applied_version {
        return Some("a newer definition is applied");
    }
    if version > repo.applied_version {
        return None;
    }
    if let (Some(fetched), Some(requested)) = (repo.fetched_at, requested)
        && fetched >= requested
    {
        return Some("fetched since this event was made");
    }
    if event.target_commit.as_ref().is_some_and(|c| c.as_str() == repo.current_head) {
        return Some("the pushed commit is live");
    }
    None
}

/// What a sync applies: commit, definition version, provided types, inventory state, scope mode, loader version
/// and where the files are stored (a new storage gets the live commit's files at the next sync).
fn fingerprint(ctx: &JobContext, repo: &RepositoryRow, head: &str, inventory_stamp: &str) -> String {
    format!(
        "{head}|v{}|{}|inventory {inventory_stamp}|{}|gitfleet {}|storage {}",
        repo.version,
        repo.provided_contents.join(","),
        ctx.scope_mode_name(),
        env!("CARGO_PKG_VERSION"),
        ctx.storage.fingerprint()
    )
}

/// Why a fetch could not happen: the message (secrets redacted) and the exception class Nautobot would name.
struct FetchFailure {
    message: String,
    exc_type: &'static str,
}

/// Credentials from the worker's secrets groups (a missing group or token fails before any network call), then a
/// fetch and ref resolution, off the reactor.
async fn fetch(
    ctx: &JobContext,
    repo: &RepositoryRow,
) -> Result<Result<(Mirror, crate::git::Checkout), FetchFailure>, TransientError> {
    let group = repo.secrets_group.as_deref().map(|name| (name, ctx.secrets.get(name)));
    let credentials = match group {
        None => None,
        Some((name, found)) => {
            let ssh = repo.remote_url.starts_with("ssh://");
            match (secrets::problem(name, found, ssh), found) {
                (None, Some(g)) if ssh => g.ssh_key.as_ref().map(|key| Credentials::SshKey {
                    username: g.username.clone(),
                    private_key: key.expose().to_owned(),
                    passphrase: g.ssh_passphrase.as_ref().map(|p| p.expose().to_owned()),
                }),
                (None, Some(g)) => {
                    g.token.as_ref().map(|token| Credentials::http(g.username.as_deref(), token.expose()))
                }
                (problem, _) => {
                    let message = problem.unwrap_or_else(|| format!("The secrets_group \"{name}\" is unusable."));
                    return Ok(Err(FetchFailure { message, exc_type: "SecretError" }));
                }
            }
        }
    };
    let group = group.and_then(|(_, g)| g);
    let mirror = Mirror::new(&ctx.git_root, &repo.slug)
        .with_max_bytes(ctx.max_mirror_bytes)
        .with_tls(ctx.tls.clone())
        .with_host_keys(ctx.host_keys.clone())
        .with_shallow(ctx.shallow);
    let timeout = repo
        .git_timeout_secs
        .and_then(|s| u64::try_from(s).ok())
        .map_or(ctx.git_timeout, std::time::Duration::from_secs);
    let fetched = match Branch::parse(repo.branch.clone()) {
        Err(err) => Err(GitError::InvalidRef(err)),
        Ok(branch) => {
            let (mirror, url) = (mirror.clone(), repo.remote_url.clone());
            let span = tracing::Span::current();
            let task = tokio::task::spawn_blocking(move || {
                span.in_scope(|| mirror.fetch_and_checkout_as(&url, &branch, None, credentials.as_ref()))
            });
            // git2 cannot be interrupted while it waits on a stalled server: the sync gives up here, and libgit2's
            // read timeout (set at start-up) ends the abandoned thread.
            match tokio::time::timeout(timeout, task).await {
                Ok(joined) => joined?,
                Err(_) => {
                    let message = format!(
                        "Fetching from the remote timed out after {} seconds (the repository's git timeout, or \
                         GITFLEET_GIT_TIMEOUT_SECS).",
                        timeout.as_secs()
                    );
                    return Ok(Err(FetchFailure { message, exc_type: "TimeoutError" }));
                }
            }
        }
    };
    match fetched {
        Ok(checkout) => Ok(Ok((mirror, checkout))),
        Err(err) if err.is_transient() => Err(TransientError::Git(sanitize(&secrets::redact(&err.to_string(), group)))),
        Err(err) => {
            Ok(Err(FetchFailure { message: secrets::redact(&err.to_string(), group), exc_type: err.exc_type() }))
        }
    }
}

/// What a load needs from the database besides the tree: the inventory, its stamp, and whether the repository had
/// installed jobs.
async fn load_context(ctx: &JobContext, slug: &str) -> Result<(Inventory, String, bool), TransientError> {
    let client = ctx.pool.get().await?;
    let inventory = inventory::load(&**client).await?;
    let stamp: String = client
        .query_one("SELECT count(*)::text || '@' || coalesce(max(updated)::text, '-') FROM scope_object", &[])
        .await?
        .get(0);
    let like = format!("{}.%", slug.replace('_', "\\_"));
    let had_jobs: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM job WHERE module_name LIKE $1 AND installed)", &[&like])
        .await?
        .get(0);
    Ok((inventory, stamp, had_jobs))
}

/// Reads the commit's tree and runs every registered loader on it, off the reactor.
async fn load_commit(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
    inventory: Inventory,
    had_jobs: bool,
) -> Result<Result<Loaded, GitError>, TransientError> {
    let (registry, repo, limits, mode, head) =
        (ctx.registry.clone(), repo.clone(), ctx.limits, ctx.scope_mode, head.to_owned());
    let span = tracing::Span::current();
    Ok(tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let tree = mirror.read_tree(&head, limits.max_bytes)?;
            let input = LoadInput {
                tree: &tree,
                repo_name: &repo.name,
                slug: &repo.slug,
                provided: &repo.provided_contents,
                inventory: Some(&inventory),
                scope_mode: mode,
                limits,
                had_jobs,
                spent: Default::default(),
            };
            Ok(registry.load(&input))
        })
    })
    .await?)
}

async fn sync(
    ctx: &JobContext,
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Notification, TransientError> {
    log.write(LogEntry::info(grouping::INITIALIZATION, "Running job")).await?;
    let Some(repo) = current_definition(lock, event, log).await? else { return Ok(None) };
    let name = repo.name.as_str();
    log.write(LogEntry::info(grouping::RUN, format!("Creating/refreshing local copy of Git repository \"{name}\"...")))
        .await?;
    // Coalescing (ARCHITECTURE 4.3), on the database clock: when this fetch begins, and when the event was made.
    let row = lock
        .client()
        .query_one("SELECT clock_timestamp(), (SELECT date_created FROM job_result WHERE id = $1)", &[&event.event_id])
        .await?;
    let (fetch_started, requested): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>) =
        (row.get(0), row.get(1));
    // A newer sync of this repository is queued: it fetches after this event was made, so this one can end here.
    if let Some(newer) = newer_queued(&***lock.client(), event).await? {
        let extra = json!({ "current_head": repo.current_head, "applied_version": repo.applied_version });
        finish_superseded(&***lock.client(), log, event, newer, extra).await?;
        return Ok(None);
    }
    if let Some(reason) = coalesce(&repo, event, requested) {
        let (_, stamp, _) = load_context(ctx, &repo.slug).await?;
        // Only when nothing else (inventory, loaders, scope mode) changed what the live commit loads to.
        if fingerprint(ctx, &repo, &repo.current_head, &stamp) == repo.applied_fingerprint {
            let head = repo.current_head.as_str();
            log.write(LogEntry::info(
                grouping::MAIN,
                format!(
                    "Data from {name} is already up to date at commit {head} ({reason}): nothing to fetch or reload."
                ),
            ))
            .await?;
            log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;
            let result = json!({
                "current_head": head, "applied_version": repo.applied_version, "up_to_date": true, "fetched": false,
                "coalesced": reason,
            });
            job_result::finish(&***lock.client(), event.event_id, JobStatus::Success, Some(&result), None).await?;
            return Ok(None);
        }
    }
    let (mirror, checkout) = match fetch(ctx, &repo).await? {
        Ok(fetched) => fetched,
        Err(failure) => {
            log.write(LogEntry::error(grouping::ENSURE, &failure.message)).await?;
            log.write(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted.")).await?;
            fail(lock, event.event_id, failure.exc_type, &failure.message).await?;
            return Ok(sync_failed(&repo, event));
        }
    };

    let head = checkout.head.clone();
    log.write(LogEntry::info(grouping::ENSURE, "Repository successfully refreshed")).await?;
    log.write(
        LogEntry::info(grouping::ENSURE, format!("{name}: the current Git repository hash is \"{head}\"")).about(name),
    )
    .await?;

    // What this sync would apply; the same as last time means the live records are already these.
    let (inventory, inventory_stamp, had_jobs) = load_context(ctx, &repo.slug).await?;
    let fingerprint = fingerprint(ctx, &repo, &head, &inventory_stamp);
    if fingerprint == repo.applied_fingerprint {
        log.write(LogEntry::info(
            grouping::MAIN,
            format!("Data from {name} is already up to date at commit {head}: nothing to reload."),
        ))
        .await?;
        repository::record_fetch(&***lock.client(), repo.id, fetch_started).await?;
        log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;
        let result = json!({ "current_head": head, "applied_version": repo.version, "up_to_date": true });
        job_result::finish(&***lock.client(), event.event_id, JobStatus::Success, Some(&result), None).await?;
        return Ok(None);
    }

    // Read the commit's tree and load every registered data type (pure, CPU only).
    let mut phases = Phases::start();
    let files_mirror = mirror.clone();
    let loaded = match load_commit(ctx, &repo, mirror, &head, inventory, had_jobs).await? {
        Ok(loaded) => loaded,
        Err(err) => {
            let message = err.to_string();
            log.write(LogEntry::error(grouping::ENSURE, &message)).await?;
            fail(lock, event.event_id, err.exc_type(), &message).await?;
            return Ok(None);
        }
    };
    phases.mark("load");

    // The provided files go to storage before the transaction (blobs, manifest, artifact); nothing points at them
    // until current.json is written, just before the commit.
    let staged = if loaded.has_errors() {
        Vec::new()
    } else {
        let files = provided_files(ctx, &repo, files_mirror, &head).await?;
        phases.mark("read files");
        match ctx.storage.stage(&repo.slug, &head, &files).await {
            Ok(staged) => {
                phases.mark("storage stage");
                staged
            }
            Err(err) if err.is_transient() => return Err(TransientError::Storage(sanitize(&err.to_string()))),
            Err(err) => {
                let message = format!("Could not store the files of {name}: {err}");
                log.write(LogEntry::error(grouping::MAIN, &message)).await?;
                log.write(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted.")).await?;
                fail(lock, event.event_id, "StorageError", &message).await?;
                return Ok(sync_failed(&repo, event));
            }
        }
    };

    let client = lock.client();
    let tx = client.transaction().await?;
    let owner = Owner { id: repo.id, name, slug: &repo.slug };
    let failed = apply(&*tx, &ctx.registry, owner, &loaded, log).await?;
    phases.mark("reconcile and log");
    if failed {
        tx.rollback().await?;
        let message = format!("Failed to refresh data provided by {name}. Please see logs.");
        log.write(summary(name, true)).await?;
        log.write(LogEntry::info(grouping::MAIN, "Changes to database records have been reverted.")).await?;
        fail(lock, event.event_id, "RuntimeError", &message).await?;
        return Ok(sync_failed(&repo, event));
    }
    log.write(summary(name, false)).await?;
    log.write(LogEntry::success(grouping::POST_RUN, "Job completed")).await?;
    // The report, then the pointers, then the commit: a failure before the commit leaves the previous commit live in
    // both places (the pointers are put back if the commit itself fails).
    let artifacts: Vec<serde_json::Value> = staged.iter().map(crate::storage::Staged::describe).collect();
    let stored = async {
        let report = report(ctx, event.event_id, &repo, &head, &artifacts).await?;
        let report_key = ctx.storage.put_report(event.event_id, &report).await?;
        phases.mark("report");
        let previous = ctx.storage.point(&staged, &repo.slug, &head, event.event_id).await?;
        phases.mark("pointers");
        Ok::<_, crate::storage::StorageError>((report_key, previous))
    }
    .await;
    let (report_key, previous) = match stored {
        Ok(stored) => stored,
        Err(err) => {
            tx.rollback().await?;
            if err.is_transient() {
                return Err(TransientError::Storage(sanitize(&err.to_string())));
            }
            let message = format!("Could not store the files of {name}: {err}");
            log.write(LogEntry::error(grouping::MAIN, &message)).await?;
            fail(lock, event.event_id, "StorageError", &message).await?;
            return Ok(sync_failed(&repo, event));
        }
    };
    // The records, the new head and the JobResult's end commit together or not at all.
    let result = json!({
        "current_head": head, "applied_version": repo.version, "ref_kind": format!("{:?}", checkout.kind),
        "artifacts": artifacts, "report": report_key, "phases_ms": phases.to_json(),
    });
    let artifacts = serde_json::Value::Array(artifacts);
    let committed = async {
        repository::record_sync(&*tx, repo.id, &head, repo.version, &fingerprint, fetch_started, &artifacts).await?;
        job_result::finish(&*tx, event.event_id, JobStatus::Success, Some(&result), None).await?;
        tx.commit().await
    }
    .await;
    if let Err(err) = committed {
        ctx.storage.restore_pointers(&staged, previous).await;
        return Err(err.into());
    }
    phases.mark("commit");
    tracing::info!(event_id = %event.event_id, phases = %phases.to_json(), "sync committed");
    let body = json!({
        "repository_id": repo.id, "slug": repo.slug, "current_head": head, "job_result_id": event.event_id,
    });
    Ok(Some(("repo.synced", body)))
}

/// Where a sync spends its time after the fetch: each phase's duration, in the JobResult's `result.phases_ms` and
/// the worker's log.
struct Phases {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Self {
        Self { last: std::time::Instant::now(), spent: Vec::new() }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.spent.push((phase, now - self.last));
        self.last = now;
    }

    fn to_json(&self) -> serde_json::Value {
        let phases = self.spent.iter().map(|(p, d)| ((*p).to_owned(), json!(d.as_millis())));
        serde_json::Value::Object(phases.collect())
    }
}

/// The files of every provided data type at `head`, read from the mirror (all of them, whatever their size).
async fn provided_files(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
) -> Result<std::collections::BTreeMap<String, Vec<crate::storage::StagedFile>>, TransientError> {
    let folders: Vec<(String, &'static str)> = repo
        .provided_contents
        .iter()
        .filter_map(|id| ctx.registry.get(id).map(|t| (id.clone(), t.folder())))
        .filter(|(_, folder)| !folder.is_empty())
        .collect();
    let head = head.to_owned();
    let files = tokio::task::spawn_blocking(move || {
        let mut out = std::collections::BTreeMap::new();
        for (id, folder) in folders {
            let files = mirror.files_under(&head, folder)?;
            let staged = files
                .into_iter()
                .map(|(path, blob, bytes)| crate::storage::StagedFile { path, blob, bytes })
                .collect::<Vec<_>>();
            out.insert(id, staged);
        }
        Ok::<_, GitError>(out)
    })
    .await?;
    files.map_err(|e| TransientError::Storage(format!("reading the provided files from the mirror: {e}")))
}

/// The sync report stored with each successful sync: the commit, the artifacts and every log entry.
async fn report(
    ctx: &JobContext,
    id: Uuid,
    repo: &RepositoryRow,
    head: &str,
    artifacts: &[serde_json::Value],
) -> Result<serde_json::Value, crate::storage::StorageError> {
    let unavailable = |e: String| crate::storage::StorageError::Unavailable { what: "report".into(), message: e };
    let client = ctx.pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    let rows = client
        .query(
            "SELECT log_level, grouping, message, log_object FROM job_log_entry WHERE job_result_id = $1
             ORDER BY created, seq",
            &[&id],
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let log: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (level, grouping, message, object): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            json!({ "level": level, "grouping": grouping, "message": message, "object": object })
        })
        .collect();
    Ok(json!({
        "job_result_id": id, "repository": { "id": repo.id, "name": repo.name, "slug": repo.slug },
        "commit": head, "artifacts": artifacts, "log": log,
    }))
}

/// Writes each type's loading lines followed by what reconciling it did, in refresh order. Returns whether any
/// error-level entry was written (which fails the sync, spec b.7).
async fn apply(
    db: &impl GenericClient,
    registry: &Registry,
    owner: Owner<'_>,
    loaded: &Loaded,
    log: &JobLog<'_>,
) -> Result<bool, TransientError> {
    let mut failed = false;
    let mut start = 0;
    for (identifier, end) in &loaded.sections {
        let mut batch: Vec<LogEntry> = loaded.logs[start..*end].to_vec();
        start = *end;
        if let Some(data_type) = registry.get(identifier) {
            let reconciled = reconcile::reconcile_type(db, owner, data_type, loaded).await.map_err(|source| {
                if is_permanent(&source) {
                    TransientError::Refused { what: format!("{} of {}", data_type.name(), owner.name), source }
                } else {
                    TransientError::Db(source)
                }
            })?;
            batch.extend(reconciled);
        }
        failed |= batch.iter().any(|e| e.level == LogLevel::Error);
        log.write_all(&batch).await?;
    }
    let rest = &loaded.logs[start..];
    failed |= rest.iter().any(|e| e.level == LogLevel::Error);
    log.write_all(rest).await?;
    Ok(failed)
}

async fn delete(
    ctx: &JobContext,
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Notification, TransientError> {
    let Some(repo) = current_definition(lock, event, log).await? else { return Ok(None) };
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

    // Every type runs with nothing provided: each deletes what the repository owns; jobs become uninstalled.
    let empty = RepoTree::new();
    let input = LoadInput {
        tree: &empty,
        repo_name: name,
        slug: &repo.slug,
        provided: &[],
        inventory: None,
        scope_mode: ctx.scope_mode,
        limits: ctx.limits,
        had_jobs: true,
        spent: Default::default(),
    };
    let loaded = ctx.registry.load(&input);
    let client = lock.client();
    let tx = client.transaction().await?;
    let owner = Owner { id: repo.id, name, slug: &repo.slug };
    let failed = apply(&*tx, &ctx.registry, owner, &loaded, log).await?;
    if failed {
        tx.rollback().await?;
        let message = format!("Failed to remove data provided by {name}. Please see logs.");
        log.write(LogEntry::error(grouping::MAIN, &message)).await?;
        fail(lock, event.event_id, "RuntimeError", &message).await?;
        return Ok(None);
    }
    // The mirror is only a cache: removing it before the commit costs nothing if the commit fails (the next sync
    // fetches again), and a leftover is cleaned at the next start-up.
    let mirror = Mirror::new(&ctx.git_root, &repo.slug);
    if let Err(err) = tokio::task::spawn_blocking(move || mirror.remove()).await? {
        tracing::warn!(error = %err, "could not remove the mirror of a deleted repository");
    }
    // Stored objects: removed now, or kept for the configured retention (then `worker storage gc` removes them).
    let retention = ctx.storage.settings.retention_days;
    if retention == 0 {
        match ctx.storage.remove_repository(&repo.slug).await {
            Ok(n) => {
                log.write(LogEntry::info(grouping::MAIN, format!("Removed {n} stored objects of {name}."))).await?
            }
            Err(err) if err.is_transient() => {
                tx.rollback().await?;
                return Err(TransientError::Storage(sanitize(&err.to_string())));
            }
            Err(err) => {
                tx.rollback().await?;
                let message = format!("Could not remove the stored objects of {name}: {err}");
                log.write(LogEntry::error(grouping::MAIN, &message)).await?;
                fail(lock, event.event_id, "StorageError", &message).await?;
                return Ok(None);
            }
        }
    } else {
        log.write(LogEntry::info(
            grouping::MAIN,
            format!("Stored objects of {name} are kept for {retention} days (GITFLEET_STORAGE_RETENTION_DAYS)."),
        ))
        .await?;
    }
    repository::tombstone(&*tx, repo.id, event.version.get()).await?;
    log.write(LogEntry::info(grouping::MAIN, format!("Git repository \"{name}\" deleted.")).about(name)).await?;
    job_result::finish(&*tx, event.event_id, JobStatus::Success, Some(&json!({ "deleted": repo.id })), None).await?;
    tx.commit().await?;

    Ok(Some(("repo.deleted", json!({ "repository_id": repo.id, "slug": repo.slug, "job_result_id": event.event_id }))))
}

const DRY_RUN: &str = "git_repository_dry_run";

/// Dry-run (spec b.11): fetch, report the file changes from the live commit to the target, then the record
/// changes a sync would make, found by reconciling inside a transaction that is rolled back. No record, no
/// `current_head` and no applied version changes.
async fn dry_run(
    ctx: &JobContext,
    lock: &mut RepoLock,
    event: &Event,
    log: &JobLog<'_>,
) -> Result<Notification, TransientError> {
    let started = std::time::Instant::now();
    let Some(repo) = current_definition(lock, event, log).await? else { return Ok(None) };
    let name = repo.name.as_str();
    log.write(LogEntry::info(grouping::RUN, format!("Performing a Dry Run on Git repository \"{name}\"..."))).await?;
    log.write(LogEntry::info(DRY_RUN, "Fetching from origin")).await?;
    // Nautobot logs the duration while it is still None (spec h.8); this one is measured.
    let completed = || {
        LogEntry::info(grouping::RUN, format!("Repository dry run completed in {}", format_duration(started.elapsed())))
    };
    let (mirror, checkout) = match fetch(ctx, &repo).await? {
        Ok(fetched) => fetched,
        Err(failure) => {
            log.write(LogEntry::error(DRY_RUN, &failure.message)).await?;
            log.write(completed()).await?;
            fail(lock, event.event_id, failure.exc_type, &failure.message).await?;
            return Ok(None);
        }
    };
    let head = checkout.head.clone();

    // File changes, from the live commit (none yet: an empty tree) to the target.
    let changes = {
        let (mirror, current, head) = (mirror.clone(), repo.current_head.clone(), head.clone());
        tokio::task::spawn_blocking(move || {
            let old = (!current.is_empty() && mirror.has_commit(&current)).then_some(current);
            mirror.diff(old.as_deref(), &head)
        })
        .await?
    };
    let changes = match changes {
        Ok(changes) => changes,
        Err(err) => {
            log.write(LogEntry::error(DRY_RUN, err.to_string())).await?;
            fail(lock, event.event_id, err.exc_type(), &err.to_string()).await?;
            return Ok(None);
        }
    };
    if changes.is_empty() {
        log.write(LogEntry::info(DRY_RUN, "Repository has no changes")).await?;
    } else {
        let lines: Vec<LogEntry> =
            changes.iter().map(|(status, path)| LogEntry::info(DRY_RUN, format!("{status} - `{path}`"))).collect();
        log.write_all(&lines).await?;
    }

    // Record changes: the sync's own load and reconcile, rolled back.
    let (inventory, _, had_jobs) = load_context(ctx, &repo.slug).await?;
    let loaded = match load_commit(ctx, &repo, mirror, &head, inventory, had_jobs).await? {
        Ok(loaded) => loaded,
        Err(err) => {
            log.write(LogEntry::error(DRY_RUN, err.to_string())).await?;
            fail(lock, event.event_id, err.exc_type(), &err.to_string()).await?;
            return Ok(None);
        }
    };
    let owner = Owner { id: repo.id, name, slug: &repo.slug };
    let client = lock.client();
    let tx = client.transaction().await?;
    let mut failed = false;
    let mut summary_lines = Vec::new();
    let mut record_changes = serde_json::Map::new();
    for (identifier, _) in &loaded.sections {
        let Some(data_type) = ctx.registry.get(identifier) else { continue };
        let outcome = reconcile::reconcile_type(&*tx, owner, data_type, &loaded).await?;
        let mut counts = [0usize; 4];
        for entry in &outcome {
            let m = entry.message.as_str();
            if entry.level == LogLevel::Error {
                failed = true;
                summary_lines.push(entry.clone());
            } else if m.starts_with("Successfully created") || m.starts_with("Created Job record") {
                counts[0] += 1;
            } else if m.starts_with("Successfully refreshed")
                || m.starts_with("Successfully updated")
                || m == "Marking Job record as no longer installed"
            {
                counts[1] += 1;
            } else if m.starts_with("Deleted") {
                counts[2] += 1;
            } else {
                counts[3] += 1;
            }
        }
        if counts[..3].iter().any(|&c| c > 0) {
            summary_lines.push(LogEntry::info(
                DRY_RUN,
                format!(
                    "{}: {} to create, {} to change, {} to delete, {} unchanged",
                    data_type.name(),
                    counts[0],
                    counts[1],
                    counts[2],
                    counts[3]
                ),
            ));
        }
        record_changes.insert(
            identifier.clone(),
            json!({ "create": counts[0], "change": counts[1], "delete": counts[2], "unchanged": counts[3] }),
        );
    }
    tx.rollback().await?;
    let load_errors: Vec<LogEntry> = loaded.logs.iter().filter(|l| l.level == LogLevel::Error).cloned().collect();
    failed |= !load_errors.is_empty();
    log.write_all(&load_errors).await?;
    if summary_lines.iter().all(|l| l.level != LogLevel::Error)
        && record_changes.values().all(|v| v["create"] == 0 && v["change"] == 0 && v["delete"] == 0)
    {
        summary_lines.push(LogEntry::info(DRY_RUN, "No records would change"));
    }
    log.write_all(&summary_lines).await?;
    let result = json!({ "target_commit": head, "file_changes": changes.len(), "record_changes": record_changes });
    if failed {
        let message = format!("A sync of {name} at {head} would fail. Please see logs.");
        log.write(LogEntry::error(DRY_RUN, &message)).await?;
        log.write(completed()).await?;
        fail(lock, event.event_id, "RuntimeError", &message).await?;
        return Ok(None);
    }
    log.write(LogEntry::info(DRY_RUN, "Repository dry run successful")).await?;
    log.write(completed()).await?;
    job_result::finish(&***lock.client(), event.event_id, JobStatus::Success, Some(&result), None).await?;
    Ok(None)
}
