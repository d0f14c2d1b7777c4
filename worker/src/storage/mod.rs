//! The storage half of a sync (ARCHITECTURE section 6): the files of every provided data type land in S3 (or a
//! local directory) so consumers see the same commit without Git.
//!
//! ```text
//! {location}/{upload_to}/blobs/{git blob id}              static files, content addressed (never uploaded twice)
//! {location}/{upload_to}/{slug}/{commit}/manifest.json    the folders it covers, its parts (first path, key)
//! {location}/{upload_to}/{slug}/manifest-parts/{sha256}.json  path -> blob, size, sha256, key (a run of paths)
//! {location}/{upload_to}/{slug}/{commit}/artifact.tar.gz  the provided files at that commit, built after the sync
//! {location}/reports/{job_result_id}.json                 the sync report (records changed, log entries)
//! {location}/{upload_to}/{slug}/current.json              written last: commit, manifest, then artifact, digest
//! ```
//! Blobs and manifest are staged beside the load and the records' writes, before anything names them; the
//! report and `current.json` are written inside the sync's database transaction, before the commit, and
//! `current.json` is put back if the commit fails. A failed upload leaves the previous commit live in both
//! PostgreSQL and storage. The artifact is built after the commit, from the commit's trees, and `current.json`
//! names it only once it is complete (until then its `artifact` is null).
//!
//! What a store holds is known from the live manifest: a sync lists the change since the live commit, uploads
//! only the changed files' blobs, and writes the new manifest as the old one plus the change: the parts the
//! change falls in, and a root listing them (`manifest.rs`), whatever the repository's size.

pub mod backend;
pub mod commands;
pub mod manifest;
pub mod settings;

use std::collections::BTreeSet;
use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use backend::{Backend, StorageError};
pub use manifest::{Part, PartBody, PartRef};
pub use settings::{StorageSettings, StoreSettings};

/// The storages of a worker, with one S3 client shared by every S3 store.
#[derive(Debug, Clone)]
pub struct Storage {
    pub settings: StorageSettings,
    client: Option<aws_sdk_s3::Client>,
    /// The manifest parts written or read last, shared by every clone.
    parts: std::sync::Arc<PartCache>,
}

/// The files of the manifest parts this worker wrote or read last, up to [`PartCache::FILES`] entries in all. A
/// part is stored under the digest of its body, so what its key names never changes: the next sync of a
/// repository finds the parts its change falls in here instead of asking the store (one round trip less).
#[derive(Debug, Default)]
struct PartCache(std::sync::Mutex<std::collections::VecDeque<(String, std::sync::Arc<Vec<ManifestFile>>)>>);

impl PartCache {
    /// About 250 bytes an entry: a few MiB.
    const FILES: usize = 16_384;

    fn name(store: &StoreSettings, key: &str) -> String {
        format!("{}\n{key}", store.bucket_name.as_deref().unwrap_or_default())
    }

    fn get(&self, store: &StoreSettings, key: &str) -> Option<Vec<ManifestFile>> {
        let name = Self::name(store, key);
        let parts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.iter().find(|(n, _)| *n == name).map(|(_, files)| files.to_vec())
    }

    fn put(&self, store: &StoreSettings, key: &str, files: Vec<ManifestFile>) {
        let name = Self::name(store, key);
        let mut parts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if parts.iter().any(|(n, _)| *n == name) || files.len() > Self::FILES {
            return;
        }
        parts.push_back((name, std::sync::Arc::new(files)));
        let mut held: usize = parts.iter().map(|(_, f)| f.len()).sum();
        while held > Self::FILES {
            let Some((_, oldest)) = parts.pop_front() else { break };
            held -= oldest.len();
        }
    }
}

/// One line of a manifest: a file of a provided data type at a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub blob: String,
    pub size: u64,
    pub sha256: String,
    pub key: String,
}

