//! The job's VM: its QEMU configuration, the loop that watches it (signals, `--timeout`,
//! the job's end as the follower of its output sees it, QEMU's exit), and the exit code
//! that end gives.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nlxtp_core::RunState;
use nlxtp_host::area::StatusError;
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, WaitOutcome};
use nlxtp_host::vm::qemu::{accelerator, Disk};
use nlxtp_host::vm::{Accel, Kernel, Qemu, QemuConfig};

use super::guest::Boot;
use super::timings::Marks;
use super::{Job, Signals, HEARTBEAT_MS};
use crate::out::{note, RunOutput};
use crate::watch::state_code;
use crate::{with_code, Failure};

/// How often the host reads the guest's status and live output while a job runs: the
/// end of a job is seen within this (plus the guest's flush).
const POLL: Duration = Duration::from_millis(100);

/// How long a VM may take to power off after its job ended, before it is killed (with
/// `--out`, whose files must be on the disk).
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);

/// What the follower of the job's output ends with.
type Followed = Result<WaitOutcome, StatusError>;

/// QEMU's configuration for `job`: `boot`, then the shared `disk`; the console's log in
/// `dir` unless `--console-log` says where.
pub(super) fn qemu_config(job: &Job, boot: &Boot, disk: &Path, dir: &Path) -> QemuConfig {
    let arch = job.guest.arch;
    let accel = job.accel.unwrap_or_else(|| match &boot.kernel {
        Some(kernel) => accelerator(arch, &kernel.image),
        None => Accel::Tcg,
    });
    let mut append = format!("quiet loglevel=3 nlxtp.heartbeat_ms={HEARTBEAT_MS}");
    let mut disks = Vec::new();
    if let Some(image) = &job.image {
        append.push_str(" root=/dev/vda rw");
        disks.push(Disk {
            path: image.clone(),
            snapshot: true,
        });
    }
    disks.push(Disk {
        path: disk.to_owned(),
        snapshot: false,
    });
    if let Some(more) = &job.append {
        append.push(' ');
        append.push_str(more);
    }
    QemuConfig {
        arch,
        accel,
        kernel: boot.kernel.as_ref().map(Kernel::boot_image),
        initrd: boot.initrd.clone(),
        append,
        disks,
        memory_mib: job.mem,
        cpus: job.cpus,
        serial_log: job
            .console_log
            .clone()
            .unwrap_or_else(|| dir.join("console.log")),
    }
}

/// Why [`Vm::watch`] stopped before the job's end.
pub(super) enum Stop {
    /// A signal asked us to stop.
    Interrupted(u8),
    /// `--timeout` passed.
    TimedOut,
}

/// A job's QEMU, and the thread that follows its output on the shared disk.
pub(super) struct Vm {
    qemu: Qemu,
    followed: mpsc::Receiver<Followed>,
    follower: JoinHandle<()>,
    started: Instant,
    marks: Marks,
    powered_off_at: Option<Instant>,
    reported_modules: bool,
}

impl Vm {
    /// Boots QEMU with `config` and starts following the output on `disk`; `started`
    /// is when the job started, for the timings.
    pub(super) fn start(config: &QemuConfig, disk: &Path, started: Instant) -> Result<Vm, Failure> {
        let qemu = Qemu::spawn(config)?;
        let (followed, follower) = spawn_follower(disk.to_owned());
        Ok(Vm {
            qemu,
            followed,
            follower,
            started,
            marks: Marks::default(),
            powered_off_at: None,
            reported_modules: false,
        })
    }

