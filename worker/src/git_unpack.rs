//! Small fetched packs unpacked into loose objects, as `git fetch` does.
//!
//! A fetch of a few new commits brings a small thin pack: its objects are deltas against objects the mirror already
//! holds. libgit2's indexer keeps every pack it receives and makes it self-contained: it appends a whole copy of
//! each base the pack refers to, deflated at zlib's default level, and hashes the lot again. For one changed file in
//! a folder of 100,000 files that copy is the folder's previous tree object, 4.7 MB: 160 to 220 ms of the fetch, and
//! 2.5 MB more mirror per push. git itself unpacks a pack of fewer than 100 objects (`fetch.unpackLimit`) into
//! loose objects instead, and so does the mirror here: [`install`] puts an object database backend in front of the
//! mirror's own, which takes the pack libgit2 downloads. A small pack is held in memory, checked against its
//! checksum, its deltas resolved against each other and the mirror (a large tree the last sync held comes from
//! [`crate::git_tree`]'s memory), and every object written loose: by libgit2's own writer (which hashes it, and
//! deflates at zlib's fastest level), or, from 1 MiB, by [`write_loose`] on two cores. Any other pack, or one
//! this module will not take (too large, damaged, a base missing), goes to libgit2's indexer as before, from its
//! first byte: the indexer reports a fault in it as it always has.

#![allow(unsafe_code)] // The backend is a C structure of callbacks that libgit2 calls; `install` explains its safety.

use std::collections::HashMap;
use std::ffi::{CString, c_int, c_void};
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress, Status};
use git2::{Binding, ObjectType, Odb, Oid, Repository};
use libgit2_sys as raw;

use crate::git_tree;

/// Packs of fewer objects are unpacked: git's default `fetch.unpackLimit`.
pub const UNPACK_LIMIT: u32 = 100;

/// Most bytes of pack held in memory to be unpacked; a larger pack goes to the indexer as it arrives.
const MAX_PACK_BYTES: usize = 8 << 20;

/// Most bytes the objects of one unpacking (and the bases read from the mirror for them) may hold at once.
const MAX_OBJECT_BYTES: usize = 64 << 20;

/// Objects this large or larger are written by [`write_loose`]: hashed and stored at once, not deflated.
const WRITE_APART_FROM: usize = 1 << 20;

/// The length of a SHA-1 object id, and of a pack's trailing checksum.
const ID_LEN: usize = 20;

/// What an unpacking wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Objects written (every object of the pack).
    pub objects: usize,
    /// Of them, those the pack sent as deltas.
    pub deltas: usize,
    /// Bases read from the mirror for the pack's deltas (a thin pack's outside bases).
    pub bases: usize,
}

/// One entry of a pack, inflated: an object, or a delta and what it applies to.
struct Entry {
    base: Base,
    data: Vec<u8>,
}

enum Base {
    /// A whole object.
    None(ObjectType),
    /// A delta against the pack's entry of this index.
    Entry(usize),
    /// A delta against the object of this id, in the pack or in the mirror.
    Id(Oid),
}

/// Unpacks `pack` (a whole pack, with its header and checksum) into `odb` as loose objects. The error says why the
/// pack was not taken; objects written before it stay (they are valid objects of their ids).
pub fn unpack(pack: &[u8], odb: &Odb<'_>, objects_dir: &Path) -> Result<Unpacked, String> {
    let mut budget = MAX_OBJECT_BYTES;
    let mut entries = parse(pack, &mut budget)?;
    let deltas = entries.iter().filter(|e| !matches!(e.base, Base::None(_))).count();
    // Resolved objects, kept while a later delta may need them as its base.
    let mut objects: Vec<Option<(ObjectType, Arc<Vec<u8>>)>> = (0..entries.len()).map(|_| None).collect();
    let mut by_id: HashMap<Oid, usize> = HashMap::new();
    let mut outside: HashMap<Oid, Outside<'_>> = HashMap::new();
    let mut pending: Vec<usize> = (0..entries.len()).collect();
    while !pending.is_empty() {
        let mut waiting = Vec::new();
        for &i in &pending {
            let resolved = match entries[i].base {
                Base::None(kind) => Some((kind, std::mem::take(&mut entries[i].data))),
                Base::Entry(b) => match &objects[b] {
                    Some((kind, base)) => Some((*kind, apply_delta(base, &entries[i].data, &mut budget)?)),
                    None => None,
                },
                Base::Id(id) => {
                    let base = match by_id.get(&id) {
                        Some(&b) => objects[b].as_ref().map(|(kind, data)| (*kind, data.as_slice())),
                        None => outside.get(&id).map(Outside::object),
                    };
                    match base {
                        Some((kind, base)) => Some((kind, apply_delta(base, &entries[i].data, &mut budget)?)),
                        None => None,
                    }
                }
            };
            let Some((kind, data)) = resolved else {
                waiting.push(i);
                continue;
            };
            entries[i].data = Vec::new();
            let id = if data.len() >= WRITE_APART_FROM {
                write_loose(objects_dir, kind, &data)?
            } else {
                odb.write(kind, &data).map_err(|e| format!("writing an object: {}", e.message()))?
            };
            let data = Arc::new(data);
            if kind == ObjectType::Tree && data.len() >= git_tree::KEEP_FROM {
                git_tree::remember(id, data.clone());
            }
            by_id.insert(id, i);
            objects[i] = Some((kind, data));
        }
        if waiting.len() == pending.len() {
            // Nothing resolved this round: what is left waits on bases outside the pack, read from the mirror (a
            // thin pack's), on objects of the pack that wait on those, or on nothing that exists.
            let before = outside.len();
            for &i in &waiting {
                if let Base::Id(id) = entries[i].base
                    && !outside.contains_key(&id)
                    && let Some(base) = read_base(odb, id, &mut budget)?
                {
                    outside.insert(id, base);
                }
            }
            if outside.len() == before {
                return Err("a delta's base is neither in the pack nor in the mirror".to_owned());
            }
        }
        pending = waiting;
    }
    Ok(Unpacked { objects: entries.len(), deltas, bases: outside.len() })
}

