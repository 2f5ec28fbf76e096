//! What kind of storage an area is and what it can do. Front ends decide by
//! [`Capabilities`], never by the kind or by looking at the path behind an area, so a new
//! kind of area plugs in without touching them.

use std::any::Any;
use std::fmt;

use serde::Serialize;

/// Which kind of storage an area is: for people and logs. Decisions go by
/// [`Capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum AreaKind {
    /// A VM's raw disk image with a FAT filesystem, on this host.
    #[serde(rename = "vfat-image")]
    VfatImage,
    /// A directory inside a container's root filesystem.
    #[serde(rename = "directory")]
    Directory,
    /// A FAT volume in a libvirt storage volume (a domain's shared disk), read through
    /// libvirt streams, local or remote.
    #[serde(rename = "libvirt-volume")]
    LibvirtVolume,
}

impl AreaKind {
    /// The kind's name in JSON and messages: `vfat-image`, `directory`.
    pub fn name(self) -> &'static str {
        match self {
            AreaKind::VfatImage => "vfat-image",
            AreaKind::Directory => "directory",
            AreaKind::LibvirtVolume => "libvirt-volume",
        }
    }
}

impl fmt::Display for AreaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an area's storage can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Names that differ only in case are one file (FAT).
    pub folds_case: bool,
    /// Unix permission bits are stored (FAT keeps only "read-only").
    pub keeps_modes: bool,
    /// A replace swaps the whole content at once: a crash or a guest sees the old content
    /// or the new, never a mix.
    pub atomic_replace: bool,
    /// The guest sees the area while it runs and starts an upload's script at once (a
    /// container). Replacing it while a run goes on changes files under a running
    /// script. Otherwise the guest sees an upload only when it next takes the area (the
    /// VM's next boot).
    pub live: bool,
    /// [`SharedArea::hold`](super::SharedArea::hold) keeps the guest from taking the area
    /// (QEMU from starting on the image) while the host stages and commits changes.
    pub holdable: bool,
}

/// A claim on an area that keeps the guest from taking it until dropped (for an image:
/// QEMU's write locks, so no VM starts on it). An area that cannot be held gives an empty
/// hold. Only the area that gave a hold understands it.
#[derive(Default)]
pub struct AreaHold {
    inner: Option<Box<dyn Any + Send>>,
}

impl AreaHold {
    /// A hold that holds nothing.
    pub fn none() -> Self {
        AreaHold::default()
    }

    /// A hold that keeps `claim` (a backend's guard) alive.
    pub fn new(claim: impl Any + Send) -> Self {
        AreaHold {
            inner: Some(Box::new(claim)),
        }
    }

    /// Whether it holds anything.
    pub fn is_held(&self) -> bool {
        self.inner.is_some()
    }

    /// The backend's claim, if it is a `T`.
    pub fn claim_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.inner.as_mut()?.downcast_mut()
    }
}

impl fmt::Debug for AreaHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_held() {
            "AreaHold(held)"
        } else {
            "AreaHold(none)"
        })
    }
}

/// A cheap fingerprint of an area's content: it changes whenever the content may have
/// changed (for an image: its inode, size and times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangeKey(pub u64);

impl ChangeKey {
    /// The key of these fields.
    pub fn of(fields: &[u64]) -> Self {
        let mut hash = crate::stable_hash::Fnv1a::new();
        for field in fields {
            hash.write(&field.to_le_bytes());
        }
        ChangeKey(hash.finish())
    }
}
