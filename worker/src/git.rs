//! Bare mirrors under `GIT_ROOT` and the checkout algorithm of spec b.4, with git2.
//!
//! A mirror is a cache, never state: there is no work tree, no index and no `index.lock` to go stale. A new mirror
//! is fetched into a temporary directory and renamed into place, so a crash never leaves a half-written mirror at
//! the real path; a mirror that cannot be opened is removed and fetched again. Everything here blocks: call it from
//! `spawn_blocking`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{
    AutotagOption, Cred, CredentialType, FetchOptions, FetchPrune, ObjectType, Oid, RemoteCallbacks, Repository,
    RepositoryInitOptions, TreeWalkMode, TreeWalkResult,
};
use gitfleet_shared::repo::{Branch, RefError, check_ref};
use gitfleet_shared::tree::{Entry, EntryKind, RepoTree, is_safe_name};
use thiserror::Error;

use crate::git_tree;
use crate::known_hosts::{self, HostKeyPolicy};

const REMOTE: &str = "origin";
/// libgit2's `GIT_FETCH_DEPTH_UNSHALLOW`: fetch the whole history of a shallow mirror.
const UNSHALLOW: i32 = i32::MAX;
/// When a sync rewrites a mirror as one pack ([`Mirror::compact`]): past any of these.
#[derive(Debug, Clone, Copy)]
pub struct CompactAt {
    /// More packs than this. Every fetch of 100 objects or more adds a pack.
    pub packs: usize,
    /// More loose objects than this. A fetch of fewer objects adds them loose (see [`crate::git_unpack`]).
    pub loose_objects: usize,
    /// Loose objects of more bytes than this: a push into a folder of 100,000 files adds that folder's new tree
    /// object, 4.7 MB of it (a large object is written loose without deflating it, see `git_unpack`).
    pub loose_bytes: u64,
}

/// git's own thresholds for `git gc --auto` (`gc.autoPackLimit`, `gc.auto`), and 256 MiB of loose objects: about 55
/// pushes into a folder of 100,000 files, where the rewrite takes 3 s.
pub const COMPACT_AT: CompactAt = CompactAt { packs: 50, loose_objects: 6700, loose_bytes: 256 << 20 };

/// What a compaction replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub packs: usize,
    pub loose_objects: usize,
}
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"];

/// Why a fetch or checkout failed. `Display` is the message the user sees (spec b.4, b.12); `exc_type` names the
/// class Nautobot would have raised.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GitError {
    #[error("{0}")]
    InvalidRef(#[from] RefError),
    #[error("{0}")]
    BranchDoesNotExist(String),
    #[error("{0}")]
    NotOnBranch(String),
    #[error("{0}")]
    Command(String),
    #[error("{message}")]
    Git { message: String, class: git2::ErrorClass, code: git2::ErrorCode },
    #[error("{0}")]
    TooLarge(String),
    #[error("local mirror error at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl GitError {
    pub fn exc_type(&self) -> &'static str {
        match self {
            Self::InvalidRef(_) => "ValueError",
            Self::BranchDoesNotExist(_) => "BranchDoesNotExist",
            Self::NotOnBranch(_) => "RuntimeError",
            Self::Command(_) | Self::Git { .. } => "GitCommandError",
            Self::Io { .. } => "OSError",
            Self::TooLarge(_) => "MirrorTooLarge",
        }
    }

    /// Network and local I/O trouble may pass; a missing branch or a refused credential will not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Git { class, code, .. } => {
                matches!(class, git2::ErrorClass::Net | git2::ErrorClass::Os | git2::ErrorClass::Http)
                    && *code != git2::ErrorCode::Auth
                    && *code != git2::ErrorCode::Certificate
            }
            Self::Io { .. } => true,
            _ => false,
        }
    }
}

impl From<git2::Error> for GitError {
    fn from(err: git2::Error) -> Self {
        Self::Git { message: err.message().to_owned(), class: err.class(), code: err.code() }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io { path: path.to_owned(), source }
}

/// What the branch string turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
    Commit,
}

/// The outcome of a fetch and checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Full commit id.
    pub head: String,
    pub kind: RefKind,
    /// True when the mirror did not exist (or was unusable) and was fetched from scratch.
    pub cloned: bool,
}

/// The mirror of one repository: `GIT_ROOT/<slug>`.
#[derive(Debug, Clone)]
pub struct Mirror {
    root: PathBuf,
    slug: String,
    /// Largest a mirror may grow (and a single fetch may download), in bytes.
    max_bytes: u64,
    tls: TlsPolicy,
    host_keys: HostKeyPolicy,
    /// Fetch only the tips (depth 1) when the transport allows it, deepening when a ref needs more history.
    shallow: bool,
    /// The last [`Mirror::changes`] (old, new, changes), shared by the clones of this mirror: a sync's load and
    /// its storage stage diff the same two commits, and a large tree's diff is worth doing once.
    last_changes: Arc<Mutex<Option<ChangesMemo>>>,
    /// The sync's hold on this mirror in the worker's cache: shared by the clones, released with the last.
    lease: Option<Arc<crate::git_cache::Lease>>,
}

type ChangesMemo = (String, String, Vec<PathChange>);

/// How HTTPS server certificates are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// libgit2's own verification against the system's trust store.
    #[default]
    System,
    /// Only certificates issued by the CAs of this PEM bundle (and naming the host) are accepted.
    CaBundle(PathBuf),
    /// No verification (`GIT_SSL_NO_VERIFY=1`, as Nautobot documents for self-signed remotes).
    NoVerify,
}

