//! A commit's manifest in parts, so that a one-file change writes one small part and a small root whatever the
//! repository's size.
//!
//! The files, sorted by path, are cut into parts where a path's hash says so (about one path in [`SPREAD`], and at
//! the latest after [`MAX_PART`] files): where the cuts fall depends on the paths around them, not on their
//! position, so a change moves the cuts of its own part only (as content-defined chunking does). A part is stored
//! once under the sha256 of its body, and the root manifest lists the parts with the first path of each. Building
//! the manifest of a changed commit re-cuts only the parts whose range a changed path falls in (and the next ones
//! until a cut lines up again), and gives the same parts as cutting the whole list afresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::ManifestFile;

/// About one path in this many ends a part.
pub const SPREAD: u64 = 256;
/// No part holds more files than this.
pub const MAX_PART: usize = 2048;

/// A part as the root manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub key: String,
    pub first: String,
    pub files: usize,
}

/// The body of a part object.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartBody {
    pub files: Vec<ManifestFile>,
}

/// One part of a new manifest: kept as it was, or cut anew (its files, to be stored).
#[derive(Debug, PartialEq)]
pub enum Part {
    Kept(PartRef),
    New(Vec<ManifestFile>),
}

/// Whether a part ends after this path.
fn cuts_after(path: &str) -> bool {
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    // The FNV multiply leaves the low bits weak for short keys: fold the high half in.
    (hash ^ (hash >> 32)) % SPREAD == 0
}

/// Cuts sorted files into parts, as they come: [`Cutter::drain`] hands on the parts cut so far.
#[derive(Default)]
pub struct Cutter {
    open: Vec<ManifestFile>,
    done: Vec<Vec<ManifestFile>>,
}

impl Cutter {
    pub fn push(&mut self, file: ManifestFile) {
        let cut = cuts_after(&file.path);
        self.open.push(file);
        if cut || self.open.len() >= MAX_PART {
            self.done.push(std::mem::take(&mut self.open));
        }
    }

    fn at_cut(&self) -> bool {
        self.open.is_empty()
    }

    /// The parts cut so far (the open one stays).
    pub fn drain(&mut self) -> Vec<Vec<ManifestFile>> {
        std::mem::take(&mut self.done)
    }

    pub fn finish(mut self) -> Vec<Vec<ManifestFile>> {
        if !self.open.is_empty() {
            self.done.push(self.open);
        }
        self.done
    }
}

/// Cuts a whole sorted list of files into parts.
pub fn cut(files: Vec<ManifestFile>) -> Vec<Vec<ManifestFile>> {
    let mut cutter = Cutter::default();
    for file in files {
        cutter.push(file);
    }
    cutter.finish()
}

