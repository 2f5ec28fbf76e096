//! Upload: build a fresh image beside the live one and rename it over.
//!
//! The live image is never written. The host takes QEMU's lock bytes on it
//! ([`ImageWriteGuard`]), creates a temporary file in the same directory with the same
//! length, formats it with fatfs keeping the old volume's layout, label and volume id,
//! lays the new files into it in one pass (`build.rs`; [`START_SCRIPT`] is the root's
//! last entry), fsyncs it, renames it over the image and fsyncs the directory. A crash
//! before the rename leaves the old image (and a stray `.nlxtp-upload-*.img` file, which
//! a later upload into the same directory removes once it is stale); after it, the new
//! one.
//!
//! Why format instead of deleting the old files: the old content is the guest's, and
//! nothing that writes should walk hostile structures (a looped directory chain hangs
//! fatfs, a bad FAT entry panics it). Formatting means the writer only ever sees a volume
//! the host made itself; of the old image only the boot sector is read, by the host's own
//! checked parser.
//!
//! Locks: the guard on the old image is held from before the first read to after the
//! directory fsync. The new file is locked too (same bytes) before it is renamed, and
//! stays locked until the rename is durable: so at every moment, whichever inode the
//! image path names is locked, and no QEMU can start on the new image before it is
//! complete and on disk, nor on the old one while it is being replaced. A second upload
//! racing this one gets [`AreaError::Busy`] instead of interleaving.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::NamedTempFile;

use super::block::{BlockSource, ImageFile, Window};
use super::build::Builder;
use super::format::format_like;
use super::geometry::Geometry;
use super::lock::ImageWriteGuard;
use super::partition::{self, VolumePlace};
use crate::area::{AreaError, AreaPath, Durability, ReplaceStream, UploadFile};

/// Replaces the content of the image at `image` with `files` (see the module docs).
///
/// # Errors
/// See [`SharedArea::replace`](crate::area::SharedArea::replace).
pub fn replace(
    image: &Path,
    files: Vec<UploadFile>,
    durability: Durability,
) -> Result<(), AreaError> {
    let guard = ImageWriteGuard::acquire(image)?;
    replace_holding(image, guard, files, durability)
        .map(drop)
        .map_err(|(e, _)| e)
}

/// [`SharedArea::replace`](crate::area::SharedArea::replace) for a caller that already
/// holds the image's `guard` and keeps the image guarded throughout: no QEMU can start
/// on it before, during or after. Returns the guard on the new image; on an error,
/// `guard` comes back (the image is unchanged).
///
/// # Errors
/// As [`SharedArea::replace`](crate::area::SharedArea::replace), with the guard.
pub fn replace_holding(
    image: &Path,
    guard: ImageWriteGuard,
    files: Vec<UploadFile>,
    durability: Durability,
) -> Result<ImageWriteGuard, (AreaError, ImageWriteGuard)> {
    let mut upload = ImageUpload::begin(image, guard, durability)?;
    for file in files {
        if let Err(e) = crate::area::add_upload_file(&mut upload, file) {
            return Err((e, upload.abort()));
        }
    }
    upload.commit()
}

/// An upload into a local image, written while its files arrive into a temporary image
/// beside it (see the module docs); [`ImageUpload::commit`] renames it over the image,
/// dropping it leaves the image as it was.
#[derive(Debug)]
pub struct ImageUpload {
    image: PathBuf,
    /// The guard on the image; taken back by [`ImageUpload::commit`] and
    /// [`ImageUpload::abort`].
    guard: Option<ImageWriteGuard>,
    meta: Metadata,
    temp: NamedTempFile,
    /// The guard on the temporary image, which becomes the image's.
    temp_guard: ImageWriteGuard,
    durability: Durability,
    builder: Builder<Window<ImageFile>>,
}

impl ImageUpload {
    /// Starts an upload into `image`, which `guard` holds. On an error, `guard` comes
    /// back.
    ///
    /// # Errors
    /// As [`SharedArea::replace`](crate::area::SharedArea::replace), with the guard.
    pub fn begin(
        image: &Path,
        guard: ImageWriteGuard,
        durability: Durability,
    ) -> Result<Self, (AreaError, ImageWriteGuard)> {
        match Self::prepare(image, &guard, durability) {
            Ok((meta, temp, temp_guard, builder)) => Ok(ImageUpload {
                image: image.to_owned(),
                guard: Some(guard),
                meta,
                temp,
                temp_guard,
                durability,
                builder,
            }),
            Err(e) => Err((e, guard)),
        }
    }

