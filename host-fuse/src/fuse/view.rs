//! The view's state and operations, free of FUSE types: VMs, inode numbers, open files,
//! stages and commits. Errors are errno values; `fs.rs` turns calls from the kernel
//! into calls here.
//!
//! Locks are taken in this order, never the other way: the VM table, one VM's state,
//! the inode table, the handle table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nlxtp_core::layout::STATUS_FILE;
use nlxtp_core::DecodeError;

use super::stage::{children, listing, upload_files, Data, Node, Stage, StagedFile, Tree};
use crate::area::{AreaError, AreaPath, ChangeKey, Durability, SharedArea};
use crate::ops;

/// The root directory's inode number.
pub(crate) const ROOT: u64 = 1;
/// The view's own directory in each VM's directory.
pub(crate) const META_DIR: &str = ".nlxtp";
/// The decoded status, in [`META_DIR`].
pub(crate) const STATUS_JSON: &str = "status.json";
/// What the view itself knows about the VM (mode, pending changes), in [`META_DIR`].
pub(crate) const VIEW_JSON: &str = "view.json";

/// The largest file the view reads into memory at open.
const MAX_READ: u64 = 1 << 30;
/// A read-only listing is reused while the area's change key is unchanged, but never for
/// longer than this; an area without a change key (a container directory) has its
/// listing reused for the shorter time.
const LISTING_TTL: Duration = Duration::from_secs(5);
const UNKEYED_LISTING_TTL: Duration = Duration::from_millis(500);
/// A changed image is listed again at most this often.
const RELIST_INTERVAL: Duration = Duration::from_millis(100);
/// How long a "VM is running" answer is reused.
const BUSY_TTL: Duration = Duration::from_millis(500);
/// Changes without an open file (mkdir, rm, mv) are committed after this much quiet.
pub(crate) const QUIET_BEFORE_COMMIT: Duration = Duration::from_millis(250);
/// A close this soon after the VM's last commit is part of a burst (`cp -r`, a file
/// after another): its commit joins the burst's, made once it is quiet.
pub(crate) const BURST: Duration = Duration::from_millis(200);

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// What `stat` shows of one inode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Meta {
    Status,
    View,
}

/// What an inode number stands for. VM ids are never reused, so an inode of a removed
/// VM never resolves to a VM added later under the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Root,
    VmRoot(u64),
    MetaDir(u64),
    Meta(u64, Meta),
    Path(u64, String),
    /// A path that was replaced by a rename while the kernel still knew its number.
    Gone,
}

impl Key {
    fn vm(&self) -> Option<u64> {
        match self {
            Key::VmRoot(vm) | Key::MetaDir(vm) | Key::Meta(vm, _) | Key::Path(vm, _) => Some(*vm),
            Key::Root | Key::Gone => None,
        }
    }
}

