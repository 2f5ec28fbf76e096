//! Archives in and out: uploads are read member by member through our own checks (never
//! `tar::Archive::unpack`), downloads are packed from a walk of the area.
//!
//! Formats: plain tar, tar.gz and tar.zst, told apart by their first bytes on the way
//! in, chosen by the output name on the way out.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nlxtp_core::layout;

use super::UploadError;
use crate::area::{
    AreaError, AreaPath, Collect, Entry, EntryKind, ReplaceStream, SharedArea, UploadFile,
    WalkLimits, SPOOL_ABOVE,
};

/// How an archive's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// Zstandard (`.tar.zst`).
    Zstd,
}

impl Compression {
    /// From the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// From an output file name: `.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`, else plain tar.
    pub fn from_name(name: &Path) -> Compression {
        let name = name.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Compression::Gzip
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Bounds on what an upload may hold. A hostile or broken archive (a gzip bomb, a million
/// empty members) stops at the first bound it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Members in all (directories included).
    pub max_entries: usize,
    /// Bytes of file content in all, after decompression.
    pub max_total_bytes: u64,
}

impl Default for ArchiveLimits {
    /// 100,000 members and 4 GiB.
    fn default() -> Self {
        ArchiveLimits {
            max_entries: 100_000,
            max_total_bytes: 4 << 30,
        }
    }
}

/// Why an upload archive was refused. Nothing has been written when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The stream is not a tar archive (nor a compressed one).
    #[error("the upload is not a tar, tar.gz or tar.zst archive: pack the files with tar first")]
    NotAnArchive {
        /// What the reader said.
        #[source]
        source: io::Error,
    },
    /// A member's name could escape the shared area or is not a plain relative path.
    #[error("archive member {name:?} has an unsafe path (absolute, or with '..'): pack it with relative paths")]
    UnsafePath {
        /// The name in the archive.
        name: String,
    },
    /// A member is a link; a vFAT disk cannot hold one and in a directory it could lead
    /// out of the shared area.
    #[error("archive member {name:?} is a {kind} link; links are not allowed in uploads: pack the file itself (tar --dereference)")]
    Link {
        /// The name in the archive.
        name: String,
        /// "symbolic" or "hard".
        kind: &'static str,
    },
    /// A member is a device, FIFO or another special file.
    #[error("archive member {name:?} is a {kind}; only files and directories can be uploaded")]
    Special {
        /// The name in the archive.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// Two members have the same path.
    #[error("archive member {name:?} appears twice: keep one copy")]
    Duplicate {
        /// The name in the archive.
        name: String,
    },
    /// Too many members.
    #[error("the archive has more than {limit} members: split the upload or raise --max-entries")]
    TooManyEntries {
        /// The bound.
        limit: usize,
    },
    /// Too many bytes.
    #[error(
        "the archive holds more than {limit} bytes: make the upload smaller or raise --max-bytes"
    )]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// The archive has no start script at its root.
    #[error("the archive has no {script} at its root: add one (it runs in the guest), or pass --files-only to upload files without running anything", script = layout::START_SCRIPT)]
    NoScript,
    /// A files-only upload holds the start script under some spelling: a guest's vFAT
    /// ignores case, so it would run it.
    #[error("the archive holds {name:?} at its root, which a guest's vFAT takes for {script} (it ignores case) and runs: a files-only upload must not hold it; rename it, or upload without --files-only", script = layout::START_SCRIPT)]
    ScriptInFilesOnly {
        /// The member's name.
        name: String,
    },
    /// The archive holds the status of a run: it is a download of an area where it ran.
    #[error("the archive holds the status of an earlier run ({evidence}): it is a download of an area where it already ran, and would run again; pass --run-again to run it anyway (its old status is left out)")]
    EarlierRun {
        /// The status file found in the archive.
        evidence: String,
    },
    /// The start script is not a regular file.
    #[error("{script} in the archive is not a regular file: it must be a shell script", script = layout::START_SCRIPT)]
    ScriptNotFile,
    /// Reading the archive failed (truncated, corrupt compression...).
    #[error("the archive could not be read to the end (truncated or corrupt): check the file")]
    Read {
        /// The reader's error.
        #[source]
        source: io::Error,
    },
}

