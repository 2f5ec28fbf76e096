//! The operations a user or a testbed calls, on any [`SharedArea`]: upload, status, wait,
//! download, exec, and hot-plugged jobs for a running VM ([`hot`]). The CLI, the FUSE
//! view and the harness all go through these.

pub mod archive;
pub mod download;
pub mod hot;
pub mod logs;
pub mod status;

use std::io::Read;
use std::path::{Path, PathBuf};

use nlxtp_core::record::MANIFEST_LEN;
use nlxtp_core::{layout, Manifest, RunId};

pub use archive::{
    ArchiveError, ArchiveInput, ArchiveLimits, ArchiveSummary, Compression, DownloadReport,
    MemberData, MemberSink, ParsedUpload, UploadRules,
};
pub use download::{prepare_download, DownloadError, DownloadOptions, PreparedDownload};
pub use status::{status, wait, Monitor, StatusReport, WaitOutcome};

use crate::area::dir::ContainerDir;
use crate::area::vfat::VfatImage;
use crate::area::{AreaError, AreaPath, Durability, ReplaceStream, SharedArea};

/// `f` applied to every item, by up to `threads` threads at once (at least one), the
/// results in the items' order: for many independent reads that each wait on a round
/// trip (the domains of a libvirt host).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(at) else {
                            break done;
                        };
                        done.push((at, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.sort_by_key(|(at, _)| *at);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Opens the shared area at `target`: a directory is a container's area, a regular file
/// a VM's vFAT disk image.
///
/// # Errors
/// [`AreaError::NoImage`] when nothing is there, [`AreaError::Io`] when the path cannot
/// be inspected (permission denied, say).
pub fn open_target(target: &Path) -> Result<Box<dyn SharedArea>, AreaError> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_dir() => Ok(Box::new(ContainerDir::open(target)?)),
        Ok(_) => Ok(Box::new(VfatImage::new(target))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AreaError::NoImage {
            path: PathBuf::from(target),
        }),
        // Permission denied (a directory on the way the user may not search) says so.
        Err(e) => Err(AreaError::io("inspect", target, e)),
    }
}

/// Opens the container area at `target`, a path inside the container whose root
/// filesystem is `rootfs` (as the host sees it), resolved beneath `rootfs` without
/// following the guest's symbolic links (see [`ContainerDir::open_in`]).
///
/// # Errors
/// [`AreaError::NoImage`] when nothing is there or `target` is not UTF-8;
/// [`AreaError::Io`] when a component is a symbolic link or not a directory.
pub fn open_target_in(rootfs: &Path, target: &Path) -> Result<Box<dyn SharedArea>, AreaError> {
    let missing = || AreaError::NoImage {
        path: rootfs.join(target.strip_prefix("/").unwrap_or(target)),
    };
    let inside = target.to_str().ok_or_else(missing)?;
    Ok(Box::new(ContainerDir::open_in(rootfs, inside)?))
}

/// How an upload is made.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Bounds on the archive.
    pub limits: ArchiveLimits,
    /// Upload files without `auto_exec.sh` (nothing runs).
    pub files_only: bool,
    /// Replace the area even while the monitor of a run there is alive (a container's
    /// run, which the guest then stops; a VM that runs cannot be uploaded to at all).
    pub force: bool,
    /// Ask the guest to kill the script after this long.
    pub timeout_secs: Option<u32>,
    /// Ask the guest's monitor for this heartbeat interval.
    pub heartbeat_ms: Option<u32>,
    /// Ask the guest to cap each captured output stream at this many bytes.
    pub output_cap: Option<u64>,
    /// The archive's own file, when the source reads this regular file from its start:
    /// large members of an uncompressed archive are then read from it where they lie,
    /// instead of being copied to a temporary file first.
    pub archive_file: Option<std::sync::Arc<std::fs::File>>,
    /// Where large members that are not read in place wait, in unnamed temporary files,
    /// until the area is written: the system's temporary directory if `None`.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Whether the upload waits until the new content is on the disk.
    pub durability: Durability,
    /// Run an archive that holds the status of an earlier run (a download uploaded
    /// again); its old status files are dropped. Without it such an archive is refused,
    /// as the original implementation refused it.
    pub run_again: bool,
}

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadReport {
    /// The fresh run id written into the manifest.
    pub run_id: String,
    /// Files and directories written (the manifest included).
    pub entries: usize,
    /// Bytes of file content from the archive.
    pub bytes: u64,
    /// The archive's compression.
    pub compression: Compression,
    /// Protocol files in the archive that were not taken over.
    pub dropped: Vec<String>,
    /// Members whose setuid, setgid or sticky bits were cleared.
    pub stripped_mode_bits: Vec<String>,
    /// The run this upload replaced that had been cut off (the VM was off in the middle
    /// of it), if any.
    pub cut_off_run: Option<String>,
}

