//! One event, in a worker (ARCHITECTURE section 4): a pipeline of stages per job kind, each returning
//! `Result<T, StepError>`, and one place where a failed job ends.
//!
//! ```text
//! handle: JobResult (created if missing) -> superseded? -> repository lock (busy: defer) -> run_locked -> notify
//! run_locked: start the JobResult, heartbeat -> sync | delete | dry_run (a panic is caught) -> one match:
//!     Ok(notification) | Transient (retried, then the retry schedule) | Failed (run::end_failed)
//! sync: definition -> coalesce -> fetch -> fingerprint -> load -> stage files -> tx { apply -> report and
//!     pointers -> record sync -> SUCCESS } -> commit
//! ```

mod apply;
mod artifact;
mod coalesce;
mod context;
mod delete;
mod dry_run;
mod error;
mod fetch;
mod incremental;
mod load;
mod poll;
mod run;
mod store;
mod stream;
mod sync;

use gitfleet_infra::amqp::Publisher;
use gitfleet_infra::store::job_result::{self, NewJobResult, StartOutcome};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::job_result::JobStatus;
use serde_json::json;

pub use context::JobContext;
pub use error::{Failure, StepError, TransientError, is_permanent, panicked};

use crate::lock::RepoLock;
use run::{JobLog, JobRun};

/// What the consumer does with the message once the event has been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a duplicate of something done): acknowledge.
    Ack,
    /// Another worker holds the repository: send it through the delay queue, then acknowledge.
    Defer,
}

/// A message for the notifications exchange, published after the commit: routing key and body.
pub(crate) type Notification = Option<(&'static str, serde_json::Value)>;

/// Handles one decoded event. `publisher` is used for the after-commit notification.
pub async fn handle(ctx: &JobContext, publisher: &Publisher, event: &Event) -> Result<Disposition, TransientError> {
    if event.kind == EventKind::Poll {
        return poll::poll(ctx, publisher, event).await;
    }
    let repo = &event.repository;
    {
        // The producer created the JobResult; an event published by anything else gets one here.
        let client = ctx.pool.get().await?;
        let (name, task_name) = event.kind.job_names(repo.name.as_str());
        let trace_id = gitfleet_infra::telemetry::current_trace_id();
        let new = NewJobResult {
            id: event.event_id,
            name: &name,
            task_name,
            repository_id: None,
            kind: Some(event.kind),
            requested_by: event.requested_by.as_str(),
            status: JobStatus::Pending,
            trace_id: trace_id.as_deref(),
        };
        job_result::insert(&**client, &new).await?;
        if job_result::status(&**client, event.event_id).await?.is_some_and(JobStatus::is_terminal) {
            tracing::info!(event_id = %event.event_id, "duplicate delivery of a finished event");
            crate::metrics::event("duplicate");
            return Ok(Disposition::Ack);
        }
        // A sync superseded by a newer queued one needs neither the lock nor a turn in the delay queue.
        if matches!(event.kind, EventKind::Create | EventKind::Update | EventKind::Sync)
            && let Some(newer) = job_result::newer_queued(&**client, repo.id, event.event_id).await?
            && job_result::start(&**client, event.event_id, &ctx.worker_name).await? == StartOutcome::Started
        {
            let log = JobLog::new(&ctx.pool, event.event_id);
            coalesce::finish_superseded(&**client, &log, event, newer, json!({})).await.map_err(transient)?;
            return Ok(Disposition::Ack);
        }
    }

    let waited = crate::metrics::Timer::start();
    let acquired =
        RepoLock::try_acquire(&ctx.pool, repo.id, repo.slug.as_str(), event.event_id, &ctx.worker_name).await?;
    waited.lock_wait(acquired.is_some());
    let Some(mut lock) = acquired else {
        tracing::debug!(event_id = %event.event_id, slug = %repo.slug, "repository busy, deferring");
        // Started by an earlier try of this delivery: nobody is on it while it waits in the delay queue.
        job_result::back_to_pending(&**ctx.pool.get().await?, event.event_id).await?;
        return Ok(Disposition::Defer);
    };

    let outcome = run_locked(ctx, &mut lock, event).await;
    lock.release().await?;
    if let Some((routing_key, body)) = outcome? {
        // After the commit (fixing Nautobot's h.7 race). Losing one is harmless: the database is the record.
        let properties = lapin::BasicProperties::default().with_content_type("application/json".into());
        let timer = crate::metrics::Timer::start();
        if let Err(err) = publisher
            .publish_optional(&ctx.topology.notifications, routing_key, body.to_string().as_bytes(), properties)
            .await
        {
            tracing::warn!(error = %err, "could not publish the notification");
        }
        timer.span("notification", vec![opentelemetry::KeyValue::new("routing_key", routing_key)]);
    }
    Ok(Disposition::Ack)
}

/// Outside a job run there is no ending to go through: a failure there is tried again like a transient one.
fn transient(err: StepError) -> TransientError {
    match err {
        StepError::Transient(err) => err,
        StepError::Failed(failure) => TransientError::Storage(failure.message),
    }
}

/// Runs the job under the repository lock. Every outcome ends here: success, a transient fault (handed to the
/// consumer's retries), or a failure (the one ending). A panic inside the job is a failure like any other.
async fn run_locked(ctx: &JobContext, lock: &mut RepoLock, event: &Event) -> Result<Notification, TransientError> {
    if let StartOutcome::AlreadyTerminal(status) =
        job_result::start(&***lock.client(), event.event_id, &ctx.worker_name).await?
    {
        tracing::info!(event_id = %event.event_id, %status, "event already finished");
        return Ok(None);
    }
    let run = JobRun::start(ctx, event);
    let started = std::time::Instant::now();
    let outcome = {
        let job = async {
            match event.kind {
                EventKind::Delete => delete::delete(&run, lock).await,
                EventKind::DryRun => dry_run::dry_run(&run, lock).await,
                // A poll reaches a job only as the sync of the commit it found.
                EventKind::Create | EventKind::Update | EventKind::Sync | EventKind::Poll => {
                    sync::sync(&run, lock).await
                }
            }
        };
        use futures_util::FutureExt;
        // Boxed: the job's future is deep, and its layout would otherwise be part of every caller's.
        std::panic::AssertUnwindSafe(Box::pin(job)).catch_unwind().await.unwrap_or_else(|panic| Err(panicked(&*panic)))
    };
    let kind = event.kind.as_str();
    let ended = |outcome: &'static str| {
        let metrics = &crate::metrics::METRICS;
        metrics.jobs.get_or_create(&crate::metrics::JobLabels { kind, outcome }).inc();
        let seconds = started.elapsed().as_secs_f64();
        metrics.job_duration.get_or_create(&crate::metrics::KindLabel { kind }).observe(seconds);
        tracing::Span::current().record("outcome", outcome);
    };
    match outcome {
        Ok(notification) => {
            ended("success");
            Ok(notification)
        }
        Err(StepError::Transient(err)) => {
            tracing::Span::current().record("outcome", "transient");
            Err(err)
        }
        Err(StepError::Failed(failure)) => {
            ended("failure");
            tracing::warn!(event_id = %event.event_id, exc_type = %failure.exc_type, message = %failure.message, "job failed");
            run::end_failed(&run, lock, failure).await
        }
    }
}
