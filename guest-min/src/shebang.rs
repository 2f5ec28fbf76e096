//! Which program runs the start script: the interpreter its `#!` line names, read by the
//! guest itself (a vFAT disk has no exec bit), with the rules of the Linux kernel.
//!
//! - The first line starts with `#!`: after optional blanks (spaces, tabs) comes the
//!   interpreter's path, up to the next blank or the end of the line; the rest of the
//!   line, without leading and trailing blanks, is **one** optional argument (blanks
//!   inside it are kept: `#!/usr/bin/env -S a b` gives env the single argument `-S a b`).
//!   The script runs as `INTERPRETER [ARGUMENT] auto_exec.sh`.
//! - No `#!` line, or `#!` with nothing after it: `/bin/sh auto_exec.sh`.
//! - An interpreter that cannot be started (missing, not executable) is a start failure
//!   recorded with its errno and explained in the captured standard error: never a silent
//!   fall back to `/bin/sh`.
//! - A `#!` line that ends in a carriage return (a script saved with Windows line
//!   endings) is refused with an explanation: the kernel would look for an interpreter
//!   called `/bin/sh\r`, and the rest of such a script breaks in any shell.
//! - Only the first 256 bytes are read (the kernel's limit): a longer `#!` line is
//!   refused.

use core::ffi::{c_char, CStr};
use core::fmt;

use rustix::fd::BorrowedFd;
use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;

/// The most bytes of the script the guest looks at for the `#!` line (Linux's
/// `BINPRM_BUF_SIZE`).
const LINE_MAX: usize = 256;

/// The script's name as the interpreter gets it (relative to its working directory, the
/// shared area); the same as `nlxtp_core::layout::START_SCRIPT`.
const SCRIPT: &CStr = c"auto_exec.sh";

/// How to run the start script: the interpreter, its optional argument, then the script.
pub struct Command {
    /// `interpreter NUL [argument NUL]`.
    bytes: heapless::Vec<u8, { LINE_MAX + 2 }>,
    /// Where the argument starts in `bytes`, if there is one.
    arg_at: Option<usize>,
    /// Whether the interpreter came from a `#!` line.
    from_line: bool,
}

/// Why the `#!` line cannot be used; the script is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineProblem {
    /// The script could not be opened or read.
    Unreadable(Errno),
    /// The line ends in a carriage return.
    WindowsLineEndings,
    /// No end of line in the first [`LINE_MAX`] bytes.
    TooLong,
    /// A NUL byte in the line.
    Nul,
}

impl LineProblem {
    /// The errno the run is recorded with: what the kernel would have said.
    pub fn errno(self) -> Errno {
        match self {
            LineProblem::Unreadable(e) => e,
            LineProblem::WindowsLineEndings => Errno::NOENT,
            LineProblem::TooLong | LineProblem::Nul => Errno::NOEXEC,
        }
    }
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::Unreadable(e) => write!(
                f,
                "cannot read auto_exec.sh to find its interpreter (errno {}); the script did not run",
                e.raw_os_error()
            ),
            LineProblem::WindowsLineEndings => f.write_str(
                "auto_exec.sh has Windows line endings (CR LF): its #! line names an interpreter \
                 whose name ends in a carriage return; convert the file to Unix line endings \
                 (dos2unix auto_exec.sh) and upload it again; the script did not run",
            ),
            LineProblem::TooLong => write!(
                f,
                "the #! line of auto_exec.sh is longer than {} bytes; the script did not run",
                LINE_MAX - 1
            ),
            LineProblem::Nul => {
                f.write_str("the #! line of auto_exec.sh holds a NUL byte; the script did not run")
            }
        }
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_blanks(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_blank(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_blank(*last) {
            break;
        }
        s = rest;
    }
    s
}

impl Command {
    /// `/bin/sh auto_exec.sh`: for a script without a `#!` line.
    fn shell() -> Command {
        let mut bytes = heapless::Vec::new();
        let _ = bytes.extend_from_slice(b"/bin/sh\0");
        Command {
            bytes,
            arg_at: None,
            from_line: false,
        }
    }