impl Mirror {
    pub fn new(root: impl Into<PathBuf>, slug: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            slug: slug.into(),
            max_bytes: u64::MAX,
            tls: TlsPolicy::System,
            host_keys: HostKeyPolicy::KnownHosts(known_hosts::default_path()),
            shallow: true,
            last_changes: Arc::default(),
            lease: None,
        }
    }

    /// Holds the mirror in `cache` for as long as this value or a clone of it lives: it is not evicted meanwhile.
    pub fn leased_from(mut self, cache: &crate::git_cache::MirrorCache) -> Self {
        self.lease = Some(Arc::new(cache.lease(&self.slug)));
        self
    }

    pub fn with_host_keys(mut self, host_keys: HostKeyPolicy) -> Self {
        self.host_keys = host_keys;
        self
    }

    /// `false`: always fetch whole histories.
    pub fn with_shallow(mut self, shallow: bool) -> Self {
        self.shallow = shallow;
        self
    }

    /// The depth of a first fetch: 1 over the network transports, whole histories over file:// and local paths
    /// (libgit2's local transport cannot fetch shallow).
    fn first_depth(&self, url: &str) -> Option<i32> {
        let network = ["git://", "http://", "https://", "ssh://"].iter().any(|s| url.starts_with(s));
        (self.shallow && network).then_some(1)
    }

    pub fn with_tls(mut self, tls: TlsPolicy) -> Self {
        self.tls = tls;
        self
    }

    /// Caps the mirror's size: a fetch that would pass it is stopped, and a mirror over it is removed.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn too_large(&self, size: u64) -> GitError {
        GitError::TooLarge(format!(
            "the mirror of {} would be {size} bytes, over the limit of {} bytes (GITFLEET_MAX_MIRROR_BYTES)",
            self.slug, self.max_bytes
        ))
    }

    /// Fails (and removes the mirror) when it is over the size limit.
    fn check_size(&self) -> Result<(), GitError> {
        let size = dir_size(&self.path());
        if size > self.max_bytes {
            let _ = fs::remove_dir_all(self.path());
            return Err(self.too_large(size));
        }
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.root.join(&self.slug)
    }

    /// Fetches `url` into the mirror (creating or repairing it) and resolves `branch` (spec b.4).
    pub fn fetch_and_checkout(&self, url: &str, branch: &Branch) -> Result<Checkout, GitError> {
        self.fetch_and_checkout_as(url, branch, None)
    }

    /// Whether the mirror holds only part of its history.
    pub fn is_shallow(&self) -> bool {
        Repository::open_bare(self.path()).is_ok_and(|r| r.is_shallow())
    }

    /// The same, authenticating through git2's credential callback (never through the URL).
    pub fn fetch_and_checkout_as(
        &self,
        url: &str,
        branch: &Branch,
        credentials: Option<&Credentials>,
    ) -> Result<Checkout, GitError> {
        let (repo, cloned) = self.open_or_clone(url, credentials)?;
        let (head, kind) = match resolve(&repo, branch, None) {
            // A commit older than the fetched tips (a branch naming an old commit) needs the history the shallow
            // fetch left out: fetch it and resolve again.
            Err(err @ (GitError::NotOnBranch(_) | GitError::Command(_))) if repo.is_shallow() => {
                tracing::info!(slug = %self.slug, reason = %err, "deepening a shallow mirror to its full history");
                self.fetch(&repo, url, credentials, Some(UNSHALLOW)).map_err(|e| self.size_error(e))?;
                self.check_size()?;
                resolve(&repo, branch, None)?
            }
            other => other?,
        };
        Ok(Checkout { head, kind, cloned })
    }

    /// The commit `branch` names on the remote now, from its ref advertisement alone (as `git ls-remote`): a branch,
    /// else a tag (peeled to its commit), else a commit id as written (a pinned commit does not move). Nothing is
    /// fetched and no mirror is needed; the worker's credentials, host-key and certificate checks apply.
    pub fn remote_tip(
        &self,
        url: &str,
        branch: &Branch,
        credentials: Option<&Credentials>,
    ) -> Result<String, GitError> {
        crate::git_protocol::register();
        let host_key_problem = std::cell::RefCell::new(None::<String>);
        let mut remote = git2::Remote::create_detached(url)?;
        let callbacks = self.callbacks(url, credentials, &host_key_problem);
        let connected = remote.connect_auth(git2::Direction::Fetch, Some(callbacks), None);
        let connection = match (connected, host_key_problem.borrow_mut().take()) {
            (Ok(connection), _) => connection,
            (Err(err), Some(problem)) => {
                return Err(GitError::Git { message: problem, class: err.class(), code: err.code() });
            }
            (Err(err), None) => return Err(err.into()),
        };
        let b = branch.as_str();
        let (head, tag, peeled) = (format!("refs/heads/{b}"), format!("refs/tags/{b}"), format!("refs/tags/{b}^{{}}"));
        let mut found = (None, None, None);
        for advertised in connection.list()? {
            let id = advertised.oid().to_string();
            match advertised.name() {
                name if name == head => found.0 = Some(id),
                name if name == peeled => found.1 = Some(id),
                name if name == tag => found.2 = Some(id),
                _ => {}
            }
        }
        if let Some(tip) = found.0.or(found.1).or(found.2) {
            return Ok(tip);
        }
        match gitfleet_shared::repo::CommitId::parse(b.to_owned()) {
            Ok(commit) => Ok(commit.as_str().to_owned()),
            Err(_) => Err(GitError::BranchDoesNotExist(format!("The remote has no branch or tag named \"{b}\"."))),
        }
    }

    /// The tree of `commit` in memory, for the loaders: blobs with their ids, symbolic links and submodules as
    /// entries only, and files over `max_file_bytes` as oversized entries that are never read.
    pub fn read_tree(&self, commit: &str, max_file_bytes: usize) -> Result<RepoTree, GitError> {
        self.read_tree_deferring(commit, max_file_bytes, None)
    }

    /// As [`Mirror::read_tree`], but the entries under the folder `defer` other than folders (files, links,
    /// submodules) are left out: they are listed a folder at a time with [`Blobs::entries`] and the files read a
    /// batch at a time with [`Blobs::add_to`], so a full load of 100,000 config context files never holds them,
    /// nor a list of them.
    pub fn read_tree_deferring(
        &self,
        commit: &str,
        max_file_bytes: usize,
        defer: Option<&str>,
    ) -> Result<RepoTree, GitError> {
        let repo = Repository::open_bare(self.path())?;
        let commit = repo.find_commit(Oid::from_str(commit)?)?;
        let mut out = RepoTree::new();
        let mut failure = None;
        let walked = commit.tree()?.walk(TreeWalkMode::PreOrder, |root, entry| {
            let folder = entry.kind() == Some(ObjectType::Tree);
            if !folder && defer.is_some_and(|d| root.strip_prefix(d).is_some_and(|r| r.starts_with('/'))) {
                return TreeWalkResult::Ok;
            }
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{root}{name}");
            let added = match entry.kind() {
                Some(ObjectType::Tree) => out.add_dir(&path),
                Some(ObjectType::Commit) => out.add_submodule(&path),
                Some(ObjectType::Blob) if entry.filemode() == 0o120_000 => out.add_symlink(&path),
                Some(ObjectType::Blob) => match repo.find_blob(entry.id()) {
                    Ok(blob) if blob.size() > max_file_bytes => out.add_oversized(&path, blob.size(), max_file_bytes),
                    Ok(blob) => out.add_file(&path, blob.content().to_vec(), Some(entry.id().to_string())),
                    Err(err) => {
                        failure = Some(GitError::from(err));
                        return TreeWalkResult::Abort;
                    }
                },
                _ => Ok(()),
            };
            if let Err(err) = added {
                // A path no loader may read (it cannot come from git, but the tree refuses it anyway).
                tracing::warn!(path = %path, error = %err, "skipping an unsafe path");
                return TreeWalkResult::Skip;
            }
            TreeWalkResult::Ok
        });
        // An aborted walk reports only "callback returned -7": the blob's own error says what went wrong.
        match (failure, walked) {
            (Some(err), _) => Err(err),
            (None, Err(err)) => Err(err.into()),
            (None, Ok(())) => Ok(out),
        }
    }

    /// The tree of `commit` with only what some loaders need: every entry of the root (files unread), everything
    /// under the paths in `prefixes` (as [`Mirror::read_tree`] reads it), and the files in `files` (absent ones
    /// skipped), read by the blob id `known` gives (`None`: absent) when it has the path, else found in their
    /// folder. Other folders are not walked at all.
    pub fn read_parts(
        &self,
        commit: &str,
        prefixes: &[String],
        files: &[String],
        known: &std::collections::BTreeMap<String, Option<String>>,
        max_file_bytes: usize,
    ) -> Result<RepoTree, GitError> {
        if prefixes.iter().any(String::is_empty) {
            return self.read_tree(commit, max_file_bytes);
        }
        let repo = Repository::open_bare(self.path())?;
        let tree = repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        let mut out = RepoTree::new();
        let mut failure = None;
        let within = |path: &str| prefixes.iter().any(|p| path == p || path.starts_with(&format!("{p}/")));
        let leads = |path: &str| prefixes.iter().any(|p| p.starts_with(&format!("{path}/")));
        let walked = tree.walk(TreeWalkMode::PreOrder, |root, entry| {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{root}{name}");
            let wanted = within(&path);
            let added = match entry.kind() {
                Some(ObjectType::Tree) if wanted || root.is_empty() || leads(&path) => out.add_dir(&path),
                Some(ObjectType::Tree) => return TreeWalkResult::Skip,
                Some(ObjectType::Commit) => out.add_submodule(&path),
                Some(ObjectType::Blob) if entry.filemode() == 0o120_000 => out.add_symlink(&path),
                Some(ObjectType::Blob) if !wanted => Ok(()),
                Some(ObjectType::Blob) => match add_blob(&repo, &mut out, &path, entry.id(), max_file_bytes) {
                    Ok(added) => added,
                    Err(err) => {
                        failure = Some(err);
                        return TreeWalkResult::Abort;
                    }
                },
                _ => Ok(()),
            };
            if let Err(err) = added {
                tracing::warn!(path = %path, error = %err, "skipping an unsafe path");
                return TreeWalkResult::Skip;
            }
            // A folder that only leads to a wanted one: walk into it, but add nothing else of it.
            if entry.kind() == Some(ObjectType::Tree) && !wanted && !leads(&path) {
                return TreeWalkResult::Skip;
            }
            TreeWalkResult::Ok
        });
        match (failure, walked) {
            (Some(err), _) => return Err(err),
            (None, Err(err)) => return Err(err.into()),
            (None, Ok(())) => {}
        }
        // Each folder is opened once for all its files (a folder of 100,000 files is a 4 MB object to inflate).
        let mut folders: std::collections::HashMap<&str, Option<git2::Tree<'_>>> = std::collections::HashMap::new();
        for path in files {
            let id = match known.get(path) {
                Some(known) => match known.as_deref().map(Oid::from_str) {
                    Some(id) => id?,
                    None => continue,
                },
                None => {
                    let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
                    let folder_tree = folders.entry(folder).or_insert_with(|| {
                        if folder.is_empty() {
                            return Some(tree.clone());
                        }
                        let entry = tree.get_path(Path::new(folder)).ok()?;
                        repo.find_tree(entry.id()).ok()
                    });
                    let Some(entry) = folder_tree.as_ref().and_then(|t| t.get_name(name)) else { continue };
                    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120_000 {
                        continue;
                    }
                    entry.id()
                }
            };
            if let Err(err) = add_blob(&repo, &mut out, path, id, max_file_bytes)? {
                tracing::warn!(path = %path, error = %err, "skipping an unsafe path");
            }
        }
        Ok(out)
    }

    /// The paths that differ between two commits, with their blob id and mode on each side (absent on the side
    /// where the path does not exist). A rename is a deletion and an addition; a file that became a folder (or a
    /// link) shows its old and new paths.
    pub fn changes(&self, old: &str, new: &str) -> Result<Vec<PathChange>, GitError> {
        // Held while the trees are diffed: the load and storage, which ask at once, diff them once.
        let mut memo = self.last_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((o, n, changes)) = memo.as_ref()
            && o == old
            && n == new
        {
            return Ok(changes.clone());
        }
        let changes = self.diff_trees(old, new)?;
        *memo = Some((old.to_owned(), new.to_owned(), changes.clone()));
        Ok(changes)
    }

    fn diff_trees(&self, old: &str, new: &str) -> Result<Vec<PathChange>, GitError> {
        let repo = Repository::open_bare(self.path())?;
        let odb = repo.odb()?;
        let old_tree = git_tree::read(&odb, repo.find_commit(Oid::from_str(old)?)?.tree_id())?;
        let new_tree = git_tree::read(&odb, repo.find_commit(Oid::from_str(new)?)?.tree_id())?;
        let mut out = Vec::new();
        diff_tree(&odb, "", Some(&old_tree), Some(&new_tree), &mut out)?;
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Every regular file under `folder` at `commit` with its blob id, unread, for storage. Symbolic links and
    /// submodules are not files; a missing folder gives nothing.
    pub fn list_files(&self, commit: &str, folder: &str) -> Result<Vec<(String, String)>, GitError> {
        let repo = Repository::open_bare(self.path())?;
        let tree = repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        let Ok(entry) = tree.get_path(Path::new(folder)) else { return Ok(Vec::new()) };
        let Ok(subtree) = repo.find_tree(entry.id()) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        subtree.walk(TreeWalkMode::PreOrder, |root, entry| {
            if entry.kind() == Some(ObjectType::Blob) && entry.filemode() != 0o120_000 {
                let path = format!("{folder}/{root}{}", String::from_utf8_lossy(entry.name_bytes()));
                out.push((path, entry.id().to_string()));
            }
            TreeWalkResult::Ok
        })?;
        Ok(out)
    }

    /// Every regular file under `folders` at `commit` with its blob id, listed whole and sorted by path: for trees
    /// whose names [`Mirror::walk_files`] cannot hand on in order.
    pub fn list_sorted(&self, commit: &str, folders: &[String]) -> Result<Vec<(String, String)>, GitError> {
        let mut all = Vec::new();
        for folder in folders {
            all.extend(self.list_files(commit, folder)?);
        }
        all.sort();
        Ok(all)
    }

    /// Every regular file under `folders` at `commit` with its blob id, in path order, handed to `each` a chunk of
    /// at most `chunk` files at a time while the trees are walked: a folder's tree is held while its files are
    /// handed on, never the whole listing. `each` returning false stops the walk. Returns false when the paths did
    /// not come in order (a name that is not UTF-8, read with replacement characters, can sort elsewhere): the
    /// caller lists them with [`Mirror::list_sorted`] instead.
    pub fn walk_files(
        &self,
        commit: &str,
        folders: &[String],
        chunk: usize,
        mut each: impl FnMut(Vec<(String, String)>) -> bool,
    ) -> Result<bool, GitError> {
        let repo = Repository::open_bare(self.path())?;
        let root = repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        let mut folders: Vec<&String> = folders.iter().collect();
        folders.sort();
        folders.dedup();
        let (mut batch, mut last) = (Vec::new(), None::<String>);
        for folder in folders {
            let Ok(entry) = root.get_path(Path::new(folder)) else { continue };
            let Ok(tree) = repo.find_tree(entry.id()) else { continue };
            // Depth first, each tree's entries in git's order (a folder sorts as its name and a `/`): the paths
            // come sorted.
            let mut stack = vec![(format!("{folder}/"), tree, 0_usize)];
            while let Some((prefix, tree, next)) = stack.last_mut() {
                let Some((path, id, kind, mode)) = tree.get(*next).map(|entry| {
                    let path = format!("{prefix}{}", String::from_utf8_lossy(entry.name_bytes()));
                    (path, entry.id(), entry.kind(), entry.filemode())
                }) else {
                    stack.pop();
                    continue;
                };
                *next += 1;
                match kind {
                    Some(ObjectType::Tree) => {
                        let sub = repo.find_tree(id)?;
                        stack.push((format!("{path}/"), sub, 0));
                    }
                    Some(ObjectType::Blob) if mode != 0o120_000 => {
                        if last.as_ref().is_some_and(|last| *last >= path) {
                            return Ok(false);
                        }
                        last = Some(path.clone());
                        batch.push((path, id.to_string()));
                        if batch.len() >= chunk.max(1) && !each(std::mem::take(&mut batch)) {
                            return Ok(true);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !batch.is_empty() {
            each(batch);
        }
        Ok(true)
    }

    /// Reads blobs by id, the object database opened once for all of them.
    pub fn blobs(&self) -> Result<Blobs, GitError> {
        Ok(Blobs(Repository::open_bare(self.path())?))
    }

    /// File changes from `old` (None: an empty tree) to `new`, worded as Nautobot's dry-run words them:
    /// `Addition`, `Deletion`, `Modification`, `Renaming`, `File Type Changed`, ... (spec b.11).
    pub fn diff(&self, old: Option<&str>, new: &str) -> Result<Vec<(String, String)>, GitError> {
        let repo = Repository::open_bare(self.path())?;
        let new_tree = repo.find_commit(Oid::from_str(new)?)?.tree()?;
        let old_tree = match old {
            Some(old) => Some(repo.find_commit(Oid::from_str(old)?)?.tree()?),
            None => None,
        };
        let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)?;
        let mut out = Vec::new();
        for delta in diff.deltas() {
            let status = match delta.status() {
                git2::Delta::Added => "Addition",
                git2::Delta::Deleted => "Deletion",
                git2::Delta::Modified => "Modification",
                git2::Delta::Copied => "Copy",
                git2::Delta::Renamed => "Renaming",
                git2::Delta::Typechange => "File Type Changed",
                git2::Delta::Conflicted => "File Unmerged",
                _ => "None",
            };
            let file = if delta.status() == git2::Delta::Deleted { delta.old_file() } else { delta.new_file() };
            let path = file.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((status.to_owned(), path));
        }
        Ok(out)
    }

    /// Whether the mirror holds this commit.
    pub fn has_commit(&self, commit: &str) -> bool {
        Repository::open_bare(self.path())
            .ok()
            .and_then(|r| Oid::from_str(commit).ok().map(|oid| r.find_commit(oid).is_ok()))
            .unwrap_or(false)
    }

    /// Removes the mirror. Returns false if there was none.
    pub fn remove(&self) -> Result<bool, GitError> {
        let path = self.path();
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn pack_dir(&self) -> PathBuf {
        self.path().join("objects").join("pack")
    }

    /// The mirror's packs (their `.pack` files), those marked `.keep` aside.
    pub fn packs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.pack_dir()) else { return Vec::new() };
        let mut packs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pack") && !p.with_extension("keep").exists())
            .collect();
        packs.sort();
        packs
    }

    /// The mirror's loose objects (the files of `objects/xx/`), with their sizes.
    pub fn loose_objects(&self) -> Vec<(PathBuf, u64)> {
        let hex = |name: &std::ffi::OsStr, len: usize| {
            name.len() == len && name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let Ok(dirs) = fs::read_dir(self.path().join("objects")) else { return Vec::new() };
        let mut out = Vec::new();
        for dir in dirs.flatten().filter(|d| hex(&d.file_name(), 2)) {
            let Ok(files) = fs::read_dir(dir.path()) else { continue };
            for file in files.flatten().filter(|f| hex(&f.file_name(), 38)) {
                out.push((file.path(), file.metadata().map_or(0, |m| m.len())));
            }
        }
        out
    }

    /// Rewrites what the mirror's refs reach as one pack and removes the packs and loose objects it held, once it
    /// holds more of either than `at` allows: a mirror's size then follows its repository, not the number of
    /// fetches it took. Objects no ref reaches (history a force-push left behind) go with the old packs; a sync that
    /// asks for one fetches it again. The new pack is in place before any old one goes, and an old one goes index
    /// first, so the objects stay readable throughout; still, nothing may read the mirror meanwhile: the sync runs
    /// this under the repository's lock, before its fetch. Returns what it replaced (None: nothing was due).
    pub fn compact(&self, at: &CompactAt) -> Result<Option<Compacted>, GitError> {
        let old = self.packs();
        let loose = self.loose_objects();
        let loose_bytes: u64 = loose.iter().map(|(_, size)| size).sum();
        if old.len() <= at.packs && loose.len() <= at.loose_objects && loose_bytes <= at.loose_bytes {
            return Ok(None);
        }
        let repo = Repository::open_bare(self.path())?;
        // What the rewrite may hold at once, which libgit2 reads from the repository's configuration: 64 MiB of
        // objects in its delta window and 16 MiB of cached deltas, and no delta for an object over 16 MiB (libgit2
        // takes that threshold from `pack.deltaCacheSize` too). Its own defaults allow 256 MiB of deltas and an
        // unbounded window: a repository of large files would take the worker's memory.
        let mut config = repo.config()?;
        config.set_i64("pack.windowMemory", 64 << 20)?;
        config.set_i64("pack.deltaCacheSize", 16 << 20)?;
        let mut builder = repo.packbuilder()?;
        builder.set_threads(1);
        let mut walk = repo.revwalk()?;
        for reference in repo.references()? {
            let Some(target) = reference?.target() else { continue }; // a symbolic ref names one listed here
            // What the ref names as it is (an annotated tag and its target, a commit and its tree); the history
            // behind a commit through the walk, which stops where a shallow mirror's history does.
            builder.insert_recursive(target, None)?;
            if let Ok(commit) = repo.find_object(target, None)?.peel(ObjectType::Commit) {
                walk.push(commit.id())?;
            }
        }
        builder.insert_walk(&mut walk)?;
        let dir = self.pack_dir();
        builder.write(&dir, 0o444)?;
        let kept = builder.name()?.map(|name| dir.join(format!("pack-{name}.pack")));
        let remove = |file: &Path| match fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(file)(e)),
            _ => Ok(()),
        };
        let mut replaced = 0;
        for pack in old.iter().filter(|p| Some(*p) != kept.as_ref()) {
            for ext in ["idx", "pack", "rev", "bitmap", "mtimes", "promisor"] {
                remove(&pack.with_extension(ext))?;
            }
            replaced += 1;
        }
        for (file, _) in &loose {
            remove(file)?;
        }
        for dir in loose.iter().filter_map(|(file, _)| file.parent()) {
            let _ = fs::remove_dir(dir); // once empty; another name may still hold a file libgit2 left behind
        }
        Ok(Some(Compacted { packs: replaced, loose_objects: loose.len() }))
    }

    fn open_or_clone(&self, url: &str, credentials: Option<&Credentials>) -> Result<(Repository, bool), GitError> {
        let path = self.path();
        if path.exists() {
            match Repository::open_bare(&path) {
                Ok(repo) => {
                    crate::git_unpack::install(&repo)?;
                    if repo.find_remote(REMOTE).ok().and_then(|r| r.url().ok().map(str::to_owned)).as_deref()
                        != Some(url)
                    {
                        // Picks up a changed remote_url (spec b.3 step 5).
                        repo.remote_set_url(REMOTE, url)?;
                    }
                    // A shallow mirror stays shallow (only the new tips are fetched); a full one fetches what is new.
                    let depth = if repo.is_shallow() { self.first_depth(url) } else { None };
                    self.fetch(&repo, url, credentials, depth).map_err(|e| self.size_error(e))?;
                    self.check_size()?;
                    return Ok((repo, false));
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "unusable mirror, fetching it again");
                    fs::remove_dir_all(&path).map_err(io(&path))?;
                }
            }
        }
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let tmp = self.root.join(format!(".tmp-{}-{}", self.slug, uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut opts = RepositoryInitOptions::new();
            opts.bare(true).no_reinit(true);
            let repo = Repository::init_opts(&tmp, &opts)?;
            crate::git_unpack::install(&repo)?;
            repo.config()?.set_bool("gc.autoDetach", false)?;
            repo.remote(REMOTE, url)?;
            self.fetch(&repo, url, credentials, self.first_depth(url)).map_err(|e| self.size_error(e))?;
            Ok::<_, GitError>(())
        })();
        if let Err(err) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(err);
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.check_size()?;
        Ok((Repository::open_bare(&path)?, true))
    }
}

/// The object database of a mirror, for reading blobs one at a time (see [`Mirror::blobs`]).
pub struct Blobs(Repository);

impl Blobs {
    pub fn read(&self, id: &str) -> Result<Vec<u8>, GitError> {
        Ok(self.0.find_blob(Oid::from_str(id)?)?.content().to_vec())
    }

    /// Visits the entries of the folder `dir` of `commit` as [`RepoTree::list`] orders them (by name; git orders a
    /// folder as if its name ended in `/`), with blob ids, until `visit` returns false; returns whether every entry
    /// was visited. Nothing is collected but the names of the folder's subfolders: the folder's own tree object is
    /// the largest thing held, however many files it has. An absent folder, or a path that is no folder, has no
    /// entries; a name a tree refuses is skipped, as [`Mirror::read_tree`] skips it.
    pub fn entries(
        &self,
        commit: &str,
        dir: &str,
        visit: &mut dyn FnMut(Entry, Option<String>) -> bool,
    ) -> Result<bool, GitError> {
        let root = self.0.find_commit(Oid::from_str(commit)?)?.tree()?;
        let folder = if dir.is_empty() {
            root.id()
        } else {
            match root.get_path(Path::new(dir)) {
                Ok(entry) if entry.kind() == Some(ObjectType::Tree) => entry.id(),
                Ok(_) => return Ok(true),
                Err(err) if err.code() == git2::ErrorCode::NotFound => return Ok(true),
                Err(err) => return Err(err.into()),
            }
        };
        // The folder's tree object as stored (kept in memory when large, for the next sync's comparison).
        let odb = self.0.odb()?;
        let folder = git_tree::read(&odb, folder)?;
        let name = |e: &git_tree::Entry<'_>| String::from_utf8_lossy(e.name).into_owned();
        let mut dirs = Vec::new();
        for e in git_tree::entries(&folder, 0) {
            let e = e?;
            if e.is_tree() {
                dirs.push(name(&e));
            }
        }
        dirs.sort_unstable();
        let mut dirs = dirs.into_iter().filter(|d| is_safe_name(d)).peekable();
        let dir_entry = |name| Entry { name, kind: EntryKind::Dir };
        for e in git_tree::entries(&folder, 0) {
            let e = e?;
            if e.is_tree() {
                continue;
            }
            let name = name(&e);
            if !is_safe_name(&name) {
                continue;
            }
            while let Some(d) = dirs.next_if(|d| *d < name) {
                if !visit(dir_entry(d), None) {
                    return Ok(false);
                }
            }
            let (kind, id) = match e.mode {
                0o160_000 => (EntryKind::Submodule, None),
                0o120_000 => (EntryKind::Symlink, None),
                _ => (EntryKind::File, Some(e.oid().to_string())),
            };
            if !visit(Entry { name, kind }, id) {
                return Ok(false);
            }
        }
        Ok(dirs.all(|d| visit(dir_entry(d), None)))
    }

    /// Adds the blob `id` to `tree` at `path` as [`Mirror::read_tree`] would: an oversized file as an entry only.
    /// The outer error is git's; the inner, the tree's.
    pub fn add_to(
        &self,
        tree: &mut RepoTree,
        path: &str,
        id: &str,
        max_file_bytes: usize,
    ) -> Result<Result<(), gitfleet_shared::tree::TreeError>, GitError> {
        add_blob(&self.0, tree, path, Oid::from_str(id)?, max_file_bytes)
    }
}

/// One path that differs between two commits: `(blob id, mode)` on each side where it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    pub path: String,
    pub old: Option<(String, u32)>,
    pub new: Option<(String, u32)>,
}

