//! Inode numbers: what each number the kernel knows stands for, kept stable across
//! renames, and retired (never reused) when its path goes.

use std::collections::HashMap;

use super::meta::Meta;
use super::ROOT;

/// What an inode number stands for. VM ids are never reused, so an inode of a removed
/// VM never resolves to a VM added later under the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Root,
    VmRoot(u64),
    MetaDir(u64),
    Meta(u64, Meta),
    Path(u64, String),
    /// A path that was replaced by a rename while the kernel still knew its number.
    Gone,
}

impl Key {
    pub(super) fn vm(&self) -> Option<u64> {
        match self {
            Key::VmRoot(vm) | Key::MetaDir(vm) | Key::Meta(vm, _) | Key::Path(vm, _) => Some(*vm),
            Key::Root | Key::Gone => None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Inodes {
    by_key: HashMap<Key, u64>,
    by_ino: HashMap<u64, Key>,
    next: u64,
}

impl Inodes {
    pub(super) fn new() -> Self {
        let mut inodes = Inodes {
            next: ROOT + 1,
            ..Inodes::default()
        };
        inodes.by_key.insert(Key::Root, ROOT);
        inodes.by_ino.insert(ROOT, Key::Root);
        inodes
    }

    pub(super) fn ino(&mut self, key: Key) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), ino);
        self.by_ino.insert(ino, key);
        ino
    }

    pub(super) fn key(&self, ino: u64) -> Option<Key> {
        self.by_ino.get(&ino).cloned()
    }

    /// The numbers of `root` and everything below it in VM `vm`.
    pub(super) fn under(&self, vm: u64, root: &str) -> Vec<(u64, String)> {
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
    pub(super) fn retire(&mut self, vm: u64, root: &str) {
        for (ino, path) in self.under(vm, root) {
            self.by_key.remove(&Key::Path(vm, path));
            self.by_ino.insert(ino, Key::Gone);
        }
    }

    /// Moves the numbers of `from` and below to `to`; those `to` had are retired.
    pub(super) fn rename(&mut self, vm: u64, from: &str, to: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
