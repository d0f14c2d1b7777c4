//! Store: the provided files staged in storage beside the load and the records' writes (blobs, manifest), then the
//! sync report and the `current.json` pointers inside the sync's transaction, just before the commit. The artifact
//! is built after the commit (`artifact.rs`).
//!
//! A store's live manifest says what it holds: when it covers the same folders and its commit is in the mirror,
//! the new manifest is the live one plus the change between the two commits, and only the changed files are read;
//! otherwise every file is walked from the trees again. Files are listed, read and uploaded in batches, so memory
//! holds a batch or two, not the repository.

use std::collections::{BTreeMap, HashMap, HashSet};

use gitfleet_infra::store::job_result;
use gitfleet_infra::store::repository::RepositoryRow;
use gitfleet_shared::job_result::grouping;
use gitfleet_shared::sanitize::sanitize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::JobContext;
use super::error::{Failure, Step, StepError, TransientError};
use super::run::JobLog;
use crate::git::{GitError, Mirror};
use crate::storage::{Live, ManifestFile, Part, Staged, Storage, StorageError, Target, manifest, sha256_hex};

/// A batch of files read from the mirror and uploaded together: at most this many files or bytes.
const BATCH_FILES: usize = 512;
const BATCH_BYTES: u64 = 32 << 20;

/// A storage fault: transient when the store is out of reach or answering 5xx, else the job fails (with the
/// reverted line, as every failure of a sync after its fetch).
fn storage_error(name: &str, err: StorageError) -> StepError {
    if err.is_transient() {
        return TransientError::Storage(sanitize(&err.to_string())).into();
    }
    let message = format!("Could not store the files of {name}: {err}");
    StepError::Failed(Failure::new("StorageError", message, grouping::MAIN).reverted())
}

/// Changed paths and their new blobs (`None`: removed).
type Changed = BTreeMap<String, Option<String>>;

/// What changed in the target's folders since the live manifest: `path -> new blob` (`None`: removed), or every
/// file at `head` when there is no live manifest to build on (first sync, other folders, a commit the mirror lacks).
enum Listing {
    Changes(Changed),
    /// Every file, walked from the trees as it is staged ([`every_file`]).
    Every,
}

fn listing(mirror: &Mirror, head: &str, folders: &[String], live: &Live) -> Result<Listing, GitError> {
    if let (Some(commit), Some(live_folders)) = (&live.commit, &live.folders)
        && live_folders == folders
        && mirror.has_commit(commit)
    {
        let within =
            |path: &str| folders.iter().any(|f| path.strip_prefix(f.as_str()).is_some_and(|r| r.starts_with('/')));
        let changes: Vec<_> = mirror.changes(commit, head)?.into_iter().filter(|c| within(&c.path)).collect();
        let mut changed = BTreeMap::new();
        // Removals first: a path whose type changed shows as a deletion and an addition, in either order.
        for change in &changes {
            changed.insert(change.path.clone(), None);
        }
        for change in changes {
            if let Some((blob, mode)) = change.new
                && mode & 0o170_000 == 0o100_000
            {
                changed.insert(change.path, Some(blob));
            }
        }
        // Files whose blobs were found missing from the store: stored again (unless changed anyway).
        for (path, blob) in &live.missing {
            changed.entry(path.clone()).or_insert_with(|| Some(blob.clone()));
        }
        return Ok(Listing::Changes(changed));
    }
    Ok(Listing::Every)
}

/// Every file of the target's folders at `head`, in path order, a batch at a time: walked from the trees on a
/// thread of its own, a batch or two ahead of the staging (memory holds those, not the listing). Names that are
/// not UTF-8 (read with replacement characters) could come out of order: a first walk, which holds nothing,
/// checks, and such a tree is listed whole and sorted instead.
fn every_file(mirror: &Mirror, head: &str, folders: &[String]) -> tokio::sync::mpsc::Receiver<Result<Batch, GitError>> {
    let (send, receive) = tokio::sync::mpsc::channel(2);
    let (mirror, head, folders) = (mirror.clone(), head.to_owned(), folders.to_vec());
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let pass = |batch| send.blocking_send(Ok(batch)).is_ok();
        let walked = match mirror.walk_files(&head, &folders, BATCH_FILES, |_| true) {
            Ok(true) => mirror.walk_files(&head, &folders, BATCH_FILES, pass).map(drop),
            Ok(false) => mirror.list_sorted(&head, &folders).map(|all| {
                for batch in all.chunks(BATCH_FILES) {
                    if !pass(batch.to_vec()) {
                        break;
                    }
                }
            }),
            Err(err) => Err(err),
        };
        if let Err(err) = walked {
            let _ = send.blocking_send(Err(err));
        }
    });
    receive
}

