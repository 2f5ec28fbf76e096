//! Lays a whole upload into a volume the host has just formatted, in one pass.
//!
//! Everything is decided before a byte is written: each directory's entries (long names
//! and short names unique in their directory), then the clusters, in one sweep over the
//! free space: directories first, then files in the upload's order, each contiguous.
//! Then every directory is written once, the file data as one sequential stream, the
//! used part of each FAT copy once, and on FAT32 the FSInfo counts. A general FAT
//! library instead searches the directory for a free slot and a clashing short name for
//! every file it creates, which is quadratic in the files per directory (2,000 small
//! files in one directory took fatfs 4.5 s), and updates the FAT one entry at a time.
//!
//! The volume must be fresh: its FAT all free but for the reserved entries and, on
//! FAT32, the root directory's cluster; its root directory holding at most the volume
//! label. Only then is "the next free cluster" a counter.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use super::dir::{ATTR_ARCHIVE, ATTR_DIR, ATTR_LFN, ENTRY_LEN, LOWER_BASE, LOWER_EXT};
use super::fat::END_OF_CHAIN;
use super::geometry::{FatType, Geometry};
use super::write::Plan;
use crate::area::{AreaError, AreaPath, Durability, UploadData};

/// UTF-16 units in one long-name entry.
const LONG_UNITS: usize = 13;
/// Where those units sit in the entry.
const LONG_UNIT_AT: [usize; LONG_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// Most entries in one directory: Linux's vfat refuses larger directories.
const MAX_DIR_ENTRIES: usize = 65536;
/// Characters a short name may hold besides A-Z and 0-9.
const SHORT_PUNCTUATION: &[u8] = b"$%'-_@~`!(){}^#&";
/// Largest file FAT can hold (its size field is 32 bits).
const MAX_FILE_LEN: u64 = u32::MAX as u64;

/// A FAT date and time (local time is unknown to FAT; the host writes UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DosTime {
    date: u16,
    time: u16,
}

impl DosTime {
    fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::from_unix(secs)
    }

    fn from_unix(secs: u64) -> Self {
        // FAT dates run from 1980 to 2107.
        let secs = secs.clamp(315_532_800, 4_354_819_199);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        let (hour, min, sec) = (
            (rem / 3600) as u16,
            (rem / 60 % 60) as u16,
            (rem % 60) as u16,
        );
        DosTime {
            date: ((year - 1980) << 9) | (month << 5) | day,
            time: (hour << 11) | (min << 5) | (sec / 2),
        }
    }
}

/// One name in a directory, ready to encode once its cluster is known.
#[derive(Debug)]
struct Entry {
    short: [u8; 11],
    /// [`LOWER_BASE`] and [`LOWER_EXT`].
    case: u8,
    /// The name in UTF-16 when the short name cannot carry it.
    long: Option<Vec<u16>>,
    target: Target,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

impl Entry {
    fn slots(&self) -> usize {
        1 + self
            .long
            .as_ref()
            .map_or(0, |l| l.len().div_ceil(LONG_UNITS))
    }

