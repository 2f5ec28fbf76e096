//! Writing an upload into a container's area: the upload lock, the free-space check,
//! new entries created beneath the root with the root's owner, the start script last
//! by a rename (see the module docs of `dir`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::resolve::{beneath, c_path};
use super::ContainerDir;
use crate::area::{AreaError, AreaPath, Durability, UploadData, UploadFile, START_SCRIPT};

/// How long an upload waits for another one to finish.
pub(super) const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// The longest file name Linux filesystems take.
pub(super) const NAME_MAX: usize = 255;

/// Permission bits an upload keeps: no setuid, setgid or sticky bit.
pub(super) const KEPT_MODE: u32 = 0o777;

/// A name unique enough for a temporary file of this process.
pub(super) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:08x}-{n}", std::process::id())
}

impl ContainerDir {
    /// Takes the upload lock: `flock` on a fresh open of the root.
    pub(super) fn lock(&self) -> Result<OwnedFd, AreaError> {
        let fd = self.reopen_root()?;
        let started = Instant::now();
        loop {
            match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(fd),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) if started.elapsed() < LOCK_PATIENCE => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(AreaError::io(
                        "lock (another upload runs, or the guest holds the lock)",
                        &self.path,
                        e.into(),
                    ))
                }
            }
        }
    }

    pub(super) fn check_space(&self, plan: &Plan) -> Result<(), AreaError> {
        let vfs = rfs::fstatvfs(&self.root)
            .map_err(|e| AreaError::io("inspect the filesystem of", &self.path, e.into()))?;
        let block = vfs.f_bsize.max(512);
        let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        let files: u64 = plan
            .files
            .iter()
            .map(|f| &f.1)
            .chain(plan.script.as_ref().map(|s| &s.0))
            .map(|data| data.len().div_ceil(block).saturating_mul(block))
            .fold(0, u64::saturating_add);
        let needed = files.saturating_add(plan.dirs.len() as u64 * block);
        if needed > available {
            return Err(AreaError::NoSpace { needed, available });
        }
        Ok(())
    }

    /// Writes the plan into the (empty) area: steps 4 to 6 of the module docs.
    pub(super) fn write(&self, plan: Plan, durability: Durability) -> Result<(), AreaError> {
        let root =
            rfs::fstat(&self.root).map_err(|e| AreaError::io("inspect", &self.path, e.into()))?;
        let owner = Owner(Uid::from_raw(root.st_uid), Gid::from_raw(root.st_gid));
        for (path, _) in &plan.dirs {
            let parent = self.open_dir(path.parent().as_ref())?;
            let name = c_path(path.file_name());
            match rfs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
                // An existing directory is fine (the guest made it meanwhile); open_dir
                // checks it is one.
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(AreaError::io(
                        "create the directory",
                        &self.host(path),
                        e.into(),
                    ))
                }
            }
            let dir = self.open_dir(Some(path))?;
            owner.give(&dir, &self.host(path))?;
        }
        for (path, data, mode) in plan.files {
            let parent = self.open_dir(path.parent().as_ref())?;
            let name = c_path(path.file_name());
            let file = self.create(&parent, &name, &path, owner, mode)?;
            self.fill(file, data, &path)?;
        }
        for (path, mode) in &plan.dirs {
            rfs::fchmod(
                self.open_dir(Some(path))?,
                Mode::from_raw_mode(mode & KEPT_MODE),
            )
            .map_err(|e| AreaError::io("set the mode of", &self.host(path), e.into()))?;
        }
        rfs::syncfs(&self.root)
            .map_err(|e| AreaError::io("flush the filesystem of", &self.path, e.into()))?;
        if let Some((data, mode)) = plan.script {
            self.write_script(data, mode, owner, durability)?;
        }
        Ok(())
    }

    /// Creates the new file `name` in `parent` (failing if anything is there), owned by
    /// `owner`, with `mode`.
    pub(super) fn create(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        path: &AreaPath,
        owner: Owner,
        mode: u32,
    ) -> Result<File, AreaError> {
        let fd = beneath(
            parent.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| AreaError::io("create", &self.host(path), e.into()))?;
        owner.give(&fd, &self.host(path))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode & KEPT_MODE))
            .map_err(|e| AreaError::io("set the mode of", &self.host(path), e.into()))?;
        Ok(File::from(fd))
    }

    /// Writes `data` into `out`, which is the area's `path`.
    pub(super) fn fill(
        &self,
        mut out: File,
        data: UploadData,
        path: &AreaPath,
    ) -> Result<File, AreaError> {
        let write_err = |e| AreaError::io("write", &self.host(path), e);
        let len = data.len();
        let copied = match data {
            UploadData::Dir => 0,
            UploadData::Bytes(bytes) => {
                out.write_all(&bytes).map_err(write_err)?;
                len
            }
            UploadData::Reader { reader, len } => {
                let mut source = reader.take(len);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = match source.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let what = Path::new(path.as_str());
                            return Err(AreaError::io("read the upload's source of", what, e));
                        }
                    };
                    out.write_all(&buf[..n]).map_err(write_err)?;
                    total += n as u64;
                }
                total
            }
        };
        if copied < len {
            return Err(AreaError::ShortSource {
                path: path.clone(),
                got: copied,
                len,
            });
        }
        Ok(out)
    }

    /// Step 6: the start script under a temporary name, flushed, renamed into place.
    pub(super) fn write_script(
        &self,
        data: UploadData,
        mode: u32,
        owner: Owner,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let synced = durability == Durability::Synced;
        let script = AreaPath::new(START_SCRIPT).expect("a valid protocol name");
        let temp = format!(".nlxtp-{START_SCRIPT}-{}.tmp", unique_suffix());
        let temp_name = c_path(&temp);
        let root = self.reopen_root()?;
        let written = self
            .create(&root, &temp_name, &script, owner, mode)
            .and_then(|file| self.fill(file, data, &script))
            .and_then(|file| match synced {
                true => file
                    .sync_all()
                    .map_err(|e| AreaError::io("flush", &self.path.join(&temp), e)),
                false => Ok(()),
            })
            .and_then(|()| {
                rfs::renameat(&root, &temp_name, &root, c_path(START_SCRIPT).as_c_str())
                    .map_err(|e| AreaError::io("rename into place", &self.host(&script), e.into()))
            });
        if let Err(e) = written {
            // Best effort: the next upload removes it anyway.
            let _ = rfs::unlinkat(&root, &temp_name, AtFlags::empty());
            return Err(e);
        }
        if synced {
            rfs::fsync(&root).map_err(|e| AreaError::io("flush", &self.path, e.into()))?;
        }
        Ok(())
    }
}