/// One store a sync writes to, and the folders of the data types whose files go there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub store: StoreSettings,
    pub folders: Vec<String>,
}

/// What a store holds for a repository, read through its pointer: the live root manifest.
#[derive(Debug, Default, Clone)]
pub struct Live {
    /// The pointer as stored, to put back if the sync's commit fails.
    pub pointer: Option<Vec<u8>>,
    pub commit: Option<String>,
    /// The folders the live manifest covers; `None` when there is no live manifest in parts to build on.
    pub folders: Option<Vec<String>>,
    pub parts: Vec<PartRef>,
    /// Files whose blobs `worker storage verify --repair` found missing from the store: `(path, blob)`. The next
    /// sync uploads them again.
    pub missing: Vec<(String, String)>,
}

/// What a sync staged in one store.
#[derive(Debug, Clone)]
pub struct Staged {
    pub store: StoreSettings,
    pub backend: Backend,
    pub manifest_key: String,
    /// Where the artifact goes once it is built (after the commit).
    pub artifact_key: String,
    pub current_key: String,
    /// The pointer before this sync, to put back if the commit fails.
    pub previous: Option<Vec<u8>>,
    /// The folders the manifest covers (the artifact holds their files).
    pub folders: Vec<String>,
    pub files: usize,
    /// Manifest parts written (the others were the live manifest's).
    pub new_parts: usize,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    /// Whether the manifest was built from the live one plus the change (else every file was listed).
    pub from_live: bool,
}

/// Where one store's artifact of a commit goes, and the folders whose files it holds.
#[derive(Debug, Clone)]
pub struct ArtifactTarget {
    pub store: StoreSettings,
    pub backend: Backend,
    pub key: String,
    pub folders: Vec<String>,
}

impl Staged {
    pub fn artifact_target(&self) -> ArtifactTarget {
        ArtifactTarget {
            store: self.store.clone(),
            backend: self.backend.clone(),
            key: self.artifact_key.clone(),
            folders: self.folders.clone(),
        }
    }