/// Paths and blob ids, in path order.
type Batch = Vec<(String, String)>;

/// Stages one store: lists what changed, reads the manifest parts it falls in, reads and uploads the new blobs in
/// batches, writes the new parts and the root.
async fn stage_target(
    storage: &Storage,
    mirror: &Mirror,
    slug: &str,
    (head, live_head): (&str, Option<&str>),
    target: &Target,
    phases: &mut super::sync::Phases,
) -> Result<Staged, StageError> {
    let live = storage.live(&target.store, slug, live_head).await?;
    phases.mark("storage: live manifest");
    let listed = {
        let (mirror, head, folders, live) = (mirror.clone(), head.to_owned(), target.folders.clone(), live.clone());
        tokio::task::spawn_blocking(move || listing(&mirror, &head, &folders, &live))
            .await
            .map_err(StageError::Join)??
    };
    phases.mark("storage: listing");
    let changed = match listed {
        Listing::Every => {
            let files = every_file(mirror, head, &target.folders);
            return stage_every(storage, mirror, slug, head, target, live, files, phases).await;
        }
        Listing::Changes(changed) => changed,
    };
    // What the store holds: the files of the live parts a change falls in, less the blobs found missing. Which
    // parts the changes fall in does not depend on the new files' digests: find them with stand-ins.
    let mut loaded: HashMap<usize, Vec<ManifestFile>> = HashMap::new();
    let stand_ins: BTreeMap<String, Option<ManifestFile>> =
        changed.iter().map(|(path, blob)| (path.clone(), blob.as_ref().map(|_| stand_in(path)))).collect();
    while let Err(need) = manifest::rebuild(&live.parts, &loaded, &stand_ins) {
        let refs: Vec<_> = need.iter().map(|&i| live.parts[i].clone()).collect();
        let read = storage.load_parts(&target.store, &refs).await?;
        loaded.extend(need.into_iter().zip(read));
    }
    let files: Vec<(String, String)> =
        changed.iter().filter_map(|(path, blob)| Some((path.clone(), blob.clone()?))).collect();
    phases.mark("storage: live parts");
    let missing: HashSet<&str> = live.missing.iter().map(|(_, blob)| blob.as_str()).collect();
    let mut known: HashMap<String, (u64, String)> = loaded
        .values()
        .flatten()
        .filter(|f| !missing.contains(f.blob.as_str()))
        .map(|f| (f.blob.clone(), (f.size, f.sha256.clone())))
        .collect();
    // Each blob the store does not hold, once, in batches bounded by count and bytes. The last batch goes up
    // together with the manifest (nothing names the manifest until the pointer is written).
    let mut wanted: Vec<String> =
        files.iter().map(|(_, blob)| blob).filter(|b| !known.contains_key(*b)).cloned().collect();
    wanted.sort();
    wanted.dedup();
    let mut blobs = BlobPipe::new(storage, &target.store, mirror);
    let mut rest = wanted.as_slice();
    while !rest.is_empty() {
        let read = blobs.read(&rest[..rest.len().min(BATCH_FILES)]).await?;
        rest = &rest[read.len()..];
        known.extend(read);
    }
    phases.mark("storage: blobs");
    let mut changes = BTreeMap::new();
    for (path, blob) in changed {
        let file = match blob {
            Some(blob) => Some(entry(&known, &target.store, path.clone(), blob)?),
            None => None,
        };
        changes.insert(path, file);
    }
    let parts = manifest::rebuild(&live.parts, &loaded, &changes).map_err(|_| StorageError::Refused {
        what: "the manifest".to_owned(),
        message: "its parts changed while it was rebuilt".to_owned(),
    })?;
    // The last batch goes up together with the manifest (nothing names the manifest until the pointer is written).
    let (_, mut staged) = tokio::try_join!(blobs.flush(), storage.put_manifest(target, slug, head, parts, live))?;
    phases.mark("storage: manifest and last blobs");
    (staged.uploaded_blobs, staged.uploaded_bytes) = (blobs.uploaded, blobs.uploaded_bytes);
    Ok(staged)
}

/// Blobs read from the mirror a batch at a time and uploaded, each batch going up while the next is read.
struct BlobPipe<'a> {
    storage: &'a Storage,
    store: &'a crate::storage::StoreSettings,
    mirror: &'a Mirror,
    /// Read, not yet uploaded.
    pending: Vec<(String, Vec<u8>)>,
    uploaded: usize,
    uploaded_bytes: u64,
}