    fn encode(&self, out: &mut Vec<u8>, attr: u8, cluster: u32, size: u32, at: DosTime) {
        if let Some(long) = &self.long {
            let sum = short_name_checksum(&self.short);
            let count = long.len().div_ceil(LONG_UNITS);
            for ord in (1..=count).rev() {
                let mut e = [0u8; ENTRY_LEN];
                e[0] = ord as u8 | if ord == count { 0x40 } else { 0 };
                e[11] = ATTR_LFN;
                e[13] = sum;
                let first = (ord - 1) * LONG_UNITS;
                for (k, &pos) in LONG_UNIT_AT.iter().enumerate() {
                    // After the name: one NUL, then 0xFFFF padding.
                    let unit = match long.get(first + k) {
                        Some(&u) => u,
                        None if first + k == long.len() => 0,
                        None => 0xFFFF,
                    };
                    e[pos..pos + 2].copy_from_slice(&unit.to_le_bytes());
                }
                out.extend_from_slice(&e);
            }
        }
        out.extend_from_slice(&short_entry(
            &self.short,
            attr,
            self.case,
            cluster,
            size,
            at,
        ));
    }
}

fn short_entry(
    name: &[u8; 11],
    attr: u8,
    case: u8,
    cluster: u32,
    size: u32,
    at: DosTime,
) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[12] = case;
    for pos in [14, 22] {
        e[pos..pos + 2].copy_from_slice(&at.time.to_le_bytes());
    }
    for pos in [16, 18, 24] {
        e[pos..pos + 2].copy_from_slice(&at.date.to_le_bytes());
    }
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The checksum of a short name that each of its long-name entries carries.
fn short_name_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

fn short_char(c: char) -> Option<u8> {
    let u = c.to_ascii_uppercase();
    let ok = u.is_ascii_uppercase()
        || u.is_ascii_digit()
        || (u.is_ascii() && SHORT_PUNCTUATION.contains(&(u as u8)));
    ok.then_some(u as u8)
}

/// `name` as an 8.3 name with nothing lost but case: its 11 stored bytes, and the case
/// flags if the case can be shown by flags (each part all lower or all upper case).
fn exact_short(name: &str) -> Option<([u8; 11], Option<u8>)> {
    let (base, ext) = match name.rfind('.') {
        Some(0) => return None,
        Some(dot) if dot + 1 == name.len() => return None,
        Some(dot) => (&name[..dot], &name[dot + 1..]),
        None => (name, ""),
    };
    if base.len() > 8 || ext.len() > 3 {
        return None;
    }
    let mut short = [b' '; 11];
    for (i, c) in base.chars().enumerate() {
        short[i] = short_char(c)?;
    }
    for (i, c) in ext.chars().enumerate() {
        short[8 + i] = short_char(c)?;
    }
    let case = |part: &str, flag: u8| {
        let lower = part.bytes().any(|b| b.is_ascii_lowercase());
        let upper = part.bytes().any(|b| b.is_ascii_uppercase());
        match (lower, upper) {
            (true, true) => None,
            (true, false) => Some(flag),
            _ => Some(0),
        }
    };
    let flags = case(base, LOWER_BASE)
        .zip(case(ext, LOWER_EXT))
        .map(|(b, e)| b | e);
    Some((short, flags))
}

/// The short names of one directory: unique, and derived from the long names the way
/// Linux and Windows derive them (`LONGFI~1.TXT`).
#[derive(Default)]
struct ShortNames {
    used: HashSet<[u8; 11]>,
    /// The next numeric tail to try, by basis: keeps a directory of thousands of similar
    /// names linear instead of quadratic.
    next_tail: HashMap<([u8; 6], [u8; 3]), u32>,
}

impl ShortNames {
    fn tailed(&mut self, name: &str) -> Option<[u8; 11]> {
        let trimmed = name.trim_start_matches('.');
        let (base, ext) = match trimmed.rfind('.') {
            Some(dot) => (&trimmed[..dot], &trimmed[dot + 1..]),
            None => (trimmed, ""),
        };
        let convert = |part: &str, out: &mut [u8]| {
            let mut n = 0;
            for c in part.chars().filter(|&c| c != ' ' && c != '.') {
                if n == out.len() {
                    break;
                }
                out[n] = short_char(c).unwrap_or(b'_');
                n += 1;
            }
            n
        };
        let mut basis = [b' '; 6];
        let mut basis_len = convert(base, &mut basis);
        if basis_len == 0 {
            basis[0] = b'_';
            basis_len = 1;
        }
        let mut ext3 = [b' '; 3];
        convert(ext, &mut ext3);
        let key = (basis, ext3);
        let start = self.next_tail.get(&key).copied().unwrap_or(1);
        for tail in start..=999_999 {
            let digits = tail.to_string();
            let keep = basis_len.min(7 - digits.len());
            let mut short = [b' '; 11];
            short[..keep].copy_from_slice(&basis[..keep]);
            short[keep] = b'~';
            short[keep + 1..keep + 1 + digits.len()].copy_from_slice(digits.as_bytes());
            short[8..].copy_from_slice(&ext3);
            if self.used.insert(short) {
                self.next_tail.insert(key, tail + 1);
                return Some(short);
            }
        }
        None
    }
}

/// Entries for `names` (one directory's children), short names unique among them.
fn name_entries(dir: &str, names: Vec<(&str, Target)>) -> Result<Vec<Entry>, AreaError> {
    let mut shorts = ShortNames::default();
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(names.len());
    // First the names that are 8.3 but for case: each keeps its own short name, which no
    // generated one may take (Linux and Windows match short names too, so `FooBar~1.txt`
    // must not be another file's short name). Names equal ignoring case were refused
    // before, so these cannot clash with each other.
    for &(name, target) in &names {
        entries.push(exact_short(name).map(|(short, case)| {
            shorts.used.insert(short);
            Entry {
                short,
                case: case.unwrap_or(0),
                // Mixed case: the long name carries it.
                long: case.is_none().then(|| name.encode_utf16().collect()),
                target,
            }
        }));
    }
    for (slot, (name, target)) in entries.iter_mut().zip(names) {
        if slot.is_some() {
            continue;
        }
        let short = shorts.tailed(name).ok_or_else(|| AreaError::TooLarge {
            what: format!("the number of similar names in {dir}"),
            limit: 999_999,
        })?;
        *slot = Some(Entry {
            short,
            case: 0,
            long: Some(name.encode_utf16().collect()),
            target,
        });
    }
    Ok(entries.into_iter().flatten().collect())
}

/// A directory to write.
struct DirNode {
    path: String,
    /// Its parent's index in the list (the root's is its own, 0).
    parent: usize,
    entries: Vec<Entry>,
    /// Its clusters (the FAT12/16 root has none: it lives in a fixed region).
    chain: Vec<u32>,
}

/// Every directory of the plan with its named entries; index 0 is the root.
fn directories(plan: &Plan) -> Result<Vec<DirNode>, AreaError> {
    let mut dirs = vec![DirNode {
        path: "the top level".into(),
        parent: 0,
        entries: Vec::new(),
        chain: Vec::new(),
    }];
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut children: Vec<Vec<(&str, Target)>> = vec![Vec::new()];
    let parent_of = |path: &AreaPath, index: &HashMap<&str, usize>| match path.parent() {
        None => Ok(0),
        Some(p) => index
            .get(p.as_str())
            .copied()
            .ok_or_else(|| AreaError::Corrupt {
                what: format!("the upload plan lists {path} before its directory"),
            }),
    };
    for dir in &plan.dirs {
        let parent = parent_of(dir, &index)?;
        let me = dirs.len();
        children[parent].push((dir.file_name(), Target::Dir(me)));
        children.push(Vec::new());
        index.insert(dir.as_str(), me);
        dirs.push(DirNode {
            path: dir.as_str().into(),
            parent,
            entries: Vec::new(),
            chain: Vec::new(),
        });
    }
    for (i, (path, data)) in plan.files.iter().enumerate() {
        if data.len() > MAX_FILE_LEN {
            return Err(AreaError::TooLarge {
                what: format!("{path} ({} bytes), as FAT holds files", data.len()),
                limit: MAX_FILE_LEN,
            });
        }
        children[parent_of(path, &index)?].push((path.file_name(), Target::File(i)));
    }
    for (dir, names) in dirs.iter_mut().zip(children) {
        dir.entries = name_entries(&dir.path, names)?;
    }
    Ok(dirs)
}

/// Where everything goes, decided before anything is written.
struct Allocation {
    /// The first cluster handed out (after the FAT32 root's).
    first_free: u64,
    /// The first cluster of file data; files follow each other from here.
    files_start: u64,
    /// One past the last cluster handed out.
    end: u64,
    /// Each file's (first cluster, clusters); empty files have (0, 0).
    file_runs: Vec<(u32, u32)>,
}

/// Gives every directory its clusters (`root_kept` entries already sit in the root),
/// then every file, in one sweep.
fn allocate(
    dirs: &mut [DirNode],
    plan: &Plan,
    geometry: &Geometry,
    root_kept: usize,
) -> Result<Allocation, AreaError> {
    let cluster_size = u64::from(geometry.cluster_size);
    let clusters_for = |bytes: u64| bytes.div_ceil(cluster_size).max(1);
    let first_free = match geometry.fat_type {
        FatType::Fat32 => u64::from(geometry.root_cluster) + 1,
        _ => 2,
    };
    let mut next = first_free;
    let mut take = |count: u64| {
        let chain = (next..next + count).map(|c| c as u32).collect::<Vec<_>>();
        next += count;
        chain
    };
    for (i, dir) in dirs.iter_mut().enumerate() {
        let dots = if i == 0 { root_kept } else { 2 };
        let slots = dots + dir.entries.iter().map(Entry::slots).sum::<usize>();
        if slots > MAX_DIR_ENTRIES {
            return Err(AreaError::TooLarge {
                what: format!("the entries of {} ({slots})", dir.path),
                limit: MAX_DIR_ENTRIES as u64,
            });
        }
        let bytes = (slots * ENTRY_LEN) as u64;
        match (i, geometry.root_region) {
            (0, Some((_, region))) if bytes > region => {
                return Err(AreaError::TooLarge {
                    what: format!(
                        "the entries at the top level ({slots}; a long name takes several), as this FAT{} volume's root directory holds",
                        geometry.fat_type.bits()
                    ),
                    limit: region / ENTRY_LEN as u64,
                });
            }
            (0, Some(_)) => {}
            (0, None) => {
                dir.chain = vec![geometry.root_cluster];
                dir.chain.extend(take(clusters_for(bytes) - 1));
            }
            _ => dir.chain = take(clusters_for(bytes)),
        }
    }
    let files_start = next;
    let file_runs = plan
        .files
        .iter()
        .map(|(_, data)| {
            let count = data.len().div_ceil(cluster_size);
            let first = if count == 0 { 0 } else { next as u32 };
            next += count;
            (first, count as u32)
        })
        .collect();
    let end = u64::from(geometry.max_cluster()) + 1;
    if next > end {
        return Err(AreaError::NoSpace {
            needed: (next - first_free) * cluster_size,
            available: end.saturating_sub(first_free) * cluster_size,
        });
    }
    Ok(Allocation {
        first_free,
        files_start,
        end: next,
        file_runs,
    })
}

fn io_error<'a>(what: &'static str, temp: &'a Path) -> impl Fn(io::Error) -> AreaError + 'a {
    move |e| AreaError::io(what, temp, e)
}

/// Writes `plan` into the fresh volume `geometry` describes, in `file` (named `temp` in
/// errors).
///
/// # Errors
/// [`AreaError::NoSpace`] before anything is written when the volume is too small;
/// [`AreaError::TooLarge`] for a directory of more than 65,536 entries, a file of 4 GiB
/// or more, or a top-level directory larger than a FAT12/16 root holds;
/// [`AreaError::ShortSource`] and [`AreaError::Sink`] when a file's source ends early or
/// fails; [`AreaError::Io`] when the image cannot be written.
pub(crate) fn write_plan(
    file: &File,
    geometry: &Geometry,
    plan: Plan,
    temp: &Path,
    durability: Durability,
) -> Result<(), AreaError> {
    let mut dirs = directories(&plan)?;
    // What the fresh root already holds (the volume label's entry) stays in front.
    let (root_at, root_len) = match geometry.root_region {
        Some(region) => region,
        None => (
            geometry.cluster_offset(geometry.root_cluster),
            u64::from(geometry.cluster_size),
        ),
    };
    let mut root_head = vec![0u8; root_len as usize];
    file.read_exact_at(&mut root_head, root_at)
        .map_err(io_error("read", temp))?;
    let kept = root_head
        .chunks_exact(ENTRY_LEN)
        .take_while(|e| e[0] != 0)
        .count();
    root_head.truncate(kept * ENTRY_LEN);
    let alloc = allocate(&mut dirs, &plan, geometry, kept)?;

    let sizes: Vec<u64> = plan.files.iter().map(|(_, d)| d.len()).collect();
    write_directories(file, geometry, &dirs, &alloc, &sizes, root_head)
        .map_err(io_error("write", temp))?;
    write_files(
        file,
        geometry,
        plan.files,
        alloc.files_start,
        temp,
        durability,
    )?;
    write_fat(file, geometry, alloc.end, |fat| {
        for dir in &dirs {
            for pair in dir.chain.windows(2) {
                fat.set(pair[0], pair[1]);
            }
            if let Some(&last) = dir.chain.last() {
                fat.set(last, END_OF_CHAIN);
            }
        }
        for &(first, count) in alloc.file_runs.iter().filter(|r| r.1 > 0) {
            let last = first + count - 1;
            for c in first..last {
                fat.set(c, c + 1);
            }
            fat.set(last, END_OF_CHAIN);
        }
    })
    .map_err(io_error("write", temp))?;
    if let Some(at) = geometry.fs_info_offset {
        // In use: the root's first cluster and everything handed out after it.
        let used = 1 + (alloc.end - alloc.first_free);
        let free = u64::from(geometry.clusters) - used;
        // Where the next free cluster is; "unknown" when none is left.
        let next = if alloc.end > u64::from(geometry.max_cluster()) {
            u32::MAX
        } else {
            alloc.end as u32
        };
        update_fs_info(file, at, free as u32, next).map_err(io_error("write", temp))?;
    }
    Ok(())
}

/// Writes every directory once: the root (after `root_head`) and each subdirectory with
/// its `.` and `..`. `sizes` are the files' lengths.
fn write_directories(
    file: &File,
    geometry: &Geometry,
    dirs: &[DirNode],
    alloc: &Allocation,
    sizes: &[u64],
    root_head: Vec<u8>,
) -> io::Result<()> {
    let at = DosTime::now();
    let cluster_size = geometry.cluster_size as usize;
    let mut buf = root_head;
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 {
            buf.clear();
            // `..` of a top-level directory names cluster 0, whatever the root's is.
            let parent = if dir.parent == 0 {
                0
            } else {
                dirs[dir.parent].chain[0]
            };
            let dots = [(b".          ", dir.chain[0]), (b"..         ", parent)];
            for (name, cluster) in dots {
                buf.extend_from_slice(&short_entry(name, ATTR_DIR, 0, cluster, 0, at));
            }
        }
        for entry in &dir.entries {
            match entry.target {
                Target::Dir(d) => entry.encode(&mut buf, ATTR_DIR, dirs[d].chain[0], 0, at),
                Target::File(f) => {
                    let first = alloc.file_runs[f].0;
                    entry.encode(&mut buf, ATTR_ARCHIVE, first, sizes[f] as u32, at);
                }
            }
        }
        if let (0, Some((region_at, region_len))) = (i, geometry.root_region) {
            buf.resize(region_len as usize, 0);
            file.write_all_at(&buf, region_at)?;
            continue;
        }
        buf.resize(dir.chain.len() * cluster_size, 0);
        for (part, &cluster) in buf.chunks(cluster_size).zip(&dir.chain) {
            file.write_all_at(part, geometry.cluster_offset(cluster))?;
        }
    }
    Ok(())
}

