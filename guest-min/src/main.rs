//! `nlxtp-guest`: the program inside every nlxtp guest, a VM or a container.
//!
//! One static binary with four roles: the **daemon** (started at boot; finds the shared
//! area and starts each new upload exactly once), the **monitor** (a forked child of the
//! daemon that runs `auto_exec.sh` and keeps the status file), the **status helper**
//! (`archive_setstatus TEXT`) and the **hot-plug watcher** (runs the daemon once on each
//! shared disk attached to the running VM, then releases the disk). It is `no_std` on top of the C library's startup code and
//! raw system calls (`rustix`), so it stays small, allocates nothing, and runs in an
//! initramfs that has nothing but busybox. The protocol is `nlxtp-core`'s.
#![no_std]
#![no_main]

mod area;
mod capture;
mod clock;
mod custom;
mod daemon;
mod disk;
mod helper;
mod hotplug;
mod live;
mod monitor;
mod shebang;
mod spawn;
mod sys;
mod uevent;

use core::ffi::{c_char, c_int, CStr};

use nlxtp_core::{layout, BootId};

use crate::sys::CStrList;

const USAGE: &str = "\
nlxtp-guest: runs uploads in an nlxtp guest (no network: only a shared disk or directory)

Usage:
  nlxtp-guest daemon [--dir DIR | --label LABEL | --device DEV] [options]
      Find the shared area and run its auto_exec.sh once per upload, with the
      interpreter its #! line names (none: /bin/sh).
      --dir DIR          the shared area is this directory (container); keeps watching
      --label LABEL      the shared area is the FAT disk with this label (VM, default NLXTP),
                         mounted at --mount-point; handles one upload, then exits
      --device DEV       the same, for a given block device
      --mount-point DIR  where to mount the disk (default /mnt/nlXTP)
      --watch / --once   override the default (watch for --dir, once for a disk)
      --wait-device SECS how long to wait for the disk to appear (default 10)
      --heartbeat-ms N   heartbeat interval the monitor promises (default 2000)
      --output-cap BYTES cap on each captured output stream (default 16 MiB)
      --boot-id HEX      boot identity to use instead of the kernel's
  nlxtp-guest hotplug [--label LABEL] [--mount-dir DIR] [options]
      Keep running: for each FAT disk labelled LABEL (default NLXTP-HOT, never the
      boot disk's NLXTP) that is attached to the running VM, or already there at
      start, mount it at DIR/<device>-<diskseq> (default /run/nlxtp/hot), run its
      auto_exec.sh once as the daemon does, unmount it and write the release mark
      into its boot sector: the host may detach it then. Learns of disks from kernel
      uevents (no udev needed). A disk removed during its run: the run is stopped.
      SIGTERM stops every run, unmounts and releases, then exits.
      --heartbeat-ms N, --output-cap BYTES  as for the daemon
  nlxtp-guest status set TEXT... | -
      Set the run's custom status (from inside auto_exec.sh, or a program it starts):
      the words joined by spaces, or standard input for '-'; at most 64 KiB (65536
      bytes). Also installed as archive_setstatus and nlxtp-status.
  nlxtp-guest status show [DIR]
      Print the status record of the shared area DIR (default /mnt/nlXTP).
  nlxtp-guest stop [--timeout SECS] [PID]
      Stop the daemon PID (systemd's ExecStop passes $MAINPID) and wait until it has
      exited, at most SECS (default 25). It hands the SIGTERM to the monitor, which
      records the stop before it stops the script. No PID, or no such process: nothing
      to stop.
";

const EXIT_USAGE: c_int = 2;

// With std, the standard library links the C library; this binary has no std, and the
// `libc` crate links it itself only for glibc. Link musl's static libc for the guest.
#[cfg(target_env = "musl")]
#[link(name = "c", kind = "static", modifiers = "-bundle")]
extern "C" {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    crate::log!(error: "internal error (panic); aborting");
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// The precompiled `core` refers to the unwinder's personality routine even though this
/// binary aborts on panic and never unwinds; this stub satisfies the linker.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[no_mangle]
extern "C" fn main(_argc: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: the C runtime passes NULL-terminated argument and environment arrays that
    // live as long as the process.
    let (args, env) = unsafe { (CStrList::new(argv), CStrList::new(envp)) };
    sys::log_to_journal_if_there(env);
    let program = args
        .iter()
        .next()
        .and_then(|p| p.to_str().ok())
        .unwrap_or("nlxtp-guest");
    let program = program.rsplit('/').next().unwrap_or(program);
    match program {
        // Any number of arguments: `archive_setstatus $(cmd)` splits a long result into
        // many words.
        "archive_setstatus" | "nlxtp-status" => helper::set(program, args.iter().skip(1), env),
        _ => dispatch(args, env),
    }
}

fn dispatch(args: CStrList, env: CStrList) -> c_int {
    let words: heapless::Vec<&str, 3> = args
        .iter()
        .skip(1)
        .take(3)
        .filter_map(|a| a.to_str().ok())
        .collect();
    if let ["status", "set", ..] = words.as_slice() {
        return helper::set("nlxtp-guest status set", args.iter().skip(3), env);
    }
    let mut list: heapless::Vec<&'static CStr, 256> = heapless::Vec::new();
    if args.iter().skip(1).any(|arg| list.push(arg).is_err()) {
        return usage_error("too many arguments");
    }
    match words.as_slice() {
        ["daemon", ..] => daemon_command(&list[1..], env),
        ["hotplug", ..] => hotplug_command(&list[1..], env),
        ["status", "show", ..] => show(list.get(2).copied().unwrap_or(c"/mnt/nlXTP")),
        ["stop", ..] => stop_daemon(&list[1..]),
        ["help" | "--help" | "-h", ..] | [] => {
            out!("{USAGE}");
            if words.is_empty() {
                EXIT_USAGE
            } else {
                0
            }
        }
        ["--version" | "-V", ..] => {
            out!(
                "nlxtp-guest {} (protocol version {})\n",
                env!("CARGO_PKG_VERSION"),
                nlxtp_core::wire::VERSION
            );
            0
        }
        _ => usage_error("unknown command"),
    }
}

fn usage_error(what: &str) -> c_int {
    crate::log!(error: "{what}; see 'nlxtp-guest --help'");
    EXIT_USAGE
}

/// `nlxtp-guest daemon`'s options.
struct DaemonOptions {
    dir: Option<&'static CStr>,
    label: Option<&'static str>,
    device: Option<&'static str>,
    mount_point: &'static CStr,
    watch: Option<bool>,
    wait_device_s: u64,
    heartbeat_ms: u32,
    output_cap: u64,
    boot_id: Option<BootId>,
}

impl DaemonOptions {
    /// Reads the options; `None` if one is unknown, lacks its value or has a bad one.
    fn parse(args: &[&'static CStr]) -> Option<DaemonOptions> {
        let mut options = DaemonOptions {
            dir: None,
            label: None,
            device: None,
            mount_point: c"/mnt/nlXTP",
            watch: None,
            wait_device_s: 10,
            heartbeat_ms: 2_000,
            output_cap: 16 << 20,
            boot_id: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let flag = flag.to_str().unwrap_or("");
            let mut value = || it.next().copied();
            let ok = match flag {
                "--dir" => value().map(|v| options.dir = Some(v)).is_some(),
                "--label" => value()
                    .and_then(|v| v.to_str().ok())
                    .map(|v| options.label = Some(v))
                    .is_some(),
                "--device" => value()
                    .and_then(|v| v.to_str().ok())
                    .map(|v| options.device = Some(v))
                    .is_some(),
                "--mount-point" => value().map(|v| options.mount_point = v).is_some(),
                "--watch" => {
                    options.watch = Some(true);
                    true
                }
                "--once" => {
                    options.watch = Some(false);
                    true
                }
                "--wait-device" => number(value()).map(|v| options.wait_device_s = v).is_some(),
                "--heartbeat-ms" => number(value())
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|&v| v > 0)
                    .map(|v| options.heartbeat_ms = v)
                    .is_some(),
                "--output-cap" => number(value()).map(|v| options.output_cap = v).is_some(),
                "--boot-id" => value()
                    .and_then(|v| v.to_str().ok())
                    .and_then(BootId::from_hex)
                    .map(|v| options.boot_id = Some(v))
                    .is_some(),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        Some(options)
    }
}

fn daemon_command(args: &[&'static CStr], env: CStrList) -> c_int {
    let Some(options) = DaemonOptions::parse(args) else {
        return usage_error("bad or incomplete daemon option");
    };
    let area_path = match options.dir {
        Some(dir) => dir,
        None => match mount_disk(&options) {
            Some(mount_point) => mount_point,
            None => return 1,
        },
    };
    // Scripts get the area's path (archive_dir, NLXTP_CUSTOM_FILE) and use it from any
    // working directory: make it absolute.
    let mut absolute = [0u8; sys::PATH_MAX];
    let area_path = sys::absolute(area_path, &mut absolute).unwrap_or(area_path);
    let config = daemon::DaemonConfig {
        area_path,
        watch: options.watch.unwrap_or(options.dir.is_some()),
        heartbeat_ms: options.heartbeat_ms,
        output_cap: options.output_cap,
        boot_id: options.boot_id,
    };
    daemon::run(config, env)
}

/// `nlxtp-guest hotplug [--label LABEL] [--mount-dir DIR] [--heartbeat-ms N]
/// [--output-cap BYTES]`.
fn hotplug_command(args: &[&'static CStr], env: CStrList) -> c_int {
    let mut config = hotplug::HotplugConfig {
        label: layout::HOT_VOLUME_LABEL,
        mount_dir: layout::GUEST_HOT_MOUNT_DIR,
        heartbeat_ms: 2_000,
        output_cap: 16 << 20,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.to_str().ok());
        let ok = match flag.to_str().unwrap_or("") {
            // Eleven bytes at most on FAT; the boot disk's label would take it away
            // from the boot daemon.
            "--label" => value
                .filter(|v| !v.is_empty() && v.len() <= 11)
                .filter(|v| !v.eq_ignore_ascii_case(layout::DEFAULT_VOLUME_LABEL))
                .map(|v| config.label = v)
                .is_some(),
            "--mount-dir" => value
                .filter(|v| v.starts_with('/') && v.len() <= hotplug::MOUNT_DIR_MAX)
                .map(|v| config.mount_dir = v)
                .is_some(),
            "--heartbeat-ms" => value
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .map(|v| config.heartbeat_ms = v)
                .is_some(),
            "--output-cap" => value
                .and_then(|v| v.parse().ok())
                .map(|v| config.output_cap = v)
                .is_some(),
            _ => false,
        };
        if !ok {
            return usage_error(
                "bad or incomplete hotplug option (a label other than NLXTP, an absolute --mount-dir)",
            );
        }
    }
    hotplug::run(config, env)
}

/// Waits for the shared disk to appear and mounts it; returns the mount point, or
/// `None` once the failure is logged.
fn mount_disk(options: &DaemonOptions) -> Option<&'static CStr> {
    let label = options.label.unwrap_or(layout::DEFAULT_VOLUME_LABEL);
    let mount_point = options.mount_point;
    let start = clock::now_ms();
    let deadline = start + options.wait_device_s * 1_000;
    let found = loop {
        let found = match options.device {
            Some(dev) => Some(disk::DevicePath::try_from(dev).unwrap_or_default()),
            None => disk::find_by_label(label),
        };
        if found.is_some() || clock::now_ms() >= deadline {
            break found;
        }
        clock::sleep_ms(200);
    };
    let Some(dev) = found else {
        crate::log!(
            error: "no FAT disk labelled {label} found; attach one (nlxtp create-disk) or pass --device or --dir"
        );
        return None;
    };
    let found_at = clock::now_ms();
    if let Err(e) = disk::mount_vfat(&dev, mount_point, true) {
        crate::log!(error: "cannot mount {} at {:?}: {e:?}", dev.as_str(), mount_point);
        return None;
    }
    // Where a slow boot's time goes: waiting for the disk, or mounting it (which may load
    // the vfat and nls modules first).
    crate::log!(
        "shared disk {} mounted at {:?} (found in {} ms, mounted in {} ms)",
        dev.as_str(),
        mount_point,
        found_at - start,
        clock::now_ms() - found_at
    );
    Some(mount_point)
}

/// `nlxtp-guest stop [--timeout SECS] [PID]`.
fn stop_daemon(args: &[&'static CStr]) -> c_int {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let mut timeout_s = 25;
    let mut pid = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.to_str().unwrap_or("") {
            "--timeout" => match number(it.next().copied()) {
                Some(secs) => timeout_s = secs,
                None => return usage_error("stop --timeout needs a number of seconds"),
            },
            word => match word.parse().ok().and_then(Pid::from_raw) {
                Some(p) if pid.is_none() => pid = Some(p),
                _ => return usage_error("stop takes one process id"),
            },
        }
    }
    let Some(pid) = pid else {
        return 0;
    };
    // Through a pidfd: the signal reaches this process, never one that took its id.
    let sent = pidfd_open(pid, PidfdFlags::empty())
        .and_then(|fd| pidfd_send_signal(&fd, Signal::TERM).map(|()| fd));
    let pidfd = match sent {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return 0,
        Err(e) => {
            crate::log!(error: "cannot stop process {}: {e:?}", pid.as_raw_nonzero());
            return 1;
        }
    };
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = clock::timespec_ms(timeout_s.saturating_mul(1_000));
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) if n > 0 => 0,
        _ => {
            crate::log!(
                warning: "process {} has not stopped after {timeout_s} s",
                pid.as_raw_nonzero()
            );
            1
        }
    }
}

fn number(value: Option<&CStr>) -> Option<u64> {
    value?.to_str().ok()?.parse().ok()
}

fn show(dir: &CStr) -> c_int {
    let area = match area::Area::open(dir) {
        Ok(area) => area,
        Err(e) => {
            crate::log!(error: "cannot open {dir:?}: {e:?}");
            return 1;
        }
    };
    match area.read_status() {
        Ok(rec) => {
            out!(
                "run {}\nstate {}\nsequence {}\nheartbeat {} (every {} ms)\nstdout {} bytes{}\nstderr {} bytes{}\n",
                rec.run_id,
                rec.state,
                rec.sequence,
                rec.heartbeat,
                rec.heartbeat_interval_ms,
                rec.stdout.bytes,
                if rec.stdout.truncated { " (truncated)" } else { "" },
                rec.stderr.bytes,
                if rec.stderr.truncated { " (truncated)" } else { "" },
            );
            // The whole text when the custom status file has it (a torn read: the start).
            let mut buf = [0u8; nlxtp_core::custom::CUSTOM_FILE_LEN + 1];
            let len = area.read_custom_file(&mut buf);
            let custom = nlxtp_core::custom::custom_text(&rec, &buf[..len]);
            out!("custom {}\n", custom.unwrap_or(rec.custom.as_str()));
            0
        }
        Err(e) => {
            crate::log!(error: "no status: {e}");
            1
        }
    }
}
