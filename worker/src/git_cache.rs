//! The mirror cache: the bare mirrors under `GITFLEET_GIT_ROOT`, bounded by `GITFLEET_GIT_CACHE_MAX_BYTES`.
//!
//! With competing consumers any worker may sync any repository, so without a bound each worker's disk would grow
//! toward the size of every repository the fleet serves. A sync takes a [`Lease`] on its repository's mirror for as
//! long as anything reads it (the fetch, the load, storage, the artifact built after the commit); when the last
//! lease of a mirror ends, its size is measured and, while the cache is over its bound, the least recently used
//! mirrors no one holds are evicted. A mirror in use is never evicted, so the cache may exceed its bound by the
//! mirrors being synced at that moment. An evicted mirror is first renamed (under the cache's lock, so no sync
//! can take it meanwhile), then removed; the next sync of that repository clones it again, which is what a cache
//! miss costs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::metrics::METRICS;

/// Prefix of a mirror being removed after its eviction.
const EVICTING: &str = ".evict-";

#[derive(Debug, Default)]
struct Entry {
    bytes: u64,
    /// The cache's clock when the mirror was last released: the lowest is evicted first.
    last_used: u64,
    in_use: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    clock: u64,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    max_bytes: Option<u64>,
    state: Mutex<State>,
}

/// The mirrors of one worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MirrorCache(Arc<Inner>);

/// A sync's hold on one mirror: while any lease of a slug lives, its mirror stays. Released on drop.
#[derive(Debug)]
pub struct Lease {
    cache: MirrorCache,
    slug: String,
}

impl MirrorCache {
    /// The cache over `root`, which may already hold mirrors: they are measured and ordered by modification time
    /// (oldest first evicted), and what an interrupted eviction left is removed. `None`: no bound (hits and
    /// misses are still counted).
    pub fn open(root: &Path, max_bytes: Option<u64>) -> Self {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.starts_with(EVICTING) {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if !name.starts_with('.') {
                let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, name, crate::git::dir_size(&entry.path())));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, name, bytes) in found {
            state.clock += 1;
            state.entries.insert(name, Entry { bytes, last_used: state.clock, in_use: 0 });
        }
        let cache = Self(Arc::new(Inner { root: root.to_owned(), max_bytes, state: Mutex::new(state) }));
        let evicted = cache.evict_over_bound();
        remove_all(evicted);
        cache
    }

    /// Takes a lease on `slug`'s mirror, counting a hit when the mirror is on disk and a miss when the sync will
    /// clone it.
    pub fn lease(&self, slug: &str) -> Lease {
        let mut state = self.lock();
        let present = self.0.root.join(slug).is_dir();
        if present { &METRICS.git_cache_hits } else { &METRICS.git_cache_misses }.inc();
        state.entries.entry(slug.to_owned()).or_default().in_use += 1;
        Lease { cache: self.clone(), slug: slug.to_owned() }
    }

    /// Forgets a mirror that was removed (its repository deleted).
    pub fn forget(&self, slug: &str) {
        let mut state = self.lock();
        if state.entries.get(slug).is_some_and(|e| e.in_use == 0) {
            state.entries.remove(slug);
        }
        METRICS.git_cache_bytes.set(gauge(total(&state)));
    }

    /// Bytes of the mirrors the cache knows of, as last measured.
    pub fn bytes(&self) -> u64 {
        total(&self.lock())
    }

    /// The slugs of the mirrors in the cache, least recently used first.
    pub fn slugs(&self) -> Vec<String> {
        let state = self.lock();
        let mut slugs: Vec<_> = state.entries.iter().map(|(s, e)| (e.last_used, s.clone())).collect();
        slugs.sort();
        slugs.into_iter().map(|(_, s)| s).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind: carry on with them.
        self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends one lease of `slug`: measures its mirror, then evicts while over the bound. Blocking (file I/O).
    fn release(&self, slug: &str) {
        let bytes = crate::git::dir_size(&self.0.root.join(slug));
        {
            let mut state = self.lock();
            state.clock += 1;
            let clock = state.clock;
            if let Some(entry) = state.entries.get_mut(slug) {
                entry.in_use = entry.in_use.saturating_sub(1);
                entry.bytes = bytes;
                entry.last_used = clock;
                if bytes == 0 && entry.in_use == 0 {
                    // No mirror on disk (a failed clone, a removed one): nothing to account for.
                    state.entries.remove(slug);
                }
            }
        }
        remove_all(self.evict_over_bound());
    }

    /// While over the bound, renames the least recently used mirror no one holds out of the way; returns the
    /// renamed directories, for the caller to remove outside the lock.
    fn evict_over_bound(&self) -> Vec<PathBuf> {
        let mut state = self.lock();
        let mut renamed = Vec::new();
        if let Some(max) = self.0.max_bytes {
            while total(&state) > max {
                let victim = state
                    .entries
                    .iter()
                    .filter(|(_, e)| e.in_use == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(slug, _)| slug.clone());
                let Some(slug) = victim else { break };
                let Some(entry) = state.entries.remove(&slug) else { break };
                let from = self.0.root.join(&slug);
                let to = self.0.root.join(format!("{EVICTING}{slug}-{}", uuid::Uuid::new_v4().simple()));
                match std::fs::rename(&from, &to) {
                    Ok(()) => renamed.push(to),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(mirror = %slug, error = %err, "could not evict a mirror");
                        continue;
                    }
                }
                METRICS.git_cache_evictions.inc();
                METRICS.git_cache_evicted_bytes.inc_by(entry.bytes);
                tracing::info!(mirror = %slug, bytes = entry.bytes, "evicted the least recently used mirror");
            }
        }
        METRICS.git_cache_bytes.set(gauge(total(&state)));
        renamed
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (cache, slug) = (self.cache.clone(), std::mem::take(&mut self.slug));
        // Measuring and removing mirrors is file I/O: off the async runtime when there is one.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || cache.release(&slug))),
            Err(_) => cache.release(&slug),
        }
    }
}