/// Writes the files' data as one sequential stream from cluster `start` on, each file
/// padded with zeros to whole clusters.
fn write_files(
    file: &File,
    geometry: &Geometry,
    files: Vec<(AreaPath, UploadData)>,
    start: u64,
    temp: &Path,
    durability: Durability,
) -> Result<(), AreaError> {
    let cluster_size = u64::from(geometry.cluster_size);
    if files.iter().all(|(_, d)| d.is_empty()) {
        return Ok(());
    }
    let mut f = file;
    f.seek(SeekFrom::Start(geometry.cluster_offset(start as u32)))
        .map_err(io_error("seek in", temp))?;
    let early = EarlyWriteback::start(file, durability == Durability::Synced)
        .map_err(io_error("open", temp))?;
    let mut out = BufWriter::with_capacity(1 << 20, early);
    let mut chunk = vec![0u8; 256 * 1024];
    for (path, data) in files {
        let len = data.len();
        match data {
            UploadData::Dir => {}
            UploadData::Bytes(bytes) => out.write_all(&bytes).map_err(io_error("write", temp))?,
            UploadData::Reader { reader, len } => {
                let copied = copy(reader.take(len), &mut out, &mut chunk, &path, temp)?;
                if copied < len {
                    return Err(AreaError::ShortSource {
                        path,
                        got: copied,
                        len,
                    });
                }
            }
        }
        let pad = (len.div_ceil(cluster_size) * cluster_size - len) as usize;
        chunk[..pad].fill(0);
        out.write_all(&chunk[..pad])
            .map_err(io_error("write", temp))?;
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(EarlyWriteback::finish)
        .map_err(io_error("write", temp))
}

/// Bytes written between two early flushes.
const WRITEBACK_STEP: u64 = 16 << 20;

/// The image file, written with disk writes started early: a thread calls `fdatasync`
/// each time another [`WRITEBACK_STEP`] bytes are written, so the disk works while the
/// upload is still being produced and the final fsync waits only for the tail.
struct EarlyWriteback<'a> {
    file: &'a File,
    unflushed: u64,
    kick: Option<SyncSender<()>>,
    flusher: Option<JoinHandle<io::Result<()>>>,
}

