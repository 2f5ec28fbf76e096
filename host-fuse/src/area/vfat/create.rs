//! Making a new shared disk: `qemu-img create`, then a FAT formatted in user space.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use nlxtp_core::layout::DEFAULT_VOLUME_LABEL;

use super::block::{ImageFile, Window};
use super::format::{fatfs_type, format, fresh_volume_id, label_bytes};
use super::geometry::{FatType, Geometry};
use super::partition::{self, Scheme};
use crate::area::AreaError;

/// The smallest image [`create_image`] makes (FAT12 with room for a few files).
pub const MIN_IMAGE_LEN: u64 = 1 << 20;
/// The largest image [`create_image`] makes.
pub const MAX_IMAGE_LEN: u64 = 2 << 40;

/// What went wrong creating an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// Something already exists at the path.
    #[error("{} already exists: remove it first, or choose another path", path.display())]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// The size is out of range or not whole sectors.
    #[error("an image of {size} bytes cannot be made: give a multiple of 512 between {MIN_IMAGE_LEN} and {MAX_IMAGE_LEN}")]
    BadSize {
        /// The size asked for.
        size: u64,
    },
    /// The FAT type is not 12, 16 or 32.
    #[error("FAT{bits} does not exist: choose 12, 16 or 32, or leave it to the size")]
    BadFatType {
        /// The bits asked for.
        bits: u8,
    },
    /// The label is not a valid FAT volume label.
    #[error(
        "{label:?} is not a FAT volume label: use 1-11 upper-case letters, digits, '_' or '-'"
    )]
    BadLabel {
        /// The label asked for.
        label: String,
    },
    /// `qemu-img` did not run or failed.
    #[error("qemu-img could not create {} ({detail}): install qemu-utils and check the directory is writable", path.display())]
    QemuImg {
        /// The image path.
        path: PathBuf,
        /// Its exit status and message.
        detail: String,
    },
    /// The asked-for FAT type does not fit this size (fatfs would silently choose another).
    #[error("FAT{bits} does not fit an image of {size} bytes: choose another size (FAT32 needs about 33 MiB or more, FAT12 at most about 16 MiB), or leave the FAT type to the size")]
    FatTypeDoesNotFit {
        /// The FAT type asked for.
        bits: u8,
        /// The image size.
        size: u64,
    },
    /// Formatting failed (typically: this FAT type does not fit this size).
    #[error("formatting {} as FAT failed: choose another size, or leave the FAT type to the size", path.display())]
    Format {
        /// The image path.
        path: PathBuf,
        /// fatfs's error.
        #[source]
        source: io::Error,
    },
    /// An operating-system call failed.
    #[error(transparent)]
    Area(#[from] AreaError),
}

/// Creates a raw image of `size` bytes at `path` with `qemu-img create -f raw` and formats
/// it as FAT in user space, with volume label `label` (default
/// [`DEFAULT_VOLUME_LABEL`], by which the guest finds its disk). `fat_bits` is 12, 16 or
/// 32; `None` lets the size decide (FAT12 below 4 MiB, FAT16 below 512 MiB, else FAT32).
///
/// ```no_run
/// nlxtp_host::area::vfat::create_image("/var/lib/vm/shared.img".as_ref(), 64 << 20, None, None)?;
/// # Ok::<(), nlxtp_host::area::vfat::CreateError>(())
/// ```
///
/// # Errors
/// [`CreateError::Exists`] (nothing is overwritten), [`CreateError::BadSize`],
/// [`CreateError::BadFatType`], [`CreateError::BadLabel`], [`CreateError::QemuImg`],
/// [`CreateError::FatTypeDoesNotFit`], [`CreateError::Format`], [`CreateError::Area`] (an [`AreaError::Io`]). On an error after the file was
/// created, it is removed again.
pub fn create_image(
    path: &Path,
    size: u64,
    fat_bits: Option<u8>,
    label: Option<&str>,
) -> Result<(), CreateError> {
    create_disk(
        path,
        &DiskOptions {
            size,
            fat_bits,
            label: label.map(str::to_owned),
            partition: None,
        },
    )
}

