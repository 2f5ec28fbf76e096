//! A guest VM ready to boot: a working directory, the kernel and initramfs, and a shared
//! disk made the way `nlxtp create-disk` makes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nlxtp_host::area::vfat::{create_disk, DiskOptions, VfatImage};

use crate::kernel::Kernel;
use crate::qemu::{Vm, VmConfig};

/// Heartbeat the harness's guests promise: short, so a lost monitor shows within seconds.
pub const HEARTBEAT_MS: u32 = 500;

/// How long a boot may take to reach the guest's `/init` under TCG on a busy machine.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// A VM's files: kept in a temporary directory that goes away with it.
#[derive(Debug)]
pub struct GuestSetup {
    dir: tempfile::TempDir,
    kernel: Kernel,
    initramfs: PathBuf,
    disk: PathBuf,
    boots: u32,
}

impl GuestSetup {
    /// Builds the guest (kernel from the cache, fresh initramfs) and a shared disk of
    /// `disk_mib` MiB.
    ///
    /// # Errors
    /// When the kernel, the guest binary, the initramfs or the disk cannot be made.
    pub fn new(disk_mib: u64) -> Result<GuestSetup> {
        Self::with_fat(disk_mib, None)
    }

    /// As [`GuestSetup::new`], with the FAT type chosen (12, 16 or 32).
    ///
    /// # Errors
    /// As [`GuestSetup::new`].
    pub fn with_fat(disk_mib: u64, fat_bits: Option<u8>) -> Result<GuestSetup> {
        Self::with_disk(&DiskOptions {
            size: disk_mib << 20,
            fat_bits,
            ..DiskOptions::default()
        })
    }

    /// As [`GuestSetup::new`], with the shared disk made as `options` say (a partition
    /// table, say).
    ///
    /// # Errors
    /// As [`GuestSetup::new`].
    pub fn with_disk(options: &DiskOptions) -> Result<GuestSetup> {
        let dir = tempfile::Builder::new().prefix("nlxtp-vm-").tempdir()?;
        let (kernel, initramfs) = crate::initramfs::guest_initramfs(dir.path())?;
        let disk = dir.path().join("shared.img");
        create_disk(&disk, options).context("could not create the shared disk")?;
        Ok(GuestSetup {
            dir,
            kernel,
            initramfs,
            disk,
            boots: 0,
        })
    }

    /// The shared disk image.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The shared area on the disk, as the host sees it.
    pub fn area(&self) -> VfatImage {
        VfatImage::new(&self.disk)
    }

    /// The working directory (serial logs, scratch files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The initramfs size in bytes (for reports).
    pub fn initramfs_len(&self) -> u64 {
        std::fs::metadata(&self.initramfs).map_or(0, |m| m.len())
    }

    /// The kernel package (for reports).
    pub fn kernel_package(&self) -> &str {
        &self.kernel.name
    }

    /// Boots the VM. With `stay` it stays up after handling the upload; without, it
    /// powers off by itself once the run has ended.
    ///
    /// # Errors
    /// When QEMU cannot start.
    pub fn boot(&mut self, stay: bool) -> Result<Vm> {
        self.boot_with(stay, None)
    }

    /// Boots the VM to stay up (`nlxtp.stay`) with a QMP socket in the working
    /// directory, so that jobs can be hot-plugged into it ([`nlxtp_host::ops::hot`];
    /// connect with [`Vm::qmp`]). The boot-time shared disk is attached as with
    /// [`GuestSetup::boot`].
    ///
    /// # Errors
    /// When QEMU cannot start.
    pub fn boot_hot(&mut self) -> Result<Vm> {
        let socket = self.dir.path().join(format!("qmp-{}.sock", self.boots + 1));
        self.boot_with(true, Some(socket))
    }

    fn boot_with(&mut self, stay: bool, qmp: Option<PathBuf>) -> Result<Vm> {
        self.boots += 1;
        let config = VmConfig {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            disk: self.disk.clone(),
            stay,
            heartbeat_ms: HEARTBEAT_MS,
            memory_mib: 256,
            serial_log: self.dir.path().join(format!("serial-{}.log", self.boots)),
            qmp,
        };
        Vm::boot(&config)
    }
}

/// `n` bytes that gzip cannot shrink (xorshift from `seed`, not 0): jobs whose upload
/// takes as long as their size says.
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A `.tar.gz` archive made of `(path, content, mode)` members, for uploads.
///
/// # Errors
/// Never in practice (it writes to memory).
pub fn archive(members: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content, mode) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *content)?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// The area's files (path -> content) as a download packs them.
///
/// # Errors
/// When the area cannot be read or packed.
pub fn download_files(
    area: &dyn nlxtp_host::area::SharedArea,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    use std::io::Read;
    let mut tar = Vec::new();
    nlxtp_host::ops::archive::write_download(
        area,
        &mut tar,
        nlxtp_host::ops::Compression::None,
        &Default::default(),
        &mut |_| {},
    )?;
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(&tar[..]).entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            files.insert(entry.path()?.to_string_lossy().into_owned(), content);
        }
    }
    Ok(files)
}

/// A status file (`nlxtp/status.bin`) holding `record` in its first free slot, as a
/// guest's monitor would have written it.
pub fn status_file(mut record: nlxtp_core::StatusRecord) -> Vec<u8> {
    use nlxtp_core::record::STATUS_SLOT_LEN;
    use nlxtp_core::slots::{StatusWriter, STATUS_FILE_LEN};
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let at = StatusWriter::new()
        .encode(&mut record, &mut slot)
        .expect("a record with its text within bounds");
    file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    file
}
