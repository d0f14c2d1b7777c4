//! A poll (from the scheduler, for a repository with a `sync_interval`): ask the remote for the branch's tip and,
//! only when it is not the live commit, run the sync of that commit under this event's id. A poll that finds
//! nothing new records when it looked and makes no JobResult, so the history is not flooded; one that cannot reach
//! the remote records why on the repository and puts its next poll back (doubling per failure, at most an hour).

use gitfleet_infra::amqp::Publisher;
use gitfleet_infra::store::{job_result, repository};
use gitfleet_shared::event::{Event, EventKind};
use gitfleet_shared::repo::CommitId;

use super::{Disposition, JobContext, TransientError};

pub(super) async fn poll(
    ctx: &JobContext,
    publisher: &Publisher,
    event: &Event,
) -> Result<Disposition, TransientError> {
    let repo = {
        let client = ctx.pool.get().await?;
        repository::find_by_id(&**client, event.repository.id).await?
    };
    // Deleted, or no longer polled, since the poll was scheduled.
    let Some(repo) = repo.filter(|r| !r.is_deleted() && r.sync_interval_secs.is_some()) else {
        return Ok(Disposition::Ack);
    };
    let tip = super::fetch::remote_tip(ctx, &repo).await;
    let client = ctx.pool.get().await?;
    let tip = match tip {
        Ok(tip) => tip,
        Err(message) => {
            let next = repository::record_poll_failure(&**client, repo.id, &message).await?;
            crate::metrics::poll("failed");
            tracing::warn!(repo = %repo.slug, error = %message, next_poll = ?next, "poll failed; backing off");
            return Ok(Disposition::Ack);
        }
    };
    repository::record_poll(&**client, repo.id).await?;
    drop(client);
    if repo.current_head.as_ref().is_some_and(|head| head.as_str() == tip) {
        crate::metrics::poll("unchanged");
        return Ok(Disposition::Ack);
    }
    crate::metrics::poll("changed");
    tracing::info!(repo = %repo.slug, commit = %tip, "poll found a new commit: syncing it");
    let (Ok(repository), Ok(target)) = (repo.to_ref(), CommitId::parse(tip)) else {
        return Ok(Disposition::Ack);
    };
    let sync = Event {
        kind: EventKind::Sync,
        repository,
        version: gitfleet_shared::event::Version::new(repo.version).unwrap_or(event.version),
        target_commit: Some(target),
        ..event.clone()
    };
    // The JobResult, with its repository, as the producer makes one for a sync it is asked for.
    let (name, task_name) = EventKind::Sync.job_names(&repo.name);
    let trace_id = gitfleet_infra::telemetry::current_trace_id();
    let new = job_result::NewJobResult {
        id: sync.event_id,
        name: &name,
        task_name,
        repository_id: Some(repo.id),
        kind: Some(EventKind::Sync),
        requested_by: sync.requested_by.as_str(),
        status: gitfleet_shared::job_result::JobStatus::Pending,
        trace_id: trace_id.as_deref(),
    };
    job_result::insert(&**ctx.pool.get().await?, &new).await?;
    Box::pin(super::handle(ctx, publisher, &sync)).await
}