/// An upload archive, checked and ready for [`SharedArea::replace`].
#[derive(Debug)]
pub struct ParsedUpload {
    /// Files and directories, in archive order (the backend writes the script last).
    pub files: Vec<UploadFile>,
    /// Protocol files the archive brought and that were left out (a downloaded
    /// archive uploaded again carries the old run's status and output).
    pub dropped: Vec<String>,
    /// Members whose setuid, setgid or sticky bits were cleared.
    pub stripped_mode_bits: Vec<String>,
    /// Bytes of file content taken.
    pub total_bytes: u64,
    /// The compression found.
    pub compression: Compression,
}

/// What reading an archive found, besides its members ([`read_members`]).
#[derive(Debug, Default)]
pub struct ArchiveSummary {
    /// Protocol files the archive brought and that were left out (a downloaded
    /// archive uploaded again carries the old run's status and output).
    pub dropped: Vec<String>,
    /// Members whose setuid, setgid or sticky bits were cleared.
    pub stripped_mode_bits: Vec<String>,
    /// Bytes of file content taken.
    pub total_bytes: u64,
    /// Files and directories taken.
    pub entries: usize,
}

/// Which members an upload may hold, checked as they are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadRules {
    /// Refuse an archive without `auto_exec.sh` at its root.
    pub require_script: bool,
    /// Refuse an archive that holds the start script under any spelling (nothing may
    /// run).
    pub files_only: bool,
    /// What to do with an earlier run's status (nlxtp's `nlxtp/status.bin`, or the
    /// original implementation's `exec_status/`): `None` leaves the original's in,
    /// `Some(false)` refuses the archive, `Some(true)` leaves them out (run again).
    pub earlier_run: Option<bool>,
}

/// One member of an upload, checked, as it is read.
#[allow(missing_debug_implementations, reason = "it holds a reader")]
pub enum MemberData<'a> {
    /// A directory.
    Dir,
    /// A file of `len` bytes.
    File {
        /// Exactly its bytes.
        data: &'a mut dyn Read,
        /// How many.
        len: u64,
        /// Where they lie in the archive's own file, for a plain tar read from one
        /// (see [`read_upload`]).
        in_file: Option<u64>,
    },
}

/// Where the members of an upload go as they are read ([`read_members`]).
pub trait MemberSink {
    /// Takes one member at `path` with permission bits `mode`.
    ///
    /// # Errors
    /// Why the upload cannot go on.
    fn member(
        &mut self,
        path: AreaPath,
        mode: u32,
        data: MemberData<'_>,
    ) -> Result<(), UploadError>;
}

/// Bytes the tar reader may take beyond a member's declared data before the next member:
/// padding, the next header and its extension headers (GNU long names, PAX). The `tar`
/// crate reads extension headers whole into memory and skips unread data by reading
/// through it, so without this bound a header declaring a terabyte would be read or
/// skipped in full (a decompression bomb makes that cheap to send).
const HEADER_BUDGET: u64 = 128 << 10;

/// Bytes read after the archive's end blocks, to reach the compressed stream's own
/// check (gzip CRC, zstd checksum), at most: tar pads to its record size (10 KiB by
/// default, megabytes with a large blocking factor).
const TRAILER_BUDGET: u64 = 16 << 20;

/// A reader that fails once it has given out its budget, which the caller sets.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(
                "an archive header, or data after the archive's end, is larger than the host reads",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// An archive's bytes: as they come (compressed or not), or already decompressed by
/// [`Decoded::spawn_in`].
#[derive(Debug)]
pub enum ArchiveInput<R> {
    /// The archive as it is stored or sent.
    Raw(R),
    /// The tar stream, decompressed from an archive compressed with the given kind.
    Decoded(R, Compression),
}

/// Reads and checks an upload archive from `source`, handing each member to `sink` as
/// it comes, under `rules`.
///
/// `archive_file`: whether the source reads a regular file from its start; members of
/// a plain tar then come with where they lie in it.
///
/// # Errors
/// See [`ArchiveError`] (the first problem found, naming the member), and the sink's
/// errors.
pub fn read_members<R: Read + Send>(
    source: ArchiveInput<R>,
    limits: &ArchiveLimits,
    rules: &UploadRules,
    archive_file: bool,
    sink: &mut dyn MemberSink,
) -> Result<(ArchiveSummary, Compression), UploadError> {
    match source {
        ArchiveInput::Decoded(tar, compression) => {
            read_decoded(tar, compression, limits, rules, archive_file, sink)
        }
        ArchiveInput::Raw(source) => {
            let cancelled = AtomicBool::new(false);
            let mut buffered = BufReader::with_capacity(
                64 * 1024,
                Cancellable {
                    inner: source,
                    cancelled: &cancelled,
                },
            );
            let head = buffered
                .fill_buf()
                .map_err(|source| ArchiveError::Read { source })?;
            let compression = Compression::sniff(head);
            if compression == Compression::None {
                let summary = read_tar(buffered, compression, limits, rules, archive_file, sink)?;
                return Ok((summary, compression));
            }
            // Decompression in a thread of its own, beside the writing; told to stop at
            // its next read when the reading ends early (the scope waits for it).
            std::thread::scope(|scope| {
                let decoded = Decoded::spawn_in(scope, buffered, compression);
                let summary = read_tar(decoded, compression, limits, rules, false, sink);
                cancelled.store(true, Ordering::Relaxed);
                Ok((summary?, compression))
            })
        }
    }
}

