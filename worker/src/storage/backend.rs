//! Where objects go: S3 (aws-sdk-s3) or a local directory, behind one small set of operations.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl};
use thiserror::Error;

use super::settings::{S3Settings, StorageSettings};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The server could not be reached or answered 5xx: may pass.
    #[error("storage unavailable ({what}): {message}")]
    Unavailable { what: String, message: String },
    /// Refused (credentials, permissions, a missing bucket): will not pass by retrying.
    #[error("storage refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("local storage error at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl StorageError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

fn sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(what: String, err: SdkError<E>) -> StorageError {
    let message = match &err {
        SdkError::ServiceError(e) => format!(
            "HTTP {} {} {} {}",
            e.raw().status().as_u16(),
            e.err().code().unwrap_or("error"),
            e.err().message().unwrap_or_default(),
            format!("{:?}", e.err()).chars().take(600).collect::<String>()
        ),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    let transient = match &err {
        SdkError::DispatchFailure(d) => !message.contains("credentials") || d.is_io() || d.is_timeout(),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(e) => e.raw().status().is_server_error(),
        _ => false,
    };
    if transient { StorageError::Unavailable { what, message } } else { StorageError::Refused { what, message } }
}

/// Blobs this large or larger are asked about before they are written (see [`Backend::put_blobs`]).
pub const ASK_ABOVE: u64 = 1 << 20;

/// One bucket (or folder) with its upload options.
#[derive(Debug, Clone)]
pub enum Backend {
    S3 { client: aws_sdk_s3::Client, bucket: String },
    Fs { dir: PathBuf },
}

/// Builds the S3 client: explicit keys when given, else a named profile, else the standard AWS chain
/// (environment, profile, web identity for Kubernetes service accounts, instance metadata).
pub async fn s3_client(s3: &S3Settings) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &s3.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    } else if s3.endpoint_url.is_some() {
        // A custom endpoint still signs with a region; us-east-1 is what S3-compatible servers expect by default.
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(profile) = &s3.session_profile {
        loader = loader.profile_name(profile);
    }
    if let (Some(key), Some(secret)) = (&s3.access_key, &s3.secret_key) {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            key,
            secret,
            s3.security_token.clone(),
            None,
            "gitfleet-settings",
        ));
    }
    loader = loader.retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(s3.max_attempts));
    // Each attempt, and each operation with its retries, is bounded: a hung endpoint becomes a transient fault.
    let attempts = s3.timeout * s3.max_attempts;
    loader = loader.timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(s3.timeout.min(std::time::Duration::from_secs(10)))
            .operation_attempt_timeout(s3.timeout)
            .operation_timeout(attempts)
            .build(),
    );
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(s3.path_style);
    if let Some(endpoint) = &s3.endpoint_url {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

impl Backend {
    pub fn for_bucket(settings: &StorageSettings, client: Option<&aws_sdk_s3::Client>, bucket: Option<&str>) -> Self {
        match (client, bucket) {
            (Some(client), Some(bucket)) => Self::S3 { client: client.clone(), bucket: bucket.to_owned() },
            // The filesystem backend keeps one folder per bucket, the default store's being `default`.
            (_, Some(bucket)) => Self::Fs { dir: settings.root.join(bucket) },
            (_, None) => Self::Fs { dir: settings.root.join("default") },
        }
    }

    /// `s3://bucket` or the directory, for messages and results.
    pub fn describe(&self) -> String {
        match self {
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
            Self::Fs { dir } => dir.display().to_string(),
        }
    }

    fn path(dir: &Path, key: &str) -> PathBuf {
        dir.join(key)
    }

    /// The store's kind, as the metrics name it.
    fn kind(&self) -> &'static str {
        match self {
            Self::S3 { .. } => "s3",
            Self::Fs { .. } => "filesystem",
        }
    }

    /// Counts one request of `operation` and its outcome.
    fn counted<T>(&self, operation: &'static str, result: Result<T, StorageError>) -> Result<T, StorageError> {
        crate::metrics::storage_request(self.kind(), operation, result.is_ok());
        result
    }

    /// Whether the object exists (a HEAD request).
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.counted("head", self.head(key).await)
    }

    /// The object's bytes, `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let read = self.counted("get", self.read(key).await)?;
        if let Some(bytes) = &read {
            crate::metrics::storage_bytes(self.kind(), "read", bytes.len() as u64);
        }
        Ok(read)
    }

    /// Writes an object. Over `multipart_threshold` bytes, S3 gets a multipart upload in parts of that size.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        acl: Option<&str>,
        multipart_threshold: u64,
    ) -> Result<(), StorageError> {
        let size = body.len() as u64;
        self.counted("put", self.write(key, body, content_type, acl, multipart_threshold).await)?;
        crate::metrics::storage_bytes(self.kind(), "written", size);
        Ok(())
    }

    /// Every key under `prefix` with its size in bytes.
    pub async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        self.counted("list", self.listing(prefix).await)
    }

    /// Removes an object; a missing one is not an error (as django-storages' `delete`).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.counted("delete", self.remove(key).await)
    }

    async fn head(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            Self::S3 { client, bucket } => match client.head_object().bucket(bucket).key(key).send().await {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(e)) if e.err().is_not_found() || e.raw().status().as_u16() == 404 => {
                    Ok(false)
                }
                Err(err) => Err(sdk(format!("HEAD {key}"), err)),
            },
            Self::Fs { dir } => {
                let path = Self::path(dir, key);
                Ok(blocking(move || path.is_file()).await)
            }
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Self::S3 { client, bucket } => match client.get_object().bucket(bucket).key(key).send().await {
                Ok(out) => {
                    let bytes = out.body.collect().await.map_err(|e| StorageError::Unavailable {
                        what: format!("GET {key}"),
                        message: e.to_string(),
                    })?;
                    Ok(Some(bytes.into_bytes().to_vec()))
                }
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() || e.raw().status().as_u16() == 404 => {
                    Ok(None)
                }
                Err(err) => Err(sdk(format!("GET {key}"), err)),
            },
            Self::Fs { dir } => {
                let path = Self::path(dir, key);
                let read = {
                    let path = path.clone();
                    blocking(move || std::fs::read(path)).await
                };
                match read {
                    Ok(bytes) => Ok(Some(bytes)),
                    // A folder where an object would be is no object (writing one there fails).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound || path.is_dir() => Ok(None),
                    Err(source) => Err(StorageError::Io { path, source }),
                }
            }
        }
    }

    /// Writes content-addressed blobs (the same key is the same bytes), up to `concurrency` at a time. A blob
    /// under [`ASK_ABOVE`] bytes is written without asking whether the store has it: one PUT costs what one HEAD
    /// does, and writing the same bytes again changes nothing. A larger one is asked about first. The filesystem
    /// store skips files that exist, in one trip off the async runtime. Returns the sizes of the blobs written.
    pub async fn put_blobs(
        &self,
        objects: Vec<(String, Vec<u8>)>,
        acl: Option<&str>,
        multipart_threshold: u64,
        concurrency: usize,
    ) -> Result<Vec<u64>, StorageError> {
        match self {
            Self::S3 { .. } => {
                use futures_util::stream::{self, StreamExt, TryStreamExt};
                stream::iter(objects)
                    .map(|(key, body)| async move {
                        if body.len() as u64 >= ASK_ABOVE && self.exists(&key).await? {
                            return Ok(None);
                        }
                        let size = body.len() as u64;
                        self.put(&key, body, "application/octet-stream", acl, multipart_threshold).await?;
                        Ok::<_, StorageError>(Some(size))
                    })
                    .buffer_unordered(concurrency.max(1))
                    .try_filter_map(|written| async move { Ok(written) })
                    .try_collect()
                    .await
            }
            Self::Fs { dir } => {
                let dir = dir.clone();
                let threads = concurrency.clamp(1, 4);
                blocking(move || {
                    let folders: std::collections::BTreeSet<PathBuf> = objects
                        .iter()
                        .filter_map(|(key, _)| Self::path(&dir, key).parent().map(Path::to_owned))
                        .collect();
                    for folder in folders {
                        std::fs::create_dir_all(&folder).map_err(|source| StorageError::Io { path: folder, source })?;
                    }
                    // A few threads: the cost is system calls per file (a check, a write, a rename), not bytes.
                    let share = objects.len().div_ceil(threads).max(1);
                    std::thread::scope(|scope| {
                        let writers: Vec<_> = objects
                            .chunks(share)
                            .map(|chunk| {
                                let dir = &dir;
                                scope.spawn(move || {
                                    let mut written = Vec::new();
                                    for (key, body) in chunk {
                                        if write_blob(&Self::path(dir, key), body)? {
                                            written.push(body.len() as u64);
                                        }
                                    }
                                    Ok::<_, StorageError>(written)
                                })
                            })
                            .collect();
                        let mut written = Vec::new();
                        for writer in writers {
                            match writer.join() {
                                Ok(sizes) => written.extend(sizes?),
                                Err(panic) => std::panic::resume_unwind(panic),
                            }
                        }
                        for size in &written {
                            crate::metrics::storage_request("filesystem", "put", true);
                            crate::metrics::storage_bytes("filesystem", "written", *size);
                        }
                        Ok(written)
                    })
                })
                .await
            }
        }
    }

    /// Writes an object from a local file, reading at most one part (`part_size`) of it into memory at a time.
    pub async fn put_file(
        &self,
        key: &str,
        file: &Path,
        content_type: &str,
        acl: Option<&str>,
        part_size: u64,
    ) -> Result<(), StorageError> {
        let io = |source| StorageError::Io { path: file.to_owned(), source };
        let size = std::fs::metadata(file).map_err(io)?.len();
        match self {
            Self::S3 { client, bucket } if size > part_size => {
                let mut source = std::fs::File::open(file).map_err(io)?;
                let part = usize::try_from(part_size).unwrap_or(usize::MAX);
                let next = move || -> std::io::Result<Option<Vec<u8>>> {
                    use std::io::Read as _;
                    let mut chunk = Vec::with_capacity(part);
                    (&mut source).take(part as u64).read_to_end(&mut chunk)?;
                    Ok((!chunk.is_empty()).then_some(chunk))
                };
                Self::put_parts(client, bucket, key, next, content_type, acl).await
            }
            Self::S3 { .. } => {
                let body = std::fs::read(file).map_err(io)?;
                self.put(key, body, content_type, acl, u64::MAX).await
            }
            Self::Fs { dir } => {
                let (from, to) = (file.to_owned(), Self::path(dir, key));
                blocking(move || {
                    let io = |source| StorageError::Io { path: to.clone(), source };
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    let tmp = to.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
                    std::fs::copy(&from, &tmp).map_err(io)?;
                    std::fs::rename(&tmp, &to).map_err(io)
                })
                .await
            }
        }
    }

    /// [`Backend::put`], uncounted.
    async fn write(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        acl: Option<&str>,
        multipart_threshold: u64,
    ) -> Result<(), StorageError> {
        match self {
            Self::S3 { client, bucket } => {
                if body.len() as u64 > multipart_threshold {
                    let size = usize::try_from(multipart_threshold).unwrap_or(usize::MAX);
                    let mut parts = body.chunks(size).map(<[u8]>::to_vec);
                    return Self::put_parts(client, bucket, key, move || Ok(parts.next()), content_type, acl).await;
                }
                let mut request =
                    client.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).content_type(content_type);
                if let Some(acl) = acl {
                    request = request.acl(ObjectCannedAcl::from(acl));
                }
                request.send().await.map_err(|e| sdk(format!("PUT {key}"), e))?;
                Ok(())
            }
            Self::Fs { dir } => {
                let path = Self::path(dir, key);
                blocking(move || write_file(&path, &body)).await
            }
        }
    }

    /// A multipart upload of the parts `next` gives, one in memory at a time; aborted if any step fails.
    async fn put_parts(
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        mut next: impl FnMut() -> std::io::Result<Option<Vec<u8>>>,
        content_type: &str,
        acl: Option<&str>,
    ) -> Result<(), StorageError> {
        let step = |name: &str| format!("multipart PUT {key} ({name})");
        let mut create = client.create_multipart_upload().bucket(bucket).key(key).content_type(content_type);
        if let Some(acl) = acl {
            create = create.acl(ObjectCannedAcl::from(acl));
        }
        let upload = create.send().await.map_err(|e| sdk(step("create"), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let mut unfinished = Unfinished(Some((client.clone(), bucket.to_owned(), key.to_owned(), upload_id.clone())));
        let mut parts = Vec::new();
        let result = async {
            let mut number = 0_i32;
            while let Some(chunk) = next().map_err(|source| StorageError::Io { path: PathBuf::from(key), source })? {
                number += 1;
                let part = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(|e| sdk(step("part"), e))?;
                parts.push(
                    CompletedPart::builder().set_e_tag(part.e_tag().map(str::to_owned)).part_number(number).build(),
                );
            }
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| sdk(step("complete"), e))?;
            Ok(())
        }
        .await;
        unfinished.0 = None;
        if result.is_err() {
            let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.list_sizes(prefix).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// [`Backend::list_sizes`], uncounted.
    async fn listing(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        match self {
            Self::S3 { client, bucket } => {
                let mut keys = Vec::new();
                let mut token = None;
                loop {
                    let page = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(|e| sdk(format!("LIST {prefix}"), e))?;
                    keys.extend(page.contents().iter().filter_map(|o| {
                        o.key().map(|k| (k.to_owned(), u64::try_from(o.size().unwrap_or(0)).unwrap_or(0)))
                    }));
                    token = page.next_continuation_token().map(str::to_owned);
                    if token.is_none() {
                        return Ok(keys);
                    }
                }
            }
            Self::Fs { dir } => {
                let (dir, prefix) = (dir.clone(), prefix.to_owned());
                Ok(blocking(move || {
                    let mut keys = Vec::new();
                    // Only the folder the prefix is in is walked, not the whole store.
                    let start = dir.join(prefix.rfind('/').map_or("", |end| &prefix[..end]));
                    walk(&dir, &start, &mut keys);
                    keys.retain(|k| k.starts_with(&prefix));
                    keys.sort();
                    keys.into_iter()
                        .map(|k| {
                            let size = std::fs::metadata(dir.join(&k)).map(|m| m.len()).unwrap_or(0);
                            (k, size)
                        })
                        .collect()
                })
                .await)
            }
        }
    }

    /// [`Backend::delete`], uncounted.
    async fn remove(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Self::S3 { client, bucket } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| sdk(format!("DELETE {key}"), e))?;
                Ok(())
            }
            Self::Fs { dir } => {
                let path = Self::path(dir, key);
                let removed = {
                    let path = path.clone();
                    blocking(move || std::fs::remove_file(path)).await
                };
                match removed {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(StorageError::Io { path, source }),
                }
            }
        }
    }
}