    /// How the database and the JobResult name this store's objects. The artifact's `sha256` is null until it is
    /// built.
    pub fn describe(&self) -> Value {
        json!({
            "storage": self.backend.describe(), "manifest": self.manifest_key, "artifact": self.artifact_key,
            "sha256": null, "current": self.current_key, "files": self.files, "new_manifest_parts": self.new_parts,
            "uploaded_blobs": self.uploaded_blobs, "uploaded_bytes": self.uploaded_bytes,
            "manifest_from_live": self.from_live,
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&openssl::sha::sha256(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that digests what passes through it.
pub struct Digesting<W> {
    inner: W,
    sha: openssl::sha::Sha256,
}

impl<W: std::io::Write> Digesting<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, sha: openssl::sha::Sha256::new() }
    }

    /// The inner writer and the hex digest of everything written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex(&self.sha.finish()))
    }
}

impl<W: std::io::Write> std::io::Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a deterministic tar.gz (`(path, blob)` in the order given, which is sorted; mode 0644; mtime 0) of the
/// files to `out`, reading each blob through `read` when its turn comes: only one file is in memory at a time.
/// Returns the archive's sha256.
pub fn write_artifact<W: std::io::Write>(
    files: &[(String, String)],
    out: W,
    mut read: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<(W, String)> {
    let mut artifact = Artifact::new(out);
    for (path, blob) in files {
        artifact.add(path, &read(blob)?)?;
    }
    artifact.finish()
}

/// A deterministic tar.gz written a file at a time (mode 0644, mtime 0, in the order added, which is sorted).
pub struct Artifact<W: std::io::Write> {
    tar: tar::Builder<flate2::write::GzEncoder<Digesting<W>>>,
}

impl<W: std::io::Write> Artifact<W> {
    pub fn new(out: W) -> Self {
        let encoder = flate2::write::GzEncoder::new(Digesting::new(out), flate2::Compression::default());
        Self { tar: tar::Builder::new(encoder) }
    }

    pub fn add(&mut self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(&mut header, path, bytes)
    }

    /// The writer and the archive's sha256.
    pub fn finish(self) -> std::io::Result<(W, String)> {
        let mut gz = self.tar.into_inner()?;
        gz.flush()?;
        Ok(gz.finish()?.finish())
    }
}

/// Reads a JSON object, or `None` when it is absent or not JSON (an unreadable pointer or manifest is not built on).
async fn get_json(backend: &Backend, key: &str) -> Result<Option<Value>, StorageError> {
    Ok(backend.get(key).await?.and_then(|body| serde_json::from_slice(&body).ok()))
}

impl Storage {
    pub async fn new(settings: StorageSettings) -> Self {
        let client = match &settings.s3 {
            Some(s3) => Some(backend::s3_client(s3).await),
            None => None,
        };
        Self { settings, client, parts: std::sync::Arc::default() }
    }

    pub fn backend(&self, store: &StoreSettings) -> Backend {
        Backend::for_bucket(&self.settings, self.client.as_ref(), store.bucket_name.as_deref())
    }

    fn key(store: &StoreSettings, name: &str) -> Result<String, StorageError> {
        settings::key(&store.location, name).ok_or_else(|| StorageError::Refused {
            what: name.to_owned(),
            message: "the key would leave the storage location".to_owned(),
        })
    }

    /// Where files go, as one string: a sync whose commit is already applied still uploads when this changed.
    pub fn fingerprint(&self) -> String {
        self.stores()
            .iter()
            .map(|s| format!("{}:{}:{}", self.backend(s).describe(), s.location, s.upload_to))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every distinct store in use: the default and each override.
    pub fn stores(&self) -> Vec<StoreSettings> {
        let mut stores = vec![self.settings.default.clone()];
        for store in self.settings.overrides.values() {
            if !stores.contains(store) {
                stores.push(store.clone());
            }
        }
        stores
    }

    /// The stores a sync writes to, each with the (sorted) folders of the data types it holds, from
    /// `(data type identifier, folder)` pairs. With nothing provided, the default store, holding nothing.
    pub fn targets<'a>(&self, provided: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::new();
        for (data_type, folder) in provided {
            if folder.is_empty() {
                continue;
            }
            let store = self.settings.store_for(data_type).clone();
            let index = match targets.iter().position(|t| t.store == store) {
                Some(index) => index,
                None => {
                    targets.push(Target { store, folders: Vec::new() });
                    targets.len() - 1
                }
            };
            if !targets[index].folders.iter().any(|f| f == folder) {
                targets[index].folders.push(folder.to_owned());
            }
        }
        if targets.is_empty() {
            targets.push(Target { store: self.settings.default.clone(), folders: Vec::new() });
        }
        for target in &mut targets {
            target.folders.sort();
        }
        targets
    }

    /// Each target's artifact of `commit`, as a sync's staging names them.
    pub fn artifact_targets(
        &self,
        targets: &[Target],
        slug: &str,
        commit: &str,
    ) -> Result<Vec<ArtifactTarget>, StorageError> {
        let artifact =
            |t: &Target| Self::key(&t.store, &format!("{}/{slug}/{commit}/artifact.tar.gz", t.store.upload_to));
        targets
            .iter()
            .map(|t| {
                Ok(ArtifactTarget {
                    store: t.store.clone(),
                    backend: self.backend(&t.store),
                    key: artifact(t)?,
                    folders: t.folders.clone(),
                })
            })
            .collect()
    }

    fn current_key(store: &StoreSettings, slug: &str) -> Result<String, StorageError> {
        Self::key(store, &format!("{}/{slug}/current.json", store.upload_to))
    }

    pub fn blob_key(store: &StoreSettings, blob: &str) -> Result<String, StorageError> {
        Self::key(store, &format!("{}/blobs/{blob}", store.upload_to))
    }

    /// The store's live pointer and manifest for the repository. `live_head` (the commit the database says is
    /// live) names the manifest to ask for alongside the pointer, so both come in one round trip; if the pointer
    /// names another manifest, that one is read after. A pointer or manifest that is not JSON reads as none: the
    /// sync then lists every file again. A store out of reach is an error.
    pub async fn live(&self, store: &StoreSettings, slug: &str, live_head: Option<&str>) -> Result<Live, StorageError> {
        let backend = self.backend(store);
        let guessed = match live_head {
            Some(head) => Some(Self::key(store, &format!("{}/{slug}/{head}/manifest.json", store.upload_to))?),
            None => None,
        };
        let current_key = Self::current_key(store, slug)?;
        let (pointer, guessed_manifest) = tokio::try_join!(backend.get(&current_key), async {
            match &guessed {
                Some(key) => get_json(&backend, key).await,
                None => Ok(None),
            }
        })?;
        let parsed: Value = pointer.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let mut live = Live { pointer, ..Live::default() };
        let Some(manifest_key) = parsed["manifest"].as_str() else { return Ok(live) };
        let manifest = if guessed.as_deref() == Some(manifest_key) {
            guessed_manifest
        } else {
            get_json(&backend, manifest_key).await?
        };
        let Some(manifest) = manifest else { return Ok(live) };
        let Ok(parts) = serde_json::from_value::<Vec<PartRef>>(manifest["parts"].clone()) else { return Ok(live) };
        live.commit = manifest["commit"].as_str().map(str::to_owned);
        live.folders = serde_json::from_value(manifest["folders"].clone()).ok();
        live.missing = serde_json::from_value(manifest["missing"].clone()).unwrap_or_default();
        live.parts = parts;
        Ok(live)
    }

    /// The files of manifest parts, read `GITFLEET_STORAGE_UPLOAD_CONCURRENCY` at a time. A part that is gone or
    /// unreadable is an error: the manifest it belongs to cannot be built on.
    pub async fn load_parts(
        &self,
        store: &StoreSettings,
        parts: &[PartRef],
    ) -> Result<Vec<Vec<ManifestFile>>, StorageError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let backend = self.backend(store);
        let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
        stream::iter(keys)
            .map(|key| {
                let backend = backend.clone();
                async move {
                    if let Some(files) = self.parts.get(store, &key) {
                        return Ok(files);
                    }
                    let body = backend.get(&key).await?.unwrap_or_default();
                    let files = serde_json::from_slice::<PartBody>(&body).map(|b| b.files).map_err(|e| {
                        StorageError::Refused { what: key.clone(), message: format!("not a manifest part: {e}") }
                    })?;
                    self.parts.put(store, &key, files.clone());
                    Ok(files)
                }
            })
            .buffered(self.settings.upload_concurrency.max(1))
            .try_collect()
            .await
    }

    /// Every file a root manifest lists (through its parts).
    pub async fn manifest_files(
        &self,
        store: &StoreSettings,
        manifest: &Value,
    ) -> Result<Vec<ManifestFile>, StorageError> {
        let parts: Vec<PartRef> = serde_json::from_value(manifest["parts"].clone()).unwrap_or_default();
        Ok(self.load_parts(store, &parts).await?.into_iter().flatten().collect())
    }

    /// Uploads blobs (`(blob id, bytes)`) to the store, `GITFLEET_STORAGE_UPLOAD_CONCURRENCY` at a time. Returns
    /// how many were written and their bytes.
    pub async fn upload(
        &self,
        store: &StoreSettings,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<(usize, u64), StorageError> {
        let mut objects = Vec::with_capacity(blobs.len());
        for (blob, bytes) in blobs {
            objects.push((Self::blob_key(store, &blob)?, bytes));
        }
        let (threshold, concurrency) = (self.settings.multipart_threshold, self.settings.upload_concurrency);
        let written =
            self.backend(store).put_blobs(objects, store.default_acl.as_deref(), threshold, concurrency).await?;
        Ok((written.len(), written.iter().sum()))
    }

    /// Writes the manifest of `commit` for the target: its new parts (those the live manifest does not have
    /// already), then the root listing every part. Returns what was staged (the upload counts are the caller's).
    pub async fn put_manifest(
        &self,
        target: &Target,
        slug: &str,
        commit: &str,
        parts: Vec<Part>,
        live: Live,
    ) -> Result<Staged, StorageError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let store = &target.store;
        let backend = self.backend(store);
        let acl = store.default_acl.as_deref();
        let live_keys: BTreeSet<&str> = live.parts.iter().map(|p| p.key.as_str()).collect();
        let (mut refs, mut bodies) = (Vec::with_capacity(parts.len()), Vec::new());
        for part in parts {
            match part {
                Part::Kept(kept) => refs.push(kept),
                Part::New(files) => {
                    let (part, body) = Self::part_object(store, slug, &files)?;
                    self.parts.put(store, &part.key, files);
                    if !live_keys.contains(part.key.as_str()) {
                        bodies.push((part.key.clone(), body));
                    }
                    refs.push(part);
                }
            }
        }
        let new_parts = bodies.len();
        let threshold = self.settings.multipart_threshold;
        let base = format!("{}/{slug}/{commit}", store.upload_to);
        let artifact_key = Self::key(store, &format!("{base}/artifact.tar.gz"))?;
        let manifest_key = Self::key(store, &format!("{base}/manifest.json"))?;
        let files = refs.iter().map(|p| p.files).sum();
        let manifest = json!({
            "repository": slug, "commit": commit, "folders": target.folders, "files": files, "parts": refs,
            "artifact": { "key": artifact_key },
        });
        let body = serde_json::to_vec(&manifest).unwrap_or_default();
        // The root and its new parts go up together: only the pointer, written later, names the root.
        let parts = stream::iter(bodies)
            .map(|(key, body)| {
                let (backend, acl) = (backend.clone(), acl.map(str::to_owned));
                async move { backend.put(&key, body, "application/json", acl.as_deref(), threshold).await }
            })
            .buffer_unordered(self.settings.upload_concurrency.max(1))
            .try_collect::<Vec<()>>();
        tokio::try_join!(parts, backend.put(&manifest_key, body, "application/json", acl, threshold))?;
        Ok(Staged {
            store: store.clone(),
            backend,
            manifest_key,
            artifact_key,
            current_key: Self::current_key(store, slug)?,
            from_live: live.commit.is_some() && live.folders.as_ref() == Some(&target.folders),
            previous: live.pointer,
            folders: target.folders.clone(),
            files,
            new_parts,
            uploaded_blobs: 0,
            uploaded_bytes: 0,
        })
    }

    /// A manifest part's reference and body: stored under the sha256 of its body.
    fn part_object(
        store: &StoreSettings,
        slug: &str,
        files: &[ManifestFile],
    ) -> Result<(PartRef, Vec<u8>), StorageError> {
        #[derive(Serialize)]
        struct Body<'a> {
            files: &'a [ManifestFile],
        }
        let (first, count) = (files.first().map(|f| f.path.clone()).unwrap_or_default(), files.len());
        let body = serde_json::to_vec(&Body { files }).unwrap_or_default();
        let name = format!("{}/{slug}/manifest-parts/{}.json", store.upload_to, sha256_hex(&body));
        let key = Self::key(store, &name)?;
        Ok((PartRef { key, first, files: count }, body))
    }

