//! Walking an area: what an entry is, the bounds on one walk, and the budget both
//! backends count against, so a limit means the same whatever the kind of area.

use std::io::{self, Read};

use super::{AreaError, AreaPath};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One file or directory in an area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is.
    pub path: AreaPath,
    /// File or directory.
    pub kind: EntryKind,
    /// Length in bytes (0 for directories).
    pub size: u64,
    /// Unix permission bits. vFAT keeps none: it reports 0o755 for directories, 0o644
    /// for files, 0o444 for read-only files.
    pub mode: u32,
}

/// Bounds on one walk over an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Files and directories in all.
    pub max_entries: usize,
    /// Directory nesting below the root.
    pub max_depth: usize,
    /// Sum of all file sizes.
    pub max_total_bytes: u64,
}

impl Default for WalkLimits {
    /// 100,000 entries, 32 levels, 4 GiB.
    fn default() -> Self {
        WalkLimits {
            max_entries: 100_000,
            max_depth: 32,
            max_total_bytes: 4 << 30,
        }
    }
}

/// What [`SharedArea::walk`](super::SharedArea::walk) calls for each entry: with a reader of the file's bytes, or
/// `None` for a directory. Its error ends the walk as [`AreaError::Sink`].
pub type Visitor<'a> = dyn FnMut(&Entry, Option<&mut dyn Read>) -> io::Result<()> + 'a;

/// What one walk has used of its [`WalkLimits`]. Every backend counts through it, so a
/// limit stops a walk at the same point, with the same error, whatever the area.
#[derive(Debug, Clone)]
pub struct WalkBudget {
    limits: WalkLimits,
    entries: usize,
    bytes: u64,
}

impl WalkBudget {
    /// A budget with nothing used yet.
    pub fn new(limits: &WalkLimits) -> Self {
        WalkBudget {
            limits: *limits,
            entries: 0,
            bytes: 0,
        }
    }

    /// How many more names the walk may read.
    pub fn entries_left(&self) -> usize {
        self.limits.max_entries.saturating_sub(self.entries)
    }

    /// Counts `n` more names read (skipped ones too: a guest's junk costs time as well).
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] past [`WalkLimits::max_entries`].
    pub fn count_entries(&mut self, n: usize) -> Result<(), AreaError> {
        self.entries = self.entries.saturating_add(n);
        if self.entries > self.limits.max_entries {
            return Err(self.too_many_entries());
        }
        Ok(())
    }

    /// The error for a directory holding more names than are left.
    pub fn too_many_entries(&self) -> AreaError {
        AreaError::TooLarge {
            what: "the number of files and directories".into(),
            limit: self.limits.max_entries as u64,
        }
    }

    /// Checks that the directory `path`, `depth` levels below the root, may be entered.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] past [`WalkLimits::max_depth`].
    pub fn enter(&self, depth: usize, path: &AreaPath) -> Result<(), AreaError> {
        if depth > self.limits.max_depth {
            return Err(AreaError::TooLarge {
                what: format!("the depth of {path}"),
                limit: self.limits.max_depth as u64,
            });
        }
        Ok(())
    }

    /// Counts a file of `size` bytes.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] past [`WalkLimits::max_total_bytes`].
    pub fn count_file(&mut self, size: u64) -> Result<(), AreaError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_total_bytes {
            return Err(AreaError::TooLarge {
                what: "the total size of the files".into(),
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Bytes of all files counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