/// [`read_members`] of a decompressed tar stream, in this thread.
fn read_decoded(
    tar: impl Read,
    compression: Compression,
    limits: &ArchiveLimits,
    rules: &UploadRules,
    archive_file: bool,
    sink: &mut dyn MemberSink,
) -> Result<(ArchiveSummary, Compression), UploadError> {
    let in_file = archive_file && compression == Compression::None;
    let summary = read_tar(tar, compression, limits, rules, in_file, sink)?;
    Ok((summary, compression))
}

/// The tar stream `tar` (decompressed from `compression`), member by member.
fn read_tar(
    tar: impl Read,
    compression: Compression,
    limits: &ArchiveLimits,
    rules: &UploadRules,
    in_file: bool,
    sink: &mut dyn MemberSink,
) -> Result<ArchiveSummary, UploadError> {
    let budget = Rc::new(Cell::new(HEADER_BUDGET));
    let mut archive = tar::Archive::new(Budget {
        inner: tar,
        left: Rc::clone(&budget),
    });
    let mut members = Members {
        limits,
        rules,
        in_file,
        budget: &budget,
        seen: HashSet::new(),
        read_bytes: 0,
        has_script: false,
        summary: ArchiveSummary::default(),
        sink,
    };
    let entries = archive
        .entries()
        .map_err(|source| ArchiveError::NotAnArchive { source })?;
    for (index, entry) in entries.enumerate() {
        let entry = entry.map_err(|source| {
            if index == 0 {
                ArchiveError::NotAnArchive { source }
            } else {
                ArchiveError::Read { source }
            }
        })?;
        if index >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            }
            .into());
        }
        members.add(entry)?;
    }
    let (summary, has_script) = (members.summary, members.has_script);
    // The compressed stream's own check (gzip CRC, zstd checksum) comes after the end
    // blocks: read on to it, so a truncated or damaged archive is refused.
    if compression != Compression::None {
        budget.set(TRAILER_BUDGET);
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|source| ArchiveError::Read { source })?;
    }
    if rules.require_script && !has_script {
        return Err(ArchiveError::NoScript.into());
    }
    Ok(summary)
}

/// Reads and checks an upload archive from `source`, keeping its members.
///
/// `require_script`: refuse an archive without `auto_exec.sh` at its root.
/// `archive_file`: the regular file `source` reads from its start, if it is one; then
/// members of an uncompressed archive larger than 1 MiB are later read from
/// it at their offsets (a file that shrinks meanwhile makes the upload fail, see
/// [`AreaError::ShortSource`]).
/// `spool_dir`: where members larger than 1 MiB that are not read in place are kept,
/// in unnamed temporary files (the system's temporary directory if `None`).
///
/// # Errors
/// See [`ArchiveError`]: the first problem found, naming the member.
pub fn read_upload(
    source: impl Read,
    limits: &ArchiveLimits,
    require_script: bool,
    archive_file: Option<&Arc<File>>,
    spool_dir: Option<&Path>,
) -> Result<ParsedUpload, ArchiveError> {
    let rules = UploadRules {
        require_script,
        ..UploadRules::default()
    };
    // Collected, as a backend that writes only once it has every file collects them.
    let mut files = None;
    let mut collect = Collect::new(spool_dir, |kept| {
        files = Some(kept);
        Ok(())
    });
    // Decompressed here, in this thread: nothing is written meanwhile.
    let mut buffered = BufReader::with_capacity(64 * 1024, source);
    let head = buffered
        .fill_buf()
        .map_err(|source| ArchiveError::Read { source })?;
    let compression = Compression::sniff(head);
    let tar = decoder(buffered, compression).map_err(|source| ArchiveError::Read { source })?;
    let read = read_decoded(
        tar,
        compression,
        limits,
        &rules,
        archive_file.is_some(),
        &mut AreaSink {
            stream: &mut collect,
            archive_file,
        },
    );
    let as_archive_error = |e| match e {
        UploadError::Archive(e) => e,
        other => ArchiveError::Read {
            source: io::Error::other(other),
        },
    };
    let (summary, compression) = read.map_err(as_archive_error)?;
    Box::new(collect)
        .commit()
        .map_err(|e| as_archive_error(e.into()))?;
    Ok(ParsedUpload {
        files: files.unwrap_or_default(),
        dropped: summary.dropped,
        stripped_mode_bits: summary.stripped_mode_bits,
        total_bytes: summary.total_bytes,
        compression,
    })
}

