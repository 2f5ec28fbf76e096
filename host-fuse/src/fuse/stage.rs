//! Staged changes of one VM's area: a full copy of the area in unnamed temporary files,
//! changed in place by the view, and turned into one [`SharedArea::replace`] on commit.
//!
//! A stage starts at the first change (after the area is held, [`SharedArea::hold`],
//! so the copy of an image is of content no QEMU can change) and ends after a commit when no file
//! is open for writing. Its files are `O_TMPFILE` files: a crash leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nlxtp_core::layout::{MANIFEST_FILE, PROTOCOL_DIR, RUN_FILES, START_SCRIPT};
use nlxtp_core::record::MANIFEST_LEN;
use nlxtp_core::{Manifest, RunId};

use crate::ops::{fresh_manifest, RunSettings};

use crate::area::{
    AreaError, AreaHold, AreaPath, EntryKind, SharedArea, UploadData, UploadFile, WalkLimits,
};

/// The content of a staged file: an unnamed temporary file and its length.
#[derive(Debug)]
pub(crate) struct StagedFile {
    file: File,
    len: AtomicU64,
}

impl StagedFile {
    /// An empty staged file in `dir`.
    pub(crate) fn new(dir: &Path) -> io::Result<Arc<StagedFile>> {
        Ok(Arc::new(StagedFile {
            file: tempfile::tempfile_in(dir)?,
            len: AtomicU64::new(0),
        }))
    }

    /// A staged file holding `bytes`.
    pub(crate) fn with_bytes(dir: &Path, bytes: &[u8]) -> io::Result<Arc<StagedFile>> {
        let staged = StagedFile::new(dir)?;
        staged.write_at(0, bytes)?;
        Ok(staged)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    /// Reads up to `size` bytes at `offset`.
    pub(crate) fn read_at(&self, offset: u64, size: usize) -> io::Result<Vec<u8>> {
        let end = self.len().min(offset.saturating_add(size as u64));
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Writes `data` at `offset`, growing the file as needed.
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.len
            .fetch_max(offset + data.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len.store(len, Ordering::SeqCst);
        Ok(())
    }

    /// A reader of the whole content from the start, for an upload.
    fn reader(self: &Arc<Self>) -> StagedReader {
        StagedReader {
            file: Arc::clone(self),
            pos: 0,
        }
    }
}

/// Reads a staged file from the start without moving any shared offset.
struct StagedReader {
    file: Arc<StagedFile>,
    pos: u64,
}

impl Read for StagedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What the content of a file in the view comes from.
#[derive(Debug, Clone)]
pub(crate) enum Data {
    /// The area itself, read at open (a read-only listing): this many bytes.
    Area(u64),
    /// A staged copy.
    Staged(Arc<StagedFile>),
}

/// One file or directory of the view of an area.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A directory.
    Dir {
        /// Unix permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Unix permission bits.
        mode: u32,
        /// Where its bytes are.
        data: Data,
    },
}

impl Node {
    pub(crate) fn size(&self) -> u64 {
        match self {
            Node::Dir { .. } => 0,
            Node::File {
                data: Data::Area(len),
                ..
            } => *len,
            Node::File {
                data: Data::Staged(f),
                ..
            } => f.len(),
        }
    }