/// A delta's base outside the pack: a tree kept in memory, or an object read from the mirror.
enum Outside<'a> {
    Kept(Arc<Vec<u8>>),
    Read(git2::OdbObject<'a>),
}

impl Outside<'_> {
    fn object(&self) -> (ObjectType, &[u8]) {
        match self {
            Self::Kept(data) => (ObjectType::Tree, data),
            Self::Read(object) => (object.kind(), object.data()),
        }
    }
}

/// An object of the mirror, as a delta's base (None: the mirror does not hold it). A tree a sync of this
/// repository just held (the previous version of a large folder, most often) comes from memory.
fn read_base<'a>(odb: &'a Odb<'_>, id: Oid, budget: &mut usize) -> Result<Option<Outside<'a>>, String> {
    if let Some(data) = git_tree::kept(id) {
        *budget = budget.checked_sub(data.len()).ok_or_else(|| format!("the base {id} of a delta is too large"))?;
        return Ok(Some(Outside::Kept(data)));
    }
    let Ok((size, _)) = odb.read_header(id) else { return Ok(None) };
    *budget = budget.checked_sub(size).ok_or_else(|| format!("the base {id} of a delta is too large to unpack"))?;
    let Ok(object) = odb.read(id) else { return Ok(None) };
    if object.kind() == ObjectType::Tree && object.len() >= git_tree::KEEP_FROM {
        let data = Arc::new(object.data().to_vec());
        git_tree::remember(id, data.clone());
        return Ok(Some(Outside::Kept(data)));
    }
    Ok(Some(Outside::Read(object)))
}

/// Writes a large object loose, where libgit2 would (`objects/ab/cdef...`, read-only), hashing it (SHA-1 with
/// collision detection, libgit2's) on one core while the other wraps it in a zlib stream of stored blocks, not
/// deflated. A large loose object lives only until the mirror's next compaction, which packs it as a delta of its
/// neighbours (a few hundred bytes for a folder's tree that changed by one entry), so deflating it first is
/// wasted: for the 4.7 MB tree of a folder of 100,000 files, libgit2's writer takes 30 ms on one core (9 to hash,
/// 21 to deflate at zlib's fastest level), this 9 ms. The mirror keeps the 4.7 MB instead of 2.7 until then
/// ([`crate::git::COMPACT_AT`] counts them). An object already there is left as it is.
fn write_loose(objects_dir: &Path, kind: ObjectType, data: &[u8]) -> Result<Oid, String> {
    // Written under a temporary name beside the object folders while it is hashed, then moved to its id's.
    let tmp = objects_dir.join(format!("tmp_object_gitfleet_{}", uuid::Uuid::new_v4().simple()));
    let (hashed, stored) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| Oid::hash_object(kind, data));
        (hashing.join(), store(&tmp, kind, data))
    });
    let placed = (|| {
        stored.map_err(|e| format!("writing an object: {e}"))?;
        let id = hashed
            .map_err(|_| "hashing an object failed".to_owned())?
            .map_err(|e| format!("hashing an object: {}", e.message()))?;
        let hex = id.to_string();
        let dir = objects_dir.join(&hex[..2]);
        let path = dir.join(&hex[2..]);
        if !path.exists() {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444)))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("writing object {id}: {e}"))?;
        }
        Ok(id)
    })();
    // Gone once moved; otherwise (the object was there already, or a step failed) removed.
    let _ = std::fs::remove_file(&tmp);
    placed
}

/// Writes a loose object's content (its header, then `data`) to `path` as a zlib stream of stored blocks.
fn store(path: &Path, kind: ObjectType, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let file = std::io::BufWriter::with_capacity(256 << 10, std::fs::File::create(path)?);
    let mut out = flate2::write::ZlibEncoder::new(file, flate2::Compression::none());
    out.write_all(format!("{} {}\0", kind.str(), data.len()).as_bytes())?;
    out.write_all(data)?;
    out.finish()?.flush()
}