/// Members of an archive handed to an area's [`ReplaceStream`] as they are read.
pub(crate) struct AreaSink<'s, 'a> {
    pub(crate) stream: &'s mut (dyn ReplaceStream + 'a),
    /// The archive's own file, when the members of a plain tar lie in it.
    pub(crate) archive_file: Option<&'s Arc<File>>,
}

impl MemberSink for AreaSink<'_, '_> {
    fn member(
        &mut self,
        path: AreaPath,
        mode: u32,
        data: MemberData<'_>,
    ) -> Result<(), UploadError> {
        match (data, self.archive_file) {
            (MemberData::Dir, _) => self.stream.dir(path, mode)?,
            // Where it lies in the archive's file: a backend that collects keeps that
            // instead of a copy (the tar crate reads through the data not read).
            (
                MemberData::File {
                    data,
                    len,
                    in_file: Some(at),
                },
                Some(file),
            ) if len > SPOOL_ABOVE => {
                let kept = FileRange::new(Arc::clone(file), at, len);
                self.stream
                    .file_kept(path, mode, len, data, Box::new(kept))?;
            }
            (MemberData::File { data, len, .. }, _) => self.stream.file(path, mode, len, data)?,
        }
        Ok(())
    }
}

/// A decompressed tar stream, decompressed in a thread of its own a bounded way ahead
/// of its reader (16 MiB). The thread stops
/// at the end of the compressed stream, at its first error (passed on to the reader),
/// or when the reader is dropped.
#[derive(Debug)]
pub struct Decoded {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

/// Bytes in one chunk of a [`Decoded`] stream.
const DECODE_CHUNK: usize = 256 << 10;
/// Chunks a [`Decoded`] stream's thread may run ahead (16 MiB).
const DECODE_AHEAD: usize = 64;

impl Decoded {
    /// Decompresses `source` (compressed as `compression`) in a thread of `scope`.
    pub fn spawn_in<'scope, R: BufRead + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        source: R,
        compression: Compression,
    ) -> Decoded {
        let (tx, chunks) = std::sync::mpsc::sync_channel(DECODE_AHEAD);
        scope.spawn(move || {
            let mut decoder = match decoder(source, compression) {
                Ok(decoder) => decoder,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut chunk = vec![0u8; DECODE_CHUNK];
                let mut filled = 0;
                // Whole chunks, but for the last: fewer messages than reads.
                let end = loop {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break true,
                        Ok(n) => {
                            filled += n;
                            if filled == chunk.len() {
                                break false;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // What came before the error first, as a reader in this
                            // thread would have seen it.
                            chunk.truncate(filled);
                            if filled == 0 || tx.send(Ok(chunk)).is_ok() {
                                let _ = tx.send(Err(e));
                            }
                            return;
                        }
                    }
                };
                chunk.truncate(filled);
                if (filled > 0 && tx.send(Ok(chunk)).is_err()) || end {
                    return;
                }
            }
        });
        Decoded {
            chunks,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ended: the stream's end.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The archive's bytes, decompressed.
fn decoder<'a>(
    buffered: impl BufRead + 'a,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(buffered)?),
    })
}

/// The members of an upload read so far, and the checks each next one must pass.
struct Members<'a> {
    limits: &'a ArchiveLimits,
    rules: &'a UploadRules,
    /// Whether the tar stream is the archive's own file, read from its start.
    in_file: bool,
    /// What the tar reader may read before the next member.
    budget: &'a Cell<u64>,
    /// Paths taken, to refuse a second member with the same one.
    seen: HashSet<String>,
    /// Bytes of every member's data, also of those left out.
    read_bytes: u64,
    has_script: bool,
    summary: ArchiveSummary,
    sink: &'a mut dyn MemberSink,
}