/// How [`create_disk`] makes a shared disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Size in bytes, a multiple of 512.
    pub size: u64,
    /// 12, 16 or 32; `None` lets the size decide.
    pub fat_bits: Option<u8>,
    /// The volume label; `None` for [`DEFAULT_VOLUME_LABEL`].
    pub label: Option<String>,
    /// A partition table with one FAT partition (1 MiB in, to the end), or `None` for a
    /// FAT volume that is the whole disk.
    pub partition: Option<Scheme>,
}

/// [`create_image`], with a partition table if `options` ask for one (the guest finds
/// the partition by its label as it finds a whole disk).
///
/// # Errors
/// As [`create_image`].
pub fn create_disk(path: &Path, options: &DiskOptions) -> Result<(), CreateError> {
    let DiskOptions {
        size,
        fat_bits,
        ref label,
        partition,
    } = *options;
    let label = label.as_deref();
    if !(MIN_IMAGE_LEN..=MAX_IMAGE_LEN).contains(&size) || !size.is_multiple_of(512) {
        return Err(CreateError::BadSize { size });
    }
    let fat_type = match fat_bits {
        None => None,
        Some(12) => Some(FatType::Fat12),
        Some(16) => Some(FatType::Fat16),
        Some(32) => Some(FatType::Fat32),
        Some(bits) => return Err(CreateError::BadFatType { bits }),
    };
    let label = label.unwrap_or(DEFAULT_VOLUME_LABEL);
    let label_raw = label_bytes(label).ok_or_else(|| CreateError::BadLabel {
        label: label.into(),
    })?;
    // Claim the path first: qemu-img would overwrite whatever is there.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CreateError::Exists { path: path.into() },
            _ => CreateError::Area(AreaError::io("create", path, source)),
        })?;
    let made = make(path, size, fat_type, label_raw, partition);
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

fn make(
    path: &Path,
    size: u64,
    fat_type: Option<FatType>,
    label: [u8; 11],
    partition: Option<Scheme>,
) -> Result<(), CreateError> {
    let qemu_img = |detail: String| CreateError::QemuImg {
        path: path.into(),
        detail,
    };
    let out = duct::cmd!(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "raw",
        path,
        size.to_string()
    )
    .stdout_null()
    .stderr_capture()
    .unchecked()
    .run()
    .map_err(|e| qemu_img(format!("it did not start: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(qemu_img(format!("{}: {}", out.status, said.trim())));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| CreateError::Area(AreaError::io("open", path, source)))?;
    let image = ImageFile::from_file(file, path)?;
    let mut options = fatfs::FormatVolumeOptions::new()
        .volume_label(label)
        .volume_id(fresh_volume_id());
    if let Some(fat_type) = fat_type {
        options = options.fat_type(fatfs_type(fat_type));
    }
    let format_error = |source| CreateError::Format {
        path: path.into(),
        source,
    };
    let region = match partition {
        Some(scheme) => partition::table_region(size, scheme)?,
        None => partition::VolumePlace {
            offset: 0,
            len: size,
            partition: None,
        },
    };
    let volume = Window::new(&image, region.offset, region.len)?;
    format(&volume, options, "formatted a new image")
        .map_err(|e| format_error(io::Error::other(e.to_string())))?
        .map_err(format_error)?;
    let made =
        Geometry::read(&volume).map_err(|e| format_error(io::Error::other(e.to_string())))?;
    if let Some(scheme) = partition {
        let mut ids = [0u8; 32];
        getrandom::fill(&mut ids).map_err(|e| format_error(io::Error::other(e.to_string())))?;
        partition::write_table(&image, scheme, made.fat_type, ids)?;
    }
    image
        .file()
        .sync_all()
        .map_err(|source| CreateError::Area(AreaError::io("flush", path, source)))?;
    match fat_type {
        Some(wanted) if wanted != made.fat_type => Err(CreateError::FatTypeDoesNotFit {
            bits: wanted.bits(),
            size,
        }),
        _ => Ok(()),
    }
}
