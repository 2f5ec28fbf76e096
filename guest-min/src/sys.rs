//! Everything that needs `unsafe`: process arguments and environment from the C runtime,
//! fork/exec, signal masks, and the standard file descriptors. The rest of the guest is
//! safe code on top of `rustix`.

use core::ffi::{c_char, c_int, CStr};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::Pid;

/// The process's arguments or environment: a NULL-terminated array of C strings that
/// the C runtime hands to `main` and that lives as long as the process.
#[derive(Clone, Copy)]
pub struct CStrList(*const *const c_char);

impl CStrList {
    /// # Safety
    /// `list` must be NULL or point to a NULL-terminated array of pointers to
    /// NUL-terminated strings that stay valid and unchanged for the rest of the process
    /// (what the C runtime passes to `main`).
    pub unsafe fn new(list: *const *const c_char) -> Self {
        CStrList(list)
    }

    /// The strings, in order.
    pub fn iter(self) -> impl Iterator<Item = &'static CStr> + Clone {
        let mut at = 0usize;
        core::iter::from_fn(move || {
            if self.0.is_null() {
                return None;
            }
            // SAFETY: `new`'s contract: the array is NULL-terminated and we stop at NULL.
            let ptr = unsafe { *self.0.add(at) };
            if ptr.is_null() {
                return None;
            }
            at += 1;
            // SAFETY: `new`'s contract: each entry is a NUL-terminated string that lives
            // for the rest of the process.
            Some(unsafe { CStr::from_ptr(ptr) })
        })
    }

    /// The value of environment variable `name`, if this is an environment list.
    pub fn var(self, name: &str) -> Option<&'static CStr> {
        self.iter().find_map(|entry| {
            let bytes = entry.to_bytes();
            (bytes.len() > name.len()
                && bytes.starts_with(name.as_bytes())
                && bytes[name.len()] == b'=')
                // `name=` is ASCII, so slicing after it keeps a valid C string.
                .then(|| {
                    CStr::from_bytes_with_nul(&entry.to_bytes_with_nul()[name.len() + 1..]).ok()
                })
                .flatten()
        })
    }
}

/// Standard input.
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 belongs to the process for its whole life; a closed fd 0 only makes
    // reads fail with EBADF.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Standard output.
pub fn stdout() -> BorrowedFd<'static> {
    // SAFETY: fd 1 belongs to the process for its whole life; a closed fd 1 only makes
    // writes fail with EBADF.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// Standard error.
pub fn stderr() -> BorrowedFd<'static> {
    // SAFETY: as for `stdout`, with fd 2.
    unsafe { BorrowedFd::borrow_raw(2) }
}

/// `path` made absolute (against the working directory) in `buf`; `path` itself if it
/// is absolute already, `None` if the result does not fit.
pub fn absolute<'a>(path: &'a CStr, buf: &'a mut [u8; PATH_MAX]) -> Option<&'a CStr> {
    if path.to_bytes().first() == Some(&b'/') {
        return Some(path);
    }
    // SAFETY: `buf` has the PATH_MAX bytes getcwd may write, NUL included.
    if unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) }.is_null() {
        return None;
    }
    let cwd = CStr::from_bytes_until_nul(buf).ok()?.to_bytes().len();
    let rel = path.to_bytes_with_nul();
    let end = cwd + 1 + rel.len();
    if end > buf.len() {
        return None;
    }
    buf[cwd] = b'/';
    buf[cwd + 1..end].copy_from_slice(rel);
    CStr::from_bytes_with_nul(&buf[..end]).ok()
}

/// The longest path the kernel takes, with its NUL.
pub const PATH_MAX: usize = 4096;

/// Writes everything, retrying short writes and EINTR.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A line of text built on the stack, written with one `write` so that lines from the
/// daemon and the monitor do not interleave.
pub struct Line(pub heapless::String<1024>);

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line(heapless::String::new())
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Overlong log lines are cut, never an error.
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// How important a log line is; under the journal, its syslog priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed (`LOG_ERR`).
    Error = 3,
    /// Something a person may want to look at (`LOG_WARNING`).
    Warning = 4,
    /// What happened (`LOG_INFO`).
    Info = 6,
}

/// Whether standard error is the systemd journal (set once, by [`log_to_journal_if_there`]).
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Switches log lines to the journal's form when standard error is the journal: systemd
/// names the stream's device and inode in `JOURNAL_STREAM` (a script's standard error is
/// a pipe, so a program it starts keeps the plain form).
pub fn log_to_journal_if_there(env: CStrList) {
    let Some(stream) = env.var("JOURNAL_STREAM").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return;
    };
    let Ok(stat) = rustix::fs::fstat(stderr()) else {
        return;
    };
    if dev.parse::<u64>() == Ok(stat.st_dev) && ino.parse::<u64>() == Ok(stat.st_ino) {
        JOURNAL.store(true, Ordering::Relaxed);
    }
}

