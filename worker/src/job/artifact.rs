//! The per-commit artifact (a deterministic tar.gz of every provided file), built after the sync's commit: a
//! sync costs what its change costs, and the archive, which costs the whole repository, is made off its path.
//!
//! Asynchronous rather than incremental (a tar.gz of sorted paths cannot be patched in place) or lazy (nothing
//! serves storage's readers to build it when asked). The sync writes `current.json` with `"artifact": null`; this
//! task streams the provided files from the mirror into a temporary file (one file in memory at a time),
//! uploads it (in parts when large), then, under the repository lock that every writer of the pointer takes,
//! names it in `current.json` and in `git_repository.artifacts` only if they still name its commit. A newer sync
//! supersedes it: an artifact whose commit is no longer live is not built, or not named. One build at a time per
//! worker; a worker that stops first leaves the pointer's artifact null until the repository's next sync, which
//! builds it again even when it finds the live commit up to date.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use uuid::Uuid;

use super::JobContext;
use super::store::TempFile;
use crate::git::Mirror;
use crate::lock::RepoLock;
use crate::storage::{Artifact, ArtifactTarget, write_artifact};

/// What the artifacts of one sync are built from.
pub(super) struct Request {
    pub job_result_id: Uuid,
    pub repository_id: Uuid,
    pub slug: String,
    pub commit: String,
    pub mirror: Mirror,
    pub targets: Vec<ArtifactTarget>,
}

/// Builds the artifacts in the background, after the sync's commit (unless this worker is building that commit's
/// already).
pub(super) fn spawn(ctx: &JobContext, request: Request) {
    let building = (request.slug.clone(), request.commit.clone());
    if !ctx.artifacts_building.lock().is_ok_and(|mut b| b.insert(building.clone())) {
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _done = Building(&ctx, building);
        let Ok(_slot) = ctx.artifact_slots.acquire().await else { return };
        let started = std::time::Instant::now();
        match build(&ctx, &request).await {
            Ok(named) => tracing::info!(
                slug = %request.slug, commit = %request.commit, named, took_ms = started.elapsed().as_millis(),
                "artifact built"
            ),
            Err(err) => tracing::warn!(
                slug = %request.slug, commit = %request.commit, error = %format!("{err:#}"),
                "could not build the artifact; current.json names none until the next sync"
            ),
        }
    });
}

/// Marks a build done when dropped, however it ends.
struct Building<'a>(&'a JobContext, (String, String));

impl Drop for Building<'_> {
    fn drop(&mut self) {
        if let Ok(mut building) = self.0.artifacts_building.lock() {
            building.remove(&self.1);
        }
    }
}

/// Streams the files of the staged folders at `commit` (as the manifest lists them: sorted by path) into a tar.gz
/// at `path`, walking the trees as it goes (the listing is never held); returns its sha256.
fn archive(mirror: &Mirror, commit: &str, target: &ArtifactTarget, path: &Path) -> anyhow::Result<String> {
    let blobs = mirror.blobs()?;
    let out = |path: &Path| anyhow::Ok(std::io::BufWriter::new(std::fs::File::create(path)?));
    let mut artifact = Artifact::new(out(path)?);
    let mut failed = None;
    let ordered = mirror.walk_files(commit, &target.folders, 64, |batch| {
        for (file, blob) in batch {
            let added = blobs.read(&blob).map_err(std::io::Error::other).and_then(|bytes| artifact.add(&file, &bytes));
            if let Err(err) = added {
                failed = Some(err);
                return false;
            }
        }
        true
    })?;
    if let Some(err) = failed {
        return Err(err.into());
    }
    let (out, sha256) = if ordered {
        artifact.finish()?
    } else {
        // Names that are not UTF-8 came out of order: the files listed whole and sorted, written again.
        drop(artifact);
        let files = mirror.list_sorted(commit, &target.folders)?;
        write_artifact(&files, out(path)?, |blob| blobs.read(blob).map_err(std::io::Error::other))?
    };
    out.into_inner().map_err(std::io::IntoInnerError::into_error)?.flush()?;
    Ok(sha256)
}

