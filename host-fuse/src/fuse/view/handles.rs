//! Open files: a handle per `open`, read from bytes taken at open or from a staged file,
//! and the closes (`flush`, `release`) and `fsync`s that commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nlxtp_core::layout::STATUS_FILE;
use nlxtp_core::DecodeError;

use super::super::error::errno;
use super::super::stage::{StagedFile, Tree};
use super::inodes::Key;
use super::vm::{Vm, VmState};
use super::{lock, View, META_DIR};
use crate::area::{AreaError, AreaPath, SharedArea};

/// The largest file the view reads into memory at open.
const MAX_READ: u64 = 1 << 30;
/// A close this soon after the VM's last commit is part of a burst (`cp -r`, a file
/// after another): its commit joins the burst's, made once it is quiet.
const BURST: Duration = Duration::from_millis(200);

/// A file open through the view.
#[derive(Debug)]
pub(super) struct Handle {
    pub(super) vm: Arc<Vm>,
    pub(super) ino: u64,
    /// `NAME/path`, for messages.
    pub(super) shown: String,
    pub(super) pid: u32,
    pub(super) kind: HandleKind,
}

#[derive(Debug)]
pub(super) enum HandleKind {
    /// Content read once at open.
    Bytes(Arc<Vec<u8>>),
    /// A staged file of stage `epoch`.
    Staged {
        file: Arc<StagedFile>,
        epoch: u64,
        write: bool,
        append: bool,
    },
}

#[derive(Debug, Default)]
pub(super) struct Handles {
    pub(super) open: HashMap<u64, Handle>,
    pub(super) next: u64,
}

/// A file open through the view, for the "busy" message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenFile {
    /// `NAME/path` below the mount point.
    pub path: String,
    /// The process that opened it.
    pub pid: u32,
    /// Whether it is open for writing.
    pub write: bool,
}