impl<'a> BlobPipe<'a> {
    fn new(storage: &'a Storage, store: &'a crate::storage::StoreSettings, mirror: &'a Mirror) -> Self {
        Self { storage, store, mirror, pending: Vec::new(), uploaded: 0, uploaded_bytes: 0 }
    }

    /// Reads blobs from the front of `ids` until a batch's bytes are spent (at least one) while the batch read
    /// before goes up; what it read, with each blob's size and SHA-256 digest.
    async fn read(&mut self, ids: &[String]) -> Result<Vec<(String, (u64, String))>, StageError> {
        let reading = {
            let (mirror, ids) = (self.mirror.clone(), ids.to_vec());
            async move { tokio::task::spawn_blocking(move || read_batch(&mirror, ids)).await }
        };
        let previous = std::mem::take(&mut self.pending);
        let (read, uploaded) = tokio::join!(reading, self.upload(previous));
        uploaded?;
        let read = read.map_err(StageError::Join)??;
        let mut out = Vec::with_capacity(read.len());
        for (id, content, sha256) in read {
            out.push((id.clone(), (content.len() as u64, sha256)));
            self.pending.push((id, content));
        }
        Ok(out)
    }

    /// Uploads what was read and is not up yet.
    async fn flush(&mut self) -> Result<(), StorageError> {
        let pending = std::mem::take(&mut self.pending);
        self.upload(pending).await
    }

    async fn upload(&mut self, blobs: Vec<(String, Vec<u8>)>) -> Result<(), StorageError> {
        if !blobs.is_empty() {
            let (count, written) = self.storage.upload(self.store, blobs).await?;
            self.uploaded += count;
            self.uploaded_bytes += written;
        }
        Ok(())
    }
}

/// Stages a store whose every file is walked (a first sync, other folders, a live commit the mirror lacks), a batch
/// at a time in path order: each batch's new blobs read, digested and uploaded, its entries cut into manifest parts
/// that go up as soon as they are cut. What the live manifest says of a path (the same blob: stored already) is
/// read a few parts at a time as the paths advance. Memory holds a batch and a few parts, never every entry.
#[allow(clippy::too_many_arguments)]
async fn stage_every(
    storage: &Storage,
    mirror: &Mirror,
    slug: &str,
    head: &str,
    target: &Target,
    live: Live,
    mut files: tokio::sync::mpsc::Receiver<Result<Batch, GitError>>,
    phases: &mut super::sync::Phases,
) -> Result<Staged, StageError> {
    let store = &target.store;
    let missing: HashSet<&str> = live.missing.iter().map(|(_, blob)| blob.as_str()).collect();
    let mut stored = LiveFiles::new(storage, store, &live.parts);
    let mut cutter = manifest::Cutter::default();
    let mut blobs = BlobPipe::new(storage, store, mirror);
    let (mut refs, mut new_parts) = (Vec::new(), 0);
    // Writes cut parts (unless the live manifest has them) and keeps their references.
    let mut put = async |parts: Vec<Vec<ManifestFile>>| {
        for files in parts {
            let (part, written) = storage.put_part(store, slug, files, &live.parts).await?;
            new_parts += usize::from(written);
            refs.push(part);
        }
        Ok::<_, StorageError>(())
    };
    while let Some(chunk) = files.recv().await {
        let chunk = chunk?;
        let mut known: HashMap<String, (u64, String)> = HashMap::new();
        for (path, blob) in &chunk {
            if let Some(file) = stored.at(path).await?
                && file.blob == *blob
                && !missing.contains(blob.as_str())
            {
                known.insert(blob.clone(), (file.size, file.sha256.clone()));
            }
        }
        let mut wanted: Vec<String> =
            chunk.iter().map(|(_, blob)| blob).filter(|b| !known.contains_key(*b)).cloned().collect();
        wanted.sort();
        wanted.dedup();
        let mut rest = wanted.as_slice();
        while !rest.is_empty() {
            let read = blobs.read(rest).await?;
            rest = &rest[read.len()..];
            known.extend(read);
        }
        for (path, blob) in chunk {
            cutter.push(entry(&known, store, path, blob)?);
        }
        put(cutter.drain()).await?;
    }
    put(cutter.finish()).await?;
    blobs.flush().await?;
    phases.mark("storage: blobs");
    let mut staged = storage.put_manifest(target, slug, head, refs.into_iter().map(Part::Kept).collect(), live).await?;
    phases.mark("storage: manifest and last blobs");
    staged.from_live = false;
    staged.new_parts = new_parts;
    (staged.uploaded_blobs, staged.uploaded_bytes) = (blobs.uploaded, blobs.uploaded_bytes);
    Ok(staged)
}