impl PathChange {
    /// Whether each side is a regular file (or absent): not a link, a submodule or a folder.
    pub fn regular(&self) -> bool {
        let regular =
            |side: &Option<(String, u32)>| side.as_ref().is_none_or(|(_, mode)| matches!(mode, 0o100_644 | 0o100_755));
        regular(&self.old) && regular(&self.new)
    }
}

/// Appends the changes from `old` to `new` (raw tree objects, either absent: an empty tree) under `prefix`. Both
/// trees' entries are walked side by side in git's order, past the bytes the two share at their start and end
/// ([`git_tree::diff`]), and only subtrees whose ids differ are opened: a change costs a pass over the bytes of
/// the folders it is in, not a diff of every path (libgit2's tree diff builds and compares each path, 90 ms for a
/// folder of 100,000 files; its tree parser, an index of every entry, 35 ms for two versions). As libgit2's diff
/// without type changes: a path that changed between file and folder is a deletion and additions (or the
/// reverse), so is one between file, link and submodule; a mode change is a modification.
fn diff_tree(
    odb: &git2::Odb<'_>,
    prefix: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    out: &mut Vec<PathChange>,
) -> Result<(), git2::Error> {
    let side = |e: &git_tree::Entry<'_>| (e.oid().to_string(), e.mode);
    let path = |e: &git_tree::Entry<'_>| format!("{prefix}{}", String::from_utf8_lossy(e.name));
    // One side's entry alone: a file added or removed, or every file of a folder.
    let alone = |e: &git_tree::Entry<'_>, removed: bool, out: &mut Vec<PathChange>| {
        if e.is_tree() {
            let tree = git_tree::read(odb, e.oid())?;
            let sub = format!("{}/", path(e));
            let (o, n) = if removed { (Some(&*tree), None) } else { (None, Some(&*tree)) };
            return diff_tree(odb, &sub, o, n, out);
        }
        let (o, n) = if removed { (Some(side(e)), None) } else { (None, Some(side(e))) };
        out.push(PathChange { path: path(e), old: o, new: n });
        Ok(())
    };
    git_tree::diff(old.unwrap_or_default(), new.unwrap_or_default(), &mut |pair| match pair {
        git_tree::Pair::Old(o) => alone(&o, true, out),
        git_tree::Pair::New(n) => alone(&n, false, out),
        git_tree::Pair::Both(o, n) => {
            // git's order pairs a folder only with a folder of the same name.
            if o.is_tree() {
                let (ot, nt) = (git_tree::read(odb, o.oid())?, git_tree::read(odb, n.oid())?);
                diff_tree(odb, &format!("{}/", path(&o)), Some(&ot), Some(&nt), out)
            } else if o.mode & 0o170_000 == n.mode & 0o170_000 {
                out.push(PathChange { path: path(&n), old: Some(side(&o)), new: Some(side(&n)) });
                Ok(())
            } else {
                // A file that became a link or a submodule (or the reverse): a deletion and an addition.
                out.push(PathChange { path: path(&o), old: Some(side(&o)), new: None });
                out.push(PathChange { path: path(&n), old: None, new: Some(side(&n)) });
                Ok(())
            }
        }
    })
}

