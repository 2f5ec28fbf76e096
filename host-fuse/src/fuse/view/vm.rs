//! Per-VM state: the listing, the "VM is running" answer, the stage and its commits,
//! and the background work that commits a quiet burst of changes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use super::super::error::{chain, errno, CommitError};
use super::super::stage::{listing, upload_files, Node, Stage, Tree};
use super::{lock, View};
use crate::area::{ChangeKey, Durability, SharedArea};
use crate::ops;

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
const QUIET_BEFORE_COMMIT: Duration = Duration::from_millis(250);

/// One VM's shared area in the view.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(super) id: u64,
    pub(crate) name: String,
    pub(crate) target: PathBuf,
    pub(super) area: Box<dyn SharedArea>,
    pub(super) state: Mutex<VmState>,
}

#[derive(Debug, Default)]
pub(super) struct VmState {
    /// The area as last listed, when no stage exists: (tree, change key, when).
    pub(super) listing: Option<(Tree, Option<ChangeKey>, Instant)>,
    pub(super) stage: Option<Stage>,
    pub(super) busy: Option<(bool, Instant)>,
    pub(super) epochs: u64,
    pub(super) mtime: Option<SystemTime>,
    pub(super) last_error: Option<String>,
    pub(super) last_run: Option<String>,
    /// When the last commit ended.
    pub(super) last_commit: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct Vms {
    pub(super) by_name: BTreeMap<String, Arc<Vm>>,
    pub(super) by_id: HashMap<u64, Arc<Vm>>,
    pub(super) next_id: u64,
}

impl View {
    /// The area as the view shows it now: the stage, or a listing fresh enough.
    pub(super) fn tree<'a>(&self, vm: &Vm, st: &'a mut VmState) -> Result<&'a Tree, Errno> {
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
    pub(super) fn refresh_listing(&self, vm: &Vm, st: &mut VmState) -> Result<(), Errno> {
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
    pub(super) fn read_only(&self, vm: &Vm, st: &mut VmState) -> bool {
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

    /// The stage of `vm`, made now if there is none.
    ///
    /// # Errors
    /// `EROFS` while a VM holds the image, `EBUSY` while a run goes on in a container.
    pub(super) fn stage<'a>(&self, vm: &Vm, st: &'a mut VmState) -> Result<&'a mut Stage, Errno> {
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
    pub(super) fn commit(&self, vm: &Vm, st: &mut VmState) -> Result<(), CommitError> {
        let result = self.try_commit(vm, st);
        if let Err(e) = &result {
            let why = chain(e);
            tracing::warn!("could not commit the changes to {}: {why}", vm.name);
            st.last_error = Some(why);
            if let Some(stage) = st.stage.as_mut() {
                stage.failed = Some(stage.changed);
            }
        }
        result
    }

    fn try_commit(&self, vm: &Vm, st: &mut VmState) -> Result<(), CommitError> {
        let Some(stage) = st.stage.as_mut() else {
            return Ok(());
        };
        if !stage.dirty() {
            return Ok(());
        }
        let live = vm.area.capabilities().live;
        if live && run_alive(vm) {
            return Err(CommitError::RunGoingOn);
        }
        let (tree, run) = stage
            .to_commit(&self.stage_dir)
            .map_err(CommitError::Prepare)?;
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
            .replace_held(&mut stage.hold, upload_files(&tree), Durability::Synced)
            .map_err(CommitError::Replace);
        if result.is_ok() {
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
        }
        let stage = st.stage.as_mut().expect("still there");
        // A commit that started a run in a container ends the stage: the guest writes now.
        let end = stage.writers == 0 && !stage.dirty() || (live && run.is_some() && result.is_ok());
        // A held stage keeps its hold: on the new content, or on the old one after a failure.
        if end {
            st.stage = None;
        }
        st.busy = None;
        result
    }

    /// Commits `vm`'s pending changes now.
    pub(super) fn commit_vm(&self, vm: &Vm) -> Result<(), Errno> {
        let mut st = lock(&vm.state);
        self.commit(vm, &mut st).map_err(|e| e.errno())
    }

    /// Commits what is pending everywhere; the VMs that failed, with why (for people).
    pub(crate) fn commit_all(&self) -> Vec<String> {
        let vms: Vec<Arc<Vm>> = self.vms().by_name.values().cloned().collect();
        let mut failed = Vec::new();
        for vm in vms {
            let mut st = lock(&vm.state);
            if let Err(e) = self.commit(&vm, &mut st) {
                failed.push(format!("{}: {}", vm.name, chain(&e)));
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
}

/// Whether a run is going on in a container's area (the same rule as an upload without
/// `--force`).
pub(super) fn run_alive(vm: &Vm) -> bool {
    matches!(
        ops::status(vm.area.as_ref()).map(|r| r.monitor),
        Ok(ops::Monitor::Alive { .. })
    )
}