impl Members<'_> {
    /// Checks one member and hands it on, or leaves it out (extension headers, the
    /// archive's root, protocol files of an earlier run).
    fn add(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<(), UploadError> {
        // Every member's data counts, also of members skipped below: the next member is
        // reached by reading through it. The size is the one the tar crate reads (a PAX
        // size overrides the header's).
        let size = entry.size();
        if self.read_bytes.saturating_add(size) > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_total_bytes,
            }
            .into());
        }
        self.read_bytes += size;
        self.budget.set(size.saturating_add(HEADER_BUDGET));
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !takes_type(kind, &raw_name)? {
            return Ok(());
        }
        let Some(path) = clean_path(&raw_name)? else {
            return Ok(());
        };
        if !self.seen.insert(path.as_str().to_owned()) {
            return Err(ArchiveError::Duplicate { name: raw_name }.into());
        }
        let is_dir = kind == tar::EntryType::Directory;
        if is_dir && path.as_str() == layout::START_SCRIPT {
            return Err(ArchiveError::ScriptNotFile.into());
        }
        if self.left_out(&path, is_dir)? {
            return Ok(());
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        if mode & 0o7000 != 0 {
            self.summary
                .stripped_mode_bits
                .push(path.as_str().to_owned());
        }
        let mode = mode & 0o777;
        self.summary.entries += 1;
        if is_dir {
            return self.sink.member(path, mode, MemberData::Dir);
        }
        self.has_script |= path.as_str() == layout::START_SCRIPT;
        self.summary.total_bytes += size;
        let in_file = self.in_file.then(|| entry.raw_file_position());
        let mut data = Watched {
            inner: &mut entry,
            failed: None,
        };
        let taken = self.sink.member(
            path,
            mode,
            MemberData::File {
                data: &mut data,
                len: size,
                in_file,
            },
        );
        match (taken, data.failed) {
            // The archive's fault, not the area's: it could not be read to the end.
            (Err(UploadError::Area(AreaError::ShortSource { .. })), None) => {
                Err(ArchiveError::Read {
                    source: io::ErrorKind::UnexpectedEof.into(),
                }
                .into())
            }
            (Err(_), Some(source)) => Err(ArchiveError::Read { source }.into()),
            (taken, _) => taken,
        }
    }

    /// Whether `path` is left out under the rules, or refused.
    fn left_out(&mut self, path: &AreaPath, is_dir: bool) -> Result<bool, UploadError> {
        let name = path.as_str();
        // An earlier run's status: nlxtp's in any case (on vFAT, nlxtp/STATUS.BIN is the
        // status file a host reads), the original implementation's on request.
        let ours = !is_dir
            && layout::RUN_FILES
                .iter()
                .any(|run_file| run_file.eq_ignore_ascii_case(name));
        let legacy_dir = layout::legacy::EXEC_STATUS_DIR;
        let theirs = self.rules.earlier_run.is_some()
            && name
                .split('/')
                .next()
                .is_some_and(|top| top.eq_ignore_ascii_case(legacy_dir));
        if ours || theirs {
            let evidence = if theirs {
                Some(format!("{legacy_dir}/"))
            } else {
                name.eq_ignore_ascii_case(layout::STATUS_FILE)
                    .then(|| name.to_owned())
            };
            if let (Some(false), Some(evidence)) = (self.rules.earlier_run, evidence) {
                return Err(ArchiveError::EarlierRun { evidence }.into());
            }
            self.summary.dropped.push(name.to_owned());
            return Ok(true);
        }
        // A guest's vFAT ignores case: `AUTO_EXEC.SH` would run.
        if self.rules.files_only && !is_dir && name.eq_ignore_ascii_case(layout::START_SCRIPT) {
            return Err(ArchiveError::ScriptInFilesOnly {
                name: name.to_owned(),
            }
            .into());
        }
        Ok(false)
    }
}

