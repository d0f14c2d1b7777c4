//! A repository tree in memory: what the loaders read. The worker fills it from a commit with git2, `worker check`
//! from a directory; the loaders never touch a file system or a repository themselves.
//!
//! Paths are relative, `/`-separated and normalized: an absolute path, an empty component, `.` or `..` is
//! refused when the tree is built, so no loader can be led outside the repository. Symbolic links are kept as
//! entries but never read.

use std::collections::BTreeMap;
use std::sync::Arc;

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A git submodule: a commit of another repository, no content here.
    Submodule,
}

#[derive(Debug, Clone)]
enum Node {
    File {
        bytes: Arc<[u8]>,
        blob_id: Option<String>,
    },
    Dir,
    Symlink,
    Submodule,
    /// A file over the size limit: its content was never read.
    Oversized {
        size: usize,
        limit: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("unsafe path '{0}': paths must be relative, without '.', '..' or empty components")]
    UnsafePath(String),
    #[error("'{0}' does not exist")]
    NotFound(String),
    #[error("'{0}' is a directory")]
    IsADirectory(String),
    #[error("'{0}' is a symbolic link; links are not followed")]
    Symlink(String),
    #[error("'{0}' is a git submodule, which has no content in this repository")]
    Submodule(String),
    #[error("file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Default)]
pub struct RepoTree {
    nodes: BTreeMap<String, Node>,
}

/// Whether `name` can be an entry of a folder: a tree refuses a path with an empty component, `.`, `..` or `\\`.
pub fn is_safe_name(name: &str) -> bool {
    check_path(name).is_ok() && !name.contains('/')
}

fn check_path(path: &str) -> Result<(), TreeError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad { Err(TreeError::UnsafePath(path.to_owned())) } else { Ok(()) }
}

impl RepoTree {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        check_path(path)?;
        let mut parent = path;
        while let Some((dir, _)) = parent.rsplit_once('/') {
            self.nodes.entry(dir.to_owned()).or_insert(Node::Dir);
            parent = dir;
        }
        self.nodes.insert(path.to_owned(), node);
        Ok(())
    }

    pub fn add_file(
        &mut self,
        path: &str,
        bytes: impl Into<Arc<[u8]>>,
        blob_id: Option<String>,
    ) -> Result<(), TreeError> {
        self.add(path, Node::File { bytes: bytes.into(), blob_id })
    }

    /// A file too large to read: loaders that need it report the size instead.
    pub fn add_oversized(&mut self, path: &str, size: usize, limit: usize) -> Result<(), TreeError> {
        self.add(path, Node::Oversized { size, limit })
    }

    pub fn add_dir(&mut self, path: &str) -> Result<(), TreeError> {
        self.add(path, Node::Dir)
    }

    pub fn add_symlink(&mut self, path: &str) -> Result<(), TreeError> {
        self.add(path, Node::Symlink)
    }

    pub fn add_submodule(&mut self, path: &str) -> Result<(), TreeError> {
        self.add(path, Node::Submodule)
    }

    pub fn kind(&self, path: &str) -> Option<EntryKind> {
        if path.is_empty() {
            return Some(EntryKind::Dir);
        }
        self.nodes.get(path).map(|n| match n {
            Node::File { .. } | Node::Oversized { .. } => EntryKind::File,
            Node::Dir => EntryKind::Dir,
            Node::Symlink => EntryKind::Symlink,
            Node::Submodule => EntryKind::Submodule,
        })
    }

    pub fn is_dir(&self, path: &str) -> bool {
        self.kind(path) == Some(EntryKind::Dir)
    }

    pub fn is_file(&self, path: &str) -> bool {
        self.kind(path) == Some(EntryKind::File)
    }

    /// The entries directly inside `dir` ("" is the root), sorted by name: unlike `os.listdir`, the order never
    /// depends on the file system.
    pub fn list(&self, dir: &str) -> Vec<Entry> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(path, _)| !path[prefix.len()..].contains('/'))
            .filter_map(|(path, _)| {
                let name = path[prefix.len()..].to_owned();
                self.kind(path).map(|kind| Entry { name, kind })
            })
            .collect()
    }

    /// Every file under `dir`, recursively, sorted by path.
    pub fn files_under(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(_, node)| matches!(node, Node::File { .. } | Node::Oversized { .. }))
            .map(|(path, _)| path.clone())
            .collect()
    }

    pub fn read(&self, path: &str) -> Result<&[u8], TreeError> {
        match self.nodes.get(path) {
            Some(Node::File { bytes, .. }) => Ok(bytes),
            Some(Node::Dir) => Err(TreeError::IsADirectory(path.to_owned())),
            Some(Node::Symlink) => Err(TreeError::Symlink(path.to_owned())),
            Some(Node::Submodule) => Err(TreeError::Submodule(path.to_owned())),
            Some(Node::Oversized { size, limit }) => Err(TreeError::TooLarge { size: *size, limit: *limit }),
            None => Err(TreeError::NotFound(path.to_owned())),
        }
    }

    pub fn blob_id(&self, path: &str) -> Option<&str> {
        match self.nodes.get(path) {
            Some(Node::File { blob_id, .. }) => blob_id.as_deref(),
            _ => None,
        }
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.nodes.values().filter(|n| matches!(n, Node::File { .. } | Node::Oversized { .. })).count()
    }
}

/// Python's `os.path.splitext(name)[0]`: drops the last extension; a leading dot does not start one.
pub fn stem(name: &str) -> &str {
    let start = name.len() - name.trim_start_matches('.').len();
    match name[start..].rfind('.') {
        Some(i) => &name[..start + i],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let mut tree = RepoTree::new();
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", "", "a\\b"] {
            assert_eq!(tree.add_file(bad, b"x".to_vec(), None), Err(TreeError::UnsafePath(bad.to_owned())));
        }
    }

    #[test]
    fn listing_and_reading() {
        let mut tree = RepoTree::new();
        tree.add_file("config_contexts/b.yaml", b"b".to_vec(), None).unwrap();
        tree.add_file("config_contexts/a.yaml", b"a".to_vec(), Some("abc".into())).unwrap();
        tree.add_file("config_contexts/locations/x.json", b"{}".to_vec(), None).unwrap();
        tree.add_symlink("config_contexts/link.yaml").unwrap();
        let names: Vec<_> = tree.list("config_contexts").into_iter().map(|e| (e.name, e.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("a.yaml".into(), EntryKind::File),
                ("b.yaml".into(), EntryKind::File),
                ("link.yaml".into(), EntryKind::Symlink),
                ("locations".into(), EntryKind::Dir),
            ]
        );
        assert_eq!(tree.read("config_contexts/a.yaml").unwrap(), b"a");
        assert_eq!(tree.blob_id("config_contexts/a.yaml"), Some("abc"));
        assert!(matches!(tree.read("config_contexts/link.yaml"), Err(TreeError::Symlink(_))));
        assert!(matches!(tree.read("config_contexts"), Err(TreeError::IsADirectory(_))));
        assert_eq!(tree.list("").len(), 1);
        assert_eq!(tree.files_under("config_contexts").len(), 3);
    }

    #[test]
    fn stems_as_python_splitext() {
        for (name, expected) in [
            ("NYC 01.json", "NYC 01"),
            ("a.b.yaml", "a.b"),
            ("README", "README"),
            (".hidden", ".hidden"),
            ("..x.y", "..x"),
        ] {
            assert_eq!(stem(name), expected, "{name}");
        }
    }
}