/// The entries of a pack, inflated, after its checksum and header are checked.
fn parse(pack: &[u8], budget: &mut usize) -> Result<Vec<Entry>, String> {
    if pack.len() < 12 + ID_LEN {
        return Err("the pack is shorter than its header and checksum".to_owned());
    }
    let (body, checksum) = pack.split_at(pack.len() - ID_LEN);
    if openssl::sha::sha1(body) != checksum {
        return Err("the pack's checksum does not match its contents".to_owned());
    }
    let count = header(body)?;
    if count >= UNPACK_LIMIT {
        return Err(format!("the pack holds {count} objects"));
    }
    let truncated = || "the pack ends inside an object".to_owned();
    let mut pos = 12;
    let mut offsets = Vec::with_capacity(count as usize);
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = pos;
        let mut byte = *body.get(pos).ok_or_else(truncated)?;
        pos += 1;
        let kind = (byte >> 4) & 7;
        let mut size = u64::from(byte & 15);
        let mut shift = 4;
        while byte & 0x80 != 0 {
            byte = *body.get(pos).ok_or_else(truncated)?;
            pos += 1;
            if shift > 57 {
                return Err("an object's size does not fit".to_owned());
            }
            size |= u64::from(byte & 0x7f) << shift;
            shift += 7;
        }
        let base = match kind {
            1 => Base::None(ObjectType::Commit),
            2 => Base::None(ObjectType::Tree),
            3 => Base::None(ObjectType::Blob),
            4 => Base::None(ObjectType::Tag),
            6 => {
                // The base's distance back from this entry, in git's offset encoding (each continuation adds one).
                let mut byte = *body.get(pos).ok_or_else(truncated)?;
                pos += 1;
                let mut distance = u64::from(byte & 0x7f);
                while byte & 0x80 != 0 {
                    byte = *body.get(pos).ok_or_else(truncated)?;
                    pos += 1;
                    distance = distance
                        .checked_add(1)
                        .and_then(|d| d.checked_mul(128))
                        .ok_or_else(|| "a delta's base offset does not fit".to_owned())?
                        | u64::from(byte & 0x7f);
                }
                let at = usize::try_from(distance).ok().and_then(|d| start.checked_sub(d));
                let index = at.and_then(|at| offsets.binary_search(&at).ok());
                Base::Entry(index.ok_or_else(|| "a delta's base offset names no earlier object".to_owned())?)
            }
            7 => {
                let id = body.get(pos..pos + ID_LEN).ok_or_else(truncated)?;
                pos += ID_LEN;
                Base::Id(Oid::from_bytes(id).map_err(|e| e.message().to_owned())?)
            }
            other => return Err(format!("an object of unknown type {other}")),
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= *budget)
            .ok_or_else(|| "the pack's objects are too large to unpack".to_owned())?;
        *budget -= size;
        let (data, used) = inflate(&body[pos..], size)?;
        pos += used;
        offsets.push(start);
        entries.push(Entry { base, data });
    }
    if pos != body.len() {
        return Err("the pack has bytes after its last object".to_owned());
    }
    Ok(entries)
}

/// The object count of a pack's header (`PACK`, version 2 or 3).
fn header(body: &[u8]) -> Result<u32, String> {
    let word = |at: usize| body.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if body.get(..4) != Some(b"PACK") {
        return Err("not a pack".to_owned());
    }
    match word(4) {
        Some(2 | 3) => {}
        other => return Err(format!("pack version {other:?}")),
    }
    word(8).ok_or_else(|| "the pack's header is cut short".to_owned())
}

/// One zlib stream from the start of `input`, which must inflate to exactly `size` bytes. Returns the bytes and how
/// much of `input` the stream took.
fn inflate(input: &[u8], size: usize) -> Result<(Vec<u8>, usize), String> {
    let mut zlib = Decompress::new(true);
    // One byte of room more than the header says: an object that inflates to more is caught, not cut.
    let mut out = Vec::with_capacity(size + 1);
    loop {
        let before = (zlib.total_in(), zlib.total_out());
        let taken = usize::try_from(zlib.total_in()).map_err(|e| e.to_string())?;
        let status = zlib
            .decompress_vec(&input[taken..], &mut out, FlushDecompress::None)
            .map_err(|e| format!("an object's data does not inflate: {e}"))?;
        if out.len() > size {
            return Err("an object inflates to more than its header says".to_owned());
        }
        if status == Status::StreamEnd {
            break;
        }
        if (zlib.total_in(), zlib.total_out()) == before {
            return Err("an object's data ends early".to_owned());
        }
    }
    if out.len() != size {
        return Err("an object inflates to less than its header says".to_owned());
    }
    Ok((out, usize::try_from(zlib.total_in()).map_err(|e| e.to_string())?))
}