    #[allow(clippy::type_complexity, reason = "the parts of an ImageUpload")]
    fn prepare(
        image: &Path,
        guard: &ImageWriteGuard,
        durability: Durability,
    ) -> Result<
        (
            Metadata,
            NamedTempFile,
            ImageWriteGuard,
            Builder<Window<ImageFile>>,
        ),
        AreaError,
    > {
        let open =
            |file: &File, path: &Path| file.try_clone().map_err(|e| AreaError::io("open", path, e));
        let old_disk = ImageFile::from_file(open(guard.file(), image)?, image)?;
        let meta = old_disk
            .file()
            .metadata()
            .map_err(|e| AreaError::io("inspect", image, e))?;
        let dir = parent_dir(image);
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)
            .map_err(|e| AreaError::io("create a temporary image in", dir, e))?;
        let temp_path = temp.path().to_owned();
        let temp_guard = ImageWriteGuard::lock(open(temp.as_file(), &temp_path)?, &temp_path)?;
        temp.as_file()
            .set_len(meta.len())
            .map_err(|e| AreaError::io("size", &temp_path, e))?;
        let new_disk =
            ImageFile::with_len(open(temp.as_file(), &temp_path)?, meta.len(), &temp_path);
        let builder = start_build(&old_disk, new_disk, durability)?;
        Ok((meta, temp, temp_guard, builder))
    }

    /// Makes the new image the image: flushed (if the upload asked for it), given the
    /// old one's permissions and owner, renamed over it. Returns the guard on the new
    /// image; on an error, the old one's (the image is unchanged).
    ///
    /// # Errors
    /// As [`SharedArea::replace`](crate::area::SharedArea::replace), with the guard.
    pub fn commit(mut self) -> Result<ImageWriteGuard, (AreaError, ImageWriteGuard)> {
        let guard = self
            .guard
            .take()
            .expect("an upload holds its guard until it ends");
        match self.finish() {
            Ok(new) => Ok(new),
            Err(e) => Err((e, guard)),
        }
    }

    /// Gives up the upload: the image stays as it was; returns its guard.
    pub fn abort(mut self) -> ImageWriteGuard {
        self.guard
            .take()
            .expect("an upload holds its guard until it ends")
    }

    fn finish(self) -> Result<ImageWriteGuard, AreaError> {
        let ImageUpload {
            image,
            meta,
            temp,
            temp_guard,
            durability,
            builder,
            ..
        } = self;
        let temp_path = temp.path().to_owned();
        let file = builder.finish()?.into_inner().into_file();
        file.set_permissions(meta.permissions())
            .map_err(|e| AreaError::io("set the permissions of", &temp_path, e))?;
        let mine = file
            .metadata()
            .map_err(|e| AreaError::io("inspect", &temp_path, e))?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| AreaError::io("give the old owner to", &temp_path, e))?;
        }
        let synced = durability == Durability::Synced;
        if synced {
            file.sync_all()
                .map_err(|e| AreaError::io("flush", &temp_path, e))?;
        }
        let dir = parent_dir(&image);
        temp.persist(&image)
            .map_err(|e| AreaError::io("rename the new image over", &image, e.error))?;
        if synced {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| AreaError::io("flush the directory", dir, e))?;
        }
        let removed = remove_leftovers(dir);
        if removed > 0 {
            tracing::info!("removed {removed} temporary image(s) of killed uploads");
        }
        Ok(temp_guard)
    }
}

impl ReplaceStream for ImageUpload {
    fn dir(&mut self, path: AreaPath, _mode: u32) -> Result<(), AreaError> {
        self.builder.dir(&path)
    }

    fn file(
        &mut self,
        path: AreaPath,
        _mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), AreaError> {
        self.builder.file(path, len, data)
    }

    fn commit(self: Box<Self>) -> Result<(), AreaError> {
        (*self).commit().map(drop).map_err(|(e, _)| e)
    }
}

/// The directory an image lies in.
fn parent_dir(image: &Path) -> &Path {
    match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Starts writing into `new_disk` (as long as `old_disk`, empty) the disk `old_disk`
/// with its FAT volume formatted anew, keeping its layout, label and volume id: files
/// then go to the returned builder, which gives `new_disk` back when finished. Of the
/// old disk only the partition table and the boot sector are read (by the host's own
/// checked parsers), and what lies outside the volume is copied. Also the libvirt
/// backend's, whose old disk is a remote volume.
///
/// # Errors
/// As [`SharedArea::replace`](crate::area::SharedArea::replace), except `Busy`.
pub(crate) fn start_build<V: BlockSource + 'static>(
    old_disk: &dyn BlockSource,
    new_disk: V,
    durability: Durability,
) -> Result<Builder<Window<V>>, AreaError> {
    let place = partition::find_volume(old_disk)?;
    let old = Window::new(old_disk, place.offset, place.len)?;
    let geometry = Geometry::read(&old)?;
    copy_outside(old_disk, &new_disk, &place)?;
    let new = Window::new(new_disk, place.offset, place.len)?;
    format_like(&new, &geometry)?;
    Builder::start(new, durability)
}

/// Copies what lies outside the volume (a partition table, other partitions, a GPT's
/// backup) from `old` to `new` byte for byte; runs of zeros are left as holes, as the
/// new file is sparse.
fn copy_outside(
    old: &dyn BlockSource,
    new: &dyn BlockSource,
    place: &VolumePlace,
) -> Result<(), AreaError> {
    const CHUNK: u64 = 1 << 20;
    let end = place.offset + place.len;
    for (from, to) in [(0, place.offset), (end, old.len())] {
        let mut at = from;
        let mut buf = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
        while at < to {
            let n = CHUNK.min(to - at) as usize;
            old.read_at(at, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                new.write_at(at, &buf[..n])?;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// What a temporary image's name starts and ends with.
const TEMP_PREFIX: &str = ".nlxtp-upload-";
const TEMP_SUFFIX: &str = ".img";

/// A temporary image not written for this long, and not locked, is a killed upload's.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// Removes the temporary images killed uploads left in `dir`: those no upload holds
/// (each holds its own, see the module docs) and that have not been written for
/// [`STALE_AFTER`] (which covers the moment between a temporary image's creation and its
/// lock). Best effort: returns how many went.
fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        let path = entry.path();
        // Taking its lock is the check that no upload still writes it.
        if stale {
            if let Ok(_held) = ImageWriteGuard::acquire(&path) {
                removed += usize::from(std::fs::remove_file(&path).is_ok());
            }
        }
    }
    removed
}
