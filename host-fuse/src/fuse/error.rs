//! The errors of the FUSE front end: why `nlxtp mount` or `nlxtp umount` failed, why a
//! list of VMs cannot be used, why a commit failed. Each says what happened and what to
//! do in one sentence; the cause is its [`source`](std::error::Error::source).

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::area::AreaError;

/// Why a list of VMs (`--vm` arguments, the config file) cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A `--vm` argument is not `NAME=TARGET`.
    #[error("{arg:?} is not NAME=TARGET: write --vm web1=/path/to/web1.img")]
    BadVmArg {
        /// The argument.
        arg: String,
    },
    /// A VM name cannot be a directory of the view.
    #[error("the VM name {name:?} cannot be used because {reason}: choose another name")]
    BadName {
        /// The name.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// Two VMs have the same name.
    #[error("the VM name {name:?} is given twice ({} and {}): give each VM its own name; the domains of a libvirt connection are named by their domain names, so list that connection in the config file with a prefix ([[libvirt]] uri = \"URI\" prefix = \"host7-\") or name its domains one by one in [vms] (NAME = {{ libvirt = \"URI\", domain = \"DOMAIN\" }})", first.display(), second.display())]
    DuplicateName {
        /// The name.
        name: String,
        /// Where the first VM of that name is.
        first: PathBuf,
        /// Where the second is.
        second: PathBuf,
    },
    /// A libvirt connection's domains could not be listed.
    #[error("cannot list the domains of the libvirt connection {uri}: check the URI and that libvirtd runs there")]
    Libvirt {
        /// The connection's URI.
        uri: String,
        /// Why.
        #[source]
        source: AreaError,
    },
    /// A VM is a libvirt domain, and this build has no libvirt.
    #[error("{what}, but {}", super::config::NO_LIBVIRT)]
    NoLibvirt {
        /// Which VM or connection.
        what: String,
    },
    /// The config file cannot be read.
    #[error("cannot read the config file {}: check its path and permissions", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The config file is not a list of VMs; the cause says where (line and column).
    #[error("cannot use the config file {}: fix it; it holds a [vms] table of NAME = \"TARGET\" lines (and [[libvirt]] tables)", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        #[source]
        source: toml::de::Error,
    },
}

/// Why `nlxtp mount` failed. Nothing is mounted then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The VMs to show cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A VM's shared area cannot be opened.
    #[error("cannot open the shared area of VM {name}: fix its TARGET (a disk image or a container directory)")]
    Target {
        /// The VM.
        name: String,
        /// Why.
        #[source]
        source: AreaError,
    },
    /// The mount point cannot be used.
    #[error("cannot mount on {}: give an existing, empty directory", path.display())]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The mount point is not a directory.
    #[error("cannot mount on {} (it is not a directory): give an existing, empty directory", path.display())]
    NotADirectory {
        /// The mount point.
        path: PathBuf,
    },
    /// The mount point is a mount whose process died.
    #[error("{} is a stale mount (its mount process died): run nlxtp umount {} first", path.display(), path.display())]
    Stale {
        /// The mount point.
        path: PathBuf,
    },
    /// A mount process already serves this mount point.
    #[error("{} is already an nlxtp mount: unmount it first (nlxtp umount {})", path.display(), path.display())]
    AlreadyMounted {
        /// The mount point.
        path: PathBuf,
    },
    /// The FUSE mount itself failed.
    #[error("mounting the view on {} failed: check that /dev/fuse and fusermount3 exist (apt-get install fuse3) and that you may mount there", path.display())]
    Fuse {
        /// The mount point.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The control socket (or a thread) could not be set up.
    #[error("cannot set up the control socket {}: check that its directory is writable (or set NLXTP_RUNTIME_DIR)", path.display())]
    Control {
        /// The socket.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The background mount process could not be started.
    #[error("the background mount did not start: run it without --daemon to see why")]
    DaemonSpawn {
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The background mount process ended before it mounted; the cause is what it said.
    #[error("the background mount did not start (the mount process {how} before mounting): run it without --daemon to see why")]
    DaemonEnded {
        /// How it ended (its exit status).
        how: String,
        /// Its messages.
        #[source]
        source: DaemonMessages,
    },
    /// The background mount process did not report a mount in time.
    #[error("the background mount did not start (the mount process did not report a mount within 60 s): run it without --daemon to see why")]
    DaemonTimeout,
}

/// What a background mount process wrote to its standard error before it ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonMessages(pub String);

/// Why `nlxtp umount` did not unmount.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UmountError {
    /// Nothing is mounted there.
    #[error("{} is not mounted: check the path", path.display())]
    NotMounted {
        /// The path.
        path: PathBuf,
    },
    /// Something else than the nlxtp view is mounted there.
    #[error("{} is a {fstype} mount, not an nlxtp view: unmount it with umount", path.display())]
    NotOurs {
        /// The path.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// Files are open (or in use) under the mount.
    #[error("{} is busy and stays mounted: close these (or pass --lazy to detach now and commit as they close): {details}", path.display())]
    Busy {
        /// The mount point.
        path: PathBuf,
        /// What is open, one per line.
        details: String,
    },
    /// The mount process could not commit or unmount.
    #[error("{} stays mounted: {details}", path.display())]
    Failed {
        /// The mount point.
        path: PathBuf,
        /// What went wrong, as the mount process said it.
        details: String,
    },
    /// The mount process's answer is not one of the control protocol.
    #[error("the mount process of {} gave an answer nlxtp umount does not understand: unmount with the nlxtp that mounted it", path.display())]
    BadAnswer {
        /// The mount point.
        path: PathBuf,
        /// Why it is not understood.
        #[source]
        source: serde_json::Error,
    },
    /// A system call failed.
    #[error("could not {action} {}: fix the cause below and retry", path.display())]
    Io {
        /// What was tried.
        action: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Why a commit of a VM's staged changes failed; they stay staged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// A run goes on in the container: the guest sees the area live.
    #[error("a run is going on in the container; write again when it has ended")]
    RunGoingOn,
    /// The tree to commit (a fresh manifest) could not be made.
    #[error(transparent)]
    Prepare(io::Error),
    /// The area refused the replacement.
    #[error(transparent)]
    Replace(AreaError),
}

impl CommitError {
    /// The errno the file operation that committed fails with.
    pub(crate) fn errno(&self) -> Errno {
        match self {
            CommitError::RunGoingOn => Errno::EBUSY,
            CommitError::Prepare(_) => Errno::EIO,
            CommitError::Replace(e) => errno(e),
        }
    }
}

/// Why a VM stays in the view after a reload dropped it from the list.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeptError {
    /// Files are open in it.
    #[error("files are open: {}", files.join(", "))]
    FilesOpen {
        /// `NAME/path` of each.
        files: Vec<String>,
    },
    /// Its pending changes could not be committed.
    #[error(transparent)]
    Commit(CommitError),
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

/// An error and its causes on one line, for logs, view.json and the control protocol's
/// answers (which cross a socket as text).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
