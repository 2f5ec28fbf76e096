//! The FUSE view: every VM's shared area under one mount point.
//!
//! `nlxtp mount MOUNTPOINT --vm NAME=TARGET ...` serves `MOUNTPOINT/NAME/` for each VM
//! (also libvirt domains: `--libvirt URI` and the config file, see [`read_config`]),
//! through [`SharedArea`](crate::area::SharedArea) only (no second way into an image or
//! directory). The contract:
//!
//! - **Reading.** A file's content is read once, at open, in one
//!   [`read_file`](crate::area::SharedArea::read_file), and every read of that open file
//!   is served from it: a reader never sees a mix of two guest writes. The status file
//!   is read again while a slot is torn (a guest write in progress), for up to a second.
//!   `NAME/.nlxtp/status.json` is [`ops::status()`](crate::ops::status()) as JSON, made at
//!   each open; `NAME/.nlxtp/view.json` says whether the view is writable and whether
//!   anything is uncommitted.
//! - **Read-only while a VM runs.** While QEMU holds a VM's image (its lock bytes), the
//!   VM's files show without write bits and every change fails with `EROFS`.
//! - **Staged writes.** The first change to a stopped VM's area holds it
//!   ([`SharedArea::hold`](crate::area::SharedArea::hold): for an image, QEMU's write
//!   locks, so no QEMU starts on it meanwhile) and copies the area into unnamed temporary files (the stage). Changes go
//!   to the stage. A **commit** writes the whole stage with one
//!   [`replace`](crate::area::SharedArea::replace), which swaps the image atomically: a
//!   crash, a `SIGKILL` included, leaves the old content or the new. Commits happen at
//!   `close` of a file written through the view, by the process that opened it, when no
//!   other file is open for writing (so `cp` of a file returns after the image holds
//!   it, and neither another file caught half-written nor the close of a descriptor a
//!   forked child inherited makes a commit), at the last close of a file otherwise, at
//!   `fsync` of a file or directory (whatever is staged), and at unmount; changes made
//!   without an open file (`mkdir`, `rm`, `mv`, `truncate`), and closes that come within
//!   200 ms of the VM's last commit (a burst, such as `cp -r` of many files), are
//!   committed together once no change has come for 250 ms, so a burst costs a few
//!   commits instead of one per file. After a commit with no file open for writing, the
//!   stage and the hold are dropped and the VM may start: until then no VM starts on
//!   half a job. A commit hands the hold to the replacement, which passes it on to the
//!   new image before the rename ([`SharedArea::replace_held`](crate::area::SharedArea::replace_held)):
//!   the image is guarded without a gap from the first staged write to the last commit.
//! - **A new start script starts a new run.** When `auto_exec.sh` is written through the
//!   view (created, written, truncated or renamed into place) and the manifest was not,
//!   the commit is an upload as docs/wire-format.md section 1 describes it: the last
//!   run's manifest, status and output files are dropped and a fresh manifest with a new
//!   run id is written (taking over the last manifest's timeout, heartbeat and output
//!   cap), so the guest runs the script exactly once at its next boot (a container: at
//!   once) instead of taking it for the finished run. Writing `nlxtp/manifest.bin`
//!   through the view in the same commit keeps that manifest as it is.
//! - **Containers.** A container directory is written the same way, but only while no
//!   run is going on in it (`EBUSY` otherwise, as an upload without `--force`); a commit
//!   that starts a run ends the stage, since the guest writes from then on.
//! - **vFAT rules.** Names that differ only in case are refused with `EEXIST`; `chmod`
//!   that would change the bits is refused with `EPERM` (vFAT keeps none), as Linux's
//!   own vfat does.
//! - **Reload.** `SIGHUP` re-reads the config file: VMs no longer listed are removed
//!   (after committing; a VM with open files stays until the next reload), new ones are
//!   added, the others are untouched.
//! - **Unmount.** `nlxtp umount` (over a control socket) and `SIGINT`/`SIGTERM`: if files
//!   are open the mount stays and the answer names them (path, pid, process); else
//!   everything pending is committed and the mount goes. `--lazy` detaches at once and
//!   commits what open files write when they are closed. A commit that fails keeps the
//!   mount. A mount whose process died is detached by `nlxtp umount` with a message.

mod config;
mod control;
mod daemon;
mod error;
mod fs;
mod mountinfo;
mod run;
mod stage;
mod umount;
mod view;

use std::path::PathBuf;

pub use config::{check_name, collect_vms, libvirt_vms, parse_vm_arg, read_config, VmSpec};
pub use error::{ConfigError, DaemonMessages, MountError, UmountError};

/// What `nlxtp mount` was asked for.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Where to mount (an existing directory).
    pub mountpoint: PathBuf,
    /// `NAME=TARGET` for each VM given on the command line.
    pub vms: Vec<String>,
    /// Libvirt connections (URIs) whose every domain with a shared disk is a VM, named
    /// by its domain name (feature `libvirt`); listed again on `SIGHUP`.
    pub libvirt: Vec<String>,
    /// A TOML file listing more VMs (`[vms]` table of `NAME = "TARGET"`, `[[libvirt]]`
    /// connections), re-read on `SIGHUP`.
    pub config: Option<PathBuf>,
    /// Run the mount process in the background and return once it is mounted.
    pub daemon: bool,
    /// Let other users than the one mounting use the view.
    pub allow_other: bool,
    /// Where staged changes are kept (default: the system's temporary directory).
    pub stage_dir: Option<PathBuf>,
}

/// Mounts the view and serves it until it is unmounted (or, with
/// [`MountOptions::daemon`], starts a background process that does and returns once it
/// is mounted). Prints one line to standard output when the mount is ready.
///
/// # Errors
/// [`MountError`]; nothing is mounted then.
pub fn mount(options: &MountOptions) -> Result<(), MountError> {
    if options.daemon {
        daemon::spawn_daemon(options)
    } else {
        run::serve(options)
    }
}

/// Unmounts the view at `mountpoint` after its mount process has committed everything;
/// returns what happened, for the user. A mount whose process died is detached.
///
/// # Errors
/// [`UmountError::Busy`] when files are open (unless `lazy`), and the others.
pub fn umount(mountpoint: &std::path::Path, lazy: bool) -> Result<String, UmountError> {
    umount::umount(mountpoint, lazy)
}
