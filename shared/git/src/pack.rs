//! Pack generation: the objects a receiver lacks, streamed as a pack.
//!
//! gix has no `pack-objects` porcelain, and its generation plumbing (`iter_from_counts`) copies
//! every entry into memory and decompresses each object just to learn its size, so this module
//! writes packs itself, on gix-pack's file and header types:
//!
//! 1. count what the receiver lacks ([`crate::count`]: only the boundary is compared, and the
//!    receiver's versions of changed paths are noted as possible thin-pack bases);
//! 2. locate each object in our packs (index lookups; an entry's size is the distance to the
//!    next entry in offset order, as git's reverse index gives it — nothing is decompressed);
//! 3. copy entries as they are stored, in pack order: an object stored whole is copied whole; a
//!    delta is copied as a delta when its base is in this pack (an ofs-delta if the receiver
//!    reads them, else a ref-delta; a delta whose base comes later waits until its base is
//!    written, so bases always precede their deltas) or, in a thin pack, when its base is one the
//!    receiver has; otherwise the object is decoded and deflated whole. Objects outside our packs
//!    (loose ones, alternates) are deflated whole too.
//! 4. a tree or blob that would go whole is first tried as a delta ([`crate::delta`]) against
//!    its previous version at the same path, when the receiver has that (a thin pack) or it is
//!    already written: after a repack the newest version of each file is stored whole, and a
//!    lagging target would otherwise get every changed file whole where `git push` sends a
//!    delta. Only objects up to [`DELTA_MAX`] bytes are tried, and a delta is kept only when it
//!    is under half the object's size.
//!
//! Nothing is buffered beyond one object: the header's object count is the number of counted
//! objects (each is checked to exist before anything is written, so exactly that many entries
//! follow), entries of up to [`STREAM_ABOVE`] bytes are written from the mapped pack, larger
//! ones are read from the pack file in 64 KiB pieces — never held whole, nor left resident — so
//! memory is bounded by the largest object we must decode, not by the pack.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;
use gix_pack::data::entry::Header;

use crate::count;

/// Entries larger than this are read from the pack file piecewise instead of from its mapping.
pub const STREAM_ABOVE: u64 = 1 << 20;
/// Objects larger than this are never delta-encoded here: both versions are held in memory.
pub const DELTA_MAX: u64 = 4 << 20;
const PIECE: usize = 64 << 10;

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    pub objects: u64,
    pub bytes: u64,
}

/// Why a pack could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading our own repository failed (missing object, corrupt pack…).
    #[error("{0}")]
    Local(String),
    /// The writer failed (the connection to the receiver broke).
    #[error("writing pack: {0}")]
    Write(#[source] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

/// What the receiver of a pack accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Deltas may name their base by its offset in the pack (`ofs-delta`); otherwise by id.
    pub ofs_delta: bool,
    /// Deltas may name a base the receiver has and the pack does not carry (a thin pack, which
    /// receive-pack completes; not for a local pack that must stand alone).
    pub thin: bool,
}

impl PackOptions {
    /// A self-contained pack for gix's indexer (ofs-deltas, no external bases).
    pub const LOCAL: PackOptions = PackOptions {
        ofs_delta: true,
        thin: false,
    };
}