/// The live manifest's files, read a few parts at a time as the paths asked about advance (in sorted order).
struct LiveFiles<'a> {
    storage: &'a Storage,
    store: &'a crate::storage::StoreSettings,
    parts: &'a [crate::storage::PartRef],
    /// Parts read so far, and the files of those read but not yet passed.
    next: usize,
    files: std::collections::VecDeque<ManifestFile>,
}

impl<'a> LiveFiles<'a> {
    fn new(
        storage: &'a Storage,
        store: &'a crate::storage::StoreSettings,
        parts: &'a [crate::storage::PartRef],
    ) -> Self {
        Self { storage, store, parts, next: 0, files: std::collections::VecDeque::new() }
    }

    /// The live entry at `path`, if any; `path` must not sort before the one asked about last.
    async fn at(&mut self, path: &str) -> Result<Option<&ManifestFile>, StorageError> {
        loop {
            while self.files.front().is_some_and(|f| f.path.as_str() < path) {
                self.files.pop_front();
            }
            if !self.files.is_empty() || self.next >= self.parts.len() {
                break;
            }
            // As many parts at once as uploads run at once: one round trip each, in parallel.
            let ahead = self.storage.settings.upload_concurrency.max(1);
            let end = (self.next + ahead).min(self.parts.len());
            let read = self.storage.load_parts(self.store, &self.parts[self.next..end]).await?;
            self.next = end;
            self.files.extend(read.into_iter().flatten());
        }
        Ok(self.files.front().filter(|f| f.path == path))
    }
}

/// The manifest entry of a file whose blob's size and digest are known.
fn entry(
    known: &HashMap<String, (u64, String)>,
    store: &crate::storage::StoreSettings,
    path: String,
    blob: String,
) -> Result<ManifestFile, StorageError> {
    let (size, sha256) = known.get(&blob).cloned().unwrap_or_default();
    let key = Storage::blob_key(store, &blob)?;
    Ok(ManifestFile { path, blob, size, sha256, key })
}

/// A manifest entry that only has a path: which parts a change falls in depends on nothing else.
fn stand_in(path: &str) -> ManifestFile {
    ManifestFile { path: path.to_owned(), blob: String::new(), size: 0, sha256: String::new(), key: String::new() }
}

/// Reads blobs from the front of `ids` until the batch's byte budget is spent (always at least one). Returns the
/// ids read, their contents and their SHA-256 digests.
fn read_batch(mirror: &Mirror, ids: Vec<String>) -> Result<Vec<(String, Vec<u8>, String)>, GitError> {
    let blobs = mirror.blobs()?;
    let (mut read, mut spent) = (Vec::new(), 0_u64);
    for id in ids {
        if spent >= BATCH_BYTES {
            break;
        }
        let content = blobs.read(&id)?;
        spent += content.len() as u64;
        let digest = sha256_hex(&content);
        read.push((id, content, digest));
    }
    Ok(read)
}

/// What can stop a store's staging.
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Mirror(#[from] GitError),
    #[error("reading the mirror stopped: {0}")]
    Join(tokio::task::JoinError),
}

/// Reads the provided files from the mirror and uploads what storage does not hold yet, beside the load and the
/// records' writes: nothing points at them until the pointers are written.
pub(super) async fn stage(
    ctx: &JobContext,
    repo: &RepositoryRow,
    mirror: Mirror,
    head: &str,
    phases: &mut super::sync::Phases,
) -> Step<Vec<Staged>> {
    let provided =
        repo.provided_contents.iter().filter_map(|id| ctx.registry.get(id).map(|t| (id.as_str(), t.folder())));
    let mut staged = Vec::new();
    for target in ctx.storage.targets(provided) {
        let heads = (head, repo.current_head.as_ref().map(|c| c.as_str()));
        match stage_target(&ctx.storage, &mirror, &repo.slug, heads, &target, phases).await {
            Ok(done) => staged.push(done),
            Err(StageError::Storage(err)) => return Err(storage_error(&repo.name, err)),
            Err(StageError::Mirror(err)) => return Err(TransientError::Mirror(err).into()),
            Err(StageError::Join(err)) => return Err(err.into()),
        }
    }
    Ok(staged)
}