impl View {
    /// Every file open through the view.
    pub(crate) fn open_files(&self) -> Vec<OpenFile> {
        let mut out: Vec<OpenFile> = lock(&self.handles)
            .open
            .values()
            .map(|h| OpenFile {
                path: h.shown.clone(),
                pid: h.pid,
                write: matches!(h.kind, HandleKind::Staged { write: true, .. }),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    pub(super) fn add_handle(
        &self,
        vm: Arc<Vm>,
        ino: u64,
        shown: String,
        pid: u32,
        kind: HandleKind,
    ) -> u64 {
        let mut handles = lock(&self.handles);
        handles.next += 1;
        let fh = handles.next;
        handles.open.insert(
            fh,
            Handle {
                vm,
                ino,
                shown,
                pid,
                kind,
            },
        );
        fh
    }

    /// Opens inode `ino`; returns the file handle.
    pub(crate) fn open(&self, ino: u64, flags: OpenMode, pid: u32) -> Result<u64, Errno> {
        let (key, vm) = self.resolve(ino)?;
        let vm = vm.ok_or(Errno::EISDIR)?;
        let writes = flags.write || flags.truncate;
        match &key {
            Key::Meta(_, meta) => {
                if writes {
                    return Err(Errno::EACCES);
                }
                let bytes = self.meta_bytes(&vm, *meta);
                let shown = format!("{}/{META_DIR}/{}", vm.name, meta.name());
                Ok(self.add_handle(vm, ino, shown, pid, HandleKind::Bytes(Arc::new(bytes))))
            }
            Key::Path(_, path) => {
                let shown = format!("{}/{path}", vm.name);
                let mut st = lock(&vm.state);
                if writes {
                    let stage = self.stage(&vm, &mut st)?;
                    let file = staged_file(&stage.tree, path)?;
                    if flags.truncate {
                        file.set_len(0).map_err(|_| Errno::EIO)?;
                        stage.touch(path);
                    }
                    stage.writers += 1;
                    let epoch = stage.epoch;
                    drop(st);
                    let kind = HandleKind::Staged {
                        file,
                        epoch,
                        write: flags.write,
                        append: flags.append,
                    };
                    return Ok(self.add_handle(vm, ino, shown, pid, kind));
                }
                if let Some(stage) = &st.stage {
                    let kind = HandleKind::Staged {
                        file: staged_file(&stage.tree, path)?,
                        epoch: stage.epoch,
                        write: false,
                        append: false,
                    };
                    drop(st);
                    return Ok(self.add_handle(vm, ino, shown, pid, kind));
                }
                drop(st);
                let area_path = AreaPath::new(path.clone()).map_err(|_| Errno::ENOENT)?;
                let bytes = read_consistent(vm.area.as_ref(), &area_path).map_err(|e| errno(&e))?;
                Ok(self.add_handle(vm, ino, shown, pid, HandleKind::Bytes(Arc::new(bytes))))
            }
            _ => Err(Errno::EISDIR),
        }
    }

    /// Reads from an open file.
    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let handles = lock(&self.handles);
        let handle = handles.open.get(&fh).ok_or(Errno::EBADF)?;
        match &handle.kind {
            HandleKind::Bytes(bytes) => {
                let start = (offset.min(bytes.len() as u64)) as usize;
                let end = (start + size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            HandleKind::Staged { file, .. } => {
                let file = Arc::clone(file);
                drop(handles);
                file.read_at(offset, size as usize).map_err(|_| Errno::EIO)
            }
        }
    }

    /// Writes to a file open for writing; returns the bytes written.
    pub(crate) fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (vm, ino, file, epoch, append) = {
            let handles = lock(&self.handles);
            let handle = handles.open.get(&fh).ok_or(Errno::EBADF)?;
            match &handle.kind {
                HandleKind::Staged {
                    file,
                    epoch,
                    write: true,
                    append,
                } => (
                    Arc::clone(&handle.vm),
                    handle.ino,
                    Arc::clone(file),
                    *epoch,
                    *append,
                ),
                _ => return Err(Errno::EBADF),
            }
        };
        let mut st = lock(&vm.state);
        let stage = st
            .stage
            .as_mut()
            .filter(|s| s.epoch == epoch)
            .ok_or(Errno::EROFS)?;
        let at = if append { file.len() } else { offset };
        file.write_at(at, data)
            .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
        let path = match lock(&self.inodes).key(ino) {
            Some(Key::Path(_, p)) => p,
            _ => String::new(),
        };
        stage.touch(&path);
        st.mtime = Some(SystemTime::now());
        Ok(data.len() as u32)
    }

    pub(super) fn handle_vm(&self, fh: u64) -> Result<(Arc<Vm>, bool), Errno> {
        let handles = lock(&self.handles);
        let handle = handles.open.get(&fh).ok_or(Errno::EBADF)?;
        let write = matches!(handle.kind, HandleKind::Staged { write: true, .. });
        Ok((Arc::clone(&handle.vm), write))
    }

    /// Commits now, unless this is part of a burst of changes (see [`BURST`]): then the
    /// background commit takes it once the burst is quiet.
    pub(super) fn commit_unless_burst(&self, vm: &Vm, st: &mut VmState) -> Result<(), Errno> {
        if st.last_commit.is_some_and(|t| t.elapsed() < BURST) {
            return Ok(());
        }
        self.commit(vm, st).map_err(|e| e.errno())
    }

    /// `close` of one descriptor (`flush`) by process `pid`: commits when the file was
    /// open for writing, no other file is, and `pid` opened it. So `cp` of a file returns
    /// only once the image holds it, while a close that is not the writer's (a child
    /// that inherited the descriptor and execs, which closes it) never commits a file
    /// caught half-written; the last close (`release`) commits then.
    pub(crate) fn flush(&self, fh: u64, pid: u32) -> Result<(), Errno> {
        let (vm, opener) = {
            let handles = lock(&self.handles);
            let handle = handles.open.get(&fh).ok_or(Errno::EBADF)?;
            if !matches!(handle.kind, HandleKind::Staged { write: true, .. }) {
                return Ok(());
            }
            (Arc::clone(&handle.vm), handle.pid)
        };
        if opener != pid {
            return Ok(());
        }
        let mut st = lock(&vm.state);
        if st.stage.as_ref().is_some_and(|s| s.writers > 1) {
            return Ok(());
        }
        self.commit_unless_burst(&vm, &mut st)
    }

    /// `fsync`: commits the VM's pending changes.
    pub(crate) fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let (vm, _) = self.handle_vm(fh)?;
        self.commit_vm(&vm)
    }

    /// `fsync` of a directory: commits the VM's pending changes.
    pub(crate) fn fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        match self.resolve(ino)? {
            (_, Some(vm)) => self.commit_vm(&vm),
            _ => Ok(()),
        }
    }

    /// The last close of an open file: when no other file is open for writing, commits
    /// what is pending, or ends the stage if nothing is.
    pub(crate) fn release(&self, fh: u64) -> Result<(), Errno> {
        let handle = lock(&self.handles).open.remove(&fh).ok_or(Errno::EBADF)?;
        let HandleKind::Staged {
            epoch, write: true, ..
        } = handle.kind
        else {
            return Ok(());
        };
        let vm = handle.vm;
        let mut st = lock(&vm.state);
        match st.stage.as_mut() {
            Some(stage) if stage.epoch == epoch => {
                stage.writers -= 1;
                match (stage.writers, stage.dirty()) {
                    (0, true) => self.commit_unless_burst(&vm, &mut st),
                    (0, false) => {
                        st.stage = None;
                        Ok(())
                    }
                    // Another file is still open for writing: its close commits.
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
    pub exclusive: bool,
}

/// Reads a whole file once; the status file again while a slot is torn (a write in
/// progress), for up to a second, so a reader never gets a tear it could have avoided.
pub(super) fn read_consistent(
    area: &dyn SharedArea,
    path: &AreaPath,
) -> Result<Vec<u8>, AreaError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let bytes = area.read_file(path, MAX_READ)?;
        let torn = path.as_str() == STATUS_FILE
            && matches!(
                nlxtp_core::slots::read_status(&bytes),
                Err(DecodeError::Torn)
            );
        if !torn || Instant::now() >= deadline {
            return Ok(bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The staged file at `path` in a stage's tree.
fn staged_file(tree: &Tree, path: &str) -> Result<Arc<StagedFile>, Errno> {
    match tree.get(path) {
        Some(node) => node.staged().cloned().ok_or(Errno::EISDIR),
        None => Err(Errno::ENOENT),
    }
}