/// The new parts from the live ones and the changes (`path -> new file`, `None` for a removed path), given the
/// files of the parts loaded so far. `Err` names the parts that must be loaded first.
pub fn rebuild(
    parts: &[PartRef],
    loaded: &HashMap<usize, Vec<ManifestFile>>,
    changes: &BTreeMap<String, Option<ManifestFile>>,
) -> Result<Vec<Part>, BTreeSet<usize>> {
    // Which part's range each change falls in: part i holds [first_i, first_{i+1}); the first part also what
    // sorts before it, the last what sorts after.
    let part_of = |path: &str| parts.partition_point(|p| p.first.as_str() <= path).saturating_sub(1);
    let mut touched: BTreeMap<usize, Vec<(&String, &Option<ManifestFile>)>> = BTreeMap::new();
    for (path, change) in changes {
        touched.entry(part_of(path)).or_default().push((path, change));
    }
    if parts.is_empty() {
        return Ok(cut(changes.values().flatten().cloned().collect()).into_iter().map(Part::New).collect());
    }
    let mut out = Vec::new();
    let mut need = BTreeSet::new();
    let mut i = 0;
    while i < parts.len() {
        if !touched.contains_key(&i) {
            out.push(Part::Kept(parts[i].clone()));
            i += 1;
            continue;
        }
        // Re-cut from this part on until a cut lines up with the end of an untouched part.
        let mut cutter = Cutter::default();
        loop {
            let Some(files) = loaded.get(&i) else {
                need.insert(i);
                break;
            };
            let mut merged: BTreeMap<&str, &ManifestFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
            for (path, change) in touched.get(&i).into_iter().flatten() {
                match change {
                    Some(file) => merged.insert(path.as_str(), file),
                    None => merged.remove(path.as_str()),
                };
            }
            for file in merged.into_values() {
                cutter.push(file.clone());
            }
            i += 1;
            if i == parts.len() || (cutter.at_cut() && !touched.contains_key(&i)) {
                break;
            }
        }
        out.extend(cutter.finish().into_iter().map(Part::New));
        // A part that could not be read yet: ask for it, and for what the next pass will reach.
        if !need.is_empty() {
            while i < parts.len() && touched.contains_key(&i) {
                if !loaded.contains_key(&i) {
                    need.insert(i);
                }
                i += 1;
            }
        }
    }
    if need.is_empty() { Ok(out) } else { Err(need) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, n: u64) -> ManifestFile {
        ManifestFile {
            path: path.to_owned(),
            blob: format!("{n:040x}"),
            size: n,
            sha256: n.to_string(),
            key: n.to_string(),
        }
    }

    /// Part references as storage would name them: by their content.
    fn refs(parts: &[Vec<ManifestFile>]) -> Vec<PartRef> {
        parts
            .iter()
            .map(|files| PartRef {
                key: super::super::sha256_hex(&serde_json::to_vec(files).unwrap()),
                first: files[0].path.clone(),
                files: files.len(),
            })
            .collect()
    }

    /// Rebuilds, loading what is asked for, as the stage does.
    fn rebuilt(
        old: &[Vec<ManifestFile>],
        changes: &BTreeMap<String, Option<ManifestFile>>,
    ) -> (Vec<Vec<ManifestFile>>, usize) {
        let parts = refs(old);
        let mut loaded = HashMap::new();
        loop {
            match rebuild(&parts, &loaded, changes) {
                Ok(out) => {
                    let files = out
                        .into_iter()
                        .map(|p| match p {
                            Part::Kept(r) => old[parts.iter().position(|q| *q == r).unwrap()].clone(),
                            Part::New(files) => files,
                        })
                        .collect();
                    return (files, loaded.len());
                }
                Err(need) => {
                    for i in need {
                        loaded.insert(i, old[i].clone());
                    }
                }
            }
        }
    }

    #[test]
    fn incremental_cuts_equal_cutting_afresh_and_read_few_parts() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Every other path exists at first, so that changes add paths in the middle too.
        let path = |n: u64| format!("config_contexts/c{n:05}.yaml");
        let mut files: BTreeMap<String, ManifestFile> =
            (0..5000).map(|n| (path(2 * n), file(&path(2 * n), n))).collect();
        let mut cuts_moved = 0;
        for round in 0..150 {
            let old = cut(files.values().cloned().collect());
            let mut changes = BTreeMap::new();
            for _ in 0..=next(3) {
                let path = path(next(11_000));
                let change = (next(3) > 0).then(|| file(&path, 10_000 + round));
                changes.insert(path, change);
            }
            // Some rounds also remove the path a part ends on, which joins it with the next one.
            if round % 15 == 0 {
                let part = &old[usize::try_from(next(old.len() as u64)).unwrap()];
                changes.insert(part[part.len() - 1].path.clone(), None);
            }
            for (path, change) in &changes {
                match change {
                    Some(f) => files.insert(path.clone(), f.clone()),
                    None => files.remove(path),
                };
            }
            let (got, read) = rebuilt(&old, &changes);
            let afresh = cut(files.values().cloned().collect());
            if afresh.len() != old.len() {
                cuts_moved += 1;
            }
            assert_eq!(got, afresh, "round {round}");
            assert!(read <= 2 * changes.len() + 2, "round {round}: read {read} parts for {} changes", changes.len());
        }
        assert!(cut(files.values().cloned().collect()).len() > 5, "the test needs several parts");
        assert!(cuts_moved >= 8, "only {cuts_moved} rounds moved a cut");
    }

    #[test]
    fn from_nothing_and_to_nothing() {
        let changes: BTreeMap<String, Option<ManifestFile>> =
            ["a", "b"].iter().map(|p| ((*p).to_owned(), Some(file(p, 1)))).collect();
        let (got, _) = rebuilt(&[], &changes);
        assert_eq!(got, cut(changes.values().flatten().cloned().collect()));
        let old = cut(changes.values().flatten().cloned().collect());
        let removed: BTreeMap<String, Option<ManifestFile>> =
            ["a", "b"].iter().map(|p| ((*p).to_owned(), None)).collect();
        let (got, _) = rebuilt(&old, &removed);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn parts_are_bounded() {
        let files: Vec<ManifestFile> = (0..20_000).map(|n| file(&format!("f{n:06}"), n)).collect();
        let parts = cut(files);
        assert!(parts.iter().all(|p| p.len() <= MAX_PART));
        let average = 20_000 / parts.len();
        assert!((64..=1024).contains(&average), "{average} files per part");
    }
}