/// Reads one blob into the tree (oversized files as entries only). The outer error is git's; the inner, the tree's.
fn add_blob(
    repo: &Repository,
    out: &mut RepoTree,
    path: &str,
    id: Oid,
    max_file_bytes: usize,
) -> Result<Result<(), gitfleet_shared::tree::TreeError>, GitError> {
    let blob = repo.find_blob(id)?;
    Ok(if blob.size() > max_file_bytes {
        out.add_oversized(path, blob.size(), max_file_bytes)
    } else {
        out.add_file(path, blob.content().to_vec(), Some(id.to_string()))
    })
}

/// Sets libgit2's connect and read timeouts, so a stalled server can never hold a fetch thread forever. They are
/// process-wide options, so the first worker to start in a process sets them, once.
pub fn set_network_timeouts(timeout: std::time::Duration) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        crate::git_protocol::set_timeout(timeout);
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: both calls only store an integer in libgit2's global options. `Once` makes this a single write,
        // and it happens when a worker starts, before that worker (the only code here that fetches) fetches.
        #[allow(unsafe_code)]
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms)
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
        };
        if let Err(err) = set {
            tracing::warn!(error = %err, "could not set libgit2's network timeouts");
        }
    });
}

/// Reads objects from the mirrors without hashing each one again. libgit2 verifies every object it reads by
/// default (git does not): a sync of one changed file into a folder of 100,000 reads that folder's 4.7 MB tree
/// object several times (to complete the fetched pack, to compare the commits, to list the files to store), and
/// a full load reads every blob. Every object in a mirror was hashed when libgit2 indexed the pack that brought
/// it or wrote it loose (see [`crate::git_unpack`]), which it always does; zlib's checksum still catches a damaged
/// object. Process-wide, set once.
pub fn trust_indexed_objects() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| git2::opts::strict_hash_verification(false));
}