/// Log lines read and written to the report at a time (a few in debug builds, so the tests' reports span pages).
const REPORT_PAGE: i64 = if cfg!(debug_assertions) { 4 } else { 5_000 };

/// Writes the sync report (`job_result_id`, `repository`, `commit`, `artifacts`, then every log line so far as
/// `log`) to `path`: from the run's copy of its lines when the log holds those lines and no others (a redelivered
/// job's log also holds the earlier tries'), else read back from the database a page of lines at a time. Memory
/// holds one page, not the whole log.
async fn write_report(
    ctx: &JobContext,
    (id, log): (Uuid, &JobLog<'_>),
    repo: &RepositoryRow,
    head: &str,
    artifacts: &[Value],
    path: &std::path::Path,
) -> Step<()> {
    let header = json!({
        "job_result_id": id, "repository": { "id": repo.id, "name": repo.name, "slug": repo.slug },
        "commit": head, "artifacts": artifacts,
    })
    .to_string();
    // The header object, reopened for the log: `{...,"log":[` then the lines, then `]}`.
    let open = format!("{},\"log\":[", header.strip_suffix('}').unwrap_or(&header));
    if let Some((spool, bytes, lines)) = log.spooled_lines().await {
        let count = job_result::log_count(&**ctx.pool.get().await?, id).await?;
        if u64::try_from(count).ok() == Some(lines) {
            let (path, open) = (path.to_owned(), open.clone());
            match tokio::task::spawn_blocking(move || copy_report(&path, &open, &spool, bytes)).await? {
                Ok(()) => return Ok(()),
                Err(err) => tracing::warn!(error = %err, "could not copy the log's spool; reading the log back"),
            }
        }
    }
    let mut chunk = open.into_bytes();
    let file = std::fs::File::create(path).map_err(|e| report_io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    let (mut after, mut first) = (None, true);
    loop {
        let (lines, last) = {
            let client = ctx.pool.get().await?;
            job_result::report_lines(&**client, id, after, REPORT_PAGE).await?
        };
        for line in &lines {
            if !first {
                chunk.push(b',');
            }
            first = false;
            chunk.extend_from_slice(line.to_string().as_bytes());
        }
        let done = (lines.len() as i64) < REPORT_PAGE;
        if done {
            chunk.extend_from_slice(b"]}");
        }
        out = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            out.write_all(&chunk).map(|()| out)
        })
        .await?
        .map_err(|e| report_io(path, e))?;
        if done {
            break;
        }
        (after, chunk) = (last, Vec::new());
    }
    out.into_inner().map_err(|e| report_io(path, e.into_error()))?.sync_all().map_err(|e| report_io(path, e))?;
    Ok(())
}

/// The report from the header's opening, the first `bytes` of the spool and the closing brackets.
pub(super) fn copy_report(
    path: &std::path::Path,
    open: &str,
    spool: &std::path::Path,
    bytes: u64,
) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(open.as_bytes())?;
    let copied = std::io::copy(&mut std::fs::File::open(spool)?.take(bytes), &mut out)?;
    if copied != bytes {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the spool is shorter than written"));
    }
    out.write_all(b"]}")?;
    out.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
}

fn report_io(path: &std::path::Path, err: std::io::Error) -> StepError {
    TransientError::Storage(format!("could not write the sync report at {}: {err}", path.display())).into()
}

/// The sync report (every log line so far), then each store's `current.json`. Records are written by then: a
/// failure here says they were reverted. Returns the report's key.
pub(super) async fn report_and_point(
    ctx: &JobContext,
    (id, log): (Uuid, &JobLog<'_>),
    repo: &RepositoryRow,
    head: &str,
    staged: &[Staged],
    artifacts: &[Value],
    phases: &mut super::sync::Phases,
) -> Step<String> {
    let report = TempFile(ctx.git_root.join(format!(".tmp-report-{}", Uuid::new_v4().simple())));
    write_report(ctx, (id, log), repo, head, artifacts, &report.0).await?;
    // The report is not named by the pointers: both go up at once.
    let written =
        tokio::try_join!(ctx.storage.put_report(id, &report.0), ctx.storage.point(staged, &repo.slug, head, id));
    let (report_key, ()) = match written {
        Ok(written) => written,
        Err(err) => {
            // Some pointers may name the new commit already: the records it would go with are not committed.
            ctx.storage.restore_pointers(staged).await;
            return Err(storage_error(&repo.name, err));
        }
    };
    phases.mark("report and pointers");
    Ok(report_key)
}

/// A temporary file of the worker's, removed when dropped.
pub(super) struct TempFile(pub std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