/// Builds and uploads each store's artifact, then names them. Returns whether the pointers named them (false:
/// superseded by a newer commit, or the repository went).
async fn build(ctx: &JobContext, request: &Request) -> anyhow::Result<bool> {
    let mut built = Vec::new();
    for target in &request.targets {
        if !ctx.storage.points_at(&target.store, &request.slug, &request.commit).await? {
            return Ok(false);
        }
        let temp = TempFile(ctx.git_root.join(format!(".tmp-artifact-{}", Uuid::new_v4().simple())));
        let sha256 = {
            let (mirror, target, path) = (request.mirror.clone(), target.clone(), temp.0.clone());
            let commit = request.commit.clone();
            tokio::task::spawn_blocking(move || archive(&mirror, &commit, &target, &path)).await??
        };
        let (acl, part) = (target.store.default_acl.as_deref(), ctx.storage.settings.multipart_threshold);
        target.backend.put_file(&target.key, &temp.0, "application/gzip", acl, part).await?;
        built.push((target, sha256));
    }
    let mut lock = lock(ctx, request).await?;
    let mut named = serde_json::Map::new();
    for (target, sha256) in &built {
        let store = &target.store;
        if ctx.storage.point_artifact(store, &request.slug, &request.commit, &target.key, sha256).await? {
            named.insert(target.key.clone(), sha256.clone().into());
        } else if ctx.storage.live(store, &request.slug, None).await?.pointer.is_none() {
            // The repository was deleted while its artifact was built: nothing may keep the object.
            target.backend.delete(&target.key).await?;
        }
    }
    let recorded = gitfleet_infra::store::repository::record_artifacts(
        &***lock.client(),
        request.repository_id,
        &request.commit,
        &serde_json::Value::Object(named.clone()),
    )
    .await;
    lock.release().await?;
    recorded?;
    Ok(!named.is_empty())
}

/// The repository lock, waited for a bounded time (a sync holds it for seconds at most).
async fn lock(ctx: &JobContext, request: &Request) -> anyhow::Result<RepoLock> {
    for _ in 0..300 {
        let (id, slug) = (request.repository_id, request.slug.as_str());
        let job = request.job_result_id;
        if let Some(lock) = RepoLock::try_acquire_for(&ctx.pool, (id, slug), job, &ctx.worker_name, "artifact").await? {
            return Ok(lock);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None.context("the repository stayed locked for 30 s")
}

/// After a sync that found the live commit up to date: builds the live commit's artifacts again if the database
/// says one was never named (the worker that was building it stopped). Nothing here fails the sync.
pub(super) async fn resume_unbuilt(
    ctx: &JobContext,
    db: &impl tokio_postgres::GenericClient,
    repo: &gitfleet_infra::store::repository::RepositoryRow,
    (head, job_result_id): (&str, Uuid),
    mirror: &Mirror,
) {
    let row = db.query_opt("SELECT artifacts FROM git_repository WHERE id = $1", &[&repo.id]).await;
    let artifacts: serde_json::Value = match row {
        Ok(Some(row)) => row.get(0),
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(slug = %repo.slug, error = %err, "could not read the recorded artifacts");
            return;
        }
    };
    let unbuilt =
        artifacts.as_array().into_iter().flatten().any(|a| a["artifact"].is_string() && a["sha256"].is_null());
    if !unbuilt {
        return;
    }
    let provided =
        repo.provided_contents.iter().filter_map(|id| ctx.registry.get(id).map(|t| (id.as_str(), t.folder())));
    let targets = ctx.storage.targets(provided);
    match ctx.storage.artifact_targets(&targets, &repo.slug, head) {
        Ok(targets) => {
            tracing::info!(slug = %repo.slug, commit = head, "the live commit's artifact was never named: building it");
            let request = Request {
                job_result_id,
                repository_id: repo.id,
                slug: repo.slug.clone(),
                commit: head.to_owned(),
                mirror: mirror.clone(),
                targets,
            };
            spawn(ctx, request);
        }
        Err(err) => tracing::warn!(slug = %repo.slug, error = %err, "could not name the live commit's artifacts"),
    }
}
