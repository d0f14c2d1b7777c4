//! Dry-run (spec b.11): fetch, report the file changes from the live commit to the target, then the record
//! changes a sync would make, found by reconciling inside a transaction that is rolled back. No record, no
//! `current_head` and no applied version changes.

use gitfleet_shared::job_result::{LogEntry, LogLevel, format_duration, grouping};
use serde_json::json;

use super::Notification;
use super::error::{Failure, Step, StepError};
use super::run::JobRun;
use super::{fetch, load};
use crate::lock::RepoLock;
use crate::reconcile::{self, Owner};

const DRY_RUN: &str = "git_repository_dry_run";

pub(super) async fn dry_run(run: &JobRun<'_>, lock: &mut RepoLock) -> Step<Notification> {
    let started = std::time::Instant::now();
    // Nautobot logs the duration while it is still None (spec h.8); this one is measured.
    let completed = || {
        LogEntry::info(grouping::RUN, format!("Repository dry run completed in {}", format_duration(started.elapsed())))
    };
    match stages(run, lock, &completed).await {
        Ok(()) => Ok(None),
        // A dry-run changes nothing, so nothing is reverted; its errors go under its own grouping.
        Err(StepError::Failed(mut failure)) if failure.grouping != grouping::RUN => {
            failure.grouping = DRY_RUN;
            failure.reverted = false;
            failure.epilogue.push(completed());
            Err(StepError::Failed(failure))
        }
        Err(other) => Err(other),
    }
}

async fn stages(run: &JobRun<'_>, lock: &mut RepoLock, completed: &(dyn Fn() -> LogEntry + Sync)) -> Step<()> {
    let ctx = run.ctx;
    let repo = run.definition(lock).await?;
    let name = repo.name.as_str();
    run.log
        .write_all(&[
            LogEntry::info(grouping::RUN, format!("Performing a Dry Run on Git repository \"{name}\"...")),
            LogEntry::info(DRY_RUN, "Fetching from origin"),
        ])
        .await?;
    let (mirror, checkout) = fetch::fetch(ctx, &repo).await?;
    let head = checkout.head.clone();

    // File changes, from the live commit (none yet: an empty tree) to the target.
    let changes = {
        let (mirror, current, head) = (mirror.clone(), repo.current_head.clone(), head.clone());
        tokio::task::spawn_blocking(move || {
            let old = current.filter(|c| mirror.has_commit(c.as_str()));
            mirror.diff(old.as_ref().map(|c| c.as_str()), &head)
        })
        .await?
        .map_err(|err| StepError::Failed(Failure::new(err.exc_type(), err.to_string(), DRY_RUN)))?
    };
    if changes.is_empty() {
        run.log.write(LogEntry::info(DRY_RUN, "Repository has no changes")).await?;
    } else {
        let lines: Vec<LogEntry> =
            changes.iter().map(|(status, path)| LogEntry::info(DRY_RUN, format!("{status} - `{path}`"))).collect();
        run.log.write_all(&lines).await?;
    }

    // Record changes: the sync's own load and reconcile, rolled back.
    let context = load::context(ctx).await?;
    let loaded = load::load_commit(ctx, &repo, mirror, &head, &context).await?;
    let owner = Owner { id: repo.id, name, slug: &repo.slug };
    let client = lock.client();
    let tx = client.transaction().await?;
    let (mut summary_lines, record_changes) = record_changes(&*tx, run, owner, &loaded).await?;
    tx.rollback().await?;
    let load_errors: Vec<LogEntry> = loaded.logs.iter().filter(|l| l.level == LogLevel::Error).cloned().collect();
    let failed = !load_errors.is_empty() || summary_lines.iter().any(|l| l.level == LogLevel::Error);
    run.log.write_all(&load_errors).await?;
    if !failed && record_changes.values().all(|v| v["create"] == 0 && v["change"] == 0 && v["delete"] == 0) {
        summary_lines.push(LogEntry::info(DRY_RUN, "No records would change"));
    }
    run.log.write_all(&summary_lines).await?;
    if failed {
        let message = format!("A sync of {name} at {head} would fail. Please see logs.");
        return Err(StepError::Failed(Failure::new("RuntimeError", message, DRY_RUN)));
    }
    let result = json!({ "target_commit": head, "file_changes": changes.len(), "record_changes": record_changes });
    // The closing lines come first: the JobResult's log counts are taken when it ends.
    run.log.write_all(&[LogEntry::info(DRY_RUN, "Repository dry run successful"), completed()]).await?;
    run.succeed(&***lock.client(), result).await?;
    Ok(())
}

/// The record changes a sync would make, per data type: summary lines (and the reconcile's errors), and the counts.
async fn record_changes(
    db: &impl tokio_postgres::GenericClient,
    run: &JobRun<'_>,
    owner: Owner<'_>,
    loaded: &gitfleet_shared::loaders::Loaded,
) -> Step<(Vec<LogEntry>, serde_json::Map<String, serde_json::Value>)> {
    let mut summary_lines = Vec::new();
    let mut record_changes = serde_json::Map::new();
    for (identifier, _) in &loaded.sections {
        let Some(data_type) = run.ctx.registry.get(identifier) else { continue };
        let outcome = reconcile::reconcile_type(db, owner, data_type, loaded, run.ctx.schema_enforcement, None)
            .await
            .map_err(|e| StepError::db(&format!("{} of {}", data_type.name(), owner.name), e))?;
        let [create, change, delete, unchanged] = count_changes(&outcome, &mut summary_lines);
        if create + change + delete > 0 {
            let name = data_type.name();
            summary_lines.push(LogEntry::info(
                DRY_RUN,
                format!("{name}: {create} to create, {change} to change, {delete} to delete, {unchanged} unchanged"),
            ));
        }
        record_changes.insert(
            identifier.clone(),
            json!({ "create": create, "change": change, "delete": delete, "unchanged": unchanged }),
        );
    }
    Ok((summary_lines, record_changes))
}

/// Counts a type's record outcomes: created, changed, deleted, unchanged; rejections and warnings go to `errors`.
fn count_changes(outcome: &[reconcile::Change], errors: &mut Vec<LogEntry>) -> [usize; 4] {
    use reconcile::ChangeKind;
    let mut counts = [0usize; 4];
    for change in outcome {
        match change.kind {
            ChangeKind::Created => counts[0] += 1,
            ChangeKind::Refreshed => counts[1] += 1,
            ChangeKind::Deleted => counts[2] += 1,
            ChangeKind::Unchanged => counts[3] += 1,
            ChangeKind::Rejected | ChangeKind::Warned => errors.push(change.line.clone()),
        }
    }
    counts
}