    /// Reads the start script's first line in the shared area `dir`.
    pub fn read(dir: BorrowedFd<'_>) -> Result<Command, LineProblem> {
        let fd = fs::openat(
            dir,
            SCRIPT,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(LineProblem::Unreadable)?;
        let mut head = [0u8; LINE_MAX + 1];
        let n = crate::area::read_fd(rustix::fd::AsFd::as_fd(&fd), &mut head)
            .map_err(LineProblem::Unreadable)?;
        Command::parse(&head[..n])
    }

    /// The command for a script that starts with `head` (at most `LINE_MAX + 1` bytes).
    fn parse(head: &[u8]) -> Result<Command, LineProblem> {
        let Some(after) = head.strip_prefix(b"#!") else {
            return Ok(Command::shell());
        };
        let end = match head.iter().position(|&b| b == b'\n') {
            Some(at) => at,
            None if head.len() > LINE_MAX => return Err(LineProblem::TooLong),
            None => head.len(),
        };
        if end >= LINE_MAX {
            return Err(LineProblem::TooLong);
        }
        let line = trim_blanks(&after[..end - 2]);
        if line.contains(&0) {
            return Err(LineProblem::Nul);
        }
        if line.ends_with(b"\r") {
            return Err(LineProblem::WindowsLineEndings);
        }
        let path_len = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
        if path_len == 0 {
            // `#!` and nothing: the kernel refuses it, and a shell then runs the file itself.
            return Ok(Command::shell());
        }
        let (path, rest) = line.split_at(path_len);
        let arg = trim_blanks(rest);
        let mut bytes = heapless::Vec::new();
        // Both fit: together they are shorter than the line.
        let _ = bytes.extend_from_slice(path);
        let _ = bytes.push(0);
        let arg_at = (!arg.is_empty()).then(|| {
            let at = bytes.len();
            let _ = bytes.extend_from_slice(arg);
            let _ = bytes.push(0);
            at
        });
        Ok(Command {
            bytes,
            arg_at,
            from_line: true,
        })
    }

    /// The interpreter's path, as the `#!` line spells it.
    pub fn interpreter(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or(c"/bin/sh")
    }

    fn arg(&self) -> Option<&CStr> {
        CStr::from_bytes_until_nul(&self.bytes[self.arg_at?..]).ok()
    }

    /// The argument vector for `execve` (valid while `self` lives): interpreter, the
    /// optional argument, the script, NULL.
    pub fn argv(&self) -> heapless::Vec<*const c_char, 4> {
        let mut argv = heapless::Vec::new();
        let _ = argv.push(if self.from_line {
            self.interpreter().as_ptr()
        } else {
            c"sh".as_ptr()
        });
        if let Some(arg) = self.arg() {
            let _ = argv.push(arg.as_ptr());
        }
        let _ = argv.push(SCRIPT.as_ptr());
        let _ = argv.push(core::ptr::null());
        argv
    }

    /// Explains why the interpreter could not be started (`errno` from `execve`).
    pub fn exec_failure(&self, errno: Errno) -> ExecFailure<'_> {
        ExecFailure {
            command: self,
            errno,
        }
    }
}

/// The message for an interpreter that `execve` refused.
pub struct ExecFailure<'a> {
    command: &'a Command,
    errno: Errno,
}

impl fmt::Display for ExecFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interpreter = self.command.interpreter().to_str().unwrap_or("(not UTF-8)");
        let source = if self.command.from_line {
            "named by the #! line of auto_exec.sh"
        } else {
            "for auto_exec.sh, which has no #! line,"
        };
        let why = match self.errno {
            Errno::NOENT => "does not exist in this guest (install it, or change the #! line)",
            Errno::ACCESS => "is not executable here (permission denied)",
            Errno::NOEXEC => "is not a program this guest can run",
            _ => "could not be started",
        };
        write!(
            f,
            "the interpreter {interpreter} {source} {why} (errno {}); the script did not run",
            self.errno.raw_os_error()
        )
    }
}