/// Why an upload failed. The area holds its previous content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The archive was refused.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The area could not be written.
    #[error(transparent)]
    Area(#[from] AreaError),
    /// A run is still going on in the container.
    #[error("run {run_id} is still going on in this shared area: wait for it (nlxtp wait), or pass --force to replace it (the guest then stops it)")]
    RunInProgress {
        /// The run's id.
        run_id: String,
    },
    /// The current status could not be read to check for a run in progress.
    #[error(transparent)]
    Status(#[from] crate::area::StatusError),
    /// No randomness for the run id.
    #[error("could not draw a random run id from the operating system")]
    Random,
}

/// Replaces the area's content with the archive from `source` and a fresh manifest; the
/// guest runs `auto_exec.sh` (at once in a container, at the next boot in a VM).
///
/// # Errors
/// See [`UploadError`]; nothing is changed on error.
pub fn upload(
    area: &dyn SharedArea,
    source: impl Read + Send,
    options: &UploadOptions,
) -> Result<UploadReport, UploadError> {
    let mut upload = begin_upload(area, options)?;
    upload.read(ArchiveInput::Raw(source))?;
    upload.commit()
}

/// An upload under way: the area checked, its new content being written while the
/// archive is read ([`Upload::read`]); the area holds its old content until
/// [`Upload::commit`], and keeps it if the upload is dropped.
pub struct Upload<'a> {
    stream: Box<dyn ReplaceStream + 'a>,
    limits: ArchiveLimits,
    rules: UploadRules,
    /// The archive's own file, for members a collecting backend reads later.
    archive_file: Option<std::sync::Arc<std::fs::File>>,
    settings: RunSettings,
    cut_off_run: Option<String>,
    read: Option<(ArchiveSummary, Compression)>,
    /// A read failed: what was written of it may be half a file, so nothing more may be
    /// read or committed.
    failed: bool,
}

impl std::fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("rules", &self.rules)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// Checks that `area` may be replaced now (the guest does not hold it, no run is going
/// on in it unless `options.force`) and starts the upload. Refuses before any of the
/// archive is read.
///
/// # Errors
/// See [`UploadError`].
pub fn begin_upload<'a>(
    area: &'a dyn SharedArea,
    options: &UploadOptions,
) -> Result<Upload<'a>, UploadError> {
    let cut_off_run = check_upload(area, options)?;
    let stream = area.begin_replace(options.durability, options.spool_dir.as_deref())?;
    Ok(Upload {
        stream,
        limits: options.limits,
        rules: UploadRules {
            require_script: !options.files_only,
            files_only: options.files_only,
            earlier_run: Some(options.run_again),
        },
        archive_file: options.archive_file.clone(),
        settings: RunSettings {
            timeout_secs: options.timeout_secs,
            heartbeat_interval_ms: options.heartbeat_ms,
            output_cap_bytes: options.output_cap,
        },
        cut_off_run,
        read: None,
        failed: false,
    })
}