/// Writes one log line to standard error: `nlxtp-guest: TEXT`, or under the journal,
/// which names the program itself, `<PRIORITY>TEXT`.
pub fn log_line(level: Level, args: fmt::Arguments<'_>) {
    use fmt::Write as _;
    let mut line = Line::new();
    let _ = if JOURNAL.load(Ordering::Relaxed) {
        writeln!(line, "<{}>{args}", level as u8)
    } else {
        writeln!(line, "nlxtp-guest: {args}")
    };
    // A cut line still ends its line.
    if !line.0.ends_with('\n') {
        line.0.pop();
        let _ = line.0.push('\n');
    }
    let _ = write_all(stderr(), line.0.as_bytes());
}

/// Logs one line to standard error (see [`log_line`]): `log!("...")` for what happened,
/// `log!(warning: "...")` and `log!(error: "...")` for the rest.
#[macro_export]
macro_rules! log {
    (error: $($arg:tt)*) => {
        $crate::sys::log_line($crate::sys::Level::Error, format_args!($($arg)*))
    };
    (warning: $($arg:tt)*) => {
        $crate::sys::log_line($crate::sys::Level::Warning, format_args!($($arg)*))
    };
    ($($arg:tt)*) => {
        $crate::sys::log_line($crate::sys::Level::Info, format_args!($($arg)*))
    };
}

/// Standard output through a small buffer that is written out whenever it fills: unlike
/// a log [`Line`], output of any length is printed whole (the usage text, a long custom
/// status).
pub struct Out(heapless::Vec<u8, 1024>);

impl Out {
    /// An empty buffer.
    pub const fn new() -> Self {
        Out(heapless::Vec::new())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        let _ = write_all(stdout(), &self.0);
        self.0.clear();
    }
}

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.0.len() + s.len() > self.0.capacity() {
            self.flush();
        }
        if self.0.extend_from_slice(s.as_bytes()).is_err() {
            let _ = write_all(stdout(), s.as_bytes());
        }
        Ok(())
    }
}

/// Prints to standard output (no prefix), whole.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut out = $crate::sys::Out::new();
        let _ = write!(out, $($arg)*);
        out.flush();
    }};
}

/// Forks. `Ok(None)` in the child.
///
/// The guest is single-threaded, so the child may run any code; it still keeps to
/// raw system calls before `exec` so that it stays correct if that ever changes.
pub fn fork() -> Result<Option<Pid>, Errno> {
    // SAFETY: no threads exist in this process, so the child inherits consistent state.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::from_raw_os_error(errno())),
        0 => Ok(None),
        pid => Ok(Pid::from_raw(pid)),
    }
}

fn errno() -> c_int {
    // SAFETY: reading the calling thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

/// Ends the process at once, without running any exit handlers (for a forked child).
pub fn exit_now(code: c_int) -> ! {
    // SAFETY: `_exit` has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Replaces the process image; returns only on failure.
pub fn execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
    debug_assert!(
        argv.last().is_some_and(|p| p.is_null()) && envp.last().is_some_and(|p| p.is_null())
    );
    // SAFETY: `path` is NUL-terminated; both arrays are NULL-terminated (checked above
    // in debug builds, guaranteed by `EnvBlock`/callers) and point to NUL-terminated
    // strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::from_raw_os_error(errno())
}

/// The signals the monitor turns into events instead of dying of them.
const HANDLED: [c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP and returns a non-blocking signalfd that reports
/// them: the daemon hands them to its monitor, the monitor records the stop before it
/// stops the script.
pub fn signalfd_for_termination() -> Result<OwnedFd, Errno> {
    let set = handled_set();
    // SAFETY: `set` is initialised; blocking signals has no memory effects.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) } != 0 {
        return Err(Errno::from_raw_os_error(errno()));
    }
    // SAFETY: -1 asks for a new fd; `set` is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::from_raw_os_error(errno()));
    }
    // SAFETY: `fd` was just returned by signalfd and is owned by nobody else.
    Ok(unsafe { <OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The number of the next signal waiting in `signalfd` (from [`signalfd_for_termination`]),
/// if one is.
pub fn take_signal(signalfd: BorrowedFd<'_>) -> Option<i32> {
    // struct signalfd_siginfo: 128 bytes, ssi_signo (u32) first.
    let mut info = [0u8; 128];
    match rustix::io::read(signalfd, &mut info) {
        Ok(128) => Some(u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32),
        _ => None,
    }
}

/// In a forked child before `exec`: unblock every signal and give SIGPIPE its default
/// action back, so the script starts with the dispositions a shell expects.
pub fn reset_signals_for_exec() {
    // SAFETY: only signal-mask and disposition changes, valid in a forked child.
    unsafe {
        let mut empty: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, core::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ignores SIGPIPE: the monitor must outlive a reader that went away.
pub fn ignore_sigpipe() {
    // SAFETY: setting a disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}
