//! Changes to the namespace and attributes: create, mkdir, unlink, rmdir, rename,
//! setattr. Each goes to the VM's stage (made at the first change).

use std::sync::Arc;

use nix::errno::Errno;

use super::super::stage::{children, Data, Node, StagedFile, Tree};
use super::inodes::Key;
use super::vm::Vm;
use super::{join, lock, Attr, OpenMode, View, META_DIR};
use crate::area::AreaPath;

impl View {
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

    /// An existing entry `name` in `parent`: (VM, its path). The view's own directory
    /// cannot be removed or renamed.
    fn old_entry(&self, parent: u64, name: &str) -> Result<(Arc<Vm>, String), Errno> {
        self.new_entry(parent, name).map_err(|e| match e {
            Errno::EEXIST => Errno::EPERM,
            e => e,
        })
    }

    /// Checks that `path` can be added to `tree`: its parent is a directory, and on vFAT
    /// no sibling has the same name but for case (unless it is `renamed_from`, renamed to
    /// another case of its own name).
    fn check_new(
        vm: &Vm,
        tree: &Tree,
        path: &str,
        renamed_from: Option<&str>,
    ) -> Result<(), Errno> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if !dir.is_empty() && !tree.get(dir).is_some_and(Node::is_dir) {
            return Err(Errno::ENOENT);
        }
        let renaming_itself = renamed_from.is_some_and(|from| from.eq_ignore_ascii_case(path));
        if !renaming_itself
            && vm.area.capabilities().folds_case
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
                    Self::check_new(&vm, &stage.tree, &path, None)?;
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
            Self::check_new(&vm, &stage.tree, &path, None)?;
            stage
                .tree
                .insert(path.clone(), Node::Dir { mode: mode & 0o777 });
            stage.touch(&path);
        }
        self.path_attr(&vm, &path, None)
    }

    /// Removes the file (`dir == false`) or empty directory `name` from `parent`.
    pub(crate) fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), Errno> {
        let (vm, path) = self.old_entry(parent, name)?;
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
        let (vm, from) = self.old_entry(parent, name)?;
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
            None => Self::check_new(&vm, &stage.tree, &to, Some(&from))?,
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
                let file = node.staged().ok_or(Errno::EISDIR)?;
                file.set_len(size).map_err(|_| Errno::EIO)?;
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
}

/// The changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
}