/// A writer that counts what passes through it.
pub struct CountingWriter<W> {
    pub inner: W,
    pub count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts what passes through, for the pack's trailing checksum.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: gix::hash::Hasher,
    count: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Send the pack file at `path` as it is (see [`super::push::Forward`]), in 64 KiB pieces:
/// memory does not grow with the pack.
pub fn copy_pack(path: &std::path::Path, out: &mut dyn Write, interrupt: &AtomicBool) -> Result<PackStats, PackError> {
    use std::io::Read;
    let local = |e: std::io::Error| PackError::Local(format!("reading {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(local)?;
    let mut header = [0u8; 12];
    file.read_exact(&mut header).map_err(local)?;
    if &header[..4] != b"PACK" {
        return Err(PackError::Local(format!("{} is not a pack file", path.display())));
    }
    out.write_all(&header).map_err(PackError::Write)?;
    let mut counted = Counted::default();
    counted.add(&header);
    let mut buf = vec![0u8; PIECE];
    loop {
        if interrupt.load(Ordering::Relaxed) {
            return Err(PackError::Interrupted);
        }
        let n = file.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(PackError::Write)?;
        counted.add(&buf[..n]);
    }
    let (objects, bytes) = (counted.objects(), counted.bytes);
    tracing::debug!(objects, bytes, "forwarded the received pack");
    Ok(PackStats { objects, bytes })
}

/// A pack stream's bytes, and the object count of its header.
#[derive(Default)]
pub(crate) struct Counted {
    header: Vec<u8>,
    pub bytes: u64,
}

impl Counted {
    pub fn add(&mut self, bytes: &[u8]) {
        if self.header.len() < 12 {
            let n = (12 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
        }
        self.bytes += bytes.len() as u64;
    }

    pub fn objects(&self) -> u64 {
        match self.header.get(8..12) {
            Some(n) => u64::from(u32::from_be_bytes([n[0], n[1], n[2], n[3]])),
            None => 0,
        }
    }
}

/// What to send: `tips` are the object ids the receiver's refs will point to; `haves` are ids
/// the receiver already has (its advertised refs; unknown ones are ignored).
pub fn write_pack(
    repo: &gix::Repository,
    tips: &[ObjectId],
    haves: &[ObjectId],
    options: PackOptions,
    out: &mut dyn Write,
    interrupt: &AtomicBool,
) -> Result<PackStats, PackError> {
    let started = std::time::Instant::now();
    let counted = count::objects(repo, tips, haves, interrupt)?;
    tracing::debug!(
        objects = counted.objects.len(),
        known = counted.known.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "counted objects to pack"
    );
    if counted.objects.is_empty() {
        let bytes = write_empty_pack(repo.object_hash(), out)?;
        return Ok(PackStats { objects: 0, bytes });
    }
    let packs = Packs::open(repo)?;
    let items = packs.locate(repo, counted.objects)?;
    let mut writer = Writer {
        repo,
        packs: &packs,
        items: &items,
        known: &counted.known,
        hints: &counted.hints,
        options,
        out: HashingWriter {
            inner: out,
            hasher: gix::hash::hasher(repo.object_hash()),
            count: 0,
        },
        written: vec![None; items.len()],
        by_id: OnceCell::new(),
        buf: Vec::new(),
        stats: WriteStats::default(),
    };
    writer.write_all(interrupt)?;
    let stats = writer.stats;
    let bytes = writer.out.count;
    tracing::debug!(
        objects = items.len(),
        bytes,
        copied = stats.copied,
        thin = stats.thin,
        deltified = stats.deltified,
        recompressed = stats.recompressed,
        streamed = stats.streamed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pack written"
    );
    Ok(PackStats {
        objects: items.len() as u64,
        bytes,
    })
}

/// A pack with no objects: header and checksum (32 bytes for SHA-1).
pub fn write_empty_pack(hash: gix::hash::Kind, out: &mut dyn Write) -> Result<u64, PackError> {
    let mut w = HashingWriter {
        inner: out,
        hasher: gix::hash::hasher(hash),
        count: 0,
    };
    w.write_all(&gix_pack::data::header::encode(gix_pack::data::Version::V2, 0))
        .map_err(PackError::Write)?;
    let digest = w
        .hasher
        .clone()
        .try_finalize()
        .map_err(|e| PackError::Local(e.to_string()))?;
    w.inner.write_all(digest.as_slice()).map_err(PackError::Write)?;
    w.inner.flush().map_err(PackError::Write)?;
    Ok(w.count + digest.as_slice().len() as u64)
}

/// One pack of the repository: its index and data, and (built when first needed) its entries
/// in offset order, for entry sizes and for the ids of bases named by offset.
struct Pack {
    bundle: gix_pack::Bundle,
    by_offset: OnceCell<Vec<(u64, u32)>>,
    file: OnceCell<std::fs::File>,
}

/// The packs of a repository, read directly.
struct Packs {
    packs: Vec<Pack>,
}

/// An object to write, and where it is stored: (pack, offset), or `None` outside our packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    at: Option<(u32, u64)>,
    id: ObjectId,
}

impl Packs {
    fn open(repo: &gix::Repository) -> Result<Packs, PackError> {
        let dir = repo.objects.store_ref().path().join("pack");
        let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "idx") && p.with_extension("pack").is_file())
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        let mut packs = Vec::with_capacity(paths.len());
        for path in paths {
            // A pack we cannot read is skipped: its objects are then decoded through gix.
            match gix_pack::Bundle::at(&path, repo.object_hash()) {
                Ok(bundle) => packs.push(Pack {
                    bundle,
                    by_offset: OnceCell::new(),
                    file: OnceCell::new(),
                }),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "pack skipped"),
            }
        }
        Ok(Packs { packs })
    }