/// git's delta format: the base's size, the result's size, then instructions that copy a range of the base or
/// insert bytes of the delta.
fn apply_delta(base: &[u8], delta: &[u8], budget: &mut usize) -> Result<Vec<u8>, String> {
    let bad = |what: &str| format!("a delta {what}");
    let mut pos = 0;
    let varint = |pos: &mut usize| -> Result<usize, String> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *delta.get(*pos).ok_or_else(|| bad("is cut short"))?;
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| bad("names a size that does not fit"));
            }
            shift += 7;
            if shift > 63 {
                return Err(bad("names a size that does not fit"));
            }
        }
    };
    if varint(&mut pos)? != base.len() {
        return Err(bad("was made against a base of another size"));
    }
    let size = varint(&mut pos)?;
    *budget = budget.checked_sub(size).ok_or_else(|| bad("gives an object too large to unpack"))?;
    let mut out = Vec::with_capacity(size);
    while let Some(&op) = delta.get(pos) {
        pos += 1;
        let chunk = if op & 0x80 != 0 {
            let mut field = |bits: u8, first: u8| -> Result<usize, String> {
                let mut value = 0usize;
                for i in 0..bits {
                    if op & (first << i) != 0 {
                        value |= usize::from(*delta.get(pos).ok_or_else(|| bad("is cut short"))?) << (8 * i);
                        pos += 1;
                    }
                }
                Ok(value)
            };
            let offset = field(4, 0x01)?;
            let len = match field(3, 0x10)? {
                0 => 0x10000,
                len => len,
            };
            offset.checked_add(len).and_then(|end| base.get(offset..end)).ok_or_else(|| bad("copies past its base"))?
        } else if op != 0 {
            let len = usize::from(op);
            let chunk = delta.get(pos..pos + len).ok_or_else(|| bad("is cut short"))?;
            pos += len;
            chunk
        } else {
            return Err(bad("holds the reserved instruction 0"));
        };
        if out.len() + chunk.len() > size {
            return Err(bad("gives more than the size it names"));
        }
        out.extend_from_slice(chunk);
    }
    if out.len() != size {
        return Err(bad("gives less than the size it names"));
    }
    Ok(out)
}

/// The backend: libgit2's structure first, so libgit2's pointer to it is a pointer to this.
#[repr(C)]
struct Backend {
    parent: raw::git_odb_backend,
    /// The mirror's pack folder, for the indexer a pack goes to when it is not unpacked.
    pack_dir: CString,
    /// The mirror's object folder, where large objects are written loose.
    objects_dir: PathBuf,
}

/// One download: libgit2's structure first, as for [`Backend`].
#[repr(C)]
struct WritePack {
    parent: raw::git_odb_writepack,
    odb: *mut raw::git_odb,
    pack_dir: CString,
    objects_dir: PathBuf,
    progress: raw::git_indexer_progress_cb,
    payload: *mut c_void,
    /// The pack so far, while it may be unpacked.
    held: Vec<u8>,
    /// libgit2's indexer, once the pack goes to it (null before).
    indexer: *mut raw::git_indexer,
}

/// libgit2's priority of its pack backend; ours goes before it.
const PRIORITY: c_int = 3;

/// Puts the unpacking backend in front of `repo`'s object database, for its fetches. Call it once per opened
/// repository (a second would only stand behind the first).
///
/// Safety of the callbacks below: libgit2 hands each back the pointer it was given here or by [`writepack`]
/// (never another), calls the download's ones from the one thread that fetches, and frees each once, through its
/// `free`. No callback lets a panic cross into C.
pub fn install(repo: &Repository) -> Result<(), git2::Error> {
    let odb = repo.odb()?;
    let objects_dir = repo.path().join("objects");
    let pack_dir = CString::new(objects_dir.join("pack").as_os_str().as_encoded_bytes())
        .map_err(|_| git2::Error::from_str("the mirror's path holds a NUL byte"))?;
    // SAFETY: an all-zero `git_odb_backend` is valid (integers, null pointers and absent callbacks), and
    // `git_odb_init_backend` only sets its version.
    let mut parent: raw::git_odb_backend = unsafe { std::mem::zeroed() };
    // SAFETY: `parent` is a live, writable backend structure.
    if unsafe { raw::git_odb_init_backend(&raw mut parent, raw::GIT_ODB_BACKEND_VERSION) } < 0 {
        return Err(git2::Error::last_error(-1));
    }
    parent.writepack = Some(writepack);
    parent.foreach = Some(foreach); // libgit2 calls a backend's `foreach` without checking that it has one
    parent.free = Some(free_backend);
    let backend = Box::into_raw(Box::new(Backend { parent, pack_dir, objects_dir }));
    // SAFETY: `backend` starts with its `git_odb_backend`; on success the database owns it and frees it with
    // `free_backend`, on failure it is still ours.
    let added = unsafe { raw::git_odb_add_backend(odb.raw(), backend.cast(), PRIORITY) };
    if added < 0 {
        // SAFETY: not added, so not freed by libgit2: reclaimed once, here.
        drop(unsafe { Box::from_raw(backend) });
        return Err(git2::Error::last_error(added));
    }
    Ok(())
}

extern "C" fn writepack(
    out: *mut *mut raw::git_odb_writepack,
    backend: *mut raw::git_odb_backend,
    odb: *mut raw::git_odb,
    progress: raw::git_indexer_progress_cb,
    payload: *mut c_void,
) -> c_int {
    // SAFETY: `backend` is the `Backend` that `install` added.
    let backend_ref = unsafe { &*backend.cast::<Backend>() };
    let pack = Box::new(WritePack {
        parent: raw::git_odb_writepack { backend, append: Some(append), commit: Some(commit), free: Some(free) },
        odb,
        pack_dir: backend_ref.pack_dir.clone(),
        objects_dir: backend_ref.objects_dir.clone(),
        progress,
        payload,
        held: Vec::new(),
        indexer: std::ptr::null_mut(),
    });
    // SAFETY: `out` is libgit2's place for the new writer, which it frees through `free`.
    unsafe { *out = Box::into_raw(pack).cast() };
    0
}