/// Credentials from a secrets group, handed to git2's credential callback only.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP(S) basic authentication. A token alone is sent as the user name, as Nautobot builds its URL.
    Http { username: String, password: String },
    /// An SSH private key (PEM or OpenSSH format) with its passphrase. The user is the URL's, else this one, else
    /// `git`.
    SshKey { username: Option<String>, private_key: String, passphrase: Option<String> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http { .. } => "Credentials::Http(..)",
            Self::SshKey { .. } => "Credentials::SshKey(..)",
        })
    }
}

impl Credentials {
    pub fn http(username: Option<&str>, token: &str) -> Self {
        match username.filter(|u| !u.is_empty()) {
            Some(user) => Self::Http { username: user.to_owned(), password: token.to_owned() },
            None => Self::Http { username: token.to_owned(), password: String::new() },
        }
    }
}

/// Bytes under a directory (a mirror's size on disk).
/// Bytes of the files under `path` (0 when it does not exist).
pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

impl Mirror {
    fn size_error(&self, err: GitError) -> GitError {
        match err {
            // The transfer-progress callback returned false: the size cap stopped the fetch.
            GitError::Git { code, message, .. }
                if code == git2::ErrorCode::User || message.contains("progress callback returned") =>
            {
                let _ = fs::remove_dir_all(self.path());
                self.too_large(self.max_bytes.saturating_add(1))
            }
            other => other,
        }
    }
}

/// Checks a server certificate against a CA bundle and the host name (libgit2 hands over the leaf certificate).
fn verify_with_bundle(bundle: &Path, der: &[u8], host: &str) -> Result<bool, String> {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509, X509StoreContext};
    let pem = fs::read(bundle).map_err(|e| format!("cannot read the CA bundle {}: {e}", bundle.display()))?;
    let cas = X509::stack_from_pem(&pem).map_err(|e| format!("invalid CA bundle {}: {e}", bundle.display()))?;
    let leaf = X509::from_der(der).map_err(|e| e.to_string())?;
    let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for ca in cas {
        builder.add_cert(ca).map_err(|e| e.to_string())?;
    }
    let mut param = openssl::x509::verify::X509VerifyParam::new().map_err(|e| e.to_string())?;
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => param.set_ip(ip),
        Err(_) => param.set_host(host),
    }
    .map_err(|e| e.to_string())?;
    builder.set_param(&param).map_err(|e| e.to_string())?;
    let store = builder.build();
    let chain = Stack::new().map_err(|e| e.to_string())?;
    let mut context = X509StoreContext::new().map_err(|e| e.to_string())?;
    context.init(&store, &leaf, &chain, |c| c.verify_cert()).map_err(|e| e.to_string())
}

impl Mirror {
    /// Fetches every branch and tag from `origin`, `depth` commits deep (None: everything new).
    fn fetch(
        &self,
        repo: &Repository,
        url: &str,
        credentials: Option<&Credentials>,
        depth: Option<i32>,
    ) -> Result<(), GitError> {
        if let Some(local) = fetch_local(repo, url, depth) {
            return local;
        }
        crate::git_protocol::register();
        // libgit2's SSH transport replaces a refused host key's message with its own generic one: keep ours.
        let host_key_problem = std::cell::RefCell::new(None::<String>);
        let mut remote = repo.find_remote(REMOTE)?;
        // One connection: its ref advertisement first, then (unless the mirror has every ref already) the download.
        let fetched = (|| {
            let callbacks = self.callbacks(url, credentials, &host_key_problem);
            let mut connection = remote.connect_auth(git2::Direction::Fetch, Some(callbacks), None)?;
            if depth != Some(UNSHALLOW) && has_every_ref(repo, connection.list()?) {
                return Ok(());
            }
            let mut options = FetchOptions::new();
            options.prune(FetchPrune::On).download_tags(AutotagOption::None);
            if let Some(depth) = depth {
                options.depth(depth);
            }
            options.remote_callbacks(self.callbacks(url, credentials, &host_key_problem));
            connection.remote().fetch(&REFSPECS, Some(&mut options), None)
        })();
        let received = remote.stats().received_bytes() as u64;
        crate::metrics::METRICS.fetched_bytes.inc_by(received);
        tracing::Span::current().record("fetched_bytes", received);
        match (fetched, host_key_problem.into_inner()) {
            (Ok(()), _) => Ok(()),
            (Err(err), Some(problem)) => Err(GitError::Git { message: problem, class: err.class(), code: err.code() }),
            (Err(err), None) => Err(err.into()),
        }
    }
    /// The fetch's callbacks: credentials offered once, host keys and certificates checked by the worker's policy
    /// (a refused host key's message kept in `host_key_problem`), and the download stopped past the size cap.
    fn callbacks<'a>(
        &'a self,
        url: &str,
        credentials: Option<&'a Credentials>,
        host_key_problem: &'a std::cell::RefCell<Option<String>>,
    ) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        let mut offered = false;
        callbacks.credentials(move |_url, url_user, allowed| {
            let ssh_user = |configured: Option<&str>| url_user.or(configured).unwrap_or("git").to_owned();
            match credentials {
                // libgit2 first asks who to log in as when the URL names no user.
                Some(Credentials::SshKey { username, .. }) if allowed.contains(CredentialType::USERNAME) => {
                    Cred::username(&ssh_user(username.as_deref()))
                }
                // Offer the credentials once: if the server refuses them, fail at once instead of asking forever.
                Some(Credentials::SshKey { username, private_key, passphrase })
                    if !offered && allowed.contains(CredentialType::SSH_KEY) =>
                {
                    offered = true;
                    Cred::ssh_key_from_memory(&ssh_user(username.as_deref()), None, private_key, passphrase.as_deref())
                }
                Some(Credentials::Http { username, password })
                    if !offered && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
                {
                    offered = true;
                    Cred::userpass_plaintext(username, password)
                }
                Some(_) if offered => Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Http,
                    "authentication failed: the remote refused the credentials of the secrets_group",
                )),
                Some(_) => Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Http,
                    "authentication failed: the remote does not accept the kind of credential the secrets_group \
                     holds (an SSH key for ssh:// remotes, a token for http(s) remotes)",
                )),
                None => Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Http,
                    "authentication required: the remote asks for credentials and the repository has no \
                     secrets_group",
                )),
            }
        });
        let ssh_port = known_hosts::ssh_host_port(url).map_or(22, |(_, port)| port);
        callbacks.certificate_check(move |cert, host| self.check_certificate(cert, host, ssh_port, host_key_problem));
        // Stop a download that passes the size cap instead of filling the disk first.
        let max_bytes = self.max_bytes;
        callbacks.transfer_progress(move |progress| progress.received_bytes() as u64 <= max_bytes);
        callbacks
    }
    /// An SSH host key against the known hosts (a refusal's message kept in `problem`: libgit2 replaces it), or an
    /// HTTPS certificate by the TLS policy.
    fn check_certificate(
        &self,
        cert: &git2::cert::Cert<'_>,
        host: &str,
        ssh_port: u16,
        problem: &std::cell::RefCell<Option<String>>,
    ) -> Result<git2::CertificateCheckStatus, git2::Error> {
        let refused = |class, message: String| Err(git2::Error::new(git2::ErrorCode::Certificate, class, message));
        if let Some(hostkey) = cert.as_hostkey() {
            let key = hostkey.hostkey().unwrap_or_default();
            return match known_hosts::check(&self.host_keys, host, ssh_port, key) {
                Ok(()) => Ok(git2::CertificateCheckStatus::CertificateOk),
                Err(message) => {
                    *problem.borrow_mut() = Some(message.clone());
                    refused(git2::ErrorClass::Ssh, message)
                }
            };
        }
        match &self.tls {
            TlsPolicy::System => Ok(git2::CertificateCheckStatus::CertificatePassthrough),
            TlsPolicy::NoVerify => Ok(git2::CertificateCheckStatus::CertificateOk),
            TlsPolicy::CaBundle(bundle) => {
                let der = cert.as_x509().map(|x| x.data()).unwrap_or_default();
                match verify_with_bundle(bundle, der, host) {
                    Ok(true) => Ok(git2::CertificateCheckStatus::CertificateOk),
                    Ok(false) => refused(
                        git2::ErrorClass::Ssl,
                        format!(
                            "the SSL certificate of {host} is not issued by the configured CA bundle for this host"
                        ),
                    ),
                    Err(message) => refused(git2::ErrorClass::Ssl, message),
                }
            }
        }
    }
}

