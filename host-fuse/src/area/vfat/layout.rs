//! Where an upload's directories go in a fresh volume: each directory's entries (long
//! names, and short names unique in their directory), then their clusters, after the
//! file data (which `build.rs` lays down as it arrives, each file contiguous).

use std::collections::HashMap;

use nlxtp_core::layout::START_SCRIPT;

use super::entry::{encode_long, encode_short, long_entries, DosTime, ENTRY_LEN};
use super::geometry::{FatType, Geometry};
use super::names::{exact_short, ShortNames};
use crate::area::{AreaError, AreaPath};

/// Most entries in one directory: Linux's vfat refuses larger directories.
const MAX_DIR_ENTRIES: usize = 65536;
/// Largest file FAT can hold (its size field is 32 bits).
pub const MAX_FILE_LEN: u64 = u32::MAX as u64;

/// One name in a directory, ready to encode once its cluster is known.
#[derive(Debug)]
pub struct Entry {
    short: [u8; 11],
    /// [`LOWER_BASE`](super::entry::LOWER_BASE) and [`LOWER_EXT`](super::entry::LOWER_EXT).
    case: u8,
    /// The name in UTF-16 when the short name cannot carry it.
    long: Option<Vec<u16>>,
    /// What it names.
    pub target: Target,
}

/// What an entry names: a directory, by its index among the directories, or a file, by
/// its index among the files.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Dir(usize),
    File(usize),
}

impl Entry {
    fn slots(&self) -> usize {
        1 + self.long.as_ref().map_or(0, |l| long_entries(l.len()))
    }

    /// Appends the entry's long-name entries and its short entry to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, attr: u8, cluster: u32, size: u32, at: DosTime) {
        if let Some(long) = &self.long {
            encode_long(long, &self.short, out);
        }
        out.extend_from_slice(&encode_short(
            &self.short,
            attr,
            self.case,
            cluster,
            size,
            at,
        ));
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
pub struct DirNode {
    path: String,
    /// Its parent's index in the list (the root's is its own, 0).
    pub parent: usize,
    /// Its entries, without `.` and `..`.
    pub entries: Vec<Entry>,
    /// Its clusters (the FAT12/16 root has none: it lives in a fixed region).
    pub chain: Vec<u32>,
}

/// Every directory with its named entries; index 0 is the root. `dirs` lists every
/// directory but the root, parents first; `files` every file. The start script is the
/// root's last entry.
pub fn directories(dirs: &[AreaPath], files: &[AreaPath]) -> Result<Vec<DirNode>, AreaError> {
    let mut nodes = vec![DirNode {
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
                what: format!("the upload lists {path} before its directory"),
            }),
    };
    for dir in dirs {
        let parent = parent_of(dir, &index)?;
        let me = nodes.len();
        children[parent].push((dir.file_name(), Target::Dir(me)));
        children.push(Vec::new());
        index.insert(dir.as_str(), me);
        nodes.push(DirNode {
            path: dir.as_str().into(),
            parent,
            entries: Vec::new(),
            chain: Vec::new(),
        });
    }
    let script = files.iter().position(|p| p.as_str() == START_SCRIPT);
    let others = (0..files.len()).filter(|&i| Some(i) != script);
    for i in others.chain(script) {
        let path = &files[i];
        children[parent_of(path, &index)?].push((path.file_name(), Target::File(i)));
    }
    for (dir, names) in nodes.iter_mut().zip(children) {
        dir.entries = name_entries(&dir.path, names)?;
    }
    Ok(nodes)
}

/// The first cluster free in a fresh volume (after the FAT32 root's).
pub fn first_free(geometry: &Geometry) -> u64 {
    match geometry.fat_type {
        FatType::Fat32 => u64::from(geometry.root_cluster) + 1,
        _ => 2,
    }
}

/// Gives every directory its clusters from cluster `next` on (`root_kept` entries
/// already sit in the root); returns one past the last cluster handed out, which may
/// lie beyond the volume's end (the caller reports the shortage).
pub fn allocate_dirs(
    dirs: &mut [DirNode],
    geometry: &Geometry,
    root_kept: usize,
    mut next: u64,
) -> Result<u64, AreaError> {
    let cluster_size = u64::from(geometry.cluster_size);
    let clusters_for = |bytes: u64| bytes.div_ceil(cluster_size).max(1);
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
    Ok(next)
}