    /// Watches the VM until something ends the job: the follower's end, QEMU's exit
    /// (None: the follower saw no end on the final disk), a signal, or `deadline`.
    pub(super) fn watch(
        &mut self,
        deadline: Option<Instant>,
        signals: &Signals,
    ) -> Result<Option<Followed>, Stop> {
        loop {
            if let Some(sig) = signals.received() {
                return Err(Stop::Interrupted(sig));
            }
            if let Ok(followed) = self.followed.try_recv() {
                self.marks.done = Some(self.started.elapsed());
                return Ok(Some(followed));
            }
            if self.powered_off_at.is_none() && self.qemu.try_wait().is_some() {
                self.powered_off_at = Some(Instant::now());
                self.marks.exited = Some(self.started.elapsed());
            }
            // The disk is final once QEMU has gone: the follower's next read sees the end.
            if self
                .powered_off_at
                .is_some_and(|at| at.elapsed() > POLL * 20)
            {
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Stop::TimedOut);
            }
            self.read_console();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Marks the boot's steps on the console, and passes on the guest's word that it
    /// could not load a module (once).
    fn read_console(&mut self) {
        let console = self.qemu.serial();
        self.marks.see(&console, self.started.elapsed());
        if !self.reported_modules && console.contains("nlxtp-init: could not load") {
            self.reported_modules = true;
            for line in console.lines().filter(|l| l.contains("could not load")) {
                note!(
                    "nlxtp: the guest {}",
                    line.trim_start_matches("nlxtp-init: ")
                );
            }
        }
    }

    /// Pulls the plug.
    pub(super) fn kill(&mut self) {
        self.qemu.kill();
    }

    /// Stops QEMU after the job's end; with `power_off` (for `--out`), first gives it
    /// [`POWER_OFF_GRACE`] to power off, so that the guest's last writes are on the
    /// disk. Returns the console's text.
    pub(super) fn stop(&mut self, power_off: bool) -> String {
        if power_off && self.powered_off_at.is_none() {
            if self.qemu.wait_exit(POWER_OFF_GRACE).is_none() {
                note!("nlxtp: the VM did not power off within {POWER_OFF_GRACE:?}; --out may miss the last writes");
            }
            self.marks.exited = Some(self.started.elapsed());
        }
        self.qemu.kill();
        let console = self.qemu.serial();
        self.marks.see(&console, self.started.elapsed());
        console
    }

    /// The exit code of a job that ended with `outcome` (None: the VM went first); when
    /// it did not run to its end, says so, with the end of `console` and what QEMU said.
    /// `own_kernel`: the VM booted our kernel and guest image, not an `--image`'s own.
    pub(super) fn exit_code(
        &self,
        outcome: Option<Followed>,
        console: &str,
        own_kernel: bool,
    ) -> Result<u8, Failure> {
        Ok(match outcome {
            Some(Ok(WaitOutcome::Done(rec))) => {
                match rec.state {
                    RunState::Exited(_) | RunState::Signaled(_) => {}
                    state => note!("nlxtp: the job did not run to its end: {state}"),
                }
                state_code(rec.state)
            }
            Some(Ok(WaitOutcome::LegacyDone(_))) => 0,
            Some(Ok(WaitOutcome::MonitorLost(_) | WaitOutcome::CutOff(_)) | Ok(_)) | None => {
                note!(
                    "nlxtp: the VM stopped before the job ended{}; console:\n{}",
                    if own_kernel {
                        ""
                    } else {
                        " (does the image's init start nlxtp-guest?)"
                    },
                    tail(console, 40)
                );
                let messages = self.qemu.messages();
                if !messages.trim().is_empty() {
                    note!("nlxtp: QEMU said:\n{}", tail(&messages, 20));
                }
                126
            }
            Some(Err(e)) => return Err(with_code(125)(e.into())),
        })
    }

    /// Ends QEMU for good; what is left is the follower and the timings.
    pub(super) fn shut_down(self) -> (JoinHandle<()>, Marks) {
        (self.follower, self.marks)
    }
}

/// Follows the job's output on `disk` on a thread of its own until the run ends, or
/// until the disk is gone; its end comes through the channel.
fn spawn_follower(disk: PathBuf) -> (mpsc::Receiver<Followed>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let follower = std::thread::spawn(move || {
        let followed = ops::open_target(&disk)
            .map_err(StatusError::from)
            .and_then(|area| {
                let mut output = RunOutput::new(true);
                ops::logs::follow(
                    area.as_ref(),
                    Streams::Both,
                    None,
                    POLL,
                    &mut |stream, bytes| {
                        // A reader that has gone does not stop the job.
                        let _ = output.write(stream, bytes);
                        Ok(())
                    },
                    &mut || note!("nlxtp: the job's output comes faster than the live ring keeps it; the rest follows at its end"),
                )
            });
        let _ = tx.send(followed);
    });
    (rx, follower)
}

/// Gives the follower a little time to end: it does when its run has, or at its next
/// read of the removed disk.
pub(super) fn let_end(follower: JoinHandle<()>) {
    let joined = Instant::now() + POLL * 20;
    while !follower.is_finished() && Instant::now() < joined {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