#[derive(Debug, Default)]
struct Inodes {
    by_key: HashMap<Key, u64>,
    by_ino: HashMap<u64, Key>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut inodes = Inodes {
            next: ROOT + 1,
            ..Inodes::default()
        };
        inodes.by_key.insert(Key::Root, ROOT);
        inodes.by_ino.insert(ROOT, Key::Root);
        inodes
    }

    fn ino(&mut self, key: Key) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), ino);
        self.by_ino.insert(ino, key);
        ino
    }

    fn key(&self, ino: u64) -> Option<Key> {
        self.by_ino.get(&ino).cloned()
    }

    /// The numbers of `root` and everything below it in VM `vm`.
    fn under(&self, vm: u64, root: &str) -> Vec<(u64, String)> {
        let below = format!("{root}/");
        self.by_ino
            .iter()
            .filter_map(|(&ino, key)| match key {
                Key::Path(v, p) if *v == vm && (p == root || p.starts_with(&below)) => {
                    Some((ino, p.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Retires the numbers of `root` and below: they no longer resolve.
    fn retire(&mut self, vm: u64, root: &str) {
        for (ino, path) in self.under(vm, root) {
            self.by_key.remove(&Key::Path(vm, path));
            self.by_ino.insert(ino, Key::Gone);
        }
    }

    /// Moves the numbers of `from` and below to `to`; those `to` had are retired.
    fn rename(&mut self, vm: u64, from: &str, to: &str) {
        let moved = self.under(vm, from);
        self.retire(vm, to);
        for (_, path) in &moved {
            self.by_key.remove(&Key::Path(vm, path.clone()));
        }
        for (ino, path) in moved {
            let new = format!("{to}{}", &path[from.len()..]);
            self.by_key.insert(Key::Path(vm, new.clone()), ino);
            self.by_ino.insert(ino, Key::Path(vm, new));
        }
    }
}

/// A file open through the view.
#[derive(Debug)]
struct Handle {
    vm: Arc<Vm>,
    ino: u64,
    /// `NAME/path`, for messages.
    shown: String,
    pid: u32,
    kind: HandleKind,
}

#[derive(Debug)]
enum HandleKind {
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
struct Handles {
    open: HashMap<u64, Handle>,
    next: u64,
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

/// One VM's shared area in the view.
#[derive(Debug)]
pub(crate) struct Vm {
    id: u64,
    pub(crate) name: String,
    pub(crate) target: PathBuf,
    area: Box<dyn SharedArea>,
    state: Mutex<VmState>,
}

#[derive(Debug, Default)]
struct VmState {
    /// The area as last listed, when no stage exists: (tree, change key, when).
    listing: Option<(Tree, Option<ChangeKey>, Instant)>,
    stage: Option<Stage>,
    busy: Option<(bool, Instant)>,
    epochs: u64,
    mtime: Option<SystemTime>,
    last_error: Option<String>,
    last_run: Option<String>,
    /// When the last commit ended.
    last_commit: Option<Instant>,
}

/// The errno a failed area call becomes.
pub(crate) fn errno(e: &AreaError) -> Errno {
    match e {
        AreaError::NotFound { .. } | AreaError::NoImage { .. } => Errno::ENOENT,
        AreaError::NotAFile { .. } => Errno::EISDIR,
        AreaError::TooLarge { .. } => Errno::EFBIG,
        AreaError::Busy { .. } => Errno::EROFS,
        AreaError::NoSpace { .. } => Errno::ENOSPC,
        AreaError::BadName { .. } => Errno::EINVAL,
        AreaError::NameCollision { .. } => Errno::EEXIST,
        AreaError::NotRegular { .. } => Errno::EACCES,
        AreaError::Io { source, .. } => source.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        _ => Errno::EIO,
    }
}

/// An error and its causes on one line, for logs and view.json.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Default)]
struct Vms {
    by_name: BTreeMap<String, Arc<Vm>>,
    by_id: HashMap<u64, Arc<Vm>>,
    next_id: u64,
}

/// Everything the mount serves.
#[derive(Debug)]
pub(crate) struct View {
    vms: RwLock<Vms>,
    inodes: Mutex<Inodes>,
    handles: Mutex<Handles>,
    stage_dir: PathBuf,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one request must not take the whole mount down with poisoned locks.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `parent/name`, or `name` in the area's root.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl View {
    /// An empty view whose stages live in `stage_dir`.
    pub(crate) fn new(stage_dir: PathBuf) -> View {
        View {
            vms: RwLock::default(),
            inodes: Mutex::new(Inodes::new()),
            handles: Mutex::default(),
            stage_dir,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            started: SystemTime::now(),
        }
    }

    fn vms(&self) -> std::sync::RwLockReadGuard<'_, Vms> {
        self.vms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a VM under `name` (which the caller checked is free and valid).
    pub(crate) fn add_vm(&self, name: &str, target: &Path, area: Box<dyn SharedArea>) {
        let mut vms = self
            .vms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        vms.next_id += 1;
        let vm = Arc::new(Vm {
            id: vms.next_id,
            name: name.to_owned(),
            target: target.to_owned(),
            area,
            state: Mutex::default(),
        });
        vms.by_id.insert(vm.id, Arc::clone(&vm));
        vms.by_name.insert(name.to_owned(), vm);
    }

    /// Every VM: (name, target).
    pub(crate) fn vm_list(&self) -> Vec<(String, PathBuf)> {
        self.vms()
            .by_name
            .values()
            .map(|vm| (vm.name.clone(), vm.target.clone()))
            .collect()
    }

    /// Removes the VM `name` after committing what is pending for it.
    ///
    /// # Errors
    /// A sentence saying why it stays: files open, or the commit failed.
    pub(crate) fn remove_vm(&self, name: &str) -> Result<(), String> {
        let Some(vm) = self.vms().by_name.get(name).cloned() else {
            return Ok(());
        };
        let open: Vec<String> = self
            .open_files()
            .into_iter()
            .filter(|f| f.path.split('/').next() == Some(name))
            .map(|f| f.path)
            .collect();
        if !open.is_empty() {
            return Err(format!("files are open: {}", open.join(", ")));
        }
        {
            let mut st = lock(&vm.state);
            if st.stage.as_ref().is_some_and(Stage::dirty) {
                self.commit(&vm, &mut st)
                    .map_err(|_| st.last_error.clone().unwrap_or_default())?;
            }
            st.stage = None;
        }
        let mut vms = self
            .vms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        vms.by_name.remove(name);
        vms.by_id.remove(&vm.id);
        Ok(())
    }

    fn resolve(&self, ino: u64) -> Result<(Key, Option<Arc<Vm>>), Errno> {
        let key = lock(&self.inodes).key(ino).ok_or(Errno::ENOENT)?;
        match key.vm() {
            None if key == Key::Gone => Err(Errno::ENOENT),
            None => Ok((key, None)),
            Some(id) => {
                let vm = self.vms().by_id.get(&id).cloned().ok_or(Errno::ENOENT)?;
                Ok((key, Some(vm)))
            }
        }
    }

    fn dir_attr(&self, ino: u64, perm: u16) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm,
            uid: self.uid,
            gid: self.gid,
            mtime: self.started,
        }
    }

    /// The area as the view shows it now: the stage, or a listing fresh enough.
    fn tree<'a>(&self, vm: &Vm, st: &'a mut VmState) -> Result<&'a Tree, Errno> {
        if st.stage.is_none() {
            self.refresh_listing(vm, st)?;
        }
        match (&st.stage, &st.listing) {
            (Some(stage), _) => Ok(&stage.tree),
            (None, Some((tree, ..))) => Ok(tree),
            (None, None) => Err(Errno::EIO),
        }
    }

    /// Lists the area again if the listing is older than its content (by its change
    /// key) or its time to live.
    fn refresh_listing(&self, vm: &Vm, st: &mut VmState) -> Result<(), Errno> {
        let key = vm.area.change_key();
        let stale = match &st.listing {
            None => true,
            // Without a change key only the (short) time to live tells.
            Some((_, old, at)) if key.is_none() => {
                at.elapsed() > UNKEYED_LISTING_TTL || *old != key
            }
            Some((_, old, at)) => {
                (*old != key && at.elapsed() > RELIST_INTERVAL) || at.elapsed() > LISTING_TTL
            }
        };
        if stale {
            let tree = listing(vm.area.as_ref()).map_err(|e| {
                tracing::warn!("cannot list {}: {}", vm.name, chain(&e));
                errno(&e)
            })?;
            st.mtime = std::fs::metadata(vm.area.location())
                .and_then(|m| m.modified())
                .ok();
            st.listing = Some((tree, key, Instant::now()));
        }
        Ok(())
    }

    /// Whether the VM's files are read-only now (a running VM holds the image).
    fn read_only(&self, vm: &Vm, st: &mut VmState) -> bool {
        if st.stage.is_some() {
            return false;
        }
        match st.busy {
            Some((busy, at)) if at.elapsed() < BUSY_TTL => busy,
            _ => {
                let busy = vm.area.is_busy().unwrap_or(false);
                st.busy = Some((busy, Instant::now()));
                busy
            }
        }
    }

    fn node_attr(&self, ino: u64, node: &Node, read_only: bool, mtime: SystemTime) -> Attr {
        let mut perm = (node.mode() & 0o777) as u16;
        if read_only {
            perm &= !0o222;
        }
        Attr {
            ino,
            kind: if node.is_dir() { Kind::Dir } else { Kind::File },
            size: node.size(),
            perm,
            uid: self.uid,
            gid: self.gid,
            mtime,
        }
    }

    fn path_attr(&self, vm: &Vm, path: &str, ino: Option<u64>) -> Result<Attr, Errno> {
        let mut st = lock(&vm.state);
        let read_only = self.read_only(vm, &mut st);
        let mtime = st.mtime.unwrap_or(self.started);
        let node = self
            .tree(vm, &mut st)?
            .get(path)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        drop(st);
        let ino = ino.unwrap_or_else(|| lock(&self.inodes).ino(Key::Path(vm.id, path.to_owned())));
        Ok(self.node_attr(ino, &node, read_only, mtime))
    }

    fn meta_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: 0,
            perm: 0o444,
            uid: self.uid,
            gid: self.gid,
            mtime: SystemTime::now(),
        }
    }

    fn attr_of(&self, ino: u64, key: &Key, vm: Option<&Vm>) -> Result<Attr, Errno> {
        match (key, vm) {
            (Key::Root, _) => Ok(self.dir_attr(ino, 0o755)),
            (Key::VmRoot(_), _) => Ok(self.dir_attr(ino, 0o755)),
            (Key::MetaDir(_), _) => Ok(self.dir_attr(ino, 0o555)),
            (Key::Meta(..), _) => Ok(self.meta_attr(ino)),
            (Key::Path(_, path), Some(vm)) => self.path_attr(vm, path, Some(ino)),
            _ => Err(Errno::ENOENT),
        }
    }

    /// `stat` of an inode.
    pub(crate) fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        let (key, vm) = self.resolve(ino)?;
        self.attr_of(ino, &key, vm.as_deref())
    }

    /// Looks `name` up in the directory `parent`.
    pub(crate) fn lookup(&self, parent: u64, name: &str) -> Result<Attr, Errno> {
        let (key, vm) = self.resolve(parent)?;
        let child = match (&key, &vm) {
            (Key::Root, _) => {
                let vm = self.vms().by_name.get(name).cloned().ok_or(Errno::ENOENT)?;
                let ino = lock(&self.inodes).ino(Key::VmRoot(vm.id));
                return Ok(self.dir_attr(ino, 0o755));
            }
            (Key::VmRoot(id), _) if name == META_DIR => Key::MetaDir(*id),
            (Key::MetaDir(id), _) => match name {
                STATUS_JSON => Key::Meta(*id, Meta::Status),
                VIEW_JSON => Key::Meta(*id, Meta::View),
                _ => return Err(Errno::ENOENT),
            },
            (Key::VmRoot(_), Some(vm)) => return self.path_attr(vm, name, None),
            (Key::Path(_, dir), Some(vm)) => return self.path_attr(vm, &join(dir, name), None),
            (Key::Meta(..), _) => return Err(Errno::ENOTDIR),
            _ => return Err(Errno::ENOENT),
        };
        let ino = lock(&self.inodes).ino(child.clone());
        self.attr_of(ino, &child, vm.as_deref())
    }

    /// The entries of directory `ino`, "." and ".." first: (inode, kind, name).
    pub(crate) fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, String)>, Errno> {
        let (key, vm) = self.resolve(ino)?;
        let mut out = vec![(ino, Kind::Dir, ".".to_owned())];
        match (&key, vm) {
            (Key::Root, _) => {
                out.push((ROOT, Kind::Dir, "..".into()));
                let vms = self.vms();
                let mut inodes = lock(&self.inodes);
                for vm in vms.by_name.values() {
                    out.push((inodes.ino(Key::VmRoot(vm.id)), Kind::Dir, vm.name.clone()));
                }
            }
            (Key::MetaDir(id), _) => {
                let mut inodes = lock(&self.inodes);
                out.push((inodes.ino(Key::VmRoot(*id)), Kind::Dir, "..".into()));
                for (meta, name) in [(Meta::Status, STATUS_JSON), (Meta::View, VIEW_JSON)] {
                    out.push((inodes.ino(Key::Meta(*id, meta)), Kind::File, name.into()));
                }
            }
            (Key::VmRoot(_) | Key::Path(..), Some(vm)) => {
                let dir = match &key {
                    Key::Path(_, p) => p.clone(),
                    _ => String::new(),
                };
                let mut st = lock(&vm.state);
                let tree = self.tree(&vm, &mut st)?;
                if !dir.is_empty() && !tree.get(&dir).is_some_and(Node::is_dir) {
                    return Err(Errno::ENOTDIR);
                }
                let kids: Vec<(String, Kind)> = children(tree, &dir)
                    .filter(|(name, _)| !(dir.is_empty() && *name == META_DIR))
                    .map(|(name, node)| {
                        (
                            name.to_owned(),
                            if node.is_dir() { Kind::Dir } else { Kind::File },
                        )
                    })
                    .collect();
                drop(st);
                let mut inodes = lock(&self.inodes);
                let parent = match dir.rsplit_once('/') {
                    _ if dir.is_empty() => ROOT,
                    Some((p, _)) => inodes.ino(Key::Path(vm.id, p.to_owned())),
                    None => inodes.ino(Key::VmRoot(vm.id)),
                };
                out.push((parent, Kind::Dir, "..".into()));
                if dir.is_empty() {
                    out.push((inodes.ino(Key::MetaDir(vm.id)), Kind::Dir, META_DIR.into()));
                }
                for (name, kind) in kids {
                    out.push((inodes.ino(Key::Path(vm.id, join(&dir, &name))), kind, name));
                }
            }
            _ => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// The stage of `vm`, made now if there is none.
    ///
    /// # Errors
    /// `EROFS` while a VM holds the image, `EBUSY` while a run goes on in a container.
    fn stage<'a>(&self, vm: &Vm, st: &'a mut VmState) -> Result<&'a mut Stage, Errno> {
        if st.stage.is_none() {
            // A guest that sees the area live would find files changed under its run.
            if vm.area.capabilities().live && run_alive(vm) {
                return Err(Errno::EBUSY);
            }
            let hold = vm.area.hold().map_err(|e| errno(&e))?;
            st.epochs += 1;
            let stage = Stage::copy_of(vm.area.as_ref(), &self.stage_dir, hold, st.epochs)
                .map_err(|e| {
                    tracing::warn!("cannot stage changes to {}: {}", vm.name, chain(&e));
                    errno(&e)
                })?;
            st.stage = Some(stage);
            st.listing = None;
            st.busy = None;
        }
        st.mtime = Some(SystemTime::now());
        Ok(st.stage.as_mut().expect("just made"))
    }

    /// Commits the stage of `vm`, if it has changes, with one [`SharedArea::replace`].
    fn commit(&self, vm: &Vm, st: &mut VmState) -> Result<(), Errno> {
        let Some(stage) = st.stage.as_mut() else {
            return Ok(());
        };
        if !stage.dirty() {
            return Ok(());
        }
        let failed = |st: &mut VmState, why: String, code: Errno| {
            tracing::warn!("could not commit the changes to {}: {why}", vm.name);
            st.last_error = Some(why);
            if let Some(stage) = st.stage.as_mut() {
                stage.failed = Some(stage.changed);
            }
            Err(code)
        };
        let live = vm.area.capabilities().live;
        if live && run_alive(vm) {
            return failed(
                st,
                "a run is going on in the container; write again when it has ended".into(),
                Errno::EBUSY,
            );
        }
        let (tree, run) = match stage.to_commit(&self.stage_dir) {
            Ok(v) => v,
            Err(e) => return failed(st, e.to_string(), Errno::EIO),
        };
        tracing::debug!(
            "{}: committing {} entries ({} bytes), {} open for writing",
            vm.name,
            tree.len(),
            tree.values().map(Node::size).sum::<u64>(),
            stage.writers
        );
        // The hold goes into the replacement and comes back on the new content (on a
        // failure: the old), so no QEMU can start in between.
        let result = vm
            .area
            .replace_held(&mut stage.hold, upload_files(&tree), Durability::Synced);
        let stage = st.stage.as_mut().expect("still there");
        let outcome = match result {
            Ok(()) => {
                stage.tree = tree;
                stage.committed = stage.changed;
                stage.failed = None;
                stage.script_touched = false;
                stage.manifest_by_user = false;
                st.last_error = None;
                st.last_commit = Some(Instant::now());
                if let Some(run) = run {
                    tracing::info!("{}: committed a new start script, run {run}", vm.name);
                    st.last_run = Some(run.to_string());
                }
                Ok(())
            }
            Err(e) => failed(st, chain(&e), errno(&e)),
        };
        let stage = st.stage.as_mut().expect("still there");
        // A commit that started a run in a container ends the stage: the guest writes now.
        let end =
            stage.writers == 0 && !stage.dirty() || (live && run.is_some() && outcome.is_ok());
        // A held stage keeps its hold: on the new content, or on the old one after a failure.
        if end {
            st.stage = None;
        }
        st.busy = None;
        outcome
    }

    /// Commits `vm`'s pending changes now.
    fn commit_vm(&self, vm: &Vm) -> Result<(), Errno> {
        let mut st = lock(&vm.state);
        self.commit(vm, &mut st)
    }

    /// Commits what is pending everywhere; the VMs that failed, with why.
    pub(crate) fn commit_all(&self) -> Vec<String> {
        let vms: Vec<Arc<Vm>> = self.vms().by_name.values().cloned().collect();
        let mut failed = Vec::new();
        for vm in vms {
            let mut st = lock(&vm.state);
            if self.commit(&vm, &mut st).is_err() {
                failed.push(format!(
                    "{}: {}",
                    vm.name,
                    st.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
        }
        failed
    }

    /// Background work: commits changes made without an open file once they are quiet,
    /// and ends stages with nothing pending and nothing open.
    pub(crate) fn tick(&self) {
        let vms: Vec<Arc<Vm>> = self.vms().by_name.values().cloned().collect();
        for vm in vms {
            let mut st = lock(&vm.state);
            let Some(stage) = st.stage.as_ref() else {
                continue;
            };
            if stage.writers > 0 {
                continue;
            }
            if !stage.dirty() {
                st.stage = None;
            } else if stage.last_change.elapsed() >= QUIET_BEFORE_COMMIT
                && stage.failed != Some(stage.changed)
            {
                let _ = self.commit(&vm, &mut st);
            }
        }
    }

    /// Whether anything is uncommitted.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> bool {
        self.vms()
            .by_name
            .values()
            .any(|vm| lock(&vm.state).stage.as_ref().is_some_and(Stage::dirty))
    }

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

    fn add_handle(&self, vm: Arc<Vm>, ino: u64, shown: String, pid: u32, kind: HandleKind) -> u64 {
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

    /// The generated content of a file in [`META_DIR`].
    fn meta_bytes(&self, vm: &Vm, meta: Meta) -> Vec<u8> {
        let text = match meta {
            Meta::Status => match ops::status(vm.area.as_ref()) {
                Ok(report) => serde_json::to_string_pretty(&report),
                Err(e) => serde_json::to_string_pretty(&serde_json::json!({
                    "target": vm.area.location(),
                    "error": chain(&e),
                })),
            },
            Meta::View => {
                let mut st = lock(&vm.state);
                let read_only = self.read_only(vm, &mut st);
                let stage = st.stage.as_ref();
                serde_json::to_string_pretty(&serde_json::json!({
                    "name": vm.name,
                    "target": vm.target,
                    "backend": vm.area.kind().name(),
                    "writable": !read_only,
                    "mode": if read_only { "read-only: a VM holds the image" } else { "read-write" },
                    "staged": stage.is_some(),
                    "uncommitted_changes": stage.is_some_and(Stage::dirty),
                    "open_for_writing": stage.map_or(0, |s| s.writers),
                    "last_commit_error": st.last_error,
                    "last_run_started_by_view": st.last_run,
                }))
            }
        };
        let mut text = text.unwrap_or_default();
        text.push('\n');
        text.into_bytes()
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
                let name = if *meta == Meta::Status {
                    STATUS_JSON
                } else {
                    VIEW_JSON
                };
                let bytes = self.meta_bytes(&vm, *meta);
                let shown = format!("{}/{META_DIR}/{name}", vm.name);
                Ok(self.add_handle(vm, ino, shown, pid, HandleKind::Bytes(Arc::new(bytes))))
            }
            Key::Path(_, path) => {
                let shown = format!("{}/{path}", vm.name);
                let mut st = lock(&vm.state);
                if writes {
                    let stage = self.stage(&vm, &mut st)?;
                    let file = match stage.tree.get(path) {
                        Some(Node::File {
                            data: Data::Staged(f),
                            ..
                        }) => Arc::clone(f),
                        Some(_) => return Err(Errno::EISDIR),
                        None => return Err(Errno::ENOENT),
                    };
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
                    let kind = match stage.tree.get(path) {
                        Some(Node::File {
                            data: Data::Staged(f),
                            ..
                        }) => HandleKind::Staged {
                            file: Arc::clone(f),
                            epoch: stage.epoch,
                            write: false,
                            append: false,
                        },
                        Some(_) => return Err(Errno::EISDIR),
                        None => return Err(Errno::ENOENT),
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

    fn handle_vm(&self, fh: u64) -> Result<(Arc<Vm>, bool), Errno> {
        let handles = lock(&self.handles);
        let handle = handles.open.get(&fh).ok_or(Errno::EBADF)?;
        let write = matches!(handle.kind, HandleKind::Staged { write: true, .. });
        Ok((Arc::clone(&handle.vm), write))
    }

    /// Commits now, unless this is part of a burst of changes (see [`BURST`]): then the
    /// background commit takes it once the burst is quiet.
    fn commit_unless_burst(&self, vm: &Vm, st: &mut VmState) -> Result<(), Errno> {
        if st.last_commit.is_some_and(|t| t.elapsed() < BURST) {
            return Ok(());
        }
        self.commit(vm, st)
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

    /// The directory a new entry `name` goes into: (VM, path of the new entry).
    fn new_entry(&self, parent: u64, name: &str) -> Result<(Arc<Vm>, String), Errno> {
        let (key, vm) = self.resolve(parent)?;
        let path = match &key {
            Key::VmRoot(_) if name == META_DIR => return Err(Errno::EEXIST),
            Key::VmRoot(_) => name.to_owned(),
            Key::Path(_, dir) => join(dir, name),
            Key::Root => return Err(Errno::EPERM),
            _ => return Err(Errno::EACCES),
        };
        AreaPath::new(path.clone()).map_err(|_| Errno::EINVAL)?;
        Ok((vm.ok_or(Errno::ENOENT)?, path))
    }

    /// Checks that `path` can be added to `tree`: its parent is a directory, and on vFAT
    /// no sibling has the same name but for case.
    fn check_new(vm: &Vm, tree: &Tree, path: &str) -> Result<(), Errno> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if !dir.is_empty() && !tree.get(dir).is_some_and(Node::is_dir) {
            return Err(Errno::ENOENT);
        }
        if vm.area.capabilities().folds_case
            && children(tree, dir).any(|(n, _)| n != name && n.eq_ignore_ascii_case(name))
        {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// Creates (or, without `O_EXCL`, opens) the file `name` in `parent`.
    pub(crate) fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: OpenMode,
        pid: u32,
    ) -> Result<(Attr, u64), Errno> {
        let (vm, path) = self.new_entry(parent, name)?;
        {
            let mut st = lock(&vm.state);
            let stage = self.stage(&vm, &mut st)?;
            match stage.tree.get(&path) {
                Some(_) if flags.exclusive => return Err(Errno::EEXIST),
                Some(Node::Dir { .. }) => return Err(Errno::EISDIR),
                Some(_) => {}
                None => {
                    Self::check_new(&vm, &stage.tree, &path)?;
                    let file = StagedFile::new(&self.stage_dir).map_err(|_| Errno::EIO)?;
                    stage.tree.insert(
                        path.clone(),
                        Node::File {
                            mode: mode & 0o777,
                            data: Data::Staged(file),
                        },
                    );
                    stage.touch(&path);
                }
            }
        }
        let ino = lock(&self.inodes).ino(Key::Path(vm.id, path.clone()));
        let fh = self.open(
            ino,
            OpenMode {
                write: true,
                ..flags
            },
            pid,
        )?;
        let attr = self.path_attr(&vm, &path, Some(ino))?;
        Ok((attr, fh))
    }

    /// Makes the directory `name` in `parent`.
    pub(crate) fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Attr, Errno> {
        let (vm, path) = self.new_entry(parent, name)?;
        {
            let mut st = lock(&vm.state);
            let stage = self.stage(&vm, &mut st)?;
            if stage.tree.contains_key(&path) {
                return Err(Errno::EEXIST);
            }
            Self::check_new(&vm, &stage.tree, &path)?;
            stage
                .tree
                .insert(path.clone(), Node::Dir { mode: mode & 0o777 });
            stage.touch(&path);
        }
        self.path_attr(&vm, &path, None)
    }

    /// Removes the file (`dir == false`) or empty directory `name` from `parent`.
    pub(crate) fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), Errno> {
        let (vm, path) = self.new_entry(parent, name).map_err(|e| {
            if e == Errno::EEXIST {
                Errno::EPERM
            } else {
                e
            }
        })?;
        let mut st = lock(&vm.state);
        let exists = self.tree(&vm, &mut st)?.get(&path).map(Node::is_dir);
        match (exists, dir) {
            (None, _) => return Err(Errno::ENOENT),
            (Some(true), false) => return Err(Errno::EISDIR),
            (Some(false), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let stage = self.stage(&vm, &mut st)?;
        if dir && children(&stage.tree, &path).next().is_some() {
            return Err(Errno::ENOTEMPTY);
        }
        stage.tree.remove(&path).ok_or(Errno::ENOENT)?;
        stage.touch(&path);
        drop(st);
        lock(&self.inodes).retire(vm.id, &path);
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name` within one VM.
    pub(crate) fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let (vm, from) = self.new_entry(parent, name).map_err(|e| {
            if e == Errno::EEXIST {
                Errno::EPERM
            } else {
                e
            }
        })?;
        let (to_vm, to) = self.new_entry(new_parent, new_name)?;
        if vm.id != to_vm.id {
            return Err(Errno::EXDEV);
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Errno::EINVAL);
        }
        let mut st = lock(&vm.state);
        if !self.tree(&vm, &mut st)?.contains_key(&from) {
            return Err(Errno::ENOENT);
        }
        let stage = self.stage(&vm, &mut st)?;
        let source = stage.tree.get(&from).cloned().ok_or(Errno::ENOENT)?;
        match stage.tree.get(&to) {
            Some(_) if no_replace => return Err(Errno::EEXIST),
            Some(Node::Dir { .. }) if !source.is_dir() => return Err(Errno::EISDIR),
            Some(Node::File { .. }) if source.is_dir() => return Err(Errno::ENOTDIR),
            Some(Node::Dir { .. }) if children(&stage.tree, &to).next().is_some() => {
                return Err(Errno::ENOTEMPTY)
            }
            Some(_) => {}
            None => {
                let same_but_case = |n: &str| n.eq_ignore_ascii_case(new_name) && n != new_name;
                let (dir, _) = to.rsplit_once('/').unwrap_or(("", &to));
                let renaming_itself = from.eq_ignore_ascii_case(&to);
                if !renaming_itself
                    && vm.area.capabilities().folds_case
                    && children(&stage.tree, dir).any(|(n, _)| same_but_case(n))
                {
                    return Err(Errno::EEXIST);
                }
                if !dir.is_empty() && !stage.tree.get(dir).is_some_and(Node::is_dir) {
                    return Err(Errno::ENOENT);
                }
            }
        }
        let moved: Vec<String> = std::iter::once(from.clone())
            .chain(
                stage
                    .tree
                    .range(format!("{from}/")..)
                    .take_while(|(p, _)| p.starts_with(&format!("{from}/")))
                    .map(|(p, _)| p.clone()),
            )
            .collect();
        stage.tree.remove(&to);
        for old in moved {
            let node = stage.tree.remove(&old).expect("listed above");
            stage
                .tree
                .insert(format!("{to}{}", &old[from.len()..]), node);
        }
        stage.touch(&from);
        stage.touch(&to);
        drop(st);
        lock(&self.inodes).rename(vm.id, &from, &to);
        Ok(())
    }

    /// `chmod`, `chown`, `truncate` and `utimes` on `ino`.
    pub(crate) fn setattr(&self, ino: u64, change: &SetAttr) -> Result<Attr, Errno> {
        let (key, vm) = self.resolve(ino)?;
        let current = self.attr_of(ino, &key, vm.as_deref())?;
        let owner_changes = change.uid.is_some_and(|u| u != current.uid)
            || change.gid.is_some_and(|g| g != current.gid);
        let mode_changes = change
            .mode
            .is_some_and(|m| (m & 0o7777) as u16 != current.perm);
        let Key::Path(_, path) = &key else {
            if owner_changes || mode_changes || change.size.is_some() {
                return Err(Errno::EPERM);
            }
            return Ok(current);
        };
        let vm = vm.expect("a path has a VM");
        if owner_changes {
            return Err(Errno::EPERM);
        }
        // vFAT keeps no permission bits (as Linux's vfat without `quiet`, refuse).
        if mode_changes && !vm.area.capabilities().keeps_modes {
            return Err(Errno::EPERM);
        }
        if mode_changes || change.size.is_some() {
            let mut st = lock(&vm.state);
            let stage = self.stage(&vm, &mut st)?;
            let node = stage.tree.get_mut(path).ok_or(Errno::ENOENT)?;
            if let Some(size) = change.size {
                match node {
                    Node::File {
                        data: Data::Staged(f),
                        ..
                    } => f.set_len(size).map_err(|_| Errno::EIO)?,
                    _ => return Err(Errno::EISDIR),
                }
            }
            if let (Some(mode), Node::Dir { mode: m } | Node::File { mode: m, .. }) =
                (change.mode, &mut *node)
            {
                *m = mode & 0o777;
            }
            stage.touch(path);
        }
        self.path_attr(&vm, path, Some(ino))
    }

    /// VM directories, for tests of the table itself.
    #[cfg(test)]
    fn vm_count(&self) -> usize {
        self.vms().by_name.len()
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

/// The changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
}

/// Whether a run is going on in a container's area (the same rule as an upload without
/// `--force`).
fn run_alive(vm: &Vm) -> bool {
    matches!(
        ops::status(vm.area.as_ref()).map(|r| r.monitor),
        Ok(ops::Monitor::Alive { .. })
    )
}

/// Reads a whole file once; the status file again while a slot is torn (a write in
/// progress), for up to a second, so a reader never gets a tear it could have avoided.
fn read_consistent(area: &dyn SharedArea, path: &AreaPath) -> Result<Vec<u8>, AreaError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::vfat::{create_image, VfatImage};
    use crate::area::UploadFile;

    fn view_with_image() -> (tempfile::TempDir, View, u64) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        create_image(&img, 4 << 20, None, None).unwrap();
        let area = VfatImage::new(&img);
        area.replace(vec![
            UploadFile::bytes("hello.txt", b"hi".to_vec()).unwrap(),
            UploadFile::bytes("sub/x", b"x".to_vec()).unwrap(),
        ])
        .unwrap();
        let view = View::new(dir.path().to_owned());
        view.add_vm("a", &img, Box::new(area));
        let vm = view.lookup(ROOT, "a").unwrap().ino;
        (dir, view, vm)
    }

    #[test]
    fn lookup_readdir_read_and_commit_on_release() {
        let (_dir, view, vm) = view_with_image();
        assert_eq!(view.vm_count(), 1);
        let names: Vec<String> = view.readdir(vm).unwrap().into_iter().map(|e| e.2).collect();
        assert_eq!(names, [".", "..", META_DIR, "hello.txt", "sub"]);
        let file = view.lookup(vm, "hello.txt").unwrap();
        assert_eq!((file.size, file.kind), (2, Kind::File));
        let fh = view.open(file.ino, OpenMode::default(), 1).unwrap();
        assert_eq!(view.read(fh, 0, 100).unwrap(), b"hi");
        view.release(fh).unwrap();

        let (attr, fh) = view
            .create(
                vm,
                "new.txt",
                0o644,
                OpenMode {
                    write: true,
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        assert_eq!(view.write(fh, 0, b"content").unwrap(), 7);
        assert!(view.pending());
        assert_eq!(view.open_files().len(), 1);
        view.release(fh).unwrap();
        assert!(!view.pending());
        assert_eq!(view.getattr(attr.ino).unwrap().size, 7);
        let (_, Some(vm_arc)) = view.resolve(vm).unwrap() else {
            panic!()
        };
        assert_eq!(
            vm_arc
                .area
                .read_file(&AreaPath::new("new.txt").unwrap(), 100)
                .unwrap(),
            b"content"
        );
        assert!(
            lock(&vm_arc.state).stage.is_none(),
            "the stage ends with the last writer"
        );
    }

    #[test]
    fn rename_mkdir_rmdir_and_case() {
        let (_dir, view, vm) = view_with_image();
        let d = view.mkdir(vm, "d", 0o755).unwrap();
        assert_eq!(view.mkdir(vm, "D", 0o755).unwrap_err(), Errno::EEXIST);
        view.rename(vm, "hello.txt", d.ino, "moved.txt", false)
            .unwrap();
        assert_eq!(view.lookup(vm, "hello.txt").unwrap_err(), Errno::ENOENT);
        assert_eq!(view.lookup(d.ino, "moved.txt").unwrap().size, 2);
        assert_eq!(view.remove(vm, "d", true).unwrap_err(), Errno::ENOTEMPTY);
        view.rename(vm, "sub", d.ino, "sub2", false).unwrap();
        let sub2 = view.lookup(d.ino, "sub2").unwrap();
        assert_eq!(view.lookup(sub2.ino, "x").unwrap().size, 1);
        assert_eq!(
            view.rename(vm, "d", sub2.ino, "loop", false).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(view.commit_all(), Vec::<String>::new());
        view.tick();
        let (_, Some(vm_arc)) = view.resolve(vm).unwrap() else {
            panic!()
        };
        let listed: Vec<String> = vm_arc
            .area
            .list(&crate::area::WalkLimits::default())
            .unwrap()
            .into_iter()
            .map(|e| e.path.to_string())
            .collect();
        assert_eq!(listed, ["d", "d/moved.txt", "d/sub2", "d/sub2/x"]);
    }

    #[test]
    fn inode_renames_follow_subtrees() {
        let mut inodes = Inodes::new();
        let a = inodes.ino(Key::Path(1, "a".into()));
        let ab = inodes.ino(Key::Path(1, "a/b".into()));
        let c = inodes.ino(Key::Path(1, "c".into()));
        let abc = inodes.ino(Key::Path(1, "abc".into()));
        inodes.rename(1, "a", "c");
        assert_eq!(inodes.key(a), Some(Key::Path(1, "c".into())));
        assert_eq!(inodes.key(ab), Some(Key::Path(1, "c/b".into())));
        assert_eq!(inodes.key(c), Some(Key::Gone));
        assert_eq!(inodes.key(abc), Some(Key::Path(1, "abc".into())));
    }
}