extern "C" fn append(
    pack: *mut raw::git_odb_writepack,
    data: *const c_void,
    size: usize,
    stats: *mut raw::git_indexer_progress,
) -> c_int {
    // SAFETY: `pack` is the `WritePack` made by `writepack`, and `data` holds `size` bytes.
    let (pack, data) = unsafe { (&mut *pack.cast::<WritePack>(), std::slice::from_raw_parts(data.cast::<u8>(), size)) };
    guarded(|| {
        if !pack.indexer.is_null() {
            return pack.index(data, stats);
        }
        pack.held.extend_from_slice(data);
        let small = pack.held.get(8..12).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) < UNPACK_LIMIT);
        if small == Some(false) || pack.held.len() > MAX_PACK_BYTES {
            return pack.hand_to_indexer(stats);
        }
        0
    })
}

unsafe extern "C" fn commit(pack: *mut raw::git_odb_writepack, stats: *mut raw::git_indexer_progress) -> c_int {
    // SAFETY: as in `append`.
    let pack = unsafe { &mut *pack.cast::<WritePack>() };
    guarded(|| {
        if pack.indexer.is_null() {
            // SAFETY: the database this download writes to outlives it; `ManuallyDrop` leaves its reference alone.
            let odb = ManuallyDrop::new(unsafe { Odb::from_raw(pack.odb) });
            match unpack(&pack.held, &odb, &pack.objects_dir) {
                Ok(unpacked) => return pack.report(&unpacked, stats),
                Err(reason) => {
                    tracing::debug!(reason, "the fetched pack goes to libgit2's indexer");
                    let handed = pack.hand_to_indexer(stats);
                    if handed < 0 {
                        return handed;
                    }
                }
            }
        }
        // SAFETY: the indexer is live until `free`.
        unsafe { raw::git_indexer_commit(pack.indexer, stats) }
    })
}

unsafe extern "C" fn free(pack: *mut raw::git_odb_writepack) {
    if !pack.is_null() {
        // SAFETY: made by `writepack` with `Box::into_raw`, freed once, here.
        drop(unsafe { Box::from_raw(pack.cast::<WritePack>()) });
    }
}

extern "C" fn free_backend(backend: *mut raw::git_odb_backend) {
    if !backend.is_null() {
        // SAFETY: made by `install` with `Box::into_raw`, freed once, here.
        drop(unsafe { Box::from_raw(backend.cast::<Backend>()) });
    }
}

/// The backend holds no objects of its own: nothing to visit.
extern "C" fn foreach(_: *mut raw::git_odb_backend, _: raw::git_odb_foreach_cb, _: *mut c_void) -> c_int {
    0
}

/// Runs a callback's body, turning a panic into libgit2's generic error instead of letting it cross into C.
fn guarded(body: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(-1)
}