/// Writes a file aside and renames it into place, so a reader never sees half an object.
fn write_file(path: &Path, body: &[u8]) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StorageError::Io { path: path.to_owned(), source })?;
    }
    write_new(path, body)
}

/// A multipart upload under way: dropped before it completed or failed (its sync stopped it, say when the sync's
/// records failed while storage was staged beside them), it is aborted in the background, so that no parts are
/// left in the bucket.
struct Unfinished(Option<(aws_sdk_s3::Client, String, String, String)>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some((client, bucket, key, upload_id)) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let aborted = client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(upload_id).send().await;
            if let Err(err) = aborted {
                tracing::warn!(key = %key, error = %err, "could not abort a stopped multipart upload");
            }
        });
    }
}

/// Writes a content-addressed blob into a folder that exists, unless the store holds it; whether it wrote it. The
/// file is created in place (a third of the system calls of a write aside and a rename): nothing names a blob
/// until its manifest is written, after every blob it lists. A file of the wrong size (a write cut short by a
/// crash, or one under way in another worker) is replaced whole, by a write aside and a rename.
fn write_blob(path: &Path, body: &[u8]) -> Result<bool, StorageError> {
    use std::io::Write as _;
    let io = |source| StorageError::Io { path: path.to_owned(), source };
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut file) => {
            if let Err(err) = file.write_all(body) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(io(err));
            }
            Ok(true)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::metadata(path).map_err(io)?.len() == body.len() as u64 {
                return Ok(false);
            }
            write_new(path, body)?;
            Ok(true)
        }
        Err(err) => Err(io(err)),
    }
}

/// [`write_file`] into a folder that exists.
fn write_new(path: &Path, body: &[u8]) -> Result<(), StorageError> {
    let io = |source| StorageError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The filesystem store's file I/O, off the async runtime's threads (a slow disk must not stall other events).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let key = relative.to_string_lossy().into_owned();
            if !key.contains(".tmp-") {
                out.push(key);
            }
        }
    }
}
