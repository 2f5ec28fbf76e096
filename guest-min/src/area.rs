//! The shared area as the guest sees it: a directory (a mounted vFAT disk in a VM, a
//! plain directory in a container) opened once and used through `*at` calls.

use core::ffi::CStr;

use nlxtp_core::custom::{CustomWriter, CUSTOM_FILE_LEN, CUSTOM_SLOT_LEN};
use nlxtp_core::layout;
use nlxtp_core::record::{MANIFEST_LEN, STATUS_SLOT_LEN};
use nlxtp_core::slots::{read_status, STATUS_FILE_LEN};
use nlxtp_core::{DecodeError, Manifest, RunId, StatusRecord, StatusWriter};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Temporary names: written whole, synced, then renamed into place, so that no reader
/// ever sees a half-created protocol file.
const STATUS_TMP: &str = "nlxtp/status.tmp";
const MANIFEST_TMP: &str = "nlxtp/manifest.tmp";
const LIVE_TMP: &str = "nlxtp/live.tmp";
const CUSTOM_TMP: &str = "nlxtp/custom.tmp";

/// What is at `auto_exec.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// Nothing: no upload.
    Missing,
    /// A regular file.
    File,
    /// Something that cannot be run as a script (directory, symlink, device...), with
    /// the errno the run is recorded with.
    Unusable(Errno),
}

/// What is at `nlxtp/manifest.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestRead {
    /// No manifest file.
    Missing,
    /// Being written (short file or torn frame).
    Partial,
    /// Present but unusable.
    Corrupt(DecodeError),
    /// A valid manifest.
    Valid(Manifest),
}

/// An open shared area.
#[derive(Debug)]
pub struct Area {
    dir: OwnedFd,
}

