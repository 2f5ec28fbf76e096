//! The view's state and operations, free of FUSE types: VMs, inode numbers, open files,
//! stages and commits. Errors are errno values; `fs.rs` turns calls from the kernel
//! into calls here.
//!
//! Locks are taken in this order, never the other way: the VM table, one VM's state,
//! the inode table, the handle table.
//!
//! This file holds the table of VMs, attributes, lookup and listing; [`inodes`] the inode
//! numbers, [`vm`] each VM's listing, stage and commits, [`handles`] open files,
//! [`edit`] changes to names and attributes, [`meta`] the view's own files.

mod edit;
mod handles;
mod inodes;
mod meta;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use nix::errno::Errno;

pub(crate) use edit::SetAttr;
pub(crate) use handles::OpenMode;
use meta::META_DIR;

use super::error::KeptError;
use super::stage::{children, Node, Stage};
use crate::area::SharedArea;
use handles::Handles;
use inodes::{Inodes, Key};
use meta::Meta;
use vm::{Vm, Vms};

/// The root directory's inode number.
pub(crate) const ROOT: u64 = 1;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

impl Kind {
    fn of(node: &Node) -> Kind {
        if node.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        }
    }
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

    fn vms_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vms> {
        self.vms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a VM under `name` (which the caller checked is free and valid).
    pub(crate) fn add_vm(&self, name: &str, target: &Path, area: Box<dyn SharedArea>) {
        let mut vms = self.vms_mut();
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
    /// [`KeptError`]: files are open, or the commit failed.
    pub(crate) fn remove_vm(&self, name: &str) -> Result<(), KeptError> {
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
            return Err(KeptError::FilesOpen { files: open });
        }
        {
            let mut st = lock(&vm.state);
            if st.stage.as_ref().is_some_and(Stage::dirty) {
                self.commit(&vm, &mut st).map_err(KeptError::Commit)?;
            }
            st.stage = None;
        }
        let mut vms = self.vms_mut();
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

    fn node_attr(&self, ino: u64, node: &Node, read_only: bool, mtime: SystemTime) -> Attr {
        let mut perm = (node.mode() & 0o777) as u16;
        if read_only {
            perm &= !0o222;
        }
        Attr {
            ino,
            kind: Kind::of(node),
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
            (Key::MetaDir(id), _) => Key::Meta(*id, Meta::named(name).ok_or(Errno::ENOENT)?),
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
                for meta in Meta::ALL {
                    let ino = inodes.ino(Key::Meta(*id, meta));
                    out.push((ino, Kind::File, meta.name().into()));
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
                    .map(|(name, node)| (name.to_owned(), Kind::of(node)))
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

    /// VM directories, for tests of the table itself.
    #[cfg(test)]
    fn vm_count(&self) -> usize {
        self.vms().by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::vfat::{create_image, VfatImage};
    use crate::area::{AreaPath, UploadFile};

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
}