    pub(crate) fn mode(&self) -> u32 {
        match self {
            Node::Dir { mode } | Node::File { mode, .. } => *mode,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }

    /// Its staged copy, if it is a staged file.
    pub(crate) fn staged(&self) -> Option<&Arc<StagedFile>> {
        match self {
            Node::File {
                data: Data::Staged(f),
                ..
            } => Some(f),
            _ => None,
        }
    }
}

/// Every file and directory of an area by path (`/`-separated, no leading `/`); the
/// area's root is implicit.
pub(crate) type Tree = BTreeMap<String, Node>;

/// The children of `dir` ("" for the root) in `tree`: (name, node) in name order.
pub(crate) fn children<'a>(tree: &'a Tree, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let start = prefix.clone();
    let skip = prefix.len();
    tree.range(start..)
        .take_while(move |(path, _)| path.starts_with(&prefix))
        .filter_map(move |(path, node)| {
            let name = &path[skip..];
            (!name.contains('/')).then_some((name, node))
        })
}

/// The listing of `area` as a read-only tree (no content read).
pub(crate) fn listing(area: &dyn SharedArea) -> Result<Tree, AreaError> {
    Ok(area
        .list(&WalkLimits::default())?
        .into_iter()
        .map(|e| {
            let node = match e.kind {
                EntryKind::Dir => Node::Dir { mode: e.mode },
                EntryKind::File => Node::File {
                    mode: e.mode,
                    data: Data::Area(e.size),
                },
            };
            (e.path.as_str().to_owned(), node)
        })
        .collect())
}

/// Staged changes of one VM.
#[derive(Debug)]
pub(crate) struct Stage {
    /// Tells handles of an earlier stage of the same VM from this one's.
    pub(crate) epoch: u64,
    /// The area as the view shows it.
    pub(crate) tree: Tree,
    /// Held while the stage lives: no QEMU starts on an image meanwhile.
    pub(crate) hold: AreaHold,
    /// Counts changes; equal to `committed` when nothing is pending.
    pub(crate) changed: u64,
    /// The value of `changed` at the last successful commit.
    pub(crate) committed: u64,
    /// The value of `changed` at the last failed commit (not retried in the background).
    pub(crate) failed: Option<u64>,
    /// When the last change was made.
    pub(crate) last_change: Instant,
    /// Files open for writing.
    pub(crate) writers: usize,
    /// `auto_exec.sh` was written since the last commit: the commit starts a new run.
    pub(crate) script_touched: bool,
    /// The manifest was written through the view since the last commit: keep it.
    pub(crate) manifest_by_user: bool,
}

impl Stage {
    /// A stage showing `tree`, with nothing pending.
    pub(crate) fn new(tree: Tree, hold: AreaHold, epoch: u64) -> Stage {
        Stage {
            epoch,
            tree,
            hold,
            changed: 0,
            committed: 0,
            failed: None,
            last_change: Instant::now(),
            writers: 0,
            script_touched: false,
            manifest_by_user: false,
        }
    }

    /// A copy of everything in `area`, staged in unnamed files in `dir`.
    pub(crate) fn copy_of(
        area: &dyn SharedArea,
        dir: &Path,
        hold: AreaHold,
        epoch: u64,
    ) -> Result<Stage, AreaError> {
        let mut tree = Tree::new();
        area.walk(&WalkLimits::default(), &mut |entry, reader| {
            let node = match reader {
                None => Node::Dir { mode: entry.mode },
                Some(reader) => {
                    let staged = StagedFile::new(dir)?;
                    let copied = io::copy(reader, &mut &staged.file)?;
                    staged.len.store(copied, Ordering::SeqCst);
                    Node::File {
                        mode: entry.mode,
                        data: Data::Staged(staged),
                    }
                }
            };
            tree.insert(entry.path.as_str().to_owned(), node);
            Ok(())
        })?;
        Ok(Stage::new(tree, hold, epoch))
    }

    pub(crate) fn dirty(&self) -> bool {
        self.changed != self.committed
    }

    /// Records a change of `path`.
    pub(crate) fn touch(&mut self, path: &str) {
        self.changed += 1;
        self.last_change = Instant::now();
        if path == START_SCRIPT {
            self.script_touched = true;
        }
        if path == MANIFEST_FILE {
            self.manifest_by_user = true;
        }
    }

