//! The storage half of a sync (ARCHITECTURE section 6): the files of every provided data type land in S3 (or a
//! local directory) so consumers see the same commit without Git.
//!
//! ```text
//! {location}/{upload_to}/blobs/{git blob id}              static files, content addressed (never uploaded twice)
//! {location}/{upload_to}/{slug}/{commit}/manifest.json    path -> blob, size, sha256, key
//! {location}/{upload_to}/{slug}/{commit}/artifact.tar.gz  the provided files at that commit (sha256 in manifest)
//! {location}/reports/{job_result_id}.json                 the sync report (records changed, log entries)
//! {location}/{upload_to}/{slug}/current.json              written last: commit, manifest, artifact, digest
//! ```
//! Blobs, manifest and artifact are staged before the sync's database transaction; the report and `current.json`
//! are written inside it, before the commit, and `current.json` is put back if the commit fails. A failed upload
//! leaves the previous commit live in both PostgreSQL and storage.

pub mod backend;
pub mod commands;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;

use serde_json::{Value, json};

pub use backend::{Backend, StorageError};
pub use settings::{StorageSettings, StoreSettings};

/// The storages of a worker, with one S3 client shared by every S3 store.
#[derive(Debug, Clone)]
pub struct Storage {
    pub settings: StorageSettings,
    client: Option<aws_sdk_s3::Client>,
}

/// One file of a provided data type at a commit, read from the mirror.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub path: String,
    pub blob: String,
    pub bytes: Vec<u8>,
}

/// What a sync staged in one store.
#[derive(Debug, Clone)]
pub struct Staged {
    pub store: StoreSettings,
    pub backend: Backend,
    pub manifest_key: String,
    pub artifact_key: String,
    pub artifact_sha256: String,
    pub current_key: String,
    pub files: usize,
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
}

