//! The delete job: every type runs with nothing provided (each deletes what the repository owns; jobs become
//! uninstalled), the mirror and the stored objects go, and the definition becomes a tombstone.

use gitfleet_infra::store::repository;
use gitfleet_shared::job_result::{LogEntry, grouping};
use gitfleet_shared::loaders::LoadInput;
use gitfleet_shared::tree::RepoTree;
use serde_json::json;

use super::Notification;
use super::apply::apply;
use super::error::{Failure, Step, StepError, TransientError};
use super::run::JobRun;
use crate::git::Mirror;
use crate::lock::RepoLock;
use crate::reconcile::Owner;

pub(super) async fn delete(run: &JobRun<'_>, lock: &mut RepoLock) -> Step<Notification> {
    let (ctx, event) = (run.ctx, run.event);
    let repo = run.definition(lock).await?;
    let name = repo.name.as_str();
    if repo.is_deleted() {
        run.log
            .write(LogEntry::info(
                grouping::MAIN,
                format!("Git repository \"{name}\" is already deleted; nothing to do."),
            ))
            .await?;
        let success = gitfleet_shared::job_result::JobStatus::Success;
        gitfleet_infra::store::job_result::finish(&***lock.client(), run.id(), success, None, None).await?;
        return Ok(None);
    }
    run.log.write(LogEntry::info(grouping::MAIN, format!("Deleting Git repository \"{name}\"...")).about(name)).await?;

    let empty = RepoTree::new();
    let input = LoadInput {
        tree: &empty,
        repo_name: name,
        slug: &repo.slug,
        provided: &[],
        inventory: None,
        scope_mode: ctx.scope_mode,
        limits: ctx.limits,
        spent: Default::default(),
    };
    let loaded = ctx.registry.load(&input);
    let client = lock.client();
    let tx = client.transaction().await?;
    let owner = Owner { id: repo.id, name, slug: &repo.slug };
    if apply(&*tx, ctx, owner, &loaded, &run.log).await? {
        let message = format!("Failed to remove data provided by {name}. Please see logs.");
        return Err(StepError::Failed(Failure::new("RuntimeError", message, grouping::MAIN).reverted()));
    }
    // The mirror is only a cache: removing it before the commit costs nothing if the commit fails (the next sync
    // fetches again), and a leftover is cleaned at the next start-up.
    let mirror = Mirror::new(&ctx.git_root, &repo.slug);
    if let Err(err) = tokio::task::spawn_blocking(move || mirror.remove()).await? {
        tracing::warn!(error = %err, "could not remove the mirror of a deleted repository");
    }
    ctx.git_cache.forget(&repo.slug);
    // Stored objects: removed now, or kept for the configured retention (then `worker storage gc` removes them).
    let retention = ctx.storage.settings.retention_days;
    let stored = if retention == 0 {
        match ctx.storage.remove_repository(&repo.slug).await {
            Ok(n) => format!("Removed {n} stored objects of {name}."),
            Err(err) if err.is_transient() => {
                return Err(TransientError::Storage(gitfleet_shared::sanitize::sanitize(&err.to_string())).into());
            }
            Err(err) => {
                let message = format!("Could not remove the stored objects of {name}: {err}");
                return Err(StepError::Failed(Failure::new("StorageError", message, grouping::MAIN).reverted()));
            }
        }
    } else {
        format!("Stored objects of {name} are kept for {retention} days (GITFLEET_STORAGE_RETENTION_DAYS).")
    };
    run.log.write(LogEntry::info(grouping::MAIN, stored)).await?;
    gitfleet_infra::store::loaded::forget(&*tx, repo.id).await?;
    repository::tombstone(&*tx, repo.id, event.version.get()).await?;
    run.log.write(LogEntry::info(grouping::MAIN, format!("Git repository \"{name}\" deleted.")).about(name)).await?;
    run.succeed(&*tx, json!({ "deleted": repo.id })).await?;
    tx.commit().await?;
    Ok(Some(("repo.deleted", json!({ "repository_id": repo.id, "slug": repo.slug, "job_result_id": event.event_id }))))
}
