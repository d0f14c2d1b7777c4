//! Coalescing (ARCHITECTURE 4.3): events that need no fetch, and the fingerprint of what a sync applies.

use chrono::{DateTime, Utc};
use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::event::Event;
use gitfleet_shared::job_result::{LogEntry, grouping};
use serde_json::json;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::JobContext;
use super::error::Step;
use super::run::JobLog;

/// Ends a sync that a newer queued event makes unnecessary: SUCCESS, no fetch, naming the newer event.
pub(super) async fn finish_superseded(
    db: &impl GenericClient,
    log: &JobLog<'_>,
    event: &Event,
    newer: Uuid,
    extra: serde_json::Value,
) -> Step<()> {
    crate::metrics::event("superseded");
    let name = event.repository.name.as_str();
    log.write_all(&[
        LogEntry::info(
            grouping::MAIN,
            format!("A newer event ({newer}) for {name} is queued: it will fetch and load, so this one ends here."),
        ),
        LogEntry::success(grouping::POST_RUN, "Job completed"),
    ])
    .await?;
    let mut result = json!({
        "fetched": false, "coalesced": "superseded by a newer queued event", "superseded_by": newer,
    });
    if let (Some(result), serde_json::Value::Object(extra)) = (result.as_object_mut(), extra) {
        result.extend(extra);
    }
    job_result::finish(db, event.event_id, gitfleet_shared::job_result::JobStatus::Success, Some(&result), None)
        .await?;
    Ok(())
}

/// Why a sync event needs no fetch, if it does not: its definition version is older than the applied one; or the
/// applied version is current and a fetch began after the event was made (a burst of events costs one fetch per
/// wave, not one each); or it names the commit that is already live (a push webhook).
pub(super) fn reason(repo: &RepositoryRow, event: &Event, requested: Option<DateTime<Utc>>) -> Option<&'static str> {
    let version = event.version.get();
    let head = repo.current_head.as_ref()?;
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
    if event.target_commit.as_ref() == Some(head) {
        return Some("the pushed commit is live");
    }
    None
}

/// What a sync applies: commit, definition version, provided types, inventory state, scope mode, schema
/// enforcement, loader version and where the files are stored (a new storage gets the live commit's files at the
/// next sync).
pub(super) fn fingerprint(ctx: &JobContext, repo: &RepositoryRow, head: &str, inventory_stamp: &str) -> String {
    format!("{head}|{}", base_fingerprint(ctx, repo, inventory_stamp))
}

/// The fingerprint without its commit: what must be the same for an incremental sync to reuse what the live
/// commit's files loaded to.
pub(super) fn base_fingerprint(ctx: &JobContext, repo: &RepositoryRow, inventory_stamp: &str) -> String {
    format!(
        "v{}|{}|inventory {inventory_stamp}|{}|schemas {}|gitfleet {}|storage {}",
        repo.version,
        repo.provided_contents.join(","),
        ctx.scope_mode_name(),
        ctx.schema_enforcement,
        env!("CARGO_PKG_VERSION"),
        ctx.storage.fingerprint()
    )
}
