//! Tree objects as git stores them, read without libgit2's tree parser: the comparison of two commits, and a
//! bounded memory of the large trees a worker just saw.
//!
//! A push of one file into a folder of 100,000 files leaves two versions of that folder's tree object (4.7 MB
//! each) that differ in one entry of 100,000. libgit2 would inflate both from the mirror and build an index of
//! every entry of each before they could be compared: 35 ms of a sync whose change is one line. Here the two raw
//! objects are compared as bytes first: the entries inside their common prefix and common suffix are equal, so
//! only the part between is parsed and compared entry by entry. And the trees an unpacking or a comparison has
//! just held are kept in memory by id ([`remember`]), up to [`CAPACITY`] bytes in all, so the next sync of that
//! repository reads them from there: the unpacking needs the old tree as the base of the new one's delta, and
//! the comparison needs both. An object's id names its content, so a kept tree can never be stale.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use git2::{ObjectType, Odb, Oid};

/// Trees this large or larger are kept; smaller ones are cheap to read again.
pub const KEEP_FROM: usize = 256 << 10;

/// Most bytes of trees kept at once in a worker process (the oldest go first).
pub const CAPACITY: usize = 32 << 20;

/// The length of a SHA-1 object id.
const ID_LEN: usize = 20;

static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Kept {
    trees: HashMap<Oid, Arc<Vec<u8>>>,
    /// Ids in the order they were kept, oldest first.
    order: VecDeque<Oid>,
    bytes: usize,
}

/// Keeps the content of tree `id` when it is large enough to be worth it; drops the oldest past [`CAPACITY`].
pub fn remember(id: Oid, data: Arc<Vec<u8>>) {
    if data.len() < KEEP_FROM || data.len() > CAPACITY / 2 {
        return;
    }
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.trees.contains_key(&id) {
        return;
    }
    kept.bytes += data.len();
    kept.trees.insert(id, data);
    kept.order.push_back(id);
    while kept.bytes > CAPACITY {
        let Some(old) = kept.order.pop_front() else { break };
        if let Some(data) = kept.trees.remove(&old) {
            kept.bytes -= data.len();
        }
    }
}

/// The content of tree `id`, if it is kept.
pub fn kept(id: Oid) -> Option<Arc<Vec<u8>>> {
    KEPT.lock().unwrap_or_else(PoisonError::into_inner).trees.get(&id).cloned()
}

/// A tree object's content: kept in memory, or read from the object database.
pub enum TreeData<'a> {
    Kept(Arc<Vec<u8>>),
    Read(git2::OdbObject<'a>),
}

impl std::ops::Deref for TreeData<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Kept(data) => data,
            Self::Read(object) => object.data(),
        }
    }
}

/// Reads tree `id` (kept, or from `odb`, then kept if large); an object of another type is an error.
pub fn read<'a>(odb: &'a Odb<'_>, id: Oid) -> Result<TreeData<'a>, git2::Error> {
    if let Some(data) = kept(id) {
        return Ok(TreeData::Kept(data));
    }
    let object = odb.read(id)?;
    if object.kind() != ObjectType::Tree {
        return Err(git2::Error::from_str(&format!("object {id} is not a tree")));
    }
    if object.len() >= KEEP_FROM {
        let data = Arc::new(object.data().to_vec());
        remember(id, data.clone());
        return Ok(TreeData::Kept(data));
    }
    Ok(TreeData::Read(object))
}

/// One entry of a tree object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The mode as git normalizes it (see [`normalize`]).
    pub mode: u32,
    pub name: &'a [u8],
    pub id: &'a [u8],
}

impl Entry<'_> {
    pub fn is_tree(&self) -> bool {
        self.mode == 0o040_000
    }

    pub fn oid(&self) -> Oid {
        Oid::from_bytes(self.id).unwrap_or(Oid::ZERO_SHA1)
    }
}

/// A tree object that does not parse.
fn malformed(what: &str) -> git2::Error {
    git2::Error::from_str(&format!("failed to parse tree: {what}"))
}