    /// Writes a manifest part as soon as it is cut (a manifest listed afresh goes up part by part, so a sync never
    /// holds every file's entry), unless `live` (the live manifest's parts) has it. Its reference, and whether it
    /// was written.
    pub async fn put_part(
        &self,
        store: &StoreSettings,
        slug: &str,
        files: Vec<ManifestFile>,
        live: &[PartRef],
    ) -> Result<(PartRef, bool), StorageError> {
        let (part, body) = Self::part_object(store, slug, &files)?;
        let written = !live.iter().any(|p| p.key == part.key);
        if written {
            let (acl, threshold) = (store.default_acl.as_deref(), self.settings.multipart_threshold);
            self.backend(store).put(&part.key, body, "application/json", acl, threshold).await?;
        }
        self.parts.put(store, &part.key, files);
        Ok((part, written))
    }

    /// The sync report, from a local file, in the default store: `{location}/reports/{job_result_id}.json`.
    pub async fn put_report(&self, job_result_id: uuid::Uuid, file: &std::path::Path) -> Result<String, StorageError> {
        let store = &self.settings.default;
        let key = Self::key(store, &format!("reports/{job_result_id}.json"))?;
        let (acl, part) = (store.default_acl.as_deref(), self.settings.multipart_threshold);
        self.backend(store).put_file(&key, file, "application/json", acl, part).await?;
        Ok(key)
    }