    /// The tree a commit writes: the staged tree, and for a new start script a fresh
    /// manifest in place of the last run's files (docs/wire-format.md section 1). Returns
    /// the new run's id, if any.
    pub(crate) fn to_commit(&self, dir: &Path) -> io::Result<(Tree, Option<RunId>)> {
        let mut tree = self.tree.clone();
        let new_script = self.script_touched
            && !self.manifest_by_user
            && matches!(tree.get(START_SCRIPT), Some(Node::File { .. }));
        if !new_script {
            return Ok((tree, None));
        }
        let old = match tree.get(MANIFEST_FILE).and_then(Node::staged) {
            Some(f) if f.len() == MANIFEST_LEN as u64 => {
                Manifest::decode(&f.read_at(0, MANIFEST_LEN)?).ok()
            }
            _ => None,
        };
        for file in RUN_FILES {
            tree.remove(file);
        }
        // A script edited through the view runs with the limits the last upload asked for.
        let settings = old.as_ref().map(RunSettings::of).unwrap_or_default();
        let (run_id, bytes) = fresh_manifest(settings).map_err(io::Error::other)?;
        tree.entry(PROTOCOL_DIR.to_owned())
            .or_insert(Node::Dir { mode: 0o755 });
        tree.insert(
            MANIFEST_FILE.to_owned(),
            Node::File {
                mode: 0o644,
                data: Data::Staged(StagedFile::with_bytes(dir, &bytes)?),
            },
        );
        Ok((tree, Some(run_id)))
    }
}

/// The upload that makes an area hold `tree`.
pub(crate) fn upload_files(tree: &Tree) -> Vec<UploadFile> {
    tree.iter()
        .map(|(path, node)| UploadFile {
            path: AreaPath::new(path.clone()).expect("the view holds only valid paths"),
            data: match node {
                Node::Dir { .. } => UploadData::Dir,
                Node::File {
                    data: Data::Staged(f),
                    ..
                } => UploadData::Reader {
                    reader: Box::new(f.reader()),
                    len: f.len(),
                },
                Node::File {
                    data: Data::Area(_),
                    ..
                } => unreachable!("a stage holds only staged files"),
            },
            mode: node.mode(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_direct_only() {
        let mut tree = Tree::new();
        for p in ["a", "a/b", "a/b/c", "a/d", "ab", "z"] {
            tree.insert(p.into(), Node::Dir { mode: 0o755 });
        }
        let names = |d| children(&tree, d).map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(""), ["a", "ab", "z"]);
        assert_eq!(names("a"), ["b", "d"]);
        assert_eq!(names("a/b"), ["c"]);
        assert!(names("z").is_empty());
    }

    #[test]
    fn staged_files_read_write_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let f = StagedFile::with_bytes(dir.path(), b"hello").unwrap();
        f.write_at(7, b"!").unwrap();
        assert_eq!(f.len(), 8);
        assert_eq!(f.read_at(0, 100).unwrap(), b"hello\0\0!");
        assert_eq!(f.read_at(100, 10).unwrap(), b"");
        f.set_len(2).unwrap();
        let mut all = Vec::new();
        f.reader().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"he");
    }

    #[test]
    fn a_new_script_gets_a_fresh_manifest_and_drops_the_last_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = |b: &[u8]| Node::File {
            mode: 0o644,
            data: Data::Staged(StagedFile::with_bytes(dir.path(), b).unwrap()),
        };
        let mut stage = Stage::new(Tree::new(), AreaHold::none(), 1);
        stage.tree.insert("nlxtp".into(), Node::Dir { mode: 0o755 });
        stage
            .tree
            .insert("nlxtp/status.bin".into(), file(&[1; 8192]));
        stage.tree.insert("nlxtp/stdout.txt".into(), file(b"old"));
        stage.tree.insert("result.txt".into(), file(b"r"));
        stage.touch("result.txt");
        let (tree, run) = stage.to_commit(dir.path()).unwrap();
        assert!(run.is_none() && tree.contains_key("nlxtp/status.bin"));
        stage
            .tree
            .insert("auto_exec.sh".into(), file(b"#!/bin/sh\n"));
        stage.touch("auto_exec.sh");
        let (tree, run) = stage.to_commit(dir.path()).unwrap();
        let run = run.expect("a new run");
        assert!(!tree.contains_key("nlxtp/status.bin") && !tree.contains_key("nlxtp/stdout.txt"));
        let Some(Node::File {
            data: Data::Staged(m),
            ..
        }) = tree.get(MANIFEST_FILE)
        else {
            panic!("no manifest")
        };
        let manifest = Manifest::decode(&m.read_at(0, MANIFEST_LEN).unwrap()).unwrap();
        assert_eq!(manifest.run_id, run);
        assert_eq!(upload_files(&tree).len(), tree.len());
        stage.touch(MANIFEST_FILE);
        assert!(stage.to_commit(dir.path()).unwrap().1.is_none());
    }
}