/// The entry starting at `pos` of tree `data`, and where the next one starts. Refuses what libgit2's parser
/// refuses: a mode that is not octal digits ended by a space, a name without its terminating NUL, an id cut
/// short.
fn entry_at(data: &[u8], pos: usize) -> Result<(Entry<'_>, usize), git2::Error> {
    let rest = &data[pos..];
    let space = memchr::memchr(b' ', rest).ok_or_else(|| malformed("an entry without a mode"))?;
    let digits = &rest[..space];
    if digits.is_empty() || digits.len() > 7 || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return Err(malformed("can't parse filemode"));
    }
    let raw = digits.iter().fold(0u32, |mode, d| (mode << 3) | u32::from(d - b'0'));
    let name_start = space + 1;
    let nul = memchr::memchr(0, &rest[name_start..]).ok_or_else(|| malformed("an entry's name is not terminated"))?;
    let id_start = name_start + nul + 1;
    let end = id_start + ID_LEN;
    if end > rest.len() {
        return Err(malformed("an entry's id is cut short"));
    }
    let entry = Entry { mode: normalize(raw), name: &rest[name_start..name_start + nul], id: &rest[id_start..end] };
    Ok((entry, pos + end))
}

/// A mode as libgit2 reports it for an entry (`git_tree_entry_filemode`): a folder, an executable file, a
/// submodule, a link or a file, whatever other bits an old tool wrote.
pub fn normalize(mode: u32) -> u32 {
    match mode & 0o170_000 {
        0o040_000 => 0o040_000,
        _ if mode & 0o100 != 0 => 0o100_755,
        0o160_000 => 0o160_000,
        0o120_000 => 0o120_000,
        _ => 0o100_644,
    }
}

/// The entries of tree `data` from byte `pos` on (an entry's start).
pub fn entries(data: &[u8], pos: usize) -> impl Iterator<Item = Result<Entry<'_>, git2::Error>> + '_ {
    let mut pos = Some(pos);
    std::iter::from_fn(move || {
        let at = pos.filter(|&p| p < data.len())?;
        match entry_at(data, at) {
            Ok((entry, next)) => {
                pos = Some(next);
                Some(Ok(entry))
            }
            Err(err) => {
                pos = None;
                Some(Err(err))
            }
        }
    })
}

/// How the entries of two versions of a tree pair up.
pub enum Pair<'a> {
    /// In the old version only.
    Old(Entry<'a>),
    /// In the new version only.
    New(Entry<'a>),
    /// In both, with another id or mode.
    Both(Entry<'a>, Entry<'a>),
}

/// Calls `visit` with every entry that differs between the tree objects `old` and `new`, in git's order. Entries
/// inside the bytes the two share at their start and at their end are not parsed: the bytes of an entry that ends
/// within the common prefix are the same in both, and once each side stands at an entry's start with the same
/// bytes left, all that is left is equal.
pub fn diff<'a>(
    old: &'a [u8],
    new: &'a [u8],
    visit: &mut dyn FnMut(Pair<'a>) -> Result<(), git2::Error>,
) -> Result<(), git2::Error> {
    let prefix = common_prefix(old, new);
    let suffix = common_suffix(&old[prefix..], &new[prefix..]);
    // The start of the first entry that does not end inside the prefix: the same offset in both.
    let mut start = 0;
    while start < prefix {
        let (_, next) = entry_at(old, start)?;
        if next > prefix {
            break;
        }
        start = next;
    }
    let (mut o, mut n) = (start, start);
    let (mut old_entry, mut new_entry) = (None, None);
    loop {
        if old.len() - o == new.len() - n && old.len() - o <= suffix && old_entry.is_none() && new_entry.is_none() {
            return Ok(());
        }
        if old_entry.is_none() && o < old.len() {
            let (entry, next) = entry_at(old, o)?;
            old_entry = Some(entry);
            o = next;
        }
        if new_entry.is_none() && n < new.len() {
            let (entry, next) = entry_at(new, n)?;
            new_entry = Some(entry);
            n = next;
        }
        let order = match (&old_entry, &new_entry) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => git_order((a.name, a.is_tree()), (b.name, b.is_tree())),
        };
        match order {
            std::cmp::Ordering::Less => visit(Pair::Old(old_entry.take().unwrap_or_else(|| unreachable!("read"))))?,
            std::cmp::Ordering::Greater => {
                visit(Pair::New(new_entry.take().unwrap_or_else(|| unreachable!("read"))))?;
            }
            std::cmp::Ordering::Equal => {
                let (Some(a), Some(b)) = (old_entry.take(), new_entry.take()) else { unreachable!("read") };
                if a.id != b.id || a.mode != b.mode {
                    visit(Pair::Both(a, b))?;
                }
            }
        }
    }
}