impl Area {
    /// Opens the shared area's root directory.
    pub fn open(path: &CStr) -> Result<Area, Errno> {
        let dir = fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Area { dir })
    }

    /// The root directory's descriptor.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Looks at the start script without following a symlink.
    pub fn script(&self) -> ScriptKind {
        match fs::statat(&self.dir, layout::START_SCRIPT, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => ScriptKind::Missing,
            Err(e) => ScriptKind::Unusable(e),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => ScriptKind::File,
                FileType::Directory => ScriptKind::Unusable(Errno::ISDIR),
                FileType::Symlink => ScriptKind::Unusable(Errno::LOOP),
                _ => ScriptKind::Unusable(Errno::NOEXEC),
            },
        }
    }

    /// The start script's size and modification time, to see whether a file dropped in
    /// by hand is still being written.
    pub fn script_fingerprint(&self) -> Option<(u64, i64, u64)> {
        let st = fs::statat(&self.dir, layout::START_SCRIPT, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some((
            st.st_size as u64,
            st.st_mtime as i64,
            st.st_mtime_nsec as u64,
        ))
    }

    /// Reads the manifest.
    pub fn read_manifest(&self) -> ManifestRead {
        let mut buf = [0u8; MANIFEST_LEN + 1];
        match read_file(self.dir(), layout::MANIFEST_FILE, &mut buf) {
            Err(Errno::NOENT) => ManifestRead::Missing,
            Err(_) => ManifestRead::Partial,
            Ok(len) => match Manifest::decode(&buf[..len]) {
                Ok(manifest) => ManifestRead::Valid(manifest),
                Err(DecodeError::NotThereYet | DecodeError::Torn) => ManifestRead::Partial,
                Err(e) => ManifestRead::Corrupt(e),
            },
        }
    }

    /// Writes a manifest (for an upload that came without one).
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), Errno> {
        let mut bytes = [0u8; MANIFEST_LEN];
        manifest.encode(&mut bytes).map_err(|_| Errno::INVAL)?;
        self.ensure_protocol_dir()?;
        self.replace_file(MANIFEST_TMP, layout::MANIFEST_FILE, &bytes)
    }

    /// Reads the newest status record.
    pub fn read_status(&self) -> Result<StatusRecord, DecodeError> {
        let mut buf = [0u8; STATUS_FILE_LEN + 1];
        match read_file(self.dir(), layout::STATUS_FILE, &mut buf) {
            Ok(len) => read_status(&buf[..len]),
            Err(Errno::NOENT) => Err(DecodeError::NotThereYet),
            Err(_) => Err(DecodeError::Torn),
        }
    }

    /// Creates a fresh status file holding `record` (as sequence 1) and opens it for
    /// the monitor. The file appears whole, by rename.
    pub fn create_status(&self, record: &mut StatusRecord) -> Result<StatusFile, Errno> {
        self.ensure_protocol_dir()?;
        let mut writer = StatusWriter::new();
        let mut file = [0u8; STATUS_FILE_LEN];
        let mut slot = [0u8; STATUS_SLOT_LEN];
        let at = writer.encode(record, &mut slot).map_err(|_| Errno::INVAL)?;
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
        self.replace_file(STATUS_TMP, layout::STATUS_FILE, &file)?;
        let fd = self.open_status_rw()?;
        Ok(StatusFile { fd, writer })
    }

    /// Opens the existing status file to continue it (after a reboot, or to close a run
    /// whose monitor died).
    pub fn open_status(&self) -> Result<StatusFile, Errno> {
        let fd = self.open_status_rw()?;
        let mut buf = [0u8; STATUS_FILE_LEN + 1];
        let len = read_fd(fd.as_fd(), &mut buf)?;
        if len != STATUS_FILE_LEN {
            return Err(Errno::BADMSG);
        }
        Ok(StatusFile {
            writer: StatusWriter::resume(&buf[..len]),
            fd,
        })
    }

    fn open_status_rw(&self) -> Result<OwnedFd, Errno> {
        fs::openat(
            &self.dir,
            layout::STATUS_FILE,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    }

    /// Creates (truncating) a capture file for the script's output.
    pub fn create_output(&self, path: &str) -> Result<OwnedFd, Errno> {
        self.ensure_protocol_dir()?;
        fs::openat(
            &self.dir,
            path,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::TRUNC
                | OFlags::APPEND
                | OFlags::CLOEXEC
                | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
    }

    /// Creates the live-output ring: a zeroed file of fixed size that appears whole.
    pub fn create_live(&self) -> Result<OwnedFd, Errno> {
        use nlxtp_core::live::LIVE_FILE_LEN;
        self.ensure_protocol_dir()?;
        let fd = fs::openat(
            &self.dir,
            LIVE_TMP,
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )?;
        let zeros = [0u8; 4096];
        for _ in 0..LIVE_FILE_LEN / zeros.len() {
            crate::sys::write_all(fd.as_fd(), &zeros)?;
        }
        fs::fsync(&fd)?;
        fs::renameat(&self.dir, LIVE_TMP, &self.dir, layout::LIVE_FILE)?;
        Ok(fd)
    }

    /// Creates the custom status file of run `run_id`: fixed size, holding the run's
    /// empty text as sequence 1, appearing whole by rename. Status helpers write it from
    /// then on, and refuse to once it names another run.
    pub fn create_custom(&self, run_id: RunId) -> Result<(), Errno> {
        self.ensure_protocol_dir()?;
        let fd = fs::openat(
            &self.dir,
            CUSTOM_TMP,
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )?;
        let mut slot = [0u8; CUSTOM_SLOT_LEN];
        let first = CustomWriter::new()
            .encode(run_id, "", &mut slot)
            .map_err(|_| Errno::INVAL)?;
        let zeros = [0u8; CUSTOM_SLOT_LEN];
        let (a, b) = if first == 0 {
            (&slot, &zeros)
        } else {
            (&zeros, &slot)
        };
        crate::sys::write_all(fd.as_fd(), a)?;
        crate::sys::write_all(fd.as_fd(), b)?;
        fs::fsync(&fd)?;
        fs::renameat(&self.dir, CUSTOM_TMP, &self.dir, layout::CUSTOM_FILE)
    }

    /// Reads the custom status file into `buf` (at least [`CUSTOM_FILE_LEN`] + 1 bytes);
    /// returns how many bytes it has (0 if there is none).
    pub fn read_custom_file(&self, buf: &mut [u8]) -> usize {
        debug_assert!(buf.len() > CUSTOM_FILE_LEN);
        read_file(self.dir(), layout::CUSTOM_FILE, buf).unwrap_or(0)
    }

    /// Flushes everything written to the area's filesystem to its disk.
    pub fn sync(&self) -> Result<(), Errno> {
        fs::syncfs(&self.dir)
    }

    fn ensure_protocol_dir(&self) -> Result<(), Errno> {
        match fs::mkdirat(&self.dir, layout::PROTOCOL_DIR, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn replace_file(&self, tmp: &str, path: &str, bytes: &[u8]) -> Result<(), Errno> {
        let fd = fs::openat(
            &self.dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )?;
        crate::sys::write_all(fd.as_fd(), bytes)?;
        fs::fsync(&fd)?;
        drop(fd);
        fs::renameat(&self.dir, tmp, &self.dir, path)?;
        // Make the rename itself durable (the directory entry).
        let proto = fs::openat(
            &self.dir,
            layout::PROTOCOL_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        fs::fsync(&proto)
    }
}

/// A NUL-terminated path of at most [`crate::sys::PATH_MAX`] bytes.
pub type PathBuf = heapless::Vec<u8, { crate::sys::PATH_MAX }>;

/// `AREA/nlxtp/custom.bin` for the area at `area_path`, NUL-terminated; `None` if too long.
pub fn custom_file_path(area_path: &CStr) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    path.extend_from_slice(area_path.to_bytes()).ok()?;
    path.push(b'/').ok()?;
    path.extend_from_slice(layout::CUSTOM_FILE.as_bytes())
        .ok()?;
    path.push(0).ok()?;
    Some(path)
}

/// The monitor's handle on the status file: writes whole slots in place and flushes
/// each to the disk before the next (the rules of `docs/wire-format.md`).
#[derive(Debug)]
pub struct StatusFile {
    fd: OwnedFd,
    writer: StatusWriter,
}

impl StatusFile {
    /// Writes `record` as the next record (it gets the next sequence number).
    pub fn write(&mut self, record: &mut StatusRecord) -> Result<(), Errno> {
        let mut slot = [0u8; STATUS_SLOT_LEN];
        let at = self
            .writer
            .encode(record, &mut slot)
            .map_err(|_| Errno::INVAL)?;
        pwrite_all(self.fd.as_fd(), &slot, at as u64)?;
        fs::fdatasync(&self.fd)
    }
}

/// Reads at most `buf.len()` bytes of a file below `dir` (not following a final symlink).
pub fn read_file(dir: BorrowedFd<'_>, path: &str, buf: &mut [u8]) -> Result<usize, Errno> {
    let fd = fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    read_fd(fd.as_fd(), buf)
}

/// Reads until EOF or until `buf` is full.
pub fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Writes all of `bytes` at offset `at`, retrying short writes and EINTR.
pub fn pwrite_all(fd: BorrowedFd<'_>, mut bytes: &[u8], mut at: u64) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::pwrite(fd, bytes, at) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                bytes = &bytes[n..];
                at += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
