//! The vFAT disk-image backend: a VM's shared area is a raw image with a FAT12, FAT16 or
//! FAT32 volume, the whole image or one partition of it, read and written in user space.
//!
//! The image is the guest's, so every byte of it is hostile. Reading never goes through
//! a general-purpose FAT library: the host's own parser checks the boot sector, follows
//! every chain bounded, and bounds every directory and file, so any image ends in a
//! result or an [`AreaError::Corrupt`] in time proportional to its size. Uploads are
//! written into a copy the host has just formatted. QEMU's image locks say whether the
//! VM runs and keep it from starting during an upload ([`qemu_holds_image`],
//! [`ImageWriteGuard`]).
//!
//! Each on-disk structure is defined once, below a [`BlockSource`] (where the volume's
//! bytes are: a local file, a window of one), for the reader and the writer alike:
//!
//! - `block.rs`: [`BlockSource`], [`ImageFile`], [`Window`];
//! - `geometry.rs`: the boot sector, parsed and checked;
//! - `fat.rs`: FAT entries of 12, 16 and 32 bits (get and set), the table read on
//!   demand, bounded chains, the whole-table check;
//! - `entry.rs`: directory entries: field offsets, short and long-name entries encoded
//!   and decoded, the short-name checksum, DOS times;
//! - `volume.rs` (lookups, reads) and `walk.rs` (a walk over everything): the reader;
//! - `status.rs`: the status fast path; `snapshot.rs`: a status report in one pass;
//! - `names.rs` (short names for long ones), `plan.rs` (an upload's names checked),
//!   `layout.rs` (where its directories go), `build.rs` (writing it as it comes), `format.rs` (fatfs
//!   formatting), `replace.rs` (the new image swapped in), `create.rs` (a new disk);
//! - `partition.rs`: where the volume lies: the whole image, or an MBR or GPT
//!   partition ([`find_volume`]);
//! - `lock.rs`: QEMU's lock bytes;
//! - `boot.rs`: the boot sector polled while a guest has the disk (label, release mark).

pub mod block;
mod boot;
mod build;
mod create;
mod entry;
mod fat;
mod format;
mod geometry;
mod layout;
mod lock;
mod names;
pub mod partition;
mod plan;
mod replace;
mod snapshot;
mod status;
mod volume;
mod walk;

use std::path::{Path, PathBuf};

pub use block::{BlockSource, Disk, ImageFile, Window};
pub use boot::BootSector;
pub use create::{
    create_disk, create_image, CreateError, DiskOptions, MAX_IMAGE_LEN, MIN_IMAGE_LEN,
};
pub use lock::{qemu_holds_image, ImageWriteGuard};
pub use partition::{find_volume, Partition, Scheme, VolumePlace};
// For backends that keep a FAT volume elsewhere (libvirt: a remote storage volume).
#[cfg_attr(
    not(feature = "libvirt"),
    allow(unused_imports, reason = "used by area::libvirt only")
)]
pub(crate) use self::{replace::start_build, status::locate_in, status::write_slot_in};
pub use build::Builder;
pub use replace::ImageUpload;

use self::status::StatusCache;
pub(crate) use self::volume::Volume;
use crate::area::{
    AreaError, AreaHold, AreaKind, AreaPath, AreaSnapshot, Capabilities, ChangeKey, Durability,
    ReplaceStream, SharedArea, StatusRead, UploadFile, Visitor, WalkLimits,
};

/// A VM's shared area: the vFAT image at a path.
///
/// It keeps no file open between calls except the status fast path's (see
/// [`SharedArea::read_status_file`]), which notices when the image is replaced.
#[derive(Debug)]
pub struct VfatImage {
    path: PathBuf,
    status: StatusCache,
}

impl VfatImage {
    /// The area in the image at `path`. Nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VfatImage {
            path: path.into(),
            status: StatusCache::default(),
        }
    }
}

impl SharedArea for VfatImage {
    fn location(&self) -> &Path {
        &self.path
    }

    fn kind(&self) -> AreaKind {
        AreaKind::VfatImage
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            folds_case: true,
            keeps_modes: false,
            atomic_replace: true,
            live: false,
            holdable: true,
        }
    }

    /// The image's device, inode, size and change times: anything that writes the image
    /// changes one of them.
    fn change_key(&self) -> Option<ChangeKey> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(ChangeKey::of(&[
            m.dev(),
            m.ino(),
            m.len(),
            (m.mtime() as u64).wrapping_mul(1_000_000_000) ^ (m.mtime_nsec() as u64),
            (m.ctime() as u64).wrapping_mul(1_000_000_000) ^ (m.ctime_nsec() as u64),
        ]))
    }

    fn is_busy(&self) -> Result<bool, AreaError> {
        qemu_holds_image(&self.path)
    }

    /// Locates the status file's clusters once (checking the volume on the way), then
    /// reads them with `pread` at the remembered offsets; [`StatusRead::Relocate`], a
    /// replaced image or a changed directory entry makes it locate again.
    fn read_status_file(&self, how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError> {
        self.status.read(&self.path, how, out)
    }

    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError> {
        Volume::open(&self.path)?.read_file(path, max_len)
    }

    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError> {
        Volume::open(&self.path)?.walk(limits, visit)
    }

    fn replace_with(
        &self,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        replace::replace(&self.path, files, durability)
    }

    /// Files go into the new image as they come (see [`ImageUpload`]).
    fn begin_replace<'a>(
        &'a self,
        durability: Durability,
        _spool_dir: Option<&Path>,
    ) -> Result<Box<dyn ReplaceStream + 'a>, AreaError> {
        let guard = ImageWriteGuard::acquire(&self.path)?;
        let upload = ImageUpload::begin(&self.path, guard, durability).map_err(|(e, _)| e)?;
        Ok(Box::new(upload))
    }

    /// QEMU's write locks on the image ([`ImageWriteGuard`]).
    fn hold(&self) -> Result<AreaHold, AreaError> {
        Ok(AreaHold::new(Some(ImageWriteGuard::acquire(&self.path)?)))
    }

    /// The guard goes into the replacement and comes back on the new image (after a
    /// failure: on the old one), taken before the rename, so no QEMU can start between
    /// the staged writes and their commit.
    fn replace_held(
        &self,
        hold: &mut AreaHold,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let Some(slot) = hold.claim_mut::<Option<ImageWriteGuard>>() else {
            return self.replace_with(files, durability);
        };
        let guard = slot
            .take()
            .expect("a held image keeps its guard between calls");
        let (result, guard) = match replace::replace_holding(&self.path, guard, files, durability) {
            Ok(new) => (Ok(()), new),
            Err((e, old)) => (Err(e), old),
        };
        *slot = Some(guard);
        result
    }

    /// In place, under QEMU's write locks (`hold`'s, or taken for this write).
    fn write_status_slot(
        &self,
        hold: &mut AreaHold,
        offset: usize,
        slot: &[u8],
    ) -> Result<(), AreaError> {
        match hold.claim_mut::<Option<ImageWriteGuard>>() {
            Some(Some(guard)) => status::write_slot(guard, offset, slot),
            _ => self.write_status_slot(&mut self.hold()?, offset, slot),
        }
    }

    /// One open and one pass over the image (`snapshot.rs`), which also remembers where
    /// the status file is for the next [`SharedArea::read_status_file`].
    fn snapshot(&self) -> Result<AreaSnapshot, AreaError> {
        snapshot::snapshot(&self.path, &self.status)
    }
}
