//! The fast status read: find the status file's clusters once, then `pread` them.
//!
//! Locating checks the boot sector and follows three bounded chains (the root on FAT32,
//! `nlxtp/`, the file) and remembers: the image file, its inode, the byte offset and bytes of the
//! status file's directory entry, and the (offset, length) runs of its data. Each read
//! after that is one `stat` of the image path (a replaced image is a new inode), one
//! 32-byte `pread` of the directory entry (a deleted or moved file changes its name,
//! first cluster or size), and one
//! `pread` per run, usually one. The guest writes the slots in place and never moves
//! them (docs/wire-format.md section 4), so that is all that can change while it runs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use nlxtp_core::slots::STATUS_FILE_LEN;

use super::block::{BlockSource, Disk, ImageFile};
use super::entry::short_form;
use super::lock::ImageWriteGuard;
use super::partition::volume_in;
use super::volume::{read_located, write_located, Dirs, Located, Volume};
use crate::area::{AreaError, AreaPath, StatusRead};

/// Reads of the status file beyond its fixed size: one byte, to see a longer file.
pub const WANTED: u64 = STATUS_FILE_LEN as u64 + 1;

/// Where one image's status file is.
#[derive(Debug)]
pub struct Place {
    image: Disk,
    inode: (u64, u64),
    located: Located,
}

/// The remembered place of one image's status file.
#[derive(Debug, Default)]
pub struct StatusCache {
    place: Mutex<Option<Place>>,
}

impl StatusCache {
    /// Reads the status file of the image at `path` into `out` (see
    /// [`SharedArea::read_status_file`](crate::area::SharedArea::read_status_file)).
    ///
    /// # Errors
    /// Those of [`Volume::open`] when (re)locating, and [`AreaError::Io`].
    pub fn read(&self, path: &Path, how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError> {
        out.clear();
        // A poisoned lock only means another reader panicked; the cache is rechecked anyway.
        let mut place = self.place.lock().unwrap_or_else(|p| p.into_inner());
        if how == StatusRead::Relocate {
            *place = None;
        }
        if let Some(current) = place.as_ref() {
            if still_valid(current, path)? {
                return read_ranges(current, out);
            }
        }
        *place = locate(path)?;
        match place.as_ref() {
            Some(found) => read_ranges(found, out),
            None => Ok(()),
        }
    }

    /// Remembers `place`, found by a look at the image that has just read the file.
    pub fn remember(&self, place: Option<Place>) {
        *self.place.lock().unwrap_or_else(|p| p.into_inner()) = place;
    }
}

fn inode_of(path: &Path) -> Result<(u64, u64), AreaError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AreaError::NoImage { path: path.into() },
        _ => AreaError::io("inspect", path, e),
    })?;
    Ok((meta.dev(), meta.ino()))
}

fn still_valid(place: &Place, path: &Path) -> Result<bool, AreaError> {
    if inode_of(path)? != place.inode {
        return Ok(false);
    }
    let mut entry = [0u8; 32];
    place
        .image
        .read_at(place.located.entry_offset, &mut entry)?;
    Ok(identity(&entry) == identity(&place.located.entry))
}

/// The fields of a directory entry that say which file it is and where: name and
/// attributes, first cluster, size. Not the times: each slot the guest writes updates
/// the modification time.
fn identity(entry: &[u8; 32]) -> ([u8; 12], [u8; 2], [u8; 6]) {
    let mut name = [0u8; 12];
    name.copy_from_slice(&entry[..12]);
    let mut place = [0u8; 6];
    place.copy_from_slice(&entry[26..32]);
    (name, [entry[20], entry[21]], place)
}

fn locate(path: &Path) -> Result<Option<Place>, AreaError> {
    let volume = Volume::open_unchecked(path)?;
    let Some(located) = locate_in(&volume, &mut Dirs::default())? else {
        return Ok(None);
    };
    // The inode of the file this Image has open: read after opening, so a rename in
    // between shows as a mismatch at the next read rather than as a stale cache.
    let meta = volume
        .source
        .inner()
        .file()
        .metadata()
        .map_err(|e| AreaError::io("inspect", path, e))?;
    Ok(Some(Place {
        image: volume.source,
        inode: (meta.dev(), meta.ino()),
        located,
    }))
}

/// Finds the status file in `volume`: `None` if there is none.
///
/// # Errors
/// [`AreaError::Corrupt`] for a broken chain on the way, or a directory in its place.
pub fn locate_in<S: BlockSource>(
    volume: &Volume<S>,
    dirs: &mut Dirs,
) -> Result<Option<Located>, AreaError> {
    let shorts = [
        short_form(nlxtp_core::layout::PROTOCOL_DIR).expect("an 8.3 name"),
        short_form("status.bin").expect("an 8.3 name"),
    ];
    debug_assert_eq!(nlxtp_core::layout::STATUS_FILE, "nlxtp/status.bin");
    let Some(located) = volume.locate_short_in(dirs, &shorts, WANTED)? else {
        return Ok(None);
    };
    if located.is_dir {
        return Err(AreaError::Corrupt {
            what: "the status file is a directory".into(),
        });
    }
    Ok(Some(located))
}

/// The place of a status file found in the image `image`, whose device and inode are
/// `inode`.
pub fn place(image: Disk, inode: (u64, u64), located: Located) -> Place {
    Place {
        image,
        inode,
        located,
    }
}

/// Writes `slot` at `offset` of the status file of the image `guard` holds, in place,
/// and flushes it (see [`SharedArea::write_status_slot`](crate::area::SharedArea::write_status_slot)).
///
/// # Errors
/// [`AreaError::NotFound`] when there is no status file, [`AreaError::Corrupt`] when it
/// is not [`STATUS_FILE_LEN`] bytes long or the slot does not fit in it; those of
/// opening the volume and writing.
pub fn write_slot(guard: &ImageWriteGuard, offset: usize, slot: &[u8]) -> Result<(), AreaError> {
    let path = guard.path();
    let file = guard
        .file()
        .try_clone()
        .map_err(|e| AreaError::io("open", path, e))?;
    write_slot_in(
        &Volume::new_unchecked(volume_in(ImageFile::from_file(file, path)?)?)?,
        offset,
        slot,
    )
}

/// Writes `slot` at `offset` of the status file of `volume`, in place, and flushes it:
/// [`write_slot`] for any source that can be written at an offset (a libvirt volume).
///
/// # Errors
/// As [`write_slot`].
pub fn write_slot_in<S: BlockSource>(
    volume: &Volume<S>,
    offset: usize,
    slot: &[u8],
) -> Result<(), AreaError> {
    let Some(located) = locate_in(volume, &mut Dirs::default())? else {
        return Err(AreaError::NotFound {
            path: AreaPath::new(nlxtp_core::layout::STATUS_FILE).expect("a valid area path"),
        });
    };
    let len: usize = located.ranges.iter().map(|r| r.1).sum();
    if len != STATUS_FILE_LEN || offset.saturating_add(slot.len()) > STATUS_FILE_LEN {
        return Err(AreaError::Corrupt {
            what: format!(
                "the status file is not the {STATUS_FILE_LEN} bytes a slot is written into"
            ),
        });
    }
    write_located(&volume.source, &located, offset, slot)?;
    volume.source.flush()
}

fn read_ranges(place: &Place, out: &mut Vec<u8>) -> Result<(), AreaError> {
    read_located(&place.image, &place.located, out)
}
