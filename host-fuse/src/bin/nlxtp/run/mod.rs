//! `nlxtp run`: a job in a fresh VM, and `nlxtp guest build`.
//!
//! The VM machinery (kernel, guest image, QEMU) is the library's `vm` module; the job
//! goes through `ops` like any other upload: `ops::upload`, `ops::logs::follow` for the
//! live output and the end, the area's walk for `--out`. What this module decides is the
//! command line's: which guest, when to stop QEMU, what the exit code is.
//!
//! By step: [`guest`] finds the guest binary and kernel and builds the boot image,
//! [`job`] prepares the shared disk with the job's archive, [`vm`] boots QEMU and
//! watches it to the job's end, [`results`] fetches `--out`, [`config`] runs the targets
//! of an `nlxtp.toml` and sums them up, [`timings`] reports `--timings`.

mod config;
mod guest;
mod job;
mod results;
mod timings;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nlxtp_host::vm::Accel;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::args::{GuestArgs, RunArgs};
use crate::out::note;
use crate::{with_code, Failure};

pub use guest::guest_build;

/// The guest's heartbeat: its monitor is taken for lost after a few missed ones.
const HEARTBEAT_MS: u32 = 1000;

/// One job: the command line's arguments, or a config file's target over them.
#[derive(Debug, Clone)]
struct Job {
    name: String,
    guest: GuestArgs,
    rootfs: Option<PathBuf>,
    initrd: Option<PathBuf>,
    image: Option<PathBuf>,
    mem: u32,
    cpus: u32,
    timeout: Option<Duration>,
    out: Option<PathBuf>,
    upload: Vec<PathBuf>,
    archive: Option<PathBuf>,
    script: Option<PathBuf>,
    command: Vec<String>,
    accel: Option<Accel>,
    append: Option<String>,
    disk_size: Option<u64>,
    console_log: Option<PathBuf>,
    timings: bool,
}

impl Job {
    fn from_args(args: &RunArgs, rootfs: Option<&Path>) -> Job {
        Job {
            name: String::new(),
            guest: args.guest.clone(),
            rootfs: rootfs.map(Path::to_owned),
            initrd: args.initrd.clone(),
            image: args.image.clone(),
            mem: args.mem,
            cpus: args.cpus,
            timeout: args.timeout.map(Duration::from_secs_f64),
            out: args.out.clone(),
            upload: args.upload.clone(),
            archive: args.archive.clone(),
            script: args.script.clone(),
            command: args.command.clone(),
            accel: args.accel,
            append: args.append.clone(),
            disk_size: args.disk_size,
            console_log: args.console_log.clone(),
            timings: args.timings,
        }
    }
}

/// The signal that asked us to stop, 0 for none.
#[derive(Clone)]
struct Signals(Arc<AtomicUsize>);

impl Signals {
    fn install() -> Result<Signals, Failure> {
        let got = Arc::new(AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_usize(signal, Arc::clone(&got), signal as usize)
                .map_err(|e| with_code(125)(e.into()))?;
        }
        Ok(Signals(got))
    }

    fn received(&self) -> Option<u8> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => u8::try_from(n).ok(),
        }
    }
}

/// How a job ended.
struct Ended {
    code: u8,
    interrupted: bool,
}

impl Ended {
    /// Stopped by signal `sig`.
    fn interrupted(sig: u8) -> Ended {
        Ended {
            code: 128 + sig,
            interrupted: true,
        }
    }

    /// Ran to an end with exit code `code`.
    fn with_code(code: u8) -> Ended {
        Ended {
            code,
            interrupted: false,
        }
    }
}

/// `nlxtp run`.
pub fn run(args: &RunArgs, rootfs: Option<&Path>) -> Result<ExitCode, Failure> {
    let signals = Signals::install()?;
    if let Some(config) = &args.config {
        return config::run_config(args, rootfs, config, &signals);
    }
    let job = Job::from_args(args, rootfs);
    let ended = run_job(&job, &signals).map_err(with_code(125))?;
    Ok(ExitCode::from(ended.code))
}

/// Boots one VM for `job` and follows it to its end.
fn run_job(job: &Job, signals: &Signals) -> Result<Ended, Failure> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("nlxtp-run-").tempdir()?;
    let boot = guest::Boot::prepare(job, dir.path())?;
    if let Some(sig) = signals.received() {
        return Ok(Ended::interrupted(sig));
    }
    let disk = dir.path().join("shared.img");
    job::prepare_disk(job, &disk)?;
    let config = vm::qemu_config(job, &boot, &disk, dir.path());
    let prepared = started.elapsed();
    let mut vm = vm::Vm::start(&config, &disk, started)?;

    let outcome = match vm.watch(job.timeout.map(|t| started + t), signals) {
        Ok(outcome) => outcome,
        Err(vm::Stop::Interrupted(sig)) => {
            vm.kill();
            note!("nlxtp: interrupted; the VM was stopped");
            return Ok(Ended::interrupted(sig));
        }
        Err(vm::Stop::TimedOut) => {
            vm.kill();
            note!(
                "nlxtp: gave up after {:.1} s (--timeout); the VM was stopped",
                job.timeout.unwrap_or_default().as_secs_f64()
            );
            results::save_out(job, &disk)?;
            return Ok(Ended::with_code(124));
        }
    };

    // The job has ended (or the VM has gone). --out needs the guest's last writes on
    // the disk: its /init powers off right after the daemon.
    let console = vm.stop(job.out.is_some());
    let code = vm.exit_code(outcome, &console, boot.kernel.is_some())?;
    results::save_out(job, &disk)?;
    let (follower, marks) = vm.shut_down();
    drop(dir);
    vm::let_end(follower);
    if job.timings {
        marks.print(prepared, started.elapsed(), config.accel);
    }
    Ok(Ended::with_code(code))
}
