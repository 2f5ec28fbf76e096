//! The volume's boot sector as a host polls it while a guest has the disk: its label
//! (what kind of shared disk it is) and the guest's release mark
//! ([`nlxtp_core::layout::RELEASE_MARK`]), read where the volume lies, the whole image or
//! a partition of it.

use std::path::Path;

use nlxtp_core::layout::has_release_mark;

use super::block::{BlockSource, Disk, Window};
use super::geometry::BOOT_SECTOR_LEN;
use super::partition::volume_in;
use super::volume::Volume;
use crate::area::AreaError;

/// The boot sector of the FAT volume in one image, opened once and read again on demand.
/// Over a source that caches what it read, [`BootSector::is_released`] sees only the
/// first read: poll through an uncached source.
#[derive(Debug)]
pub struct BootSector<S = Disk> {
    volume: S,
    label: Option<String>,
}

impl BootSector<Disk> {
    /// Opens the image at `path` and finds its FAT volume (see
    /// [`find_volume`](super::find_volume)); the label is read now.
    ///
    /// # Errors
    /// [`AreaError::NoImage`], [`AreaError::Corrupt`] for an image with no valid FAT
    /// volume, [`AreaError::AmbiguousVolume`], [`AreaError::Io`].
    pub fn open(path: &Path) -> Result<Self, AreaError> {
        Ok(Self::of(Volume::open_unchecked(path)?))
    }
}

impl<S: BlockSource> BootSector<Window<S>> {
    /// The boot sector of the FAT volume in `disk` (a whole-disk volume or a partition,
    /// as [`BootSector::open`] finds it); the label is read now.
    ///
    /// # Errors
    /// As [`BootSector::open`], without [`AreaError::NoImage`].
    pub fn find_in(disk: S) -> Result<Self, AreaError> {
        Ok(Self::of(Volume::new_unchecked(volume_in(disk)?)?))
    }
}

impl<S: BlockSource> BootSector<S> {
    fn of(volume: Volume<S>) -> Self {
        let label = volume.geometry.label.map(|raw| {
            String::from_utf8_lossy(&raw)
                .trim_end_matches([' ', '\0'])
                .to_owned()
        });
        BootSector {
            volume: volume.source,
            label,
        }
    }

    /// The volume label, without its padding; `None` when the boot sector has none.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Whether the boot sector carries the guest's release mark now (one `pread`).
    ///
    /// # Errors
    /// [`AreaError::Io`].
    pub fn is_released(&self) -> Result<bool, AreaError> {
        let mut sector = [0u8; BOOT_SECTOR_LEN];
        self.volume.read_at(0, &mut sector)?;
        Ok(has_release_mark(&sector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::vfat::{create_disk, DiskOptions, Scheme};
    use nlxtp_core::layout::{RELEASE_MARK, RELEASE_MARK_OFFSET};

    #[test]
    fn label_and_mark_are_read_inside_a_partition() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("hot.img");
        create_disk(
            &image,
            &DiskOptions {
                size: 8 << 20,
                label: Some("NLXTP-HOT".into()),
                partition: Some(Scheme::Mbr),
                ..DiskOptions::default()
            },
        )
        .unwrap();
        let boot = BootSector::open(&image).unwrap();
        assert_eq!(boot.label(), Some("NLXTP-HOT"));
        assert!(!boot.is_released().unwrap(), "a fresh format has no mark");
        // The partition starts 1 MiB in: the mark goes into its boot sector.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &file,
            &RELEASE_MARK,
            (1 << 20) + RELEASE_MARK_OFFSET as u64,
        )
        .unwrap();
        assert!(boot.is_released().unwrap());
    }
}