impl Staged {
    /// How the database and the JobResult name this store's artifact.
    pub fn describe(&self) -> Value {
        json!({
            "storage": self.backend.describe(), "manifest": self.manifest_key, "artifact": self.artifact_key,
            "sha256": self.artifact_sha256, "current": self.current_key, "files": self.files,
            "uploaded_blobs": self.uploaded_blobs, "uploaded_bytes": self.uploaded_bytes,
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    openssl::sha::sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A deterministic tar.gz of the files (sorted paths, mode 0644, mtime 0): the same commit gives the same digest.
fn artifact(files: &[&StagedFile]) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    let mut sorted: Vec<&&StagedFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &file.path, file.bytes.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// The blob keys the store's live manifest for this repository lists: stored already, so a sync neither asks
/// the store about them nor uploads them again. Empty when there is no live manifest or it cannot be read (then
/// every blob is checked, as on a first sync).
async fn previous_blobs(backend: &Backend, current_key: &str) -> BTreeSet<String> {
    let read = async {
        let pointer: Value =
            serde_json::from_slice(&backend.get(current_key).await?.unwrap_or_default()).unwrap_or_default();
        let Some(manifest_key) = pointer["manifest"].as_str() else { return Ok(BTreeSet::new()) };
        let manifest: Value =
            serde_json::from_slice(&backend.get(manifest_key).await?.unwrap_or_default()).unwrap_or_default();
        let keys = manifest["files"].as_array().into_iter().flatten().filter_map(|f| f["key"].as_str());
        Ok::<_, StorageError>(keys.map(str::to_owned).collect())
    };
    read.await.unwrap_or_else(|err| {
        tracing::warn!(key = current_key, error = %err, "could not read the live manifest; checking every blob");
        BTreeSet::new()
    })
}

impl Storage {
    pub async fn new(settings: StorageSettings) -> Self {
        let client = match &settings.s3 {
            Some(s3) => Some(backend::s3_client(s3).await),
            None => None,
        };
        Self { settings, client }
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

    /// Uploads the new blobs, then a manifest and an artifact per store, for the files of each data type
    /// (`files` is data type identifier -> its files).
    pub async fn stage(
        &self,
        slug: &str,
        commit: &str,
        files: &BTreeMap<String, Vec<StagedFile>>,
    ) -> Result<Vec<Staged>, StorageError> {
        // Group the files by the store their data type uses.
        let mut by_store: Vec<(StoreSettings, Vec<&StagedFile>)> = Vec::new();
        for (data_type, list) in files {
            let store = self.settings.store_for(data_type).clone();
            match by_store.iter_mut().find(|(s, _)| *s == store) {
                Some((_, all)) => all.extend(list.iter()),
                None => by_store.push((store, list.iter().collect())),
            }
        }
        if by_store.is_empty() {
            by_store.push((self.settings.default.clone(), Vec::new()));
        }
        let mut staged = Vec::new();
        for (store, list) in by_store {
            let backend = self.backend(&store);
            let acl = store.default_acl.as_deref();
            let (mut uploaded_blobs, mut uploaded_bytes) = (0, 0);
            let mut manifest_files = Vec::new();
            let mut seen = BTreeSet::new();
            let mut blobs = Vec::new();
            let current_key = Self::key(&store, &format!("{}/{slug}/current.json", store.upload_to))?;
            let known = previous_blobs(&backend, &current_key).await;
            for file in &list {
                let key = Self::key(&store, &format!("{}/blobs/{}", store.upload_to, file.blob))?;
                if seen.insert(file.blob.clone()) && !known.contains(&key) {
                    blobs.push((key.clone(), file.bytes.clone()));
                }
                manifest_files.push(json!({
                    "path": file.path, "blob": file.blob, "size": file.bytes.len(), "sha256": sha256_hex(&file.bytes),
                    "key": key,
                }));
            }
            let (threshold, concurrency) = (self.settings.multipart_threshold, self.settings.upload_concurrency);
            for bytes in backend.put_absent(blobs, acl, threshold, concurrency).await? {
                uploaded_blobs += 1;
                uploaded_bytes += bytes;
            }
            let base = format!("{}/{slug}/{commit}", store.upload_to);
            let artifact_key = Self::key(&store, &format!("{base}/artifact.tar.gz"))?;
            let archive = {
                let list: Vec<StagedFile> = list.iter().map(|f| (*f).clone()).collect();
                tokio::task::spawn_blocking(move || artifact(&list.iter().collect::<Vec<_>>()))
                    .await
                    .map_err(|e| StorageError::Refused { what: "artifact".into(), message: e.to_string() })?
                    .map_err(|source| StorageError::Io { path: artifact_key.clone().into(), source })?
            };
            let artifact_sha256 = sha256_hex(&archive);
            backend.put(&artifact_key, archive, "application/gzip", acl, self.settings.multipart_threshold).await?;
            let manifest_key = Self::key(&store, &format!("{base}/manifest.json"))?;
            let manifest = json!({
                "repository": slug, "commit": commit, "files": manifest_files,
                "artifact": { "key": artifact_key, "sha256": artifact_sha256 },
            });
            let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            backend.put(&manifest_key, body, "application/json", acl, self.settings.multipart_threshold).await?;
            staged.push(Staged {
                files: list.len(),
                store,
                backend,
                manifest_key,
                artifact_key,
                artifact_sha256,
                current_key,
                uploaded_blobs,
                uploaded_bytes,
            });
        }
        Ok(staged)
    }

    /// The sync report, in the default store: `{location}/reports/{job_result_id}.json`.
    pub async fn put_report(&self, job_result_id: uuid::Uuid, report: &Value) -> Result<String, StorageError> {
        let store = &self.settings.default;
        let key = Self::key(store, &format!("reports/{job_result_id}.json"))?;
        let body = serde_json::to_vec_pretty(report).unwrap_or_default();
        self.backend(store)
            .put(&key, body, "application/json", store.default_acl.as_deref(), self.settings.multipart_threshold)
            .await?;
        Ok(key)
    }

    /// Writes each store's `current.json`. Returns what each held before, for [`Self::restore_pointers`].
    pub async fn point(
        &self,
        staged: &[Staged],
        slug: &str,
        commit: &str,
        job_result_id: uuid::Uuid,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut previous = Vec::new();
        for s in staged {
            previous.push(s.backend.get(&s.current_key).await?);
            let pointer = json!({
                "repository": slug, "commit": commit, "manifest": s.manifest_key, "artifact": s.artifact_key,
                "sha256": s.artifact_sha256, "job_result_id": job_result_id,
            });
            let body = serde_json::to_vec_pretty(&pointer).unwrap_or_default();
            s.backend.put(&s.current_key, body, "application/json", s.store.default_acl.as_deref(), u64::MAX).await?;
        }
        Ok(previous)
    }

    /// Puts the pointers back as they were (the database transaction that should have followed them failed).
    pub async fn restore_pointers(&self, staged: &[Staged], previous: Vec<Option<Vec<u8>>>) {
        for (s, before) in staged.iter().zip(previous) {
            let restored = match before {
                Some(body) => s.backend.put(&s.current_key, body, "application/json", None, u64::MAX).await,
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

    /// Removes every blob that no manifest references any more. Returns (blobs kept, blobs removed).
    pub async fn gc(&self) -> Result<(usize, usize), StorageError> {
        let (mut kept, mut removed) = (0, 0);
        for store in self.stores() {
            let backend = self.backend(&store);
            let root = format!("{}/", Self::key(&store, &store.upload_to)?);
            let blobs_prefix = format!("{}/", Self::key(&store, &format!("{}/blobs", store.upload_to))?);
            let mut referenced = BTreeSet::new();
            let keys = backend.list(&root).await?;
            for key in keys.iter().filter(|k| k.ends_with("/manifest.json") && !k.starts_with(&blobs_prefix)) {
                let Some(body) = backend.get(key).await? else { continue };
                let manifest: Value = serde_json::from_slice(&body).unwrap_or_default();
                for file in manifest["files"].as_array().into_iter().flatten() {
                    if let Some(k) = file["key"].as_str() {
                        referenced.insert(k.to_owned());
                    }
                }
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_deterministic() {
        let a = StagedFile { path: "b.txt".into(), blob: "1".into(), bytes: b"two".to_vec() };
        let b = StagedFile { path: "a.txt".into(), blob: "2".into(), bytes: b"one".to_vec() };
        let first = artifact(&[&a, &b]).unwrap();
        assert_eq!(sha256_hex(&first), sha256_hex(&artifact(&[&b, &a]).unwrap()));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(first.as_slice()));
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
    }
}