    /// Writes each store's `current.json`, naming the commit and its manifest; its artifact is null until
    /// [`Self::point_artifact`] names it.
    pub async fn point(
        &self,
        staged: &[Staged],
        slug: &str,
        commit: &str,
        job_result_id: uuid::Uuid,
    ) -> Result<(), StorageError> {
        for s in staged {
            let pointer = json!({
                "repository": slug, "commit": commit, "manifest": s.manifest_key, "artifact": null, "sha256": null,
                "job_result_id": job_result_id,
            });
            let body = serde_json::to_vec_pretty(&pointer).unwrap_or_default();
            s.backend.put(&s.current_key, body, "application/json", s.store.default_acl.as_deref(), u64::MAX).await?;
        }
        Ok(())
    }

    /// Names a complete artifact in the store's pointer, if the pointer still names `commit` (a newer sync
    /// points at its own). The caller holds the repository lock, as every writer of the pointer does. Returns
    /// whether the pointer named it.
    pub async fn point_artifact(
        &self,
        store: &StoreSettings,
        slug: &str,
        commit: &str,
        artifact_key: &str,
        sha256: &str,
    ) -> Result<bool, StorageError> {
        let backend = self.backend(store);
        let key = Self::current_key(store, slug)?;
        let Some(mut pointer) = get_json(&backend, &key).await? else { return Ok(false) };
        if pointer["commit"].as_str() != Some(commit) {
            return Ok(false);
        }
        pointer["artifact"] = json!(artifact_key);
        pointer["sha256"] = json!(sha256);
        let body = serde_json::to_vec_pretty(&pointer).unwrap_or_default();
        backend.put(&key, body, "application/json", store.default_acl.as_deref(), u64::MAX).await?;
        Ok(true)
    }

