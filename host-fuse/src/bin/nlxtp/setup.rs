//! The commands that make or attach areas rather than talk to a guest: `create-disk`,
//! `mount`, `umount`.

use std::path::Path;
use std::process::ExitCode;

use nlxtp_host::area::vfat::{create_disk as create, DiskOptions};
use nlxtp_host::fuse::{self, MountOptions};

use crate::args::PartitionTable;
use crate::out::note;
use crate::Failure;

/// `nlxtp create-disk`.
pub fn create_disk(
    image: &Path,
    size: u64,
    fat: Option<u8>,
    label: Option<String>,
    partition: Option<PartitionTable>,
) -> Result<ExitCode, Failure> {
    let options = DiskOptions {
        size,
        fat_bits: fat,
        label,
        partition: partition.map(Into::into),
    };
    create(image, &options)?;
    note!(
        "created {} ({size} bytes); attach it with -drive file={},format=raw,if=virtio",
        image.display(),
        image.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `nlxtp mount`.
pub fn mount(options: &MountOptions) -> Result<ExitCode, Failure> {
    fuse::mount(options)?;
    Ok(ExitCode::SUCCESS)
}

/// `nlxtp umount`.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<ExitCode, Failure> {
    note!("nlxtp: {}", fuse::umount(mountpoint, lazy)?);
    Ok(ExitCode::SUCCESS)
}