impl Upload<'_> {
    /// Reads and checks the archive from `source`, writing its members as they come.
    /// A second call is refused.
    ///
    /// # Errors
    /// See [`UploadError`]; the area keeps its old content.
    pub fn read<R: Read + Send>(&mut self, source: ArchiveInput<R>) -> Result<(), UploadError> {
        if self.read.is_some() || self.failed {
            return Err(ArchiveError::Read {
                source: std::io::Error::other("an upload takes one archive, read once"),
            }
            .into());
        }
        let mut sink = archive::AreaSink {
            stream: self.stream.as_mut(),
            archive_file: self.archive_file.as_ref(),
        };
        let read = archive::read_members(
            source,
            &self.limits,
            &self.rules,
            self.archive_file.is_some(),
            &mut sink,
        );
        match read {
            Ok(read) => {
                self.read = Some(read);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Adds a fresh manifest and makes the upload the area's content.
    ///
    /// # Errors
    /// See [`UploadError`]; the area keeps its old content.
    pub fn commit(mut self) -> Result<UploadReport, UploadError> {
        let Some((summary, compression)) = self.read.take() else {
            return Err(ArchiveError::Read {
                source: std::io::Error::other(
                    "the upload was committed before its archive was read",
                ),
            }
            .into());
        };
        let (run_id, manifest) = fresh_manifest(self.settings)?;
        let len = manifest.len() as u64;
        self.stream.file(
            AreaPath::new(layout::MANIFEST_FILE).expect("the manifest path is valid"),
            0o644,
            len,
            &mut &manifest[..],
        )?;
        self.stream.commit()?;
        Ok(UploadReport {
            run_id: run_id.to_string(),
            entries: summary.entries + 1,
            bytes: summary.total_bytes,
            compression,
            dropped: summary.dropped,
            stripped_mode_bits: summary.stripped_mode_bits,
            cut_off_run: self.cut_off_run,
        })
    }
}

/// [`upload`] with the archive read and decompressed while the area is opened and
/// checked (in a thread of its own, a bounded way ahead): for areas whose opening and
/// checks take round trips, such as a libvirt domain on another host. When opening or
/// a check fails, reading stops at once and that error is returned; nothing is written.
///
/// # Errors
/// See [`UploadError`]; `E` from `open`.
#[allow(clippy::type_complexity, reason = "the area, and the upload into it")]
pub fn upload_opening<E>(
    open: impl FnOnce() -> Result<Box<dyn SharedArea>, E>,
    source: impl Read + Send,
    options: &UploadOptions,
) -> Result<(Box<dyn SharedArea>, Result<UploadReport, UploadError>), E> {
    let cancelled = std::sync::atomic::AtomicBool::new(false);
    let mut source = std::io::BufReader::with_capacity(
        64 * 1024,
        archive::Cancellable {
            inner: source,
            cancelled: &cancelled,
        },
    );
    let compression = match std::io::BufRead::fill_buf(&mut source) {
        Ok(head) => Compression::sniff(head),
        Err(e) => {
            let area = open()?;
            return Ok((area, Err(ArchiveError::Read { source: e }.into())));
        }
    };
    std::thread::scope(|scope| {
        let (mut decoded, mut plain) = (None, None);
        if compression == Compression::None {
            plain = Some(source);
        } else {
            decoded = Some(archive::Decoded::spawn_in(scope, source, compression));
        }
        // The decoding thread stops at its next read, and at its next chunk once its
        // reader is dropped; its result is moot: the caller gets why the upload cannot
        // go on.
        let stop = || cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
        let area = match open() {
            Ok(area) => area,
            Err(e) => {
                stop();
                return Err(e);
            }
        };
        let uploaded = (|| {
            let mut upload = begin_upload(area.as_ref(), options)?;
            match (decoded.take(), plain.take()) {
                (Some(decoded), _) => upload.read(ArchiveInput::Decoded(decoded, compression))?,
                (_, Some(plain)) => upload.read(ArchiveInput::Raw(plain))?,
                (None, None) => unreachable!("one of the two is set"),
            }
            upload.commit()
        })();
        if uploaded.is_err() {
            stop();
        }
        drop(decoded);
        Ok((area, uploaded))
    })
}

/// Checks that `area` may be replaced now: the guest does not hold it, and no run is
/// going on in it (unless `force`). Returns the run that was cut off (the VM went off in
/// the middle of it), which the upload replaces.
fn check_upload(
    area: &dyn SharedArea,
    options: &UploadOptions,
) -> Result<Option<String>, UploadError> {
    if area.is_busy()? {
        return Err(AreaError::Busy {
            image: area.location().to_path_buf(),
        }
        .into());
    }
    // A run in a live area (a container) would have its files replaced under it. A
    // VM's image that no QEMU holds runs nothing: a "running" record there belongs to a
    // run that was cut off, which the upload replaces.
    let report = status(area)?;
    match (&report.record, &report.monitor) {
        (Some(record), Monitor::Alive { .. }) if !options.force => {
            Err(UploadError::RunInProgress {
                run_id: record.run_id.clone(),
            })
        }
        (Some(record), Monitor::CutOff) => Ok(Some(record.run_id.clone())),
        _ => Ok(None),
    }
}

/// What a run asks of the guest's monitor; its manifest carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// Kill the script after this long.
    pub timeout_secs: Option<u32>,
    /// The monitor's heartbeat interval.
    pub heartbeat_interval_ms: Option<u32>,
    /// Cap each captured output stream at this many bytes.
    pub output_cap_bytes: Option<u64>,
}

impl RunSettings {
    /// The settings `manifest` asked for.
    pub fn of(manifest: &Manifest) -> Self {
        RunSettings {
            timeout_secs: manifest.timeout_secs,
            heartbeat_interval_ms: manifest.heartbeat_interval_ms,
            output_cap_bytes: manifest.output_cap_bytes,
        }
    }
}

/// The manifest of a new run (docs/wire-format.md section 1): a fresh random run id,
/// now as its creation time, and `settings`. Returns the run id and the manifest file's
/// bytes.
///
/// # Errors
/// [`UploadError::Random`] when the operating system gives no randomness.
pub fn fresh_manifest(settings: RunSettings) -> Result<(RunId, Vec<u8>), UploadError> {
    let mut run_id = RunId::default();
    getrandom::fill(&mut run_id.0).map_err(|_| UploadError::Random)?;
    let manifest = Manifest {
        run_id,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        timeout_secs: settings.timeout_secs,
        heartbeat_interval_ms: settings.heartbeat_interval_ms,
        output_cap_bytes: settings.output_cap_bytes,
    };
    let mut bytes = vec![0u8; MANIFEST_LEN];
    manifest
        .encode(&mut bytes)
        .expect("a manifest always fits its slot");
    Ok((run_id, bytes))
}

/// The `auto_exec.sh` that runs `command` (each word quoted for the shell).
pub fn exec_script(command: &[String]) -> String {
    let quoted: Vec<String> = command.iter().map(|word| shell_quote(word)).collect();
    format!(
        "#!/bin/sh\n# Written by nlxtp exec.\n{}\n",
        quoted.join(" ")
    )
}

/// A tar archive whose `auto_exec.sh` runs `command` (each word quoted for the shell).
pub fn exec_archive(command: &[String]) -> Vec<u8> {
    let script = exec_script(command);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, layout::START_SCRIPT, script.as_bytes())
        .expect("writing to memory");
    builder.into_inner().expect("writing to memory")
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parallel_map_keeps_the_order() {
        let items: Vec<u32> = (0..100).collect();
        for threads in [0, 1, 3, 200] {
            assert_eq!(
                super::parallel_map(&items, threads, |i| i * 2),
                items.iter().map(|i| i * 2).collect::<Vec<_>>()
            );
        }
        assert!(super::parallel_map(&[] as &[u8], 4, |_| ()).is_empty());
    }

    use super::*;

    #[test]
    fn an_upload_whose_read_failed_takes_no_second_read_and_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        let area = ContainerDir::open(dir.path()).unwrap();
        let job = exec_archive(&["true".into()]);
        let mut upload = begin_upload(&area, &UploadOptions::default()).unwrap();
        let cut = &job[..700];
        assert!(upload.read(ArchiveInput::Raw(cut)).is_err());
        let again = upload.read(ArchiveInput::Raw(&job[..])).unwrap_err();
        assert!(again.to_string().contains("could not be read"), "{again}");
        assert!(upload.commit().is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn exec_quotes_every_word() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        let tar = exec_archive(&["echo".into(), "a b".into()]);
        let parsed =
            archive::read_upload(&tar[..], &ArchiveLimits::default(), true, None, None).unwrap();
        let crate::area::UploadData::Bytes(script) = &parsed.files[0].data else {
            panic!("a small script stays in memory")
        };
        assert!(String::from_utf8_lossy(script).ends_with("echo 'a b'\n"));
    }
}