impl<'a> EarlyWriteback<'a> {
    /// Writes to `file`, with the flushing thread only if `flush`.
    fn start(file: &'a File, flush: bool) -> io::Result<Self> {
        if !flush {
            return Ok(EarlyWriteback {
                file,
                unflushed: 0,
                kick: None,
                flusher: None,
            });
        }
        let own = file.try_clone()?;
        let (kick, kicked) = sync_channel::<()>(1);
        let flusher = std::thread::Builder::new()
            .name("nlxtp-writeback".into())
            .spawn(move || {
                while kicked.recv().is_ok() {
                    own.sync_data()?;
                }
                Ok(())
            })?;
        Ok(EarlyWriteback {
            file,
            unflushed: 0,
            kick: Some(kick),
            flusher: Some(flusher),
        })
    }

    /// Stops the thread; an error of its flushes is the write's (the kernel reports a
    /// writeback error once per open file, so the final fsync would not see it again).
    fn finish(mut self) -> io::Result<()> {
        drop(self.kick.take());
        match self.flusher.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the writeback thread failed")),
            None => Ok(()),
        }
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unflushed += n as u64;
        if self.unflushed >= WRITEBACK_STEP {
            self.unflushed = 0;
            if let Some(kick) = &self.kick {
                // Busy flushing already: the next step catches up.
                let _ = kick.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EarlyWriteback<'_> {
    fn drop(&mut self) {
        drop(self.kick.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// Copies `source` into the image stream; errors reading are the upload's, errors
/// writing are the image's.
fn copy(
    mut source: impl Read,
    out: &mut impl Write,
    chunk: &mut [u8],
    path: &AreaPath,
    temp: &Path,
) -> Result<u64, AreaError> {
    let mut total = 0u64;
    loop {
        let n = match source.read(chunk) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AreaError::Sink {
                    source: io::Error::new(e.kind(), format!("reading the upload's {path}: {e}")),
                })
            }
        };
        out.write_all(&chunk[..n])
            .map_err(io_error("write", temp))?;
        total += n as u64;
    }
}

/// The used front of a FAT in memory.
struct FatTable {
    bytes: Vec<u8>,
    fat_type: FatType,
}

impl FatTable {
    /// Sets entry `cluster` to `next` (or [`END_OF_CHAIN`]).
    fn set(&mut self, cluster: u32, next: u32) {
        self.fat_type.set(&mut self.bytes, cluster, next);
    }
}

/// Reads the front of the first FAT covering entries `0..end`, lets `fill` set entries,
/// and writes it to every FAT copy.
fn write_fat(
    file: &File,
    geometry: &Geometry,
    end: u64,
    fill: impl FnOnce(&mut FatTable),
) -> io::Result<()> {
    let sector = u64::from(geometry.bytes_per_sector);
    let len = (geometry.fat_type.bytes_for(end) + 1)
        .div_ceil(sector)
        .saturating_mul(sector)
        .min(geometry.fat_len);
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, geometry.first_fat_offset)?;
    let mut fat = FatTable {
        bytes,
        fat_type: geometry.fat_type,
    };
    fill(&mut fat);
    for copy in 0..u64::from(geometry.fats) {
        file.write_all_at(
            &fat.bytes,
            geometry.first_fat_offset + copy * geometry.fat_len,
        )?;
    }
    Ok(())
}

/// FAT32's FSInfo sector: the free cluster count and where the next free one is (hints,
/// but fsck.vfat checks them and Linux trusts the count for `df`).
fn update_fs_info(file: &File, at: u64, free: u32, next_free: u32) -> io::Result<()> {
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, at)?;
    let sig = |pos: usize| u32::from_le_bytes(sector[pos..pos + 4].try_into().unwrap());
    if sig(0) != 0x4161_5252 || sig(484) != 0x6141_7272 || sig(508) != 0xAA55_0000 {
        return Ok(());
    }
    sector[488..492].copy_from_slice(&free.to_le_bytes());
    sector[492..496].copy_from_slice(&next_free.to_le_bytes());
    file.write_all_at(&sector, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_time_of_a_known_instant() {
        // 2026-11-26 12:55:07 UTC.
        let t = DosTime::from_unix(1_795_697_707);
        assert_eq!(t.date, ((2026 - 1980) << 9) | (11 << 5) | 26);
        assert_eq!(t.time, (12 << 11) | (55 << 5) | 3);
        let now = DosTime::now();
        assert!(now.date >> 9 >= 2024 - 1980);
    }

    #[test]
    fn exact_short_names_and_their_case() {
        assert_eq!(exact_short("a.txt"), Some((*b"A       TXT", Some(0x18))));
        assert_eq!(exact_short("README"), Some((*b"README     ", Some(0))));
        assert_eq!(exact_short("Notes.TXT"), Some((*b"NOTES   TXT", None)));
        assert_eq!(exact_short("x.Md"), Some((*b"X       MD ", None)));
        for long in [
            "auto_exec.sh",
            "a.b.c",
            ".hidden",
            "a b",
            "toolongname",
            "a.html",
            "é",
        ] {
            assert_eq!(exact_short(long), None, "{long}");
        }
    }

    #[test]
    fn tailed_short_names_are_unique_and_linear() {
        let mut names = ShortNames::default();
        assert_eq!(names.tailed("auto_exec.sh"), Some(*b"AUTO_E~1SH "));
        assert_eq!(names.tailed("auto_exec2.sh"), Some(*b"AUTO_E~2SH "));
        assert_eq!(names.tailed(".bashrc"), Some(*b"BASHRC~1   "));
        assert_eq!(names.tailed("a+b c.tar.gz"), Some(*b"A_BCTA~1GZ "));
        assert_eq!(names.tailed("Ünïcode"), Some(*b"_N_COD~1   "));
        let mut seen = HashSet::new();
        for i in 0..20_000 {
            let s = names.tailed(&format!("long file name {i}.data")).unwrap();
            assert!(seen.insert(s));
        }
        assert!(seen.contains(b"LONGF~99DAT"));
        assert!(seen.contains(b"LONG~999DAT"));
    }

    #[test]
    fn checksum_matches_the_specification() {
        // The specification's loop, written out.
        let name = b"AUTO_E~1SH ";
        let mut sum: u8 = 0;
        for &b in name {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(b);
        }
        assert_eq!(short_name_checksum(name), sum);
    }
}