impl WritePack {
    /// Hands the download to libgit2's indexer: what was held first, then (through [`WritePack::index`]) the rest.
    fn hand_to_indexer(&mut self, stats: *mut raw::git_indexer_progress) -> c_int {
        // SAFETY: the options structure is initialised by libgit2 before use.
        let mut options: raw::git_indexer_options = unsafe { std::mem::zeroed() };
        // SAFETY: `options` is live and writable.
        let initialised = unsafe { raw::git_indexer_options_init(&raw mut options, raw::GIT_INDEXER_OPTIONS_VERSION) };
        if initialised < 0 {
            return initialised;
        }
        options.progress_cb = self.progress;
        options.progress_cb_payload = self.payload;
        // SAFETY: the folder is a NUL-terminated path, `odb` the live database (for a thin pack's bases); the
        // indexer is freed in `Drop`. Mode 0 is libgit2's default, as its pack backend asks.
        let created = unsafe {
            raw::git_indexer_new(&raw mut self.indexer, self.pack_dir.as_ptr(), 0, self.odb, &raw mut options)
        };
        if created < 0 {
            self.indexer = std::ptr::null_mut();
            return created;
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() { 0 } else { self.index(&held, stats) }
    }

    fn index(&mut self, data: &[u8], stats: *mut raw::git_indexer_progress) -> c_int {
        // SAFETY: the indexer is live, and `data` is a slice.
        unsafe { raw::git_indexer_append(self.indexer, data.as_ptr().cast(), data.len(), stats) }
    }

    /// Counts what was unpacked in the fetch's progress, as the indexer counts a pack, and reports it once.
    fn report(&self, unpacked: &Unpacked, stats: *mut raw::git_indexer_progress) -> c_int {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        // SAFETY: libgit2's progress structure for this download, live while it runs.
        let stats = unsafe { &mut *stats };
        stats.total_objects = count(unpacked.objects);
        stats.received_objects = count(unpacked.objects);
        stats.indexed_objects = count(unpacked.objects);
        stats.local_objects = count(unpacked.bases);
        stats.total_deltas = count(unpacked.deltas);
        stats.indexed_deltas = count(unpacked.deltas);
        match self.progress {
            Some(progress) => progress(stats, self.payload),
            None => 0,
        }
    }
}

impl Drop for WritePack {
    fn drop(&mut self) {
        if !self.indexer.is_null() {
            // SAFETY: made by `git_indexer_new`, freed once, here.
            unsafe { raw::git_indexer_free(self.indexer) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::git::tests::git;

    /// git's own pack of `revs` (`pack-objects --revs` input: `new`, `^old`), with `options`.
    fn pack_of(dir: &Path, revs: &str, options: &[&str]) -> Vec<u8> {
        let mut child = Command::new("git")
            .args(["pack-objects", "--revs", "--stdout", "-q"])
            .args(options)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(revs.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// A source repository with a folder of 300 files (c1), and c2 changing one of them and adding one; a mirror
    /// that holds c1. Returns (c1, c2).
    fn source_and_mirror(src: &Path, mirror: &Path) -> (String, String) {
        git(src.parent().unwrap(), &["init", "-q", "-b", "main", src.to_str().unwrap()]);
        fs::create_dir(src.join("devices")).unwrap();
        for n in 0..300 {
            fs::write(src.join(format!("devices/d{n:03}.json")), format!("{{\"device\": {n}, \"site\": \"a\"}}"))
                .unwrap();
        }
        git(src, &["add", "."]);
        git(src, &["commit", "-qm", "c1"]);
        let c1 = git(src, &["rev-parse", "HEAD"]);
        fs::write(src.join("devices/d150.json"), "{\"device\": 150, \"site\": \"b\"}").unwrap();
        fs::write(src.join("devices/new.json"), "{}").unwrap();
        git(src, &["add", "."]);
        git(src, &["commit", "-qm", "c2"]);
        let c2 = git(src, &["rev-parse", "HEAD"]);
        Repository::init_bare(mirror).unwrap();
        let url = format!("file://{}", src.display());
        git(mirror, &["fetch", "-q", &url, &format!("{c1}:refs/heads/main")]);
        (c1, c2)
    }

    /// Every object `c2` has that `c1` lacks, as git lists them.
    fn new_objects(src: &Path, c1: &str, c2: &str) -> Vec<Oid> {
        git(src, &["rev-list", "--objects", c2, &format!("^{c1}")])
            .lines()
            .map(|l| Oid::from_str(l.split(' ').next().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn a_thin_pack_is_unpacked_against_the_mirror_as_loose_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror.git"));
        let (c1, c2) = source_and_mirror(&src, &mirror);
        let pack = pack_of(&src, &format!("{c2}\n^{c1}\n"), &["--thin", "--delta-base-offset"]);
        let repo = Repository::open_bare(&mirror).unwrap();
        let odb = repo.odb().unwrap();
        let wanted = new_objects(&src, &c1, &c2);
        assert!(wanted.iter().all(|id| !odb.exists(*id)));

        let unpacked = unpack(&pack, &odb, &mirror.join("objects")).unwrap();
        assert_eq!(unpacked.objects, wanted.len());
        assert!(unpacked.deltas >= 1 && unpacked.bases >= 1, "a thin pack, resolved against the mirror: {unpacked:?}");
        let source = Repository::open(&src).unwrap();
        let source = source.odb().unwrap();
        for id in wanted {
            let (ours, theirs) = (odb.read(id).unwrap(), source.read(id).unwrap());
            assert_eq!((ours.kind(), ours.data()), (theirs.kind(), theirs.data()), "{id}");
        }
        let packs = fs::read_dir(mirror.join("objects/pack")).unwrap().count();
        repo.reference("refs/heads/main", Oid::from_str(&c2).unwrap(), true, "test").unwrap();
        git(&mirror, &["fsck", "--no-dangling"]);
        assert_eq!(fs::read_dir(mirror.join("objects/pack")).unwrap().count(), packs, "no pack was added");
    }

    #[test]
    fn a_large_tree_is_written_apart_and_kept_and_its_base_read_from_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror.git"));
        // A folder of 25,000 entries: its tree object is over 1 MiB.
        let source = Repository::init_bare(&src).unwrap();
        let commit = |many: Oid, parent: Option<&git2::Commit<'_>>| {
            let mut root = source.treebuilder(None).unwrap();
            root.insert("many", many, 0o040_000).unwrap();
            let root = source.find_tree(root.write().unwrap()).unwrap();
            let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(1, 0)).unwrap();
            let parents: Vec<&git2::Commit<'_>> = parent.into_iter().collect();
            source.commit(Some("refs/heads/main"), &sig, &sig, "c", &root, &parents).unwrap()
        };
        let blob = source.blob(b"x").unwrap();
        let mut many = source.treebuilder(None).unwrap();
        for n in 0..25_000 {
            many.insert(format!("device-{n:05}.json"), blob, 0o100_644).unwrap();
        }
        let old_many = many.write().unwrap();
        let c1 = commit(old_many, None);
        many.insert("device-12345.json", source.blob(b"changed").unwrap(), 0o100_644).unwrap();
        let new_many = many.write().unwrap();
        let c2 = commit(new_many, Some(&source.find_commit(c1).unwrap()));
        assert!(source.find_object(new_many, None).unwrap().as_tree().unwrap().len() == 25_000);
        Repository::init_bare(&mirror).unwrap();
        git(&mirror, &["fetch", "-q", &format!("file://{}", src.display()), &format!("{c1}:refs/heads/main")]);
        let pack = pack_of(&src, &format!("{c2}\n^{c1}\n"), &["--thin", "--delta-base-offset"]);
        assert!(pack.len() < 64 << 10, "the new tree comes as a delta of the old: {} bytes", pack.len());

        let repo = Repository::open_bare(&mirror).unwrap();
        let odb = repo.odb().unwrap();
        let unpacked = unpack(&pack, &odb, &mirror.join("objects")).unwrap();
        assert_eq!((unpacked.objects, unpacked.bases), (4, 1), "{unpacked:?}");
        // Written loose by this module's writer: readable, read-only, the same bytes as the source's, stored.
        let hex = new_many.to_string();
        let file = mirror.join("objects").join(&hex[..2]).join(&hex[2..]);
        let mode = fs::metadata(&file).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o444);
        let source_odb = source.odb().unwrap();
        let (ours, theirs) = (odb.read(new_many).unwrap(), source_odb.read(new_many).unwrap());
        assert_eq!((ours.kind(), ours.data()), (theirs.kind(), theirs.data()));
        assert!(fs::metadata(&file).unwrap().len() > theirs.len() as u64, "stored, not deflated");
        repo.reference("refs/heads/main", c2, true, "test").unwrap();
        git(&mirror, &["fsck", "--strict", "--no-dangling"]);
        // Both versions of the folder are kept in memory for the comparison that follows.
        assert_eq!(git_tree::kept(new_many).as_deref().map(Vec::as_slice), Some(theirs.data()));
        assert!(git_tree::kept(old_many).is_some());

        // A second mirror holding the old version: its base is the tree kept in memory, whatever the mirror
        // holds under that id (here, nothing: the base is read from memory alone).
        let other = tmp.path().join("other.git");
        Repository::init_bare(&other).unwrap();
        let other_repo = Repository::open_bare(&other).unwrap();
        let unpacked = unpack(&pack, &other_repo.odb().unwrap(), &other.join("objects")).unwrap();
        assert_eq!(unpacked.bases, 1);
        assert_eq!(other_repo.odb().unwrap().read(new_many).unwrap().data(), theirs.data());
        // Written again where it is: left as it is.
        assert_eq!(unpack(&pack, &odb, &mirror.join("objects")).unwrap().objects, 4);
        let names = fs::read_dir(mirror.join("objects")).unwrap().flatten().map(|e| e.file_name());
        assert!(
            names.map(|n| n.to_string_lossy().into_owned()).all(|n| !n.starts_with("tmp")),
            "no temporary file left"
        );
    }

    #[test]
    fn deltas_against_objects_of_the_same_pack_are_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        git(tmp.path(), &["init", "-q", "-b", "main", src.to_str().unwrap()]);
        let lines: Vec<String> =
            (0..400).map(|n| format!("interface Ethernet{n}\n description uplink {n}\n")).collect();
        for round in 0..3 {
            let mut text = lines.clone();
            text[round * 100] = format!("interface Ethernet{round} changed\n");
            fs::write(src.join("config.txt"), text.concat()).unwrap();
            git(&src, &["add", "."]);
            git(&src, &["commit", "-qm", &format!("round {round}")]);
        }
        let head = git(&src, &["rev-parse", "HEAD"]);
        // Every commit into an empty mirror: the versions of the file are deltas of each other, by offset in one
        // pack and by id in the other.
        for options in [&["--delta-base-offset"][..], &[]] {
            let empty = tmp.path().join(format!("empty{}.git", options.len()));
            let repo = Repository::init_bare(&empty).unwrap();
            let pack = pack_of(&src, &format!("{head}\n"), options);
            let unpacked = unpack(&pack, &repo.odb().unwrap(), &empty.join("objects")).unwrap();
            assert_eq!(unpacked.objects, 9, "{options:?}");
            assert!(unpacked.deltas >= 2 && unpacked.bases == 0, "{options:?}: {unpacked:?}");
            repo.reference("refs/heads/main", Oid::from_str(&head).unwrap(), true, "test").unwrap();
            git(&empty, &["fsck", "--no-dangling"]);
            assert_eq!(git(&empty, &["show", "main~2:config.txt"]), git(&src, &["show", "main~2:config.txt"]));
        }
    }

    #[test]
    fn a_pack_it_cannot_take_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror.git"));
        let (c1, c2) = source_and_mirror(&src, &mirror);
        let thin = pack_of(&src, &format!("{c2}\n^{c1}\n"), &["--thin"]);
        let empty = Repository::init_bare(tmp.path().join("empty.git")).unwrap();
        let err = unpack(&thin, &empty.odb().unwrap(), &empty.path().join("objects")).unwrap_err();
        assert!(err.contains("neither in the pack nor in the mirror"), "{err}");

        let repo = Repository::open_bare(&mirror).unwrap();
        let odb = repo.odb().unwrap();
        let objects = mirror.join("objects");
        let mut damaged = thin.clone();
        damaged[20] ^= 1;
        assert_eq!(unpack(&damaged, &odb, &objects).unwrap_err(), "the pack's checksum does not match its contents");
        let whole = pack_of(&src, &format!("{c2}\n"), &[]);
        assert!(
            unpack(&whole, &odb, &objects).unwrap_err().starts_with("the pack holds 30"),
            "over git's unpack limit"
        );
        assert_eq!(
            unpack(&thin[..20], &odb, &objects).unwrap_err(),
            "the pack is shorter than its header and checksum"
        );
    }

    /// Re-signs a pack whose bytes were changed, so that the checks past the checksum see the change.
    fn resign(pack: &mut [u8]) {
        let at = pack.len() - ID_LEN;
        let sum = openssl::sha::sha1(&pack[..at]);
        pack[at..].copy_from_slice(&sum);
    }

    #[test]
    fn no_changed_byte_of_a_pack_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror.git"));
        let (c1, c2) = source_and_mirror(&src, &mirror);
        let thin = pack_of(&src, &format!("{c2}\n^{c1}\n"), &["--thin", "--delta-base-offset"]);
        let repo = Repository::open_bare(&mirror).unwrap();
        let odb = repo.odb().unwrap();
        for at in 0..thin.len() - ID_LEN {
            for flip in [0x01, 0x80, 0xff] {
                let mut pack = thin.clone();
                pack[at] ^= flip;
                resign(&mut pack);
                // A changed type or size can still make a valid pack of other objects, which is written as any
                // pack the server sends is (under the objects' own ids); otherwise a refusal names its reason.
                if let Err(reason) = unpack(&pack, &odb, &mirror.join("objects")) {
                    assert!(!reason.is_empty());
                }
            }
        }
        assert_eq!(unpack(&thin, &odb, &mirror.join("objects")).unwrap().objects, new_objects(&src, &c1, &c2).len());
    }

