//! Finding and mounting the shared vFAT disk in a VM.

use core::ffi::CStr;
use core::mem::MaybeUninit;

use rustix::fd::AsFd;
use rustix::fs::{self, Mode, OFlags, RawDir};
use rustix::io::Errno;
use rustix::mount::{mount, MountFlags};

/// A device path like `/dev/vdb`, NUL-terminated.
pub type DevicePath = heapless::String<64>;

/// The volume label in a FAT boot sector, without its space padding, or `None` if the
/// sector is not a FAT boot sector with an extended BIOS parameter block.
pub fn fat_label(sector: &[u8; 512]) -> Option<&[u8]> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended BPB starts further in.
    let fat32 = u16::from_le_bytes([sector[22], sector[23]]) == 0;
    let (signature, label, fs_type) = if fat32 {
        (66, 71..82, 82..90)
    } else {
        (38, 43..54, 54..62)
    };
    if !matches!(sector[signature], 0x28 | 0x29) || !sector[fs_type].starts_with(b"FAT") {
        return None;
    }
    let label = &sector[label];
    let end = label
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    Some(&label[..end])
}

/// Looks through every block device for a FAT filesystem labelled `label` (case does
/// not matter, as on FAT).
pub fn find_by_label(label: &str) -> Option<DevicePath> {
    let sys = fs::open(
        "/sys/class/block",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = RawDir::new(sys.as_fd(), &mut buf);
    while let Some(entry) = entries.next() {
        let Ok(entry) = entry else { break };
        let name = entry.file_name().to_bytes();
        if name.first() == Some(&b'.') {
            continue;
        }
        let mut path = DevicePath::new();
        let Ok(name) = core::str::from_utf8(name) else {
            continue;
        };
        if path.push_str("/dev/").is_err() || path.push_str(name).is_err() {
            continue;
        }
        if has_fat_label(&path, label) {
            return Some(path);
        }
    }
    None
}

/// Whether the block device at `path` holds a FAT filesystem labelled `label` (case
/// does not matter, as on FAT). Reads its first sector only.
pub fn has_fat_label(path: &str, label: &str) -> bool {
    let Ok(dev) = fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else {
        return false;
    };
    let mut sector = [0u8; 512];
    matches!(crate::area::read_fd(dev.as_fd(), &mut sector), Ok(512))
        && fat_label(&sector).is_some_and(|found| found.eq_ignore_ascii_case(label.as_bytes()))
}

/// Creates `path` and its parents (like `mkdir -p`).
pub fn make_dirs(path: &str) -> Result<(), Errno> {
    for (at, _) in path
        .match_indices('/')
        .skip(1)
        .chain(core::iter::once((path.len(), "")))
    {
        match fs::mkdir(&path[..at], Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Mounts the vFAT disk at `target`. With `flush`, the kernel writes a file's data out
/// when it is closed, so results reach the disk soon even from scripts that never sync
/// (the boot disk, which the host may read at any time); the monitor still syncs its own
/// files explicitly. It costs a 100 ms wait at each close of a written file.
pub fn mount_vfat(device: &str, target: &CStr, flush: bool) -> Result<(), Errno> {
    let dir = target.to_str().map_err(|_| Errno::INVAL)?;
    make_dirs(dir)?;
    let options = if flush { c"flush" } else { c"" };
    match mount(device, target, "vfat", MountFlags::NOATIME, Some(options)) {
        // Already mounted there (by fstab, say): use it.
        Ok(()) | Err(Errno::BUSY) => Ok(()),
        Err(e) => Err(e),
    }
}