/// The owner every new entry gets: the area root's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner(Uid, Gid);

impl Owner {
    pub(super) fn give(self, fd: &OwnedFd, shown: &Path) -> Result<(), AreaError> {
        rfs::fchown(fd, Some(self.0), Some(self.1))
            .map_err(|e| AreaError::io("give the area's owner to", shown, e.into()))
    }
}

/// An upload checked and in the order it is written.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Every directory, explicit or a parent of a file, parents first, with its mode.
    dirs: Vec<(AreaPath, u32)>,
    /// The files in the order given, without the start script.
    files: Vec<(AreaPath, UploadData, u32)>,
    /// The start script, written last.
    script: Option<(UploadData, u32)>,
}

impl Plan {
    pub(super) fn new(files: Vec<UploadFile>) -> Result<Self, AreaError> {
        // Whether each path seen is a directory.
        let mut is_dir: HashMap<String, bool> = HashMap::new();
        let mut dirs: BTreeMap<(usize, AreaPath), u32> = BTreeMap::new();
        let mut plan = Plan::default();
        let both = |path: &AreaPath, p: &AreaPath| AreaError::BadName {
            path: path.clone(),
            reason: format!("the upload has {p} both as a file and as a directory"),
        };
        for UploadFile { path, data, mode } in files {
            let long = path.components().map(str::len).find(|&n| n > NAME_MAX);
            if let Some(long) = long {
                let reason = format!("a name of {long} bytes, more than {NAME_MAX}");
                return Err(AreaError::BadName { path, reason });
            }
            let mut at = path.parent();
            while let Some(p) = at {
                at = p.parent();
                if is_dir.insert(p.as_str().to_owned(), true) == Some(false) {
                    return Err(both(&path, &p));
                }
                dirs.entry((p.components().count(), p)).or_insert(0o755);
            }
            let dir = matches!(data, UploadData::Dir);
            match is_dir.insert(path.as_str().to_owned(), dir) {
                Some(was) if was != dir => return Err(both(&path, &path)),
                Some(false) => {
                    let reason = "the upload names it twice".into();
                    return Err(AreaError::BadName { path, reason });
                }
                _ => {}
            }
            if dir {
                dirs.insert((path.components().count(), path), mode);
            } else if path.as_str() == START_SCRIPT {
                plan.script = Some((data, mode));
            } else {
                plan.files.push((path, data, mode));
            }
        }
        plan.dirs = dirs.into_iter().map(|((_, p), m)| (p, m)).collect();
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn file(path: &str) -> UploadFile {
        UploadFile::bytes(path, b"x".to_vec()).unwrap()
    }

    pub(super) fn dir(path: &str, mode: u32) -> UploadFile {
        UploadFile {
            path: AreaPath::new(path).unwrap(),
            data: UploadData::Dir,
            mode,
        }
    }

    #[test]
    pub(super) fn plans_parents_first_and_the_start_script_apart() {
        let plan = Plan::new(vec![
            file("auto_exec.sh"),
            file("b/c/d.txt"),
            dir("b", 0o700),
            file("a.txt"),
            dir("e/f", 0o555),
        ])
        .unwrap();
        let dirs: Vec<(&str, u32)> = plan.dirs.iter().map(|(p, m)| (p.as_str(), *m)).collect();
        assert_eq!(
            dirs,
            [("b", 0o700), ("e", 0o755), ("b/c", 0o755), ("e/f", 0o555)]
        );
        let files: Vec<&str> = plan.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(files, ["b/c/d.txt", "a.txt"]);
        assert!(plan.script.is_some());
        // A start script in a subdirectory is an ordinary file.
        let plan = Plan::new(vec![file("x/auto_exec.sh")]).unwrap();
        assert!(plan.script.is_none());
        assert_eq!(plan.files.len(), 1);
    }

    #[test]
    pub(super) fn rejects_what_a_directory_cannot_hold() {
        for (files, needle) in [
            (vec![file("x"), file("x")], "names it twice"),
            (
                vec![file("x"), file("x/y")],
                "both as a file and as a directory",
            ),
            (
                vec![file("x/y"), file("x")],
                "both as a file and as a directory",
            ),
            (
                vec![dir("x", 0o755), file("x")],
                "both as a file and as a directory",
            ),
            (vec![file(&"n".repeat(256))], "more than 255"),
        ] {
            let err = Plan::new(files).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        // Case differs: two files on a Linux filesystem.
        assert!(Plan::new(vec![file("a"), file("A"), dir("d", 0o755), dir("d", 0o700)]).is_ok());
    }
}