    /// Sends `pack` through the object database's pack writer (as a fetch does) in pieces of 4 KiB; the mirror's
    /// pack files after.
    fn write_pack(mirror: &Path, pack: &[u8]) -> (Result<i32, git2::Error>, usize) {
        let repo = Repository::open_bare(mirror).unwrap();
        install(&repo).unwrap();
        let odb = repo.odb().unwrap();
        let mut writer = odb.packwriter().unwrap();
        for piece in pack.chunks(4096) {
            writer.write_all(piece).unwrap();
        }
        let committed = writer.commit();
        let packs = fs::read_dir(mirror.join("objects/pack")).unwrap().flatten();
        (committed, packs.filter(|e| e.path().extension().is_some_and(|x| x == "pack")).count())
    }

    #[test]
    fn the_backend_unpacks_small_packs_and_hands_the_others_to_the_indexer() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror.git"));
        let (c1, c2) = source_and_mirror(&src, &mirror);
        // git's fetch kept the first commit's 300 objects as one pack.
        // Small: unpacked, no pack added.
        let thin = pack_of(&src, &format!("{c2}\n^{c1}\n"), &["--thin", "--delta-base-offset"]);
        assert_eq!(write_pack(&mirror, &thin), (Ok(0), 1));
        let repo = Repository::open_bare(&mirror).unwrap();
        assert!(new_objects(&src, &c1, &c2).iter().all(|id| repo.odb().unwrap().exists(*id)));

