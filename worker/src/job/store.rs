//! Store: the provided files staged in storage before the transaction (blobs, manifest, artifact), then the sync
//! report and the `current.json` pointers inside it, just before the commit.

use std::collections::BTreeMap;

use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::job_result::grouping;
use gitfleet_shared::sanitize::sanitize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::JobContext;
use super::error::{Failure, Step, StepError, TransientError};
use crate::git::Mirror;
use crate::storage::{Staged, StagedFile, StorageError};

/// A storage fault: transient when the store is out of reach or answering 5xx, else the job fails (with the
/// reverted line, as every failure of a sync after its fetch).
fn storage_error(name: &str, err: StorageError) -> StepError {
    if err.is_transient() {
        return TransientError::Storage(sanitize(&err.to_string())).into();
    }
    let message = format!("Could not store the files of {name}: {err}");
    StepError::Failed(Failure::new("StorageError", message, grouping::MAIN).reverted())
}

/// The files of every provided data type at `head`, read from the mirror (all of them, whatever their size).
async fn provided_files(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
) -> Step<BTreeMap<String, Vec<StagedFile>>> {
    let folders: Vec<(String, &'static str)> = repo
        .provided_contents
        .iter()
        .filter_map(|id| ctx.registry.get(id).map(|t| (id.clone(), t.folder())))
        .filter(|(_, folder)| !folder.is_empty())
        .collect();
    let head = head.to_owned();
    let files = tokio::task::spawn_blocking(move || {
        let mut out = BTreeMap::new();
        for (id, folder) in folders {
            let files = mirror.files_under(&head, folder)?;
            let staged =
                files.into_iter().map(|(path, blob, bytes)| StagedFile { path, blob, bytes }).collect::<Vec<_>>();
            out.insert(id, staged);
        }
        Ok::<_, crate::git::GitError>(out)
    })
    .await?;
    Ok(files.map_err(TransientError::Mirror)?)
}

/// Reads the provided files from the mirror and uploads what storage does not have yet, before the transaction:
/// nothing points at them until the pointers are written.
pub(super) async fn stage(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
    phases: &mut super::sync::Phases,
) -> Step<Vec<Staged>> {
    let files = provided_files(ctx, repo, mirror, head).await?;
    phases.mark("read files");
    let staged = ctx.storage.stage(&repo.slug, head, &files).await.map_err(|e| storage_error(&repo.name, e))?;
    phases.mark("storage stage");
    Ok(staged)
}

/// What the pointers held before they were written, to put back if the commit fails.
pub(super) struct Pointed {
    pub report_key: String,
    pub previous: Vec<Option<Vec<u8>>>,
}

/// The sync report (every log line so far), then each store's `current.json`. Records are written by then: a
/// failure here says they were reverted.
pub(super) async fn report_and_point(
    ctx: &JobContext,
    id: Uuid,
    repo: &RepositoryRow,
    head: &str,
    staged: &[Staged],
    artifacts: &[Value],
    phases: &mut super::sync::Phases,
) -> Step<Pointed> {
    let lines = {
        let client = ctx.pool.get().await?;
        job_result::report_lines(&**client, id).await?
    };
    let report = json!({
        "job_result_id": id, "repository": { "id": repo.id, "name": repo.name, "slug": repo.slug },
        "commit": head, "artifacts": artifacts, "log": lines,
    });
    let report_key = ctx.storage.put_report(id, &report).await.map_err(|e| storage_error(&repo.name, e))?;
    phases.mark("report");
    let previous = ctx.storage.point(staged, &repo.slug, head, id).await.map_err(|e| storage_error(&repo.name, e))?;
    phases.mark("pointers");
    Ok(Pointed { report_key, previous })
}
