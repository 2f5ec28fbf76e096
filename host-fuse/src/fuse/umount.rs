//! `nlxtp umount`: asks the mount process to commit and unmount; detaches a mount whose
//! process died, or one whose process does not answer.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::control::{self, AskError, Reply, Request};
use super::mountinfo::{is_stale, is_view, mounted, normalize, unmount_now, users_of};
use super::UmountError;

/// How long `nlxtp umount` waits for the mount process's answer (commits take time).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Asks the mount process of `mountpoint` to unmount; cleans a stale mount itself.
pub(crate) fn umount(mountpoint: &Path, lazy: bool) -> Result<String, UmountError> {
    let normalized = normalize(mountpoint).map_err(|_| UmountError::NotMounted {
        path: mountpoint.to_owned(),
    })?;
    let socket = control::socket_path(&normalized);
    match UnixStream::connect(&socket) {
        Ok(stream) => ask_to_unmount(&stream, &normalized, &socket, lazy),
        Err(_) => unmount_without_process(&normalized, &socket, lazy),
    }
}

/// The mount process answers on `socket`: it commits and unmounts, or says why not.
fn ask_to_unmount(
    stream: &UnixStream,
    mountpoint: &Path,
    socket: &Path,
    lazy: bool,
) -> Result<String, UmountError> {
    let reply =
        control::ask(stream, &Request::Umount { lazy }, ANSWER_TIMEOUT).map_err(|e| match e {
            AskError::Io(source) => UmountError::Io {
                action: "talk to the mount process of",
                path: mountpoint.to_owned(),
                source,
            },
            AskError::BadAnswer(source) => UmountError::BadAnswer {
                path: mountpoint.to_owned(),
                source,
            },
        })?;
    let message = match reply {
        None if mounted(mountpoint).is_none() => {
            let _ = std::fs::remove_file(socket);
            return Ok(format!(
                "{} is unmounted (its mount process ended before it answered)",
                mountpoint.display()
            ));
        }
        None => {
            return Err(UmountError::Failed {
                path: mountpoint.to_owned(),
                details: "the mount process ended without an answer".into(),
            })
        }
        Some(Reply::Unmounted { message } | Reply::Detached { message }) => message,
        Some(Reply::AlreadyUnmounting) => "already unmounting".to_owned(),
        Some(Reply::Busy { message }) => {
            return Err(UmountError::Busy {
                path: mountpoint.to_owned(),
                details: message,
            })
        }
        Some(Reply::Failed { message }) => {
            return Err(UmountError::Failed {
                path: mountpoint.to_owned(),
                details: message,
            })
        }
        Some(other) => {
            return Err(UmountError::Failed {
                path: mountpoint.to_owned(),
                details: format!("the mount process answered {other:?} to an unmount"),
            })
        }
    };
    // The session ends at once after a plain unmount; wait for the socket to go.
    let start = Instant::now();
    while !lazy && socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(message)
}

/// Nobody answers on `socket`: a stale mount is detached, a live view unmounted (its
/// process commits when it sees it), anything else left alone.
fn unmount_without_process(
    mountpoint: &Path,
    socket: &Path,
    lazy: bool,
) -> Result<String, UmountError> {
    let Some((fstype, source)) = mounted(mountpoint) else {
        let _ = std::fs::remove_file(socket);
        return Err(UmountError::NotMounted {
            path: mountpoint.to_owned(),
        });
    };
    let not_ours = |fstype| UmountError::NotOurs {
        path: mountpoint.to_owned(),
        fstype,
    };
    if !fstype.starts_with("fuse") {
        return Err(not_ours(fstype));
    }
    if is_stale(mountpoint) {
        unmount_now(mountpoint, true).map_err(|e| UmountError::Io {
            action: "detach",
            path: mountpoint.to_owned(),
            source: e.into(),
        })?;
        let _ = std::fs::remove_file(socket);
        return Ok(format!(
            "cleaned up the stale mount at {}: its mount process had died (killed?), so changes it had not committed are lost; every image holds its last committed content, old or new, never a mix",
            mountpoint.display()
        ));
    }
    if !is_view(&fstype, &source) {
        return Err(not_ours(fstype));
    }
    // A live nlxtp mount without its socket: unmount; the process commits when it sees it.
    match unmount_now(mountpoint, lazy) {
        Ok(()) => Ok(format!(
            "unmounted {} (its mount process did not answer on {}; it commits what is pending as it ends)",
            mountpoint.display(),
            socket.display()
        )),
        Err(Errno::EBUSY) => Err(UmountError::Busy {
            details: format!("in use:\n  {}", users_of(mountpoint).join("\n  ")),
            path: mountpoint.to_owned(),
        }),
        Err(e) => Err(UmountError::Io {
            action: "unmount",
            path: mountpoint.to_owned(),
            source: e.into(),
        }),
    }
}