    /// Whether the store's pointer for the repository names `commit` (the artifact of an older one is not built).
    pub async fn points_at(&self, store: &StoreSettings, slug: &str, commit: &str) -> Result<bool, StorageError> {
        let pointer = get_json(&self.backend(store), &Self::current_key(store, slug)?).await?;
        Ok(pointer.is_some_and(|p| p["commit"].as_str() == Some(commit)))
    }

    /// Puts the pointers back as they were (the database transaction that should have followed them failed).
    pub async fn restore_pointers(&self, staged: &[Staged]) {
        for s in staged {
            let restored = match &s.previous {
                Some(body) => s.backend.put(&s.current_key, body.clone(), "application/json", None, u64::MAX).await,
                None => s.backend.delete(&s.current_key).await,
            };
            if let Err(err) = restored {
                tracing::error!(key = %s.current_key, error = %err, "could not restore current.json");
            }
        }
    }

    /// Removes what a deleted repository owns in every store (its manifests, artifacts and pointer; blobs are
    /// shared and left to `gc`). Returns how many objects went.
    pub async fn remove_repository(&self, slug: &str) -> Result<usize, StorageError> {
        let mut removed = 0;
        for store in self.stores() {
            let backend = self.backend(&store);
            let prefix = format!("{}/", Self::key(&store, &format!("{}/{slug}", store.upload_to))?);
            for key in backend.list(&prefix).await? {
                backend.delete(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The blob keys every manifest under the store's root references, and every key there (one listing).
    async fn referenced(&self, store: &StoreSettings) -> Result<(BTreeSet<String>, Vec<String>), StorageError> {
        let backend = self.backend(store);
        let root = format!("{}/", Self::key(store, &store.upload_to)?);
        let blobs_prefix = Self::blobs_prefix(store)?;
        let mut referenced = BTreeSet::new();
        let keys = backend.list(&root).await?;
        // Every part of every manifest names blobs (a part no manifest lists any more names none that count).
        for key in keys.iter().filter(|k| k.contains("/manifest-parts/") && !k.starts_with(&blobs_prefix)) {
            let Some(part) = backend.get(key).await? else { continue };
            let Ok(part) = serde_json::from_slice::<PartBody>(&part) else { continue };
            referenced.extend(part.files.into_iter().map(|f| f.key));
        }
        Ok((referenced, keys))
    }

    fn blobs_prefix(store: &StoreSettings) -> Result<String, StorageError> {
        Ok(format!("{}/", Self::key(store, &format!("{}/blobs", store.upload_to))?))
    }

    /// Removes every blob that no manifest references any more. Returns (blobs kept, blobs removed).
    pub async fn gc(&self) -> Result<(usize, usize), StorageError> {
        let (mut kept, mut removed) = (0, 0);
        for store in self.stores() {
            let backend = self.backend(&store);
            let blobs_prefix = Self::blobs_prefix(&store)?;
            let (referenced, keys) = self.referenced(&store).await?;
            for key in keys.iter().filter(|k| k.starts_with(&blobs_prefix)) {
                let name = &key[blobs_prefix.len()..];
                if name.len() < 40 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                if referenced.contains(key) {
                    kept += 1;
                } else {
                    backend.delete(key).await?;
                    removed += 1;
                }
            }
        }
        Ok((kept, removed))
    }

    /// Checks every live manifest of every store against one listing of the store: the blobs a manifest names
    /// that the store does not hold. With `repair`, each such manifest records them (`missing`), so the
    /// repository's next sync uploads them again. Returns `(slug, missing blob ids)` for each repository short of
    /// some.
    pub async fn verify(&self, repair: bool) -> Result<Vec<(String, BTreeSet<String>)>, StorageError> {
        let mut short = Vec::new();
        for store in self.stores() {
            let backend = self.backend(&store);
            let root = format!("{}/", Self::key(&store, &store.upload_to)?);
            let blobs_prefix = Self::blobs_prefix(&store)?;
            // A blob of the wrong size (a write cut short) counts as missing.
            let keys: std::collections::BTreeMap<String, u64> = backend.list_sizes(&root).await?.into_iter().collect();
            let pointers = keys.keys().filter(|k| k.ends_with("/current.json") && !k.starts_with(&blobs_prefix));
            for pointer_key in pointers {
                let Some(pointer) = get_json(&backend, pointer_key).await? else { continue };
                let (Some(slug), Some(manifest_key)) = (pointer["repository"].as_str(), pointer["manifest"].as_str())
                else {
                    continue;
                };
                let Some(mut manifest) = get_json(&backend, manifest_key).await? else { continue };
                let lost: Vec<ManifestFile> = self
                    .manifest_files(&store, &manifest)
                    .await?
                    .into_iter()
                    .filter(|f| keys.get(&f.key) != Some(&f.size))
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                let missing: BTreeSet<String> = lost.iter().map(|f| f.blob.clone()).collect();
                if repair {
                    let files: Vec<(&str, &str)> = lost.iter().map(|f| (f.path.as_str(), f.blob.as_str())).collect();
                    manifest["missing"] = json!(files);
                    let body = serde_json::to_vec(&manifest).unwrap_or_default();
                    let acl = store.default_acl.as_deref();
                    backend.put(manifest_key, body, "application/json", acl, self.settings.multipart_threshold).await?;
                }
                short.push((slug.to_owned(), missing));
            }
        }
        Ok(short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_deterministic_and_read_one_file_at_a_time() {
        let contents = [("1", b"one".to_vec()), ("2", b"two".to_vec())];
        let files = [("a.txt".to_owned(), "1".to_owned()), ("b.txt".to_owned(), "2".to_owned())];
        let read = |blob: &str| Ok(contents.iter().find(|(b, _)| *b == blob).unwrap().1.clone());
        let (first, digest) = write_artifact(&files, Vec::new(), read).unwrap();
        let (second, again) = write_artifact(&files, Vec::new(), read).unwrap();
        assert_eq!(first, second);
        assert_eq!(digest, again);
        assert_eq!(digest, sha256_hex(&first), "the digest is the archive's");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(first.as_slice()));
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
    }

    #[test]
    fn an_artifact_fails_when_a_file_cannot_be_read() {
        let files = [("a.txt".to_owned(), "1".to_owned())];
        let failed = write_artifact(&files, Vec::new(), |_| Err(std::io::Error::other("gone")));
        assert!(failed.is_err());
    }

    #[tokio::test]
    async fn a_part_read_or_written_lately_is_not_asked_for_again() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [("GITFLEET_STORAGE_ROOT".to_owned(), dir.path().display().to_string())];
        let settings = StorageSettings::from_vars(vars).unwrap();
        let store = settings.default.clone();
        let file = |path: &str| ManifestFile {
            path: path.to_owned(),
            blob: "b".repeat(40),
            size: 1,
            sha256: "0".repeat(64),
            key: format!("blobs/{path}"),
        };
        let files = vec![file("config_contexts/a.json"), file("config_contexts/b.json")];
        let storage = Storage::new(settings.clone()).await;
        let (part, written) = storage.put_part(&store, "repo", files.clone(), &[]).await.unwrap();
        assert!(written);
        // Another worker, which never saw the part, reads it from the store.
        let other = Storage::new(settings).await;
        assert_eq!(other.load_parts(&store, std::slice::from_ref(&part)).await.unwrap(), std::slice::from_ref(&files));
        // Once the object is gone, only the workers that hold the part still read it.
        let backend = storage.backend(&store);
        backend.delete(&part.key).await.unwrap();
        assert_eq!(
            storage.load_parts(&store, std::slice::from_ref(&part)).await.unwrap(),
            std::slice::from_ref(&files)
        );
        assert_eq!(other.load_parts(&store, std::slice::from_ref(&part)).await.unwrap(), [files]);
        let fresh = Storage::new(other.settings.clone()).await;
        assert!(fresh.load_parts(&store, &[part]).await.is_err(), "a part neither held nor stored");
    }

    #[test]
    fn targets_group_folders_by_store() {
        let mut settings = StorageSettings::from_vars(Vec::<(String, String)>::new()).unwrap();
        let jobs = StoreSettings { bucket_name: Some("jobs".into()), ..settings.default.clone() };
        settings.overrides.insert("extras.job".into(), jobs.clone());
        let storage = Storage { settings, client: None, parts: Default::default() };
        let targets = storage.targets([("extras.configcontext", "config_contexts"), ("extras.job", "jobs"), ("x", "")]);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].folders, ["config_contexts"]);
        assert_eq!(targets[1].store, jobs);
        assert_eq!(targets[1].folders, ["jobs"]);
        assert_eq!(storage.targets([]).len(), 1, "nothing provided: the default store, holding nothing");
    }
}