/// Whether the mirror already holds every ref the remote advertises, as [`REFSPECS`] name them, and no other: a
/// fetch would bring nothing, yet still cost a negotiation (libgit2 asks for a shallow mirror's tips again, and
/// indexes the empty pack the server sends: 30 to 40 ms for a folder of 100,000 files).
fn has_every_ref(repo: &Repository, advertised: &[git2::RemoteHead<'_>]) -> bool {
    let mappings: Vec<(&str, &str)> = REFSPECS
        .iter()
        .filter_map(|spec| {
            let (src, dst) = spec.trim_start_matches('+').split_once(':')?;
            Some((src.strip_suffix('*')?, dst.strip_suffix('*')?))
        })
        .collect();
    let mut wanted = std::collections::HashMap::new();
    for head in advertised.iter().filter(|h| !h.name().ends_with("^{}")) {
        let Some(local) =
            mappings.iter().find_map(|(src, dst)| head.name().strip_prefix(src).map(|r| format!("{dst}{r}")))
        else {
            continue;
        };
        wanted.insert(local, head.oid());
    }
    let (Ok(references), Ok(odb)) = (repo.references(), repo.odb()) else { return false };
    let mut held = 0;
    for reference in references {
        let Ok(reference) = reference else { return false };
        let Ok(name) = reference.name() else { return false };
        if !mappings.iter().any(|(_, dst)| name.starts_with(dst))
            || reference.kind() != Some(git2::ReferenceType::Direct)
        {
            continue;
        }
        match (wanted.get(name), reference.target()) {
            (Some(want), Some(have)) if *want == have && odb.exists(have) => held += 1,
            // A ref the remote moved or dropped: the fetch updates or prunes it.
            _ => return false,
        }
    }
    held == wanted.len()
}

/// git's own fetch for a local (`file://`) remote, when the `git` command is installed: libgit2's local transport
/// copies objects one at a time and takes several times as long (52 s against 13 s for a 96 MB repository), while
/// git packs them in one pass. Local remotes are always fetched whole (`depth` is only set for network remotes).
/// `None`: no `git` command here, so libgit2 fetches instead.
fn fetch_local(repo: &Repository, url: &str, depth: Option<i32>) -> Option<Result<(), GitError>> {
    if !url.starts_with("file://") || depth.is_some() {
        return None;
    }
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo.path())
        // The remote may belong to another user (a shared directory): it is the repository the definition names.
        .args(["-c", "safe.directory=*", "-c", "protocol.file.allow=always", "-c", "gc.auto=0"])
        .args(["fetch", "--prune", "--no-tags", "--quiet", "--no-write-fetch-head", REMOTE])
        .args(REFSPECS)
        .env_remove("GIT_DIR")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output();
    Some(match output {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => Err(GitError::Io { path: repo.path().to_owned(), source: err }),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
            Err(GitError::Command(format!("git fetch from {url} failed: {message}")))
        }
    })
}

/// The checkout algorithm of spec b.4, on a fetched mirror: classify `branch` as a branch, a tag or a commit (in
/// that order), check a pinned commit against it, and return the commit to use.
pub fn resolve(repo: &Repository, branch: &Branch, pinned: Option<&str>) -> Result<(String, RefKind), GitError> {
    let b = branch.as_str();
    let pinned = pinned.filter(|c| !c.is_empty());
    if let Some(commit) = pinned {
        check_ref("commit", commit)?;
    }

    if let Ok(reference) = repo.find_reference(&format!("refs/remotes/{REMOTE}/{b}")) {
        let tip = reference.peel_to_commit()?.id();
        let Some(c) = pinned else {
            return Ok((tip.to_string(), RefKind::Branch));
        };
        let commit = find_commit(repo, c)?;
        if commit == tip || repo.graph_descendant_of(tip, commit)? {
            return Ok((commit.to_string(), RefKind::Branch));
        }
        return Err(GitError::NotOnBranch(format!(
            "Requested to check out commit {c}, but it's not part of branch {b}!"
        )));
    }

    if let Ok(reference) = repo.find_reference(&format!("refs/tags/{b}")) {
        let sha = reference.peel_to_commit()?.id().to_string();
        if let Some(c) = pinned
            && !sha.starts_with(c)
        {
            return Err(GitError::NotOnBranch(format!(
                "Requested to check out tag {b} and commit {c} together, but tag {b} is actually commit {sha}!"
            )));
        }
        return Ok((sha, RefKind::Tag));
    }

    if branch.may_be_commit() {
        if let Some(c) = pinned
            && !c.starts_with(b)
            && !b.starts_with(c)
        {
            return Err(GitError::NotOnBranch(format!(
                "Requested to check out both {b} and {c} together, but {b} is neither a branch, a tag, nor the same \
                 commit hash!"
            )));
        }
        return match repo.find_commit_by_prefix(&b.to_ascii_lowercase()) {
            Ok(commit) => Ok((commit.id().to_string(), RefKind::Commit)),
            Err(_) => Err(GitError::Command(format!("error: pathspec '{b}' did not match any file(s) known to git"))),
        };
    }

    if repo.references()?.flatten().next().is_none() {
        // The remote has no commits at all: the branch cannot exist yet (spec b.12).
        return Err(GitError::BranchDoesNotExist(format!(
            "Please create branch '{b}' in upstream and try again. If this is a new repo, please add a commit before \
             syncing."
        )));
    }
    Err(GitError::BranchDoesNotExist(format!(
        "{b} does not appear to be an existing branch, tag, or possible commit hash. Please check your upstream \
         repository and the data you are using."
    )))
}

