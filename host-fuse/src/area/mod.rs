//! A shared area: the storage a host and one guest both see, behind one trait.
//!
//! [`SharedArea`] is what the CLI, the FUSE view and the test harness use. It has two
//! backends: [`vfat::VfatImage`] (a VM's vFAT disk image, read and written in user space)
//! and [`dir::ContainerDir`] (a directory inside a container's root filesystem). What
//! each can do is in its [`Capabilities`]; callers decide by those, never by the
//! [`AreaKind`] or the path behind an area (docs/architecture.md shows how a new kind
//! plugs in). The contract every backend keeps:
//!
//! - Everything read from the area is hostile. Reads are bounded ([`WalkLimits`],
//!   counted through a [`WalkBudget`], and a size bound per file) and end, with an error,
//!   on anything a valid area does not contain. Reads never change the area.
//! - [`SharedArea::read_status_file`] is cheap enough to call many times a second, also
//!   while the guest runs. [`read_status`] turns it into a [`StatusRecord`](nlxtp_core::StatusRecord),
//!   retrying torn reads for a bounded time. [`SharedArea::snapshot`] is what a status
//!   report needs, in one pass where the backend can.
//! - [`SharedArea::replace`] (an upload) writes the start script ([`START_SCRIPT`]) last,
//!   complete, after the manifest: a crash at any point leaves no start script or the new
//!   one with all of the upload beside it. Where [`Capabilities::atomic_replace`] holds,
//!   the whole content is swapped at once (old or new, never a mix).
//!
//! Paths inside an area are [`AreaPath`]s: relative, `/`-separated, with no empty, `.` or
//! `..` component, so no backend ever resolves a name a guest planted outside the area.

use std::fmt;
use std::path::Path;

pub mod dir;
mod error;
mod kind;
#[cfg(feature = "libvirt")]
pub mod libvirt;
mod path;
mod snapshot;
mod status;
mod upload;
pub mod vfat;
mod walk;

pub use error::{AreaError, StatusError};
pub use kind::{AreaHold, AreaKind, Capabilities, ChangeKey};
pub use path::{AreaPath, PathError};
pub use snapshot::{snapshot_by_parts, AreaSnapshot, LegacyFiles, LEGACY_FILE_MAX};
pub use status::{read_status, read_status_from, Patience, StatusRead};
pub use upload::{
    add_upload_file, read_member, Collect, Durability, ReplaceStream, UploadData, UploadFile,
    SPOOL_ABOVE,
};
pub use walk::{Entry, EntryKind, Visitor, WalkBudget, WalkLimits};

/// A shared area: a VM's disk image or a container's directory.
///
/// Implementations are `Send + Sync`; each call stands alone (a backend opens what it
/// needs per call, or keeps only caches that it checks), so the FUSE view may call from
/// several threads.
pub trait SharedArea: Send + Sync + fmt::Debug {
    /// The image file or directory behind this area, for messages and state kept per
    /// area. Not for deciding what the area can do: that is [`SharedArea::capabilities`].
    fn location(&self) -> &Path;

    /// Which kind of storage this is.
    fn kind(&self) -> AreaKind;

    /// What this area's storage can do.
    fn capabilities(&self) -> Capabilities;

    /// A cheap fingerprint that changes whenever the content may have changed, or `None`
    /// when the backend cannot tell without reading it (callers then re-read after a
    /// time to live).
    fn change_key(&self) -> Option<ChangeKey> {
        None
    }

    /// Whether the guest holds the area now so that an upload must wait (a running VM).
    /// A container area is never busy: uploads go in at once.
    ///
    /// # Errors
    /// [`AreaError::NoImage`], [`AreaError::Io`].
    fn is_busy(&self) -> Result<bool, AreaError>;

