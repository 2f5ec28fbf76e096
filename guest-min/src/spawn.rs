//! Starting the start script: its environment, its file descriptors, fork and exec.

use core::ffi::{c_char, CStr};

use nlxtp_core::layout::{self, env};
use nlxtp_core::RunId;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::Pid;

use crate::shebang::Command;
use crate::sys::{self, CStrList};

/// Protocol version a script sees in `archive_version`.
const ARCHIVE_VERSION: &str = "1";

/// PATH for scripts started without one (a bare init has none).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const ENV_BYTES: usize = 32 * 1024;
const ENV_ENTRIES: usize = 256;

/// A NULL-terminated environment block built without allocation.
struct EnvBlock {
    bytes: heapless::Vec<u8, ENV_BYTES>,
    starts: heapless::Vec<usize, ENV_ENTRIES>,
}

impl EnvBlock {
    fn new() -> Self {
        EnvBlock {
            bytes: heapless::Vec::new(),
            starts: heapless::Vec::new(),
        }
    }

    /// Adds `parts` concatenated as one entry. An entry that does not fit is dropped
    /// whole (the inherited environment is best effort; ours comes first).
    fn push(&mut self, parts: &[&[u8]]) -> bool {
        let start = self.bytes.len();
        let fits = parts.iter().map(|p| p.len()).sum::<usize>() < ENV_BYTES - start
            && !self.starts.is_full();
        if !fits || parts.iter().any(|p| p.contains(&0)) {
            return false;
        }
        for part in parts {
            let _ = self.bytes.extend_from_slice(part);
        }
        let _ = self.bytes.push(0);
        let _ = self.starts.push(start);
        true
    }

    fn pointers(&self) -> heapless::Vec<*const c_char, { ENV_ENTRIES + 1 }> {
        let mut out = heapless::Vec::new();
        for &start in &self.starts {
            let _ = out.push(self.bytes[start..].as_ptr().cast());
        }
        let _ = out.push(core::ptr::null());
        out
    }
}

/// The pipes between the monitor and a started script.
pub struct Started {
    /// The script's pid, also its process group.
    pub pid: Pid,
    /// Read end of the script's standard output.
    pub stdout: OwnedFd,
    /// Read end of the script's standard error.
    pub stderr: OwnedFd,
}

/// Why the script did not start.
#[derive(Debug, Clone, Copy)]
pub enum StartError {
    /// The interpreter could not be executed (`execve`'s errno).
    Exec(Errno),
    /// The monitor could not set the process up (pipes, fork, descriptors).
    System(Errno),
}

/// Runs `command` (the script's interpreter, see [`crate::shebang`]) in the shared area,
/// in a new process group, with standard input empty and standard output and error
/// into pipes.
pub fn start_script(
    area_dir: rustix::fd::BorrowedFd<'_>,
    area_path: &CStr,
    run_id: RunId,
    command: &Command,
    inherited: CStrList,
) -> Result<Started, StartError> {
    let envb = script_env(area_path, run_id, inherited);
    let envp = envb.pointers();
    let argv = command.argv();
    fork_exec(area_dir, command.interpreter(), &argv, &envp)
}

fn fork_exec(
    area_dir: rustix::fd::BorrowedFd<'_>,
    path: &CStr,
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> Result<Started, StartError> {
    debug_assert_eq!(
        layout::START_SCRIPT,
        "auto_exec.sh",
        "shebang::SCRIPT spells the start script's name"
    );

    let pipe = || pipe_with(PipeFlags::CLOEXEC).map_err(StartError::System);
    let (stdin_r, stdin_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;

    match sys::fork().map_err(StartError::System)? {
        None => {
            // The child: only raw system calls from here to exec.
            sys::reset_signals_for_exec();
            let failed = (|| -> Result<Errno, Errno> {
                rustix::process::setpgid(None, None)?;
                rustix::process::fchdir(area_dir)?;
                rustix::stdio::dup2_stdin(&stdin_r)?;
                rustix::stdio::dup2_stdout(&out_w)?;
                rustix::stdio::dup2_stderr(&err_w)?;
                Ok(sys::execve(path, argv, envp))
            })();
            let (stage, errno) = match failed {
                Ok(errno) => (1u8, errno),
                Err(errno) => (0u8, errno),
            };
            let mut report = [stage, 0, 0, 0, 0];
            report[1..].copy_from_slice(&errno.raw_os_error().to_le_bytes());
            let _ = rustix::io::write(&exec_w, &report);
            sys::exit_now(127);
        }
        Some(pid) => {
            drop((stdin_r, stdin_w, out_w, err_w, exec_w));
            // EOF means exec succeeded (the CLOEXEC write end closed); 5 bytes are the
            // failed step (1: execve itself) and its errno.
            let mut report = [0u8; 5];
            let n = crate::area::read_fd(exec_r.as_fd(), &mut report).unwrap_or(0);
            if n == 5 {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
                let errno = Errno::from_raw_os_error(errno);
                return Err(match report[0] {
                    1 => StartError::Exec(errno),
                    _ => StartError::System(errno),
                });
            }
            for fd in [&out_r, &err_r] {
                let _ = rustix::io::ioctl_fionbio(fd, true);
            }
            Ok(Started {
                pid,
                stdout: out_r,
                stderr: err_r,
            })
        }
    }
}

/// The script's environment: the protocol's variables first, a PATH if the daemon had
/// none, then the daemon's own environment without the protocol's names.
fn script_env(area_path: &CStr, run_id: RunId, inherited: CStrList) -> EnvBlock {
    let mut run_hex = heapless::String::<32>::new();
    let _ = core::fmt::write(&mut run_hex, format_args!("{run_id}"));
    let custom = crate::area::custom_file_path(area_path).unwrap_or_default();
    let area = area_path.to_bytes();

    let ours: [(&str, &[u8]); 5] = [
        (env::ARCHIVE_DIR, area),
        (env::NLXTP_DIR, area),
        (env::ARCHIVE_VERSION, ARCHIVE_VERSION.as_bytes()),
        (env::RUN_ID, run_hex.as_bytes()),
        (env::CUSTOM_FILE, custom.strip_suffix(&[0]).unwrap_or(&[])),
    ];
    let mut envb = EnvBlock::new();
    for (name, value) in ours {
        envb.push(&[name.as_bytes(), b"=", value]);
    }
    if inherited.var("PATH").is_none() {
        envb.push(&[b"PATH=", DEFAULT_PATH.as_bytes()]);
    }
    for entry in inherited.iter() {
        let bytes = entry.to_bytes();
        let key = bytes.split(|&b| b == b'=').next().unwrap_or(bytes);
        if !ours.iter().any(|(name, _)| name.as_bytes() == key) {
            envb.push(&[bytes]);
        }
    }
    envb
}