fn find_commit(repo: &Repository, c: &str) -> Result<Oid, GitError> {
    let object = repo.revparse_single(c).ok().and_then(|o| o.peel_to_commit().ok());
    object.map(|commit| commit.id()).ok_or_else(|| GitError::Command(format!("malformed object name {c}")))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::Command;

    /// The `git` command in `dir`, with an author; its output, trimmed.
    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A remote with main = c0 -> c1 -> c2, tag `v1` on c1 and branch `side` on c0 + one commit.
    fn remote(dir: &Path) -> [String; 4] {
        git(dir, &["init", "-q", "-b", "main"]);
        let mut ids = Vec::new();
        for n in 0..3 {
            fs::write(dir.join("f.txt"), n.to_string()).unwrap();
            git(dir, &["add", "."]);
            git(dir, &["commit", "-qm", &format!("c{n}")]);
            ids.push(git(dir, &["rev-parse", "HEAD"]));
            if n == 1 {
                git(dir, &["tag", "-a", "v1", "-m", "v1"]);
            }
        }
        git(dir, &["checkout", "-q", "-b", "side", &ids[0]]);
        fs::write(dir.join("g.txt"), "side").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-qm", "side"]);
        ids.push(git(dir, &["rev-parse", "HEAD"]));
        git(dir, &["checkout", "-q", "main"]);
        [ids[0].clone(), ids[1].clone(), ids[2].clone(), ids[3].clone()]
    }

    /// libgit2's tree diff, as the mirror used it before it walked the trees itself: the oracle.
    fn libgit2_changes(repo: &Repository, old: &str, new: &str) -> Vec<PathChange> {
        let tree = |id: &str| repo.find_commit(Oid::from_str(id).unwrap()).unwrap().tree().unwrap();
        let mut options = git2::DiffOptions::new();
        options.include_typechange(false).ignore_submodules(false);
        let diff = repo.diff_tree_to_tree(Some(&tree(old)), Some(&tree(new)), Some(&mut options)).unwrap();
        let side = |f: git2::DiffFile<'_>| (!f.id().is_zero()).then(|| (f.id().to_string(), u32::from(f.mode())));
        let mut out: Vec<PathChange> = diff
            .deltas()
            .map(|d| {
                let path = d.new_file().path().or(d.old_file().path()).unwrap().to_string_lossy().into_owned();
                PathChange { path, old: side(d.old_file()), new: side(d.new_file()) }
            })
            .collect();
        out.sort_by(|a, b| (&a.path, &a.old, &a.new).cmp(&(&b.path, &b.old, &b.new)));
        out
    }

    /// A temporary folder holding a new repository with a work tree at `w`, and a writer of its files.
    fn work_tree() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("w");
        fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        (root, dir)
    }

    fn write_file(dir: &Path, path: &str, body: &str) {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }

    #[test]
    fn tree_walk_diff_equals_libgit2s_diff() {
        let (root, dir) = work_tree();
        let write = |path: &str, body: &str| write_file(&dir, path, body);
        let remove = |path: &str| {
            let path = dir.join(path);
            if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) }.unwrap();
        };
        let commit = |n: usize| {
            git(&dir, &["add", "-A"]);
            git(&dir, &["commit", "-qm", &format!("c{n}"), "--allow-empty"]);
            git(&dir, &["rev-parse", "HEAD"])
        };
        // Names that sort differently as files and as folders ("a" < "a-b" < "a.b" < "a/" < "a0").
        for (i, name) in ["a", "a-b", "a.b", "a0", "b/c/d.json", "b/c.json", "z/y/x/w.json"].iter().enumerate() {
            write(name, &format!("{i}"));
        }
        for i in 0..300 {
            write(&format!("many/f{i:03}.json"), &format!("{i}"));
        }
        let mut ids = vec![commit(0)];
        // Each step: the changes one push might bring.
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| write("many/f100.json", "changed")),
            Box::new(|| {
                remove("a");
                write("a/inner.json", "a folder now");
                write("many/new.json", "added");
                remove("many/f007.json");
            }),
            Box::new(|| {
                let file = dir.join("a.b");
                let mut perms = fs::metadata(&file).unwrap().permissions();
                std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
                fs::set_permissions(&file, perms).unwrap();
                remove("a0");
                std::os::unix::fs::symlink("a.b", dir.join("a0")).unwrap();
            }),
            Box::new(|| {
                remove("b/c");
                write("b/c", "a file where a folder was");
                fs::rename(dir.join("many/f200.json"), dir.join("many/moved.json")).unwrap();
            }),
            Box::new(|| remove("z")),
            // A file that sorts before the folder "a" only in git's order goes, the folder changes.
            Box::new(|| {
                remove("a.b");
                write("a/inner.json", "changed");
            }),
            Box::new(|| {}),
        ];
        for (n, step) in steps.iter().enumerate() {
            step();
            ids.push(commit(n + 1));
        }
        let mirror = Mirror::new(root.path(), "w/.git");
        let repo = Repository::open(&dir).unwrap();
        let mut pairs: Vec<(usize, usize)> = (1..ids.len()).map(|i| (i - 1, i)).collect();
        pairs.extend([(0, ids.len() - 1), (ids.len() - 1, 0), (2, 4)]);
        for (a, b) in pairs {
            let mut ours = mirror.diff_trees(&ids[a], &ids[b]).unwrap();
            ours.sort_by(|x, y| (&x.path, &x.old, &x.new).cmp(&(&y.path, &y.old, &y.new)));
            let theirs = libgit2_changes(&repo, &ids[a], &ids[b]);
            assert_eq!(ours, theirs, "commit {a} to {b}");
            // Only the last step (an empty commit) changes nothing.
            assert_eq!(ours.is_empty(), (a, b) == (ids.len() - 2, ids.len() - 1), "commit {a} to {b}");
        }
    }

    #[test]
    fn walked_files_come_in_path_order_a_chunk_at_a_time() {
        use std::os::unix::ffi::OsStrExt as _;
        let (root, dir) = work_tree();
        let write = |path: &str| write_file(&dir, path, "x");
        // Folders sort as their name and a `/`: "a.b" < "a/" < "a0".
        for path in ["jobs/a.b", "jobs/a/x.py", "jobs/a/y/z.py", "jobs/a0", "jobs2/b", "other/c", "README"] {
            write(path);
        }
        for i in 0..25 {
            write(&format!("config_contexts/f{i}.json"));
        }
        std::os::unix::fs::symlink("a0", dir.join("jobs/link")).unwrap();
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "c"]);
        let head = git(&dir, &["rev-parse", "HEAD"]);
        let mirror = Mirror::new(root.path(), "w/.git");
        let folders = ["jobs2".to_owned(), "jobs".to_owned(), "config_contexts".to_owned(), "missing".to_owned()];
        let mut expected = Vec::new();
        for folder in &folders {
            expected.extend(mirror.list_files(&head, folder).unwrap());
        }
        expected.sort();
        let mut chunks = Vec::new();
        assert!(
            mirror
                .walk_files(&head, &folders, 4, |chunk| {
                    chunks.push(chunk);
                    true
                })
                .unwrap()
        );
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 4));
        assert_eq!(chunks.concat(), expected);
        assert_eq!(expected.len(), 25 + 5, "every file, no link, no other folder");
        // Stopped by the receiver: no more chunks.
        let mut taken = 0;
        assert!(
            mirror
                .walk_files(&head, &folders, 4, |_| {
                    taken += 1;
                    false
                })
                .unwrap()
        );
        assert_eq!(taken, 1);

        // A name that is not UTF-8 reads as U+FFFD, which sorts before U+FFFF where its bytes sort after.
        for name in [b"jobs/\xef\xbf\xbf".as_slice(), b"jobs/\xff".as_slice()] {
            fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), "x").unwrap();
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "not utf-8"]);
        let head = git(&dir, &["rev-parse", "HEAD"]);
        assert!(!mirror.walk_files(&head, &folders, 4, |_| true).unwrap(), "the walk says it is out of order");
    }

    #[test]
    fn folder_entries_come_as_the_tree_lists_them() {
        use gitfleet_shared::loaders::Folders as _;
        let (root, dir) = work_tree();
        let write = |path: &str| write_file(&dir, path, path);
        // Folders sort as their name and a `/` in git: "a-b" < "a.b" < "a/" < "a0", and "b-/" < "b/".
        for path in ["d/a-b", "d/a.b", "d/a/x.json", "d/a0", "d/.gitkeep", "d/b/y", "d/b-/z", "d/c.json", "top"] {
            write(path);
        }
        std::os::unix::fs::symlink("c.json", dir.join("d/link")).unwrap();
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "c"]);
        let head = git(&dir, &["rev-parse", "HEAD"]);
        let mirror = Mirror::new(root.path(), "w/.git");
        let tree = mirror.read_tree(&head, 1 << 20).unwrap();
        let blobs = mirror.blobs().unwrap();
        type Listed = Vec<(String, EntryKind, Option<String>)>;
        let git_lists = |dir: &str| -> Listed {
            let mut out = Vec::new();
            assert!(
                blobs
                    .entries(&head, dir, &mut |e, id| {
                        out.push((e.name, e.kind, id));
                        true
                    })
                    .unwrap()
            );
            out
        };
        let tree_lists = |dir: &str| -> Listed {
            let mut out = Vec::new();
            assert!(
                tree.entries(dir, &mut |e, id| {
                    out.push((e.name, e.kind, id));
                    true
                })
                .unwrap()
            );
            out
        };
        for folder in ["d", "", "d/a", "missing", "top"] {
            assert_eq!(git_lists(folder), tree_lists(folder), "{folder}");
        }
        let names: Vec<String> = git_lists("d").into_iter().map(|e| e.0).collect();
        assert_eq!(names, [".gitkeep", "a", "a-b", "a.b", "a0", "b", "b-", "c.json", "link"]);

        // Left out of a tree read deferring them, the files are still listed with their ids; folders stay.
        let deferring = mirror.read_tree_deferring(&head, 1 << 20, Some("d")).unwrap();
        assert!(deferring.is_dir("d/a") && !deferring.is_file("d/c.json") && deferring.is_file("top"));
        assert_eq!(deferring.kind("d/link"), None, "links are listed from git, not held");
        let c = git_lists("d").into_iter().find(|e| e.0 == "c.json");
        assert_eq!(c.and_then(|e| e.2).as_deref(), tree.blob_id("d/c.json"));

        // The visitor stops the listing.
        let mut seen = 0;
        assert!(
            !blobs
                .entries(&head, "d", &mut |_, _| {
                    seen += 1;
                    seen < 3
                })
                .unwrap()
        );
        assert_eq!(seen, 3);
    }

    #[test]
    fn a_damaged_object_is_an_error_without_hash_verification() {
        trust_indexed_objects();
        let (root, dir) = work_tree();
        write_file(&dir, "config_contexts/a.json", &"{\"ntp\": [1, 2, 3]}\n".repeat(50));
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "c"]);
        let blob = git(&dir, &["rev-parse", "HEAD:config_contexts/a.json"]);
        let mirror = Mirror::new(root.path(), "w/.git");
        assert!(mirror.blobs().unwrap().read(&blob).is_ok());
        // Flip a byte in the middle of the loose object's compressed data.
        let path = dir.join(".git/objects").join(&blob[..2]).join(&blob[2..]);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        let mut perms = fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, bytes).unwrap();
        assert!(mirror.blobs().unwrap().read(&blob).is_err(), "zlib's checksum catches it");
    }

    /// Fetches, then resolves `b` with an optional pinned commit checked against it.
    fn checkout(mirror: &Mirror, url: &str, b: &str, pinned: Option<&str>) -> Result<Checkout, GitError> {
        let branch = Branch::parse(b).unwrap();
        let fetched = mirror.fetch_and_checkout(url, &branch)?;
        if pinned.is_none() {
            return Ok(fetched);
        }
        let (head, kind) = resolve(&Repository::open_bare(mirror.path())?, &branch, pinned)?;
        Ok(Checkout { head, kind, cloned: fetched.cloned })
    }

    #[test]
    fn a_mirror_fetched_into_many_packs_is_compacted_into_one() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let [_, c1, _, side] = remote(&src);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r");
        checkout(&mirror, &url, "main", None).unwrap();
        // Every object in a pack (the local fetch left them loose), then each fetch kept as a pack of its own, as
        // the worker's network fetches are.
        let git_dir = mirror.path().display().to_string();
        git(tmp.path(), &["--git-dir", &git_dir, "repack", "-q", "-a", "-d"]);
        let mut heads = Vec::new();
        for n in 0..5 {
            fs::write(src.join("f.txt"), format!("round {n}")).unwrap();
            fs::write(src.join(format!("n{n}.txt")), n.to_string()).unwrap();
            git(&src, &["add", "."]);
            git(&src, &["commit", "-qm", &format!("round {n}")]);
            heads.push(git(&src, &["rev-parse", "HEAD"]));
            let mut args = vec!["-c", "fetch.unpackLimit=1", "--git-dir", &git_dir, "fetch", "-q", REMOTE];
            args.extend(REFSPECS);
            git(tmp.path(), &args);
        }
        let before = mirror.packs();
        assert_eq!(before.len(), 6, "{before:?}");

        let at = |packs| CompactAt { packs, loose_objects: usize::MAX, loose_bytes: u64::MAX };
        assert_eq!(mirror.compact(&at(before.len())).unwrap(), None, "at the limit nothing is rewritten");
        assert_eq!(mirror.packs(), before);
        assert_eq!(mirror.compact(&at(2)).unwrap(), Some(Compacted { packs: before.len(), loose_objects: 0 }));
        let after = mirror.packs();
        assert_eq!(after.len(), 1, "{after:?}");
        let mut left: Vec<String> = fs::read_dir(mirror.path().join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().path().extension().unwrap().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["idx", "pack"], "no index or pack of the old ones is left");

        // Everything the refs reach is there: history, the annotated tag, the side branch, every file.
        git(tmp.path(), &["--git-dir", &git_dir, "fsck", "--connectivity-only", "--no-dangling"]);
        let repo = Repository::open_bare(mirror.path()).unwrap();
        assert_eq!(repo.revparse_single("refs/tags/v1^{commit}").unwrap().id().to_string(), c1);
        assert_eq!(repo.find_reference("refs/tags/v1").unwrap().peel_to_tag().unwrap().name().ok(), Some("v1"));
        assert_eq!(checkout(&mirror, &url, "side", None).unwrap().head, side);
        let tree = mirror.read_tree(heads.last().unwrap(), 1 << 20).unwrap();
        assert_eq!(tree.read("n4.txt").unwrap(), b"4");
        assert_eq!(tree.read("f.txt").unwrap(), b"round 4");
        let changes = mirror.changes(&heads[0], &heads[4]).unwrap();
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["f.txt", "n1.txt", "n2.txt", "n3.txt", "n4.txt"]);

        // And the compacted mirror goes on fetching.
        fs::write(src.join("f.txt"), "after").unwrap();
        git(&src, &["commit", "-qam", "after"]);
        let head = git(&src, &["rev-parse", "HEAD"]);
        assert_eq!(checkout(&mirror, &url, "main", None).unwrap().head, head);
    }

    #[test]
    fn loose_objects_past_the_limits_are_packed_with_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let [_, c1, c2, _] = remote(&src);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r");
        checkout(&mirror, &url, "main", None).unwrap();
        // git's own fetch of fewer than 100 objects leaves them loose, as the worker's does.
        let loose = mirror.loose_objects();
        assert!(loose.len() > 10 && mirror.packs().is_empty(), "{loose:?}");
        let count = |n| CompactAt { packs: 50, loose_objects: n, loose_bytes: u64::MAX };
        assert_eq!(mirror.compact(&count(loose.len())).unwrap(), None, "at the limit nothing is rewritten");
        assert_eq!(mirror.compact(&count(5)).unwrap(), Some(Compacted { packs: 0, loose_objects: loose.len() }));
        assert!(mirror.loose_objects().is_empty());
        assert_eq!(mirror.packs().len(), 1);
        let git_dir = mirror.path().display().to_string();
        git(tmp.path(), &["--git-dir", &git_dir, "fsck", "--connectivity-only", "--no-dangling"]);
        assert!(mirror.changes(&c1, &c2).unwrap().iter().any(|c| c.path == "f.txt"));

        // By their bytes too, and the pack that was there is replaced with them.
        fs::write(src.join("g.txt"), "new").unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-qm", "g"]);
        let head = git(&src, &["rev-parse", "HEAD"]);
        checkout(&mirror, &url, "main", None).unwrap();
        let bytes: u64 = mirror.loose_objects().iter().map(|(_, size)| size).sum();
        let size = |n| CompactAt { packs: 50, loose_objects: 6700, loose_bytes: n };
        assert_eq!(mirror.compact(&size(bytes)).unwrap(), None);
        assert_eq!(mirror.compact(&size(bytes - 1)).unwrap(), Some(Compacted { packs: 1, loose_objects: 3 }));
        assert_eq!((mirror.packs().len(), mirror.loose_objects().len()), (1, 0));
        assert_eq!(mirror.read_tree(&head, 1 << 20).unwrap().read("g.txt").unwrap(), b"new");
    }

    #[test]
    fn branch_tag_and_commit_classes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let [c0, c1, c2, side] = remote(&src);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r");

        let first = checkout(&mirror, &url, "main", None).unwrap();
        assert_eq!((first.head.as_str(), first.kind, first.cloned), (c2.as_str(), RefKind::Branch, true));
        assert!(!checkout(&mirror, &url, "main", None).unwrap().cloned);
        assert_eq!(checkout(&mirror, &url, "side", None).unwrap().head, side);
        let tag = checkout(&mirror, &url, "v1", None).unwrap();
        assert_eq!((tag.head.as_str(), tag.kind), (c1.as_str(), RefKind::Tag));
        let commit = checkout(&mirror, &url, &c0[..7], None).unwrap();
        assert_eq!((commit.head.as_str(), commit.kind), (c0.as_str(), RefKind::Commit));
        assert_eq!(checkout(&mirror, &url, &c0.to_uppercase()[..8], None).unwrap().head, c0);

        for short in ["a", "ab", "abc"] {
            let err = checkout(&mirror, &url, short, None).unwrap_err();
            assert!(matches!(err, GitError::BranchDoesNotExist(_)), "{short}: {err}");
        }
        let err = checkout(&mirror, &url, "nope", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nope does not appear to be an existing branch, tag, or possible commit hash. Please check your upstream \
             repository and the data you are using."
        );
        let err = checkout(&mirror, &url, "deadbeef", None).unwrap_err();
        assert_eq!(err.to_string(), "error: pathspec 'deadbeef' did not match any file(s) known to git");
    }

    #[test]
    fn pinned_commits_are_checked_against_the_ref() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let [c0, c1, _c2, side] = remote(&src);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r");

        assert_eq!(checkout(&mirror, &url, "main", Some(&c1)).unwrap().head, c1);
        assert_eq!(checkout(&mirror, &url, "main", Some("")).unwrap().kind, RefKind::Branch, "empty = unspecified");
        let err = checkout(&mirror, &url, "main", Some(&side)).unwrap_err();
        assert_eq!(err.to_string(), format!("Requested to check out commit {side}, but it's not part of branch main!"));
        let err = checkout(&mirror, &url, "main", Some("non-existent")).unwrap_err();
        assert_eq!(err.to_string(), "malformed object name non-existent");
        let err = checkout(&mirror, &url, "v1", Some(&c0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Requested to check out tag v1 and commit {c0} together, but tag v1 is actually commit {c1}!")
        );
        for bad in ["--detach", "-f", "abc def"] {
            assert!(matches!(checkout(&mirror, &url, "main", Some(bad)), Err(GitError::InvalidRef(_))), "{bad}");
        }
    }

    #[test]
    fn a_mirror_over_the_size_limit_is_refused_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        remote(&src);
        // Incompressible content: xorshift64 output as hex.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: String = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect();
        fs::write(src.join("big.txt"), noise).unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-qm", "big"]);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r").with_max_bytes(50_000);
        let err = checkout(&mirror, &url, "main", None).unwrap_err();
        assert!(matches!(err, GitError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("over the limit of 50000 bytes"), "{err}");
        assert!(!mirror.path().exists(), "removed");
        let roomy = Mirror::new(tmp.path().join("root"), "r").with_max_bytes(50_000_000);
        assert!(checkout(&roomy, &url, "main", None).is_ok());
    }

    #[test]
    fn force_push_url_change_and_corrupt_mirror() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let [c0, ..] = remote(&src);
        let url = format!("file://{}", src.display());
        let mirror = Mirror::new(tmp.path().join("root"), "r");
        checkout(&mirror, &url, "main", None).unwrap();

        git(&src, &["reset", "-q", "--hard", &c0]);
        assert_eq!(checkout(&mirror, &url, "main", None).unwrap().head, c0, "a force-push is followed");

        let moved = tmp.path().join("moved");
        fs::rename(&src, &moved).unwrap();
        let new_url = format!("file://{}", moved.display());
        assert_eq!(checkout(&mirror, &new_url, "main", None).unwrap().head, c0);
        let config = fs::read_to_string(mirror.path().join("config")).unwrap();
        assert!(config.contains(&new_url), "remote re-pointed: {config}");

        fs::write(mirror.path().join("HEAD"), "garbage").unwrap();
        fs::remove_dir_all(mirror.path().join("objects")).unwrap();
        let repaired = checkout(&mirror, &new_url, "main", None).unwrap();
        assert!(repaired.cloned, "an unusable mirror is fetched again");
        assert!(mirror.remove().unwrap());
        assert!(!mirror.remove().unwrap());
    }
}