fn total(state: &State) -> u64 {
    state.entries.values().map(|e| e.bytes).sum()
}

fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn remove_all(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(err) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %err, "could not remove an evicted mirror");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(root: &Path, slug: &str, bytes: usize) {
        std::fs::create_dir_all(root.join(slug).join("objects")).unwrap();
        std::fs::write(root.join(slug).join("objects").join("pack"), vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn evicts_the_least_recently_used_mirror_not_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let cache = MirrorCache::open(root, Some(2_500));
        for slug in ["a", "b", "c"] {
            let lease = cache.lease(slug);
            mirror(root, slug, 1_000);
            drop(lease);
        }
        // a, b, c used in that order: 3,000 bytes over a bound of 2,500 evicts a.
        assert_eq!(cache.slugs(), ["b", "c"]);
        assert!(!root.join("a").exists() && root.join("b").exists());

        // b is held while d arrives: c is evicted instead, though b was used before it.
        let held = cache.lease("b");
        let lease = cache.lease("d");
        mirror(root, "d", 1_000);
        drop(lease);
        assert_eq!(cache.slugs(), ["b", "d"]);
        assert!(root.join("b").exists() && !root.join("c").exists());
        drop(held);
        assert_eq!(cache.bytes(), 2_000);
        assert!(std::fs::read_dir(root).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    }

    #[test]
    fn a_mirror_in_use_is_kept_even_over_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = MirrorCache::open(tmp.path(), Some(500));
        let first = cache.lease("big");
        let second = cache.lease("big");
        mirror(tmp.path(), "big", 1_000);
        drop(first);
        assert!(tmp.path().join("big").exists(), "still leased by the second holder");
        drop(second);
        assert!(!tmp.path().join("big").exists(), "over the bound once no one holds it");
    }

    #[test]
    fn start_up_measures_what_is_there_and_trims_it() {
        let tmp = tempfile::tempdir().unwrap();
        for (slug, age) in [("old", 3_600), ("new", 60)] {
            mirror(tmp.path(), slug, 1_000);
            // Modification times order them: "old" was written first.
            let at = SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::open(tmp.path().join(slug)).unwrap().set_modified(at).unwrap();
        }
        std::fs::create_dir_all(tmp.path().join(".evict-gone-1")).unwrap();
        let cache = MirrorCache::open(tmp.path(), Some(1_500));
        assert_eq!(cache.slugs(), ["new"]);
        assert!(!tmp.path().join(".evict-gone-1").exists());
        let unbounded = MirrorCache::open(tmp.path(), None);
        assert_eq!(unbounded.bytes(), 1_000);
    }
}
