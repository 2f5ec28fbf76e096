//! The control protocol between `nlxtp umount` and a mount process, over a unix socket
//! per mount point: one [`Request`] as a line of JSON, answered by one [`Reply`] as a
//! line of JSON, then the mount process closes the connection. Both ends are this crate.
//!
//! ```text
//! {"request":"umount","lazy":false}
//! {"reply":"busy","message":"files are open:\n  /mnt/vms/web/a.txt (pid 7 by cat)"}
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::chain;
use super::MountError;

/// What `nlxtp umount` (or another client) asks a mount process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Commit everything and unmount; `lazy`: detach even with files open.
    Umount {
        /// Detach at once and commit what open files write as they are closed.
        lazy: bool,
    },
    /// Re-read the config file (as `SIGHUP`).
    Reload,
    /// Say the mount process's id.
    Ping,
}

/// A mount process's answer. Each message is for the user, as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Everything is committed and the view is unmounted; the process ends now.
    Unmounted {
        /// What happened.
        message: String,
    },
    /// Detached with files open; the process ends when the last one is closed.
    Detached {
        /// What happened.
        message: String,
    },
    /// An earlier request or signal is unmounting already.
    AlreadyUnmounting,
    /// Files are open or the mount is in use: nothing changed.
    Busy {
        /// What is open or in use.
        message: String,
    },
    /// It could not be done: nothing changed.
    Failed {
        /// Why.
        message: String,
    },
    /// The VM list was re-read.
    Reloaded {
        /// What changed.
        report: String,
    },
    /// The answer to [`Request::Ping`].
    Pid {
        /// The mount process's id.
        pid: u32,
    },
}

/// The directory of the control sockets.
fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NLXTP_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/nlxtp");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("nlxtp"),
        None => PathBuf::from(format!("/tmp/nlxtp-{uid}")),
    }
}

/// The control socket of the mount at `mountpoint` (normalized).
pub(crate) fn socket_path(mountpoint: &Path) -> PathBuf {
    let hash = crate::stable_hash::of_path(mountpoint);
    runtime_dir().join(format!("mount-{hash:016x}.sock"))
}

/// Binds the control socket, unless a live mount process answers on it.
pub(crate) fn bind(path: &Path, mountpoint: &Path) -> Result<UnixListener, MountError> {
    let err = |source| MountError::Control {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(MountError::AlreadyMounted {
            path: mountpoint.to_owned(),
        });
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(err)
}

/// Answers each connection's request with `answer` until `answer` gives none (the mount
/// process is ending). A request that is not one of [`Request`] gets [`Reply::Failed`].
pub(crate) fn serve(listener: &UnixListener, answer: impl Fn(Request) -> Option<Reply>) {
    for stream in listener.incoming().flatten() {
        let mut line = String::new();
        if let Err(e) = BufReader::new(&stream).read_line(&mut line) {
            tracing::warn!("unreadable control request: {e}");
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let Some(reply) = answer(request.clone()) else {
                    break;
                };
                tracing::debug!("control request {request:?}: {reply:?}");
                reply
            }
            Err(e) => Reply::Failed {
                message: format!("unknown request {:?}: {}", line.trim(), chain(&e)),
            },
        };
        let _ = write_line(&stream, &reply);
    }
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    /// The socket failed (or the answer did not come in time).
    #[error("the control socket failed")]
    Io(#[source] io::Error),
    /// The answer is not a [`Reply`].
    #[error("the answer is not a reply of the control protocol")]
    BadAnswer(#[source] serde_json::Error),
}

/// Sends `request` on `stream` and reads the answer, waiting up to `timeout`: `None`
/// when the mount process closed the connection without one.
///
/// # Errors
/// [`AskError`].
pub(crate) fn ask(
    mut stream: &UnixStream,
    request: &Request,
    timeout: Duration,
) -> Result<Option<Reply>, AskError> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(AskError::Io)?;
    write_line(stream, request).map_err(AskError::Io)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(AskError::Io)?;
    if answer.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(AskError::BadAnswer)
}

/// `value` as one line of JSON.
fn write_line(mut stream: &UnixStream, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::from)?;
    line.push(b'\n');
    stream.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_stable_and_distinct() {
        let a = socket_path(Path::new("/mnt/a"));
        assert_eq!(a, socket_path(Path::new("/mnt/a")));
        assert_ne!(a, socket_path(Path::new("/mnt/b")));
        assert!(a.as_os_str().len() < 100, "fits sun_path");
    }

    #[test]
    fn messages_are_one_json_line_each() {
        let request = Request::Umount { lazy: true };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"request":"umount","lazy":true}"#);
        let reply = Reply::Busy {
            message: "files are open:\n  a".into(),
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(text, r#"{"reply":"busy","message":"files are open:\n  a"}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
    }

    #[test]
    fn a_request_is_answered_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = bind(&path, dir.path()).unwrap();
        let server = std::thread::spawn(move || {
            serve(&listener, |request| match request {
                Request::Ping => Some(Reply::Pid { pid: 7 }),
                _ => None,
            });
        });
        let timeout = Duration::from_secs(10);
        let ask_new = |request| ask(&UnixStream::connect(&path).unwrap(), &request, timeout);
        assert_eq!(ask_new(Request::Ping).unwrap(), Some(Reply::Pid { pid: 7 }));
        let stream = UnixStream::connect(&path).unwrap();
        (&stream).write_all(b"\"dance\"\n").unwrap();
        let mut answer = String::new();
        (&stream).read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with(r#"{"reply":"failed","message":"unknown request"#));
        assert_eq!(ask_new(Request::Reload).unwrap(), None, "the server ends");
        server.join().unwrap();
    }
}