    /// Reads the status file ([`STATUS_FILE`]) into `out`: empty if it does not
    /// exist, else its bytes, at most [`STATUS_FILE_LEN`](nlxtp_core::slots::STATUS_FILE_LEN)
    /// + 1 of them (so a longer file shows as too long). Cheap: meant to be called often.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] when the area cannot be read at all, [`AreaError::Io`].
    fn read_status_file(&self, how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError>;

    /// Reads the whole file at `path`, refusing one longer than `max_len` bytes.
    ///
    /// # Errors
    /// [`AreaError::NotFound`], [`AreaError::NotAFile`], [`AreaError::TooLarge`],
    /// [`AreaError::NotRegular`], [`AreaError::Corrupt`], [`AreaError::Io`].
    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError>;

    /// Visits every file and directory, parents before their contents. Files come with
    /// a reader of exactly [`Entry::size`] bytes; directories with none. For packing a
    /// download.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] when `limits` are reached, [`AreaError::Corrupt`],
    /// [`AreaError::Sink`] when `visit` fails, [`AreaError::Io`].
    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError>;

    /// Every file and directory, parents before their contents.
    ///
    /// # Errors
    /// As [`SharedArea::walk`].
    fn list(&self, limits: &WalkLimits) -> Result<Vec<Entry>, AreaError> {
        let mut out = Vec::new();
        self.walk(limits, &mut |entry, _| {
            out.push(entry.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Replaces the whole content with `files`, writing [`START_SCRIPT`] last (what a
    /// crash leaves: see the module docs). The caller supplies the protocol files (a fresh
    /// manifest; no old status) as docs/wire-format.md section 1 says.
    ///
    /// # Errors
    /// [`AreaError::Busy`] while the guest holds the area, [`AreaError::BadName`] and
    /// [`AreaError::NameCollision`] for names the backend cannot hold,
    /// [`AreaError::NoSpace`], [`AreaError::ShortSource`], [`AreaError::Corrupt`] if the
    /// old area is too broken to take over its layout, [`AreaError::Io`].
    fn replace(&self, files: Vec<UploadFile>) -> Result<(), AreaError> {
        self.replace_with(files, Durability::Synced)
    }

    /// [`SharedArea::replace`], flushing to the disk as `durability` says.
    ///
    /// # Errors
    /// As [`SharedArea::replace`].
    fn replace_with(&self, files: Vec<UploadFile>, durability: Durability)
        -> Result<(), AreaError>;

    /// Starts an upload written while its files arrive (an archive read or received):
    /// the area keeps its old content until [`ReplaceStream::commit`], which does what
    /// [`SharedArea::replace_with`] does. Backends that build a new copy of the area (a
    /// vFAT image) write each file as it comes; the default collects them (files over
    /// [`SPOOL_ABOVE`] in unnamed temporary files in `spool_dir`, the system's
    /// temporary directory if `None`) and replaces at the commit.
    ///
    /// # Errors
    /// As [`SharedArea::replace`].
    fn begin_replace<'a>(
        &'a self,
        durability: Durability,
        spool_dir: Option<&Path>,
    ) -> Result<Box<dyn ReplaceStream + 'a>, AreaError> {
        Ok(Box::new(Collect::new(spool_dir, move |files| {
            self.replace_with(files, durability)
        })))
    }

    /// Holds the area against the guest (see [`AreaHold`]) until the hold is dropped: a
    /// VM cannot start on a held image. An area that cannot be held
    /// ([`Capabilities::holdable`] false) gives an empty hold.
    ///
    /// # Errors
    /// [`AreaError::Busy`] while the guest holds the area, [`AreaError::NoImage`],
    /// [`AreaError::Io`].
    fn hold(&self) -> Result<AreaHold, AreaError> {
        Ok(AreaHold::none())
    }

    /// [`SharedArea::replace_with`] under `hold`, which afterwards holds the new content
    /// (after a failure: still the old), with no moment in between in which the guest
    /// could take the area. An empty hold replaces as [`SharedArea::replace_with`] does.
    ///
    /// # Errors
    /// As [`SharedArea::replace`].
    fn replace_held(
        &self,
        hold: &mut AreaHold,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let _ = hold;
        self.replace_with(files, durability)
    }

    /// Writes `slot` over the status file's bytes at `offset`, in place, and flushes it:
    /// for a record the host writes itself because the guest never can (a run on a hot
    /// disk the host took away). Only the slot changes; the file must exist at its fixed
    /// size ([`STATUS_FILE_LEN`](nlxtp_core::slots::STATUS_FILE_LEN)). `hold` is one
    /// from [`SharedArea::hold`], kept across the read that decided the write; a backend
    /// holds the area for the write itself when it is empty.
    ///
    /// # Errors
    /// [`AreaError::Unsupported`] where the backend cannot (the default),
    /// [`AreaError::Busy`] while the guest holds the area, [`AreaError::NotFound`] with
    /// no status file, [`AreaError::Corrupt`], [`AreaError::Io`].
    fn write_status_slot(
        &self,
        hold: &mut AreaHold,
        offset: usize,
        slot: &[u8],
    ) -> Result<(), AreaError> {
        let _ = (hold, offset, slot);
        Err(AreaError::Unsupported {
            what: "writing the status record",
            kind: self.kind(),
        })
    }

    /// What a status report needs, read in one pass where the backend can (see
    /// [`AreaSnapshot`]).
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] when the area cannot be read, [`AreaError::NoImage`],
    /// [`AreaError::Io`].
    fn snapshot(&self) -> Result<AreaSnapshot, AreaError> {
        snapshot_by_parts(self)
    }
}

/// The protocol file names, re-exported for callers building an upload.
pub use nlxtp_core::layout::{MANIFEST_FILE, START_SCRIPT, STATUS_FILE};