        // 100 objects or more: the indexer's pack, from the header on.
        let many = tmp.path().join("many.git");
        Repository::init_bare(&many).unwrap();
        assert_eq!(write_pack(&many, &pack_of(&src, &format!("{c2}\n"), &[])), (Ok(0), 1));
        git(&many, &["fsck", "--no-dangling", &c2]);

        // Few objects but over 8 MiB: handed over once past it, with what was held.
        let mut state = 0x9e37_79b9_7f4a_7c15u64; // xorshift: bytes that do not deflate
        let noise: Vec<u8> = (0..9 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        fs::write(src.join("large.bin"), noise).unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-qm", "c3"]);
        let c3 = git(&src, &["rev-parse", "HEAD"]);
        let large = pack_of(&src, &format!("{c3}\n^{c2}\n"), &["--thin"]);
        assert!(large.len() > MAX_PACK_BYTES);
        assert_eq!(write_pack(&mirror, &large), (Ok(0), 2));
        repo.reference("refs/heads/main", Oid::from_str(&c3).unwrap(), true, "test").unwrap();
        git(&mirror, &["fsck", "--no-dangling"]);

        // One it cannot take goes to the indexer too, whose error stands.
        let orphan = tmp.path().join("orphan.git");
        Repository::init_bare(&orphan).unwrap();
        let (committed, packs) = write_pack(&orphan, &thin);
        assert!(committed.is_err() && packs == 0, "{committed:?}");
    }

    #[test]
    fn deltas_that_overreach_are_refused() {
        let mut budget = 1 << 20;
        // base size 3, result size 2^40: over any budget.
        let huge = [3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x91, 0, 1];
        assert!(apply_delta(b"abc", &huge, &mut budget).unwrap_err().contains("too large"));
        assert!(apply_delta(b"abcd", &[3, 1, 0x91, 0, 1], &mut budget).unwrap_err().contains("another size"));
        assert!(apply_delta(b"abc", &[3, 2, 0x91, 2, 2], &mut budget).unwrap_err().contains("past its base"));
        assert!(apply_delta(b"abc", &[3, 1, 0x91, 0, 2], &mut budget).unwrap_err().contains("more than"));
        assert!(apply_delta(b"abc", &[3, 4, 0x91, 0, 3], &mut budget).unwrap_err().contains("less than"));
        assert!(apply_delta(b"abc", &[3, 4, 0], &mut budget).unwrap_err().contains("reserved"));
        assert!(apply_delta(b"abc", &[3, 4, 5, b'x'], &mut budget).unwrap_err().contains("cut short"));
        assert_eq!(apply_delta(b"abc", &[3, 5, 0x91, 1, 2, 3, b'x', b'y', b'z'], &mut budget).unwrap(), b"bcxyz");
    }
}