/// A member's reader that keeps its first error, so that a failed write can be told
/// apart: the archive's fault (it could not be read) or the area's.
struct Watched<R> {
    inner: R,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if self.failed.is_none() && e.kind() != io::ErrorKind::Interrupted {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Whether a member of this type is taken (a file or directory) or skipped (an extension
/// header, which the tar crate has already applied to the next member). Links, devices,
/// FIFOs and unknown types are refused.
fn takes_type(kind: tar::EntryType, name: &str) -> Result<bool, ArchiveError> {
    use tar::EntryType as T;
    let special = |kind| ArchiveError::Special {
        name: name.to_owned(),
        kind,
    };
    match kind {
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => Ok(false),
        T::Regular | T::Continuous | T::Directory => Ok(true),
        T::Symlink => Err(ArchiveError::Link {
            name: name.to_owned(),
            kind: "symbolic",
        }),
        T::Link => Err(ArchiveError::Link {
            name: name.to_owned(),
            kind: "hard",
        }),
        T::Char => Err(special("character device")),
        T::Block => Err(special("block device")),
        T::Fifo => Err(special("FIFO")),
        _ => Err(special("special member (sparse or unknown type)")),
    }
}

/// A member's name as a path in the area; `None` for the archive's root (`./`).
fn clean_path(name: &str) -> Result<Option<AreaPath>, ArchiveError> {
    let mut parts = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| ArchiveError::UnsafePath { name: name.into() })?,
            ),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::UnsafePath { name: name.into() })
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    AreaPath::new(parts.join("/"))
        .map(Some)
        .map_err(|_| ArchiveError::UnsafePath { name: name.into() })
}

/// Bytes of a file from an offset on, read with `pread` (the file's own offset is
/// shared with the archive reader, so it is never moved).
pub(crate) struct FileRange {
    file: Arc<File>,
    at: u64,
    left: u64,
}

impl FileRange {
    /// The `len` bytes of `file` from `at` on.
    pub(crate) fn new(file: Arc<File>, at: u64, len: u64) -> Self {
        FileRange {
            file,
            at,
            left: len,
        }
    }
}

/// A reader that fails once `cancelled` is set: reading stops at its next read.
pub(crate) struct Cancellable<'a, R> {
    pub(crate) inner: R,
    pub(crate) cancelled: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::other("the upload was called off"));
        }
        self.inner.read(buf)
    }
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// What a download packed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DownloadReport {
    /// Files packed.
    pub files: u64,
    /// Directories packed.
    pub dirs: u64,
    /// Bytes of file content packed.
    pub bytes: u64,
}

/// Packs every file and directory of `area` into a tar stream on `out`.
/// `progress` is called with the bytes packed so far.
///
/// # Errors
/// The walk's [`AreaError`]s; writing to `out` fails as [`AreaError::Sink`].
pub fn write_download<W: Write>(
    area: &(impl SharedArea + ?Sized),
    out: W,
    compression: Compression,
    limits: &WalkLimits,
    progress: &mut dyn FnMut(u64),
) -> Result<DownloadReport, AreaError> {
    let encoder = match compression {
        Compression::None => Packer::Plain(out),
        Compression::Gzip => Packer::Gzip(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::fast(),
        )),
        Compression::Zstd => Packer::Zstd(zstd::Encoder::new(out, 3).map_err(AreaError::sink)?),
    };
    let mut builder = tar::Builder::new(encoder);
    let mut report = DownloadReport::default();
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    area.walk(
        limits,
        &mut |entry: &Entry, reader: Option<&mut dyn Read>| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode & 0o777);
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            match (entry.kind, reader) {
                (EntryKind::Dir, _) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
                    report.dirs += 1;
                }
                (EntryKind::File, Some(reader)) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(entry.size);
                    builder.append_data(
                        &mut header,
                        entry.path.as_str(),
                        reader.take(entry.size),
                    )?;
                    report.files += 1;
                    report.bytes += entry.size;
                    progress(report.bytes);
                }
                (EntryKind::File, None) => {
                    return Err(io::Error::other("a file came without its content"))
                }
            }
            Ok(())
        },
    )?;
    builder
        .into_inner()
        .and_then(Packer::finish)
        .map_err(AreaError::sink)?;
    Ok(report)
}

/// The compressor under a download, finished explicitly so that its last error is seen.
enum Packer<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Packer<W> {
    fn finish(self) -> io::Result<()> {
        match self {
            Packer::Plain(mut w) => w.flush(),
            Packer::Gzip(e) => e.finish()?.flush(),
            Packer::Zstd(e) => e.finish()?.flush(),
        }
    }
}

impl<W: Write> Write for Packer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Packer::Plain(w) => w.write(buf),
            Packer::Gzip(w) => w.write(buf),
            Packer::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Packer::Plain(w) => w.flush(),
            Packer::Gzip(w) => w.flush(),
            Packer::Zstd(w) => w.flush(),
        }
    }
}
