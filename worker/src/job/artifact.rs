//! The per-commit artifact (a deterministic tar.gz of every provided file), built after the sync's commit: a
//! sync costs what its change costs, and the archive, which costs the whole repository, is made off its path.
//!
//! Asynchronous rather than incremental (a tar.gz of sorted paths cannot be patched in place) or lazy (nothing
//! serves storage's readers to build it when asked). The sync writes `current.json` with `"artifact": null`; this
//! task streams the provided files from the mirror into a temporary file (one file in memory at a time),
//! uploads it (in parts when large), then, under the repository lock that every writer of the pointer takes,
//! names it in `current.json` and in `git_repository.artifacts` only if they still name its commit. A newer sync
//! supersedes it: an artifact whose commit is no longer live is not built, or not named, and a build under way
//! stops within 64 files once this worker is asked for a newer commit's (a push every few seconds to a large
//! repository does not keep a core busy archiving commits nobody will read). One build at a time per
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
    if let Ok(mut latest) = ctx.artifacts_latest.lock() {
        latest.insert(request.slug.clone(), request.commit.clone());
    }
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

/// Marks a build done when dropped, however it ends (and forgets its commit as the latest asked for).
struct Building<'a>(&'a JobContext, (String, String));

impl Drop for Building<'_> {
    fn drop(&mut self) {
        if let Ok(mut building) = self.0.artifacts_building.lock() {
            building.remove(&self.1);
        }
        let (slug, commit) = &self.1;
        if let Ok(mut latest) = self.0.artifacts_latest.lock()
            && latest.get(slug) == Some(commit)
        {
            latest.remove(slug);
        }
    }
}

/// Whether this worker was asked for a newer commit's artifacts of `slug` than `commit`.
fn superseded(ctx: &JobContext, slug: &str, commit: &str) -> bool {
    ctx.artifacts_latest.lock().is_ok_and(|latest| latest.get(slug).is_some_and(|newest| newest != commit))
}

/// Streams the files of the staged folders at `commit` (as the manifest lists them: sorted by path) into a tar.gz
/// at `path`, walking the trees as it goes (the listing is never held); returns its sha256, or `None` when
/// `superseded` said to stop (checked every 64 files).
fn archive(
    mirror: &Mirror,
    commit: &str,
    target: &ArtifactTarget,
    path: &Path,
    superseded: &dyn Fn() -> bool,
) -> anyhow::Result<Option<String>> {
    let blobs = mirror.blobs()?;
    let out = |path: &Path| anyhow::Ok(std::io::BufWriter::new(std::fs::File::create(path)?));
    let mut artifact = Artifact::new(out(path)?);
    let mut failed = None;
    let mut stopped = false;
    let ordered = mirror.walk_files(commit, &target.folders, 64, |batch| {
        if superseded() {
            stopped = true;
            return false;
        }
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
    if stopped {
        return Ok(None);
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
    Ok(Some(sha256))
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
            let (ctx, slug, commit) = (ctx.clone(), request.slug.clone(), request.commit.clone());
            tokio::task::spawn_blocking(move || {
                archive(&mirror, &commit, &target, &path, &|| superseded(&ctx, &slug, &commit))
            })
            .await??
        };
        let Some(sha256) = sha256 else {
            tracing::info!(slug = %request.slug, commit = %request.commit, "artifact superseded by a newer commit's");
            return Ok(false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Backend, StoreSettings};

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git").current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn a_superseded_build_stops_and_the_rest_finish() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("w");
        std::fs::create_dir_all(work.join("config_contexts")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        for i in 0..200 {
            std::fs::write(work.join(format!("config_contexts/f{i:03}.json")), format!("{{\"n\": {i}}}")).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]);
        let head = git(&work, &["rev-parse", "HEAD"]);
        let mirror = Mirror::new(root.path(), "w/.git");
        let store =
            StoreSettings { bucket_name: None, location: String::new(), default_acl: None, upload_to: "git".into() };
        let target = ArtifactTarget {
            store,
            backend: Backend::Fs { dir: root.path().join("store") },
            key: "a.tar.gz".into(),
            folders: vec!["config_contexts".into()],
        };
        let out = root.path().join("artifact.tar.gz");

        let built = archive(&mirror, &head, &target, &out, &|| false).unwrap();
        assert_eq!(built.map(|d| d.len()), Some(64), "a sha256 when nothing newer was asked for");

        // Asked for a newer commit after the first 64 files: the build stops at the next batch.
        let calls = std::cell::Cell::new(0);
        let newer_after_one_batch = || {
            calls.set(calls.get() + 1);
            calls.get() > 1
        };
        assert_eq!(archive(&mirror, &head, &target, &out, &newer_after_one_batch).unwrap(), None);
        assert_eq!(calls.get(), 2, "checked before each batch of 64 files, stopped at the second");
    }
}