/// git's order of tree entries: by name, a folder's name compared as if it ended in `/`.
pub fn git_order((a, a_tree): (&[u8], bool), (b, b_tree): (&[u8], bool)) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    a[..common].cmp(&b[..common]).then_with(|| {
        let next = |name: &[u8], tree: bool| name.get(common).copied().unwrap_or(if tree { b'/' } else { 0 });
        next(a, a_tree).cmp(&next(b, b_tree))
    })
}

/// How many bytes `a` and `b` share at their start (compared a block at a time, as `memcmp` does).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let len = a.len().min(b.len());
    let mut at = 0;
    while at + BLOCK <= len && a[at..at + BLOCK] == b[at..at + BLOCK] {
        at += BLOCK;
    }
    at + a[at..len].iter().zip(&b[at..len]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` share at their end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let len = a.len().min(b.len());
    let (a_end, b_end) = (a.len(), b.len());
    let mut at = 0;
    while at + BLOCK <= len && a[a_end - at - BLOCK..a_end - at] == b[b_end - at - BLOCK..b_end - at] {
        at += BLOCK;
    }
    at + a[..a_end - at].iter().rev().zip(b[..b_end - at].iter().rev()).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, &str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, id) in entries {
            out.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            out.extend_from_slice(&[*id; ID_LEN]);
        }
        out
    }

    fn changes(old: &[u8], new: &[u8]) -> Result<Vec<String>, git2::Error> {
        let mut out = Vec::new();
        let name = |e: &Entry<'_>| String::from_utf8_lossy(e.name).into_owned();
        diff(old, new, &mut |pair| {
            out.push(match pair {
                Pair::Old(e) => format!("-{}", name(&e)),
                Pair::New(e) => format!("+{}", name(&e)),
                Pair::Both(a, b) => format!("~{}:{:o}>{:o}", name(&a), a.mode, b.mode),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Every entry of both versions, compared one by one: the oracle for the skipping diff.
    fn slow_changes(old: &[u8], new: &[u8]) -> Vec<String> {
        let all = |data| entries(data, 0).collect::<Result<Vec<_>, _>>().unwrap();
        let (old, new) = (all(old), all(new));
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        let name = |e: &Entry<'_>| String::from_utf8_lossy(e.name).into_owned();
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => git_order((a.name, a.is_tree()), (b.name, b.is_tree())),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    out.push(format!("-{}", name(&old[i])));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(format!("+{}", name(&new[j])));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (a, b) = (old[i], new[j]);
                    if a.id != b.id || a.mode != b.mode {
                        out.push(format!("~{}:{:o}>{:o}", name(&a), a.mode, b.mode));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        out
    }

    #[test]
    fn the_diff_of_raw_trees_equals_an_entry_by_entry_comparison() {
        // Names of several lengths, so an edit moves the entries after it by a few bytes; ids of one byte
        // repeated, so the bytes of neighbouring entries look alike.
        let base: Vec<(String, u8)> =
            (0..400).map(|i| (format!("f{}", "x".repeat(i % 7)) + &i.to_string(), 1)).collect();
        let mut base = base;
        base.sort_by(|a, b| git_order((a.0.as_bytes(), false), (b.0.as_bytes(), false)));
        let build = |list: &[(String, u8, &str)]| {
            tree(&list.iter().map(|(n, id, m)| (*m, n.as_str(), *id)).collect::<Vec<_>>())
        };
        let old: Vec<(String, u8, &str)> = base.iter().map(|(n, id)| (n.clone(), *id, "100644")).collect();
        let old_tree = build(&old);
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        for case in 0..300 {
            let mut new = old.clone();
            for _ in 0..=next(4) {
                let at = next(new.len());
                match next(5) {
                    0 => new[at].1 = 2,
                    1 => new[at].2 = "100755",
                    2 => {
                        new.remove(at);
                    }
                    3 => new.insert(at, (format!("{}a", new[at].0), 3, "100644")),
                    _ => new[at].1 = 1 + u8::try_from(next(3)).unwrap(),
                }
            }
            // Edits at the very ends too.
            if case % 10 == 0 {
                new.remove(0);
            }
            if case % 10 == 1 {
                new.pop();
            }
            new.sort_by(|a, b| git_order((a.0.as_bytes(), false), (b.0.as_bytes(), false)));
            new.dedup_by(|a, b| a.0 == b.0);
            let new_tree = build(&new);
            assert_eq!(changes(&old_tree, &new_tree).unwrap(), slow_changes(&old_tree, &new_tree), "case {case}");
            assert_eq!(changes(&new_tree, &old_tree).unwrap(), slow_changes(&new_tree, &old_tree), "case {case}");
        }
        assert!(changes(&old_tree, &old_tree).unwrap().is_empty());
        assert_eq!(changes(&old_tree, &[]).unwrap().len(), old.len());
        assert_eq!(changes(&[], &old_tree).unwrap().len(), old.len());
    }

    #[test]
    fn malformed_trees_are_errors() {
        let good = tree(&[("100644", "a", 1), ("100644", "b", 2)]);
        let mut cut = good.clone();
        cut.truncate(good.len() - 3);
        let no_nul: Vec<u8> = b"100644 name-without-end".to_vec();
        let bad_mode = tree(&[("10a644", "a", 1)]);
        let no_mode = b"\0aaaaaaaaaaaaaaaaaaaa".to_vec();
        for bad in [cut, no_nul, bad_mode, no_mode] {
            assert!(changes(&good, &bad).is_err(), "{bad:?}");
            assert!(entries(&bad, 0).any(|e| e.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn modes_are_normalized_as_libgit2_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"x").unwrap();
        let sub = repo.treebuilder(None).unwrap().write().unwrap();
        for (raw, id) in [
            ("100644", blob),
            ("100664", blob),
            ("100755", blob),
            ("100700", blob),
            ("120000", blob),
            ("160000", blob),
            ("40000", sub),
            ("040755", sub),
            ("644", blob),
        ] {
            let mut data = format!("{raw} n\0").into_bytes();
            data.extend_from_slice(id.as_bytes());
            let tree = repo.odb().unwrap().write(ObjectType::Tree, &data).unwrap();
            let theirs = repo.find_tree(tree).unwrap().get(0).unwrap().filemode() as u32;
            let ours = entries(&data, 0).next().unwrap().unwrap().mode;
            assert_eq!(ours, theirs, "mode {raw}");
        }
    }

    #[test]
    fn kept_trees_stay_within_the_capacity() {
        let size = CAPACITY / 4 + 1;
        let ids: Vec<Oid> = (0..6u8).map(|i| Oid::from_bytes(&[i + 100; ID_LEN]).unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            remember(*id, Arc::new(vec![u8::try_from(i).unwrap(); size]));
        }
        let held: Vec<bool> = ids.iter().map(|id| kept(*id).is_some()).collect();
        // Three of a quarter each fit (other tests may keep trees too, so at most three).
        assert!(!held[0] && !held[1] && !held[2] && held[5], "{held:?}");
        assert_eq!(kept(ids[5]).unwrap()[0], 5);
        let small = Oid::from_bytes(&[99; ID_LEN]).unwrap();
        remember(small, Arc::new(vec![0; 10]));
        assert!(kept(small).is_none());
    }
}