    fn find(&self, id: &ObjectId) -> Option<(u32, u64)> {
        self.packs.iter().enumerate().find_map(|(n, p)| {
            let index = p.bundle.index.lookup(id)?;
            Some((n as u32, p.bundle.index.pack_offset_at_index(index)))
        })
    }

    /// Where each object is, in writing order (outside our packs first, then pack by pack in
    /// offset order). Fails if any object is missing.
    fn locate(&self, repo: &gix::Repository, ids: Vec<ObjectId>) -> Result<Vec<Item>, PackError> {
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let at = self.find(&id);
            if at.is_none() && !repo.has_object(id) {
                return Err(PackError::Local(format!(
                    "object {id} is missing from the local repository"
                )));
            }
            items.push(Item { at, id });
        }
        items.sort_unstable();
        Ok(items)
    }

    fn by_offset(&self, pack: u32) -> &[(u64, u32)] {
        let p = &self.packs[pack as usize];
        p.by_offset.get_or_init(|| {
            let index = &p.bundle.index;
            let mut v: Vec<(u64, u32)> = (0..index.num_objects())
                .map(|i| (index.pack_offset_at_index(i), i))
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// Where the entry at `offset` ends: the next entry's offset, or the trailing checksum.
    fn entry_end(&self, pack: u32, offset: u64) -> u64 {
        let sorted = self.by_offset(pack);
        let next = sorted.partition_point(|(o, _)| *o <= offset);
        match sorted.get(next) {
            Some((o, _)) => *o,
            None => self.packs[pack as usize].bundle.pack.pack_end() as u64,
        }
    }

    /// The id of the object stored at `offset`.
    fn id_at(&self, pack: u32, offset: u64) -> Option<ObjectId> {
        let sorted = self.by_offset(pack);
        let i = sorted.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        Some(
            self.packs[pack as usize]
                .bundle
                .index
                .oid_at_index(sorted[i].1)
                .to_owned(),
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct WriteStats {
    copied: usize,
    /// Deltas against a base the receiver has (not in the pack).
    thin: usize,
    /// Objects stored whole sent as a delta made here.
    deltified: usize,
    recompressed: usize,
    streamed: usize,
}

/// How one entry is written.
enum Plan {
    /// Copied as stored; a delta's base is `Some((index in items, or None for an external
    /// base), base id)`.
    Copy {
        entry: gix_pack::data::Entry,
        base: Option<(Option<usize>, ObjectId)>,
    },
    /// After the item with this index.
    Wait(usize),
    /// Decoded and deflated whole.
    Whole,
    /// Tried as a delta against `base` (as in `Copy`), else written as `otherwise` says.
    Delta {
        base: (Option<usize>, ObjectId),
        otherwise: Box<Plan>,
    },
}

struct Writer<'a> {
    repo: &'a gix::Repository,
    packs: &'a Packs,
    items: &'a [Item],
    known: &'a HashSet<ObjectId>,
    hints: &'a HashMap<ObjectId, ObjectId>,
    options: PackOptions,
    out: HashingWriter<'a>,
    /// The pack offset at which each item was written.
    written: Vec<Option<u64>>,
    by_id: OnceCell<HashMap<ObjectId, usize>>,
    buf: Vec<u8>,
    stats: WriteStats,
}

impl Writer<'_> {
    fn write_all(&mut self, interrupt: &AtomicBool) -> Result<(), PackError> {
        let count = u32::try_from(self.items.len()).map_err(|_| PackError::Local("more than 2^32 objects".into()))?;
        self.out
            .write_all(&gix_pack::data::header::encode(gix_pack::data::Version::V2, count))
            .map_err(PackError::Write)?;
        // Items waiting for their base, by the base's index.
        let mut waiting: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..self.items.len() {
            let mut ready = vec![i];
            while let Some(j) = ready.pop() {
                if interrupt.load(Ordering::Relaxed) {
                    return Err(PackError::Interrupted);
                }
                match self.plan(j)? {
                    Plan::Wait(base) => waiting.entry(base).or_default().push(j),
                    plan => {
                        self.write_item(j, plan)?;
                        ready.extend(waiting.remove(&j).unwrap_or_default());
                    }
                }
            }
        }
        // Only a corrupt pack (a cycle of deltas) leaves anything waiting: send those whole.
        for j in waiting.into_values().flatten() {
            self.write_item(j, Plan::Whole)?;
        }
        if self.written.iter().any(Option::is_none) {
            return Err(PackError::Local("an object was not written into the pack".into()));
        }
        let digest = self
            .out
            .hasher
            .clone()
            .try_finalize()
            .map_err(|e| PackError::Local(e.to_string()))?;
        self.out.inner.write_all(digest.as_slice()).map_err(PackError::Write)?;
        self.out.count += digest.as_slice().len() as u64;
        self.out.inner.flush().map_err(PackError::Write)
    }

    fn index_of_id(&self, id: &ObjectId) -> Option<usize> {
        self.by_id
            .get_or_init(|| self.items.iter().enumerate().map(|(i, it)| (it.id, i)).collect())
            .get(id)
            .copied()
    }

    /// How item `i` is written: as stored when that is possible, else tried as a delta against
    /// its hint (see the module docs, step 4), else whole.
    fn plan(&self, i: usize) -> Result<Plan, PackError> {
        let plan = self.stored_plan(i)?;
        let whole = match &plan {
            Plan::Whole => true,
            Plan::Copy { entry, base: None } => {
                matches!(entry.header, Header::Tree | Header::Blob) && entry.decompressed_size <= DELTA_MAX
            }
            _ => false,
        };
        Ok(match self.hint_base(i).filter(|_| whole) {
            Some(base) => Plan::Delta {
                base,
                otherwise: Box::new(plan),
            },
            None => plan,
        })
    }

    /// The hinted base of item `i` if a delta may name it now: written already, or the
    /// receiver's in a thin pack.
    fn hint_base(&self, i: usize) -> Option<(Option<usize>, ObjectId)> {
        let base = *self.hints.get(&self.items[i].id)?;
        match self.index_of_id(&base) {
            Some(b) => self.written[b].map(|_| (Some(b), base)),
            None => (self.options.thin && self.known.contains(&base)).then_some((None, base)),
        }
    }

    fn stored_plan(&self, i: usize) -> Result<Plan, PackError> {
        let Some((pack, offset)) = self.items[i].at else {
            return Ok(Plan::Whole);
        };
        let entry = self.packs.packs[pack as usize]
            .bundle
            .pack
            .entry(offset)
            .map_err(|e| PackError::Local(format!("reading pack entry of {}: {e}", self.items[i].id)))?;
        let (in_pack, base_id) = match entry.header {
            Header::Commit | Header::Tree | Header::Blob | Header::Tag => return Ok(Plan::Copy { entry, base: None }),
            Header::OfsDelta { base_distance } => {
                let Some(base_offset) = entry.checked_base_pack_offset(base_distance) else {
                    return Ok(Plan::Whole);
                };
                let key = Some((pack, base_offset));
                match self.items.binary_search_by(|it| it.at.cmp(&key)) {
                    Ok(b) => (Some(b), self.items[b].id),
                    Err(_) => match self.packs.id_at(pack, base_offset) {
                        Some(id) => (None, id),
                        None => return Ok(Plan::Whole),
                    },
                }
            }
            Header::RefDelta { base_id } => (self.index_of_id(&base_id), base_id),
        };
        Ok(match in_pack {
            Some(b) if self.written[b].is_some() => Plan::Copy {
                entry,
                base: Some((Some(b), base_id)),
            },
            Some(b) => Plan::Wait(b),
            None if self.options.thin && self.known.contains(&base_id) => Plan::Copy {
                entry,
                base: Some((None, base_id)),
            },
            None => Plan::Whole,
        })
    }

    fn write_item(&mut self, i: usize, plan: Plan) -> Result<(), PackError> {
        let here = self.out.count;
        match plan {
            Plan::Copy { entry, base } => {
                let header = match base {
                    None => entry.header,
                    Some(base) => self.delta_header(here, base),
                };
                self.write_header(header, entry.decompressed_size)?;
                let (pack, offset) = self.items[i].at.expect("copied items are packed");
                let end = self.packs.entry_end(pack, offset);
                self.copy(pack, entry.data_offset, end)?;
                self.stats.copied += 1;
            }
            Plan::Whole => self.write_whole(i)?,
            Plan::Delta { base, otherwise } => {
                if !self.write_delta(i, here, base)? {
                    return self.write_item(i, *otherwise);
                }
            }
            Plan::Wait(_) => unreachable!("waiting items are written once their base is"),
        }
        self.written[i] = Some(here);
        Ok(())
    }

    /// The header of a delta written at `here` against `base` (its index in the pack, or `None`
    /// for the receiver's).
    fn delta_header(&mut self, here: u64, (index, id): (Option<usize>, ObjectId)) -> Header {
        match index {
            Some(b) => match (self.options.ofs_delta, self.written[b]) {
                (true, Some(at)) => Header::OfsDelta {
                    base_distance: here - at,
                },
                _ => Header::RefDelta { base_id: id },
            },
            None => {
                self.stats.thin += 1;
                Header::RefDelta { base_id: id }
            }
        }
    }

    /// Write item `i` as a delta against `base` if one is worth it (under half its size);
    /// `false` when it is not and nothing was written.
    fn write_delta(&mut self, i: usize, here: u64, base: (Option<usize>, ObjectId)) -> Result<bool, PackError> {
        let size = |id| self.repo.find_header(id).map(|h| h.size()).unwrap_or(u64::MAX);
        if size(self.items[i].id) > DELTA_MAX || size(base.1) > DELTA_MAX {
            return Ok(false);
        }
        let target = self.decode(self.items[i].id)?;
        let source = self.decode(base.1)?;
        let Some(delta) = crate::delta::encode(&source.data, &target.data, target.data.len() / 2) else {
            return Ok(false);
        };
        let header = self.delta_header(here, base);
        self.write_header(header, delta.len() as u64)?;
        self.deflate(&delta)?;
        self.stats.deltified += 1;
        Ok(true)
    }

    fn decode(&self, id: ObjectId) -> Result<gix::ObjectDetached, PackError> {
        self.repo
            .find_object(id)
            .map(|o| o.detach())
            .map_err(|e| PackError::Local(format!("reading object {id}: {e}")))
    }

    fn deflate(&mut self, data: &[u8]) -> Result<(), PackError> {
        let compression = self
            .repo
            .pack_compression()
            .map_err(|e| PackError::Local(e.to_string()))?;
        let mut deflate = gix::zlib::stream::deflate::Write::new(&mut self.out, compression);
        for piece in data.chunks(PIECE) {
            deflate.write_all(piece).map_err(PackError::Write)?;
        }
        deflate.flush().map_err(PackError::Write)
    }

    fn write_header(&mut self, header: Header, size: u64) -> Result<(), PackError> {
        let mut buf = Vec::with_capacity(32);
        header.write_to(size, &mut buf).map_err(PackError::Write)?;
        self.out.write_all(&buf).map_err(PackError::Write)
    }

    /// Copy the stored bytes `start..end` of `pack`.
    fn copy(&mut self, pack: u32, start: u64, end: u64) -> Result<(), PackError> {
        let p = &self.packs.packs[pack as usize];
        if end.saturating_sub(start) <= STREAM_ABOVE {
            let data = p
                .bundle
                .pack
                .entry_slice(start..end)
                .ok_or_else(|| PackError::Local(format!("pack entry at {start} is out of bounds")))?;
            return self.out.write_all(data).map_err(PackError::Write);
        }
        use std::os::unix::fs::FileExt;
        let path = p.bundle.pack.path();
        let read_err = |e: std::io::Error| PackError::Local(format!("reading {}: {e}", path.display()));
        let file = match p.file.get() {
            Some(f) => f,
            None => {
                let f = std::fs::File::open(path).map_err(read_err)?;
                p.file.get_or_init(|| f)
            }
        };
        let mut piece = vec![0u8; PIECE];
        let mut at = start;
        while at < end {
            let n = PIECE.min((end - at) as usize);
            file.read_exact_at(&mut piece[..n], at).map_err(read_err)?;
            self.out.write_all(&piece[..n]).map_err(PackError::Write)?;
            at += n as u64;
        }
        self.stats.streamed += 1;
        Ok(())
    }

    /// Decode the object and deflate it into the pack as it is written.
    fn write_whole(&mut self, i: usize) -> Result<(), PackError> {
        let id = self.items[i].id;
        let mut buf = std::mem::take(&mut self.buf);
        let found = gix::prelude::Find::try_find(&self.repo.objects, &id, &mut buf)
            .map_err(|e| PackError::Local(format!("reading object {id}: {e}")))?
            .ok_or_else(|| PackError::Local(format!("object {id} is missing from the local repository")))?;
        let header = match found.kind {
            gix::object::Kind::Commit => Header::Commit,
            gix::object::Kind::Tree => Header::Tree,
            gix::object::Kind::Blob => Header::Blob,
            gix::object::Kind::Tag => Header::Tag,
        };
        let data = found.data;
        self.write_header(header, data.len() as u64)?;
        self.deflate(data)?;
        if buf.capacity() <= STREAM_ABOVE as usize {
            self.buf = buf; // keep a small buffer for the next object, not a huge one
        }
        self.stats.recompressed += 1;
        Ok(())
    }
}
