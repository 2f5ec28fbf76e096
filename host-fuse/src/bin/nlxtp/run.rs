//! `nlxtp run`: a job in a fresh VM, and `nlxtp guest build`.
//!
//! The VM machinery (kernel, guest image, QEMU) is the library's `vm` module; the job
//! goes through `ops` like any other upload: `ops::upload`, `ops::logs::follow` for the
//! live output and the end, the area's walk for `--out`. What this file decides is the
//! command line's: which guest, when to stop QEMU, what the exit code is.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nlxtp_core::RunState;
use nlxtp_host::area::vfat::{create_disk, DiskOptions};
use nlxtp_host::area::{Durability, EntryKind, WalkLimits};
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, UploadOptions, WaitOutcome};
use nlxtp_host::vm::initramfs::{busybox, elf};
use nlxtp_host::vm::qemu::{accelerator, Disk};
use nlxtp_host::vm::{Accel, Arch, GuestImage, Kernel, Qemu, QemuConfig};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::args::{GuestArgs, RunArgs};
use crate::out::{note, RunOutput};
use crate::watch::state_code;
use crate::{with_code, Failure};

/// How often the host reads the guest's status and live output while a job runs: the
/// end of a job is seen within this (plus the guest's flush).
const POLL: Duration = Duration::from_millis(100);

/// How long a VM may take to power off after its job ended, before it is killed (with
/// `--out`, whose files must be on the disk).
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);

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

/// `nlxtp run`.
pub fn run(args: &RunArgs, rootfs: Option<&Path>) -> Result<ExitCode, Failure> {
    let signals = Signals::install()?;
    if let Some(config) = &args.config {
        return run_config(args, rootfs, config, &signals);
    }
    let job = Job::from_args(args, rootfs);
    let ended = run_job(&job, &signals).map_err(with_code(125))?;
    Ok(ExitCode::from(ended.code))
}

/// Boots one VM for `job` and follows it to its end.
fn run_job(job: &Job, signals: &Signals) -> Result<Ended, Failure> {
    let started = Instant::now();
    let interrupted = |sig: u8| Ended {
        code: 128 + sig,
        interrupted: true,
    };
    let dir = tempfile::Builder::new().prefix("nlxtp-run-").tempdir()?;
    let arch = job.guest.arch;
    let mut say = |line: &str| note!("nlxtp: {line}");
    let kernel = match (&job.guest.kernel, &job.image) {
        (Some(path), _) => Some(Kernel::open(path, arch)?),
        (None, Some(_)) => None,
        (None, None) => Some(Kernel::debian(arch, &mut say)?),
    };
    let initrd = match (&job.initrd, &job.image, &kernel) {
        (Some(initrd), _, _) => Some(initrd.clone()),
        (None, None, Some(kernel)) => {
            let out = dir.path().join("initramfs.cpio");
            build_image(&job.guest, kernel, job.rootfs.as_deref(), &out)?;
            Some(out)
        }
        _ => None,
    };
    if let Some(sig) = signals.received() {
        return Ok(interrupted(sig));
    }

    let disk = dir.path().join("shared.img");
    create_disk(
        &disk,
        &DiskOptions {
            size: disk_size(job)?,
            ..DiskOptions::default()
        },
    )?;
    let area = ops::open_target(&disk)?;
    let options = UploadOptions {
        durability: Durability::Unsynced,
        heartbeat_ms: Some(HEARTBEAT_MS),
        ..UploadOptions::default()
    };
    ops::upload(area.as_ref(), job_archive(job)?, &options)?;

    let accel = job.accel.unwrap_or_else(|| match &kernel {
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
        path: disk.clone(),
        snapshot: false,
    });
    if let Some(more) = &job.append {
        append.push(' ');
        append.push_str(more);
    }
    let config = QemuConfig {
        arch,
        accel,
        kernel: kernel.as_ref().map(Kernel::boot_image),
        initrd,
        append,
        disks,
        memory_mib: job.mem,
        cpus: job.cpus,
        serial_log: job
            .console_log
            .clone()
            .unwrap_or_else(|| dir.path().join("console.log")),
    };
    let prepared = started.elapsed();
    let mut qemu = Qemu::spawn(&config)?;
    let mut marks = Marks::default();

    // The follower reads the disk until the run ends, or until the disk is gone.
    let (tx, rx) = mpsc::channel();
    let follower = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            let followed = ops::open_target(&disk)
                .map_err(nlxtp_host::area::StatusError::from)
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
        })
    };

    let deadline = job.timeout.map(|t| started + t);
    let mut powered_off_at = None;
    let mut reported_modules = false;
    let outcome = loop {
        if let Some(sig) = signals.received() {
            qemu.kill();
            note!("nlxtp: interrupted; the VM was stopped");
            return Ok(interrupted(sig));
        }
        if let Ok(followed) = rx.try_recv() {
            marks.done = Some(started.elapsed());
            break Some(followed);
        }
        if powered_off_at.is_none() && qemu.try_wait().is_some() {
            powered_off_at = Some(Instant::now());
            marks.exited = Some(started.elapsed());
        }
        // The disk is final once QEMU has gone: the follower's next read sees the end.
        if powered_off_at.is_some_and(|at| at.elapsed() > POLL * 20) {
            break None;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            qemu.kill();
            note!(
                "nlxtp: gave up after {:.1} s (--timeout); the VM was stopped",
                job.timeout.unwrap_or_default().as_secs_f64()
            );
            save_out(job, &disk)?;
            return Ok(Ended {
                code: 124,
                interrupted: false,
            });
        }
        let console = qemu.serial();
        marks.see(&console, started.elapsed());
        if !reported_modules && console.contains("nlxtp-init: could not load") {
            reported_modules = true;
            for line in console.lines().filter(|l| l.contains("could not load")) {
                note!(
                    "nlxtp: the guest {}",
                    line.trim_start_matches("nlxtp-init: ")
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    // The job has ended (or the VM has gone). --out needs the guest's last writes on
    // the disk: its /init powers off right after the daemon.
    if job.out.is_some() && powered_off_at.is_none() {
        if qemu.wait_exit(POWER_OFF_GRACE).is_none() {
            note!("nlxtp: the VM did not power off within {POWER_OFF_GRACE:?}; --out may miss the last writes");
        }
        marks.exited = Some(started.elapsed());
    }
    qemu.kill();
    let console = qemu.serial();
    marks.see(&console, started.elapsed());
    let code = match outcome {
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
                if kernel.is_none() {
                    " (does the image's init start nlxtp-guest?)"
                } else {
                    ""
                },
                tail(&console, 40)
            );
            let messages = qemu.messages();
            if !messages.trim().is_empty() {
                note!("nlxtp: QEMU said:\n{}", tail(&messages, 20));
            }
            126
        }
        Some(Err(e)) => return Err(with_code(125)(e.into())),
    };
    save_out(job, &disk)?;
    drop(qemu);
    drop(dir);
    // The follower ends when its run has, or at its next read of the removed disk.
    let joined = Instant::now() + POLL * 20;
    while !follower.is_finished() && Instant::now() < joined {
        std::thread::sleep(Duration::from_millis(5));
    }
    if job.timings {
        marks.print(prepared, started.elapsed(), accel);
    }
    Ok(Ended {
        code,
        interrupted: false,
    })
}

/// Builds the guest image for `kernel` at `out`.
fn build_image(
    guest: &GuestArgs,
    kernel: &Kernel,
    rootfs: Option<&Path>,
    out: &Path,
) -> Result<u64, Failure> {
    let guest_bin = find_guest(guest.arch, guest.guest.as_deref())?;
    let busybox = busybox(guest.arch, &mut |line| note!("nlxtp: {line}"))?;
    Ok(GuestImage {
        kernel,
        guest: &guest_bin,
        busybox: &busybox,
        host_programs: &guest.host_programs,
        rootfs,
    }
    .write(out)?)
}

/// `nlxtp guest build`.
pub fn guest_build(guest: &GuestArgs, output: &Path) -> Result<ExitCode, Failure> {
    let kernel = match &guest.kernel {
        Some(path) => Kernel::open(path, guest.arch)?,
        None => Kernel::debian(guest.arch, &mut |line| note!("nlxtp: {line}"))?,
    };
    let len = build_image(guest, &kernel, None, output)?;
    let modules: Vec<&str> = kernel.modules.iter().map(|m| m.name.as_str()).collect();
    note!(
        "wrote {} ({} KiB) for {} ({}); modules loaded at boot: {}",
        output.display(),
        len / 1024,
        kernel.name,
        kernel.arch,
        if modules.is_empty() {
            "none (built in)".to_owned()
        } else {
            modules.join(" ")
        }
    );
    note!(
        "boot it with: {} -kernel {} -initrd {} -append console={} -drive file=SHARED.img,format=raw,if=virtio",
        QemuConfig::program_for(kernel.arch).0,
        kernel.image.display(),
        output.display(),
        kernel.arch.console()
    );
    Ok(ExitCode::SUCCESS)
}

/// The static `nlxtp-guest` for `arch`: `explicit` (or `$NLXTP_GUEST`); else beside this
/// executable, on PATH (as `nlxtp-guest-ARCH`, then `nlxtp-guest`), or in a
/// `guest-min/target` build above this executable (a development tree).
fn find_guest(arch: Arch, explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(path) = explicit
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("NLXTP_GUEST").map(PathBuf::from))
    {
        return Ok(path);
    }
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent).map(Path::to_owned);
    let names = [format!("nlxtp-guest-{arch}"), "nlxtp-guest".to_owned()];
    let mut candidates = Vec::new();
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in exe_dir.iter().chain(&path_dirs) {
        for name in &names {
            candidates.push(dir.join(name));
        }
    }
    for above in exe_dir.iter().flat_map(|d| d.ancestors()).take(5) {
        candidates.push(
            above
                .join("guest-min/target")
                .join(arch.guest_target())
                .join("release/nlxtp-guest"),
        );
    }
    for candidate in candidates {
        let mut head = Vec::new();
        let read = fs::File::open(&candidate)
            .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
            .is_ok();
        if read && elf(&head) == Some((arch, true)) {
            return Ok(candidate);
        }
    }
    let target = arch.guest_target();
    Err(Failure {
        error: format!(
            "no nlxtp-guest for {arch} beside {}, on PATH or in a guest-min build; build it with \
             `rustup target add {target} && cargo build --manifest-path guest-min/Cargo.toml --release --target {target}`, \
             then pass --guest guest-min/target/{target}/release/nlxtp-guest (or set NLXTP_GUEST, or put it beside nlxtp)",
            exe.as_deref().unwrap_or(Path::new("nlxtp")).display()
        )
        .into(),
        code: 125,
    })
}

/// The shared disk's size: as asked, else 64 MiB plus twice what is uploaded.
fn disk_size(job: &Job) -> Result<u64, Failure> {
    if let Some(size) = job.disk_size {
        return Ok(size);
    }
    let mut bytes = 0u64;
    for path in job.upload.iter().chain(&job.archive) {
        bytes += tree_size(path)?;
    }
    Ok((64 << 20) + (bytes * 2).div_ceil(1 << 20) * (1 << 20))
}

fn tree_size(path: &Path) -> Result<u64, Failure> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .map_err(|e| Failure {
            error: e.into(),
            code: 125,
        })?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path)?.flatten() {
        total += tree_size(&entry.path())?;
    }
    Ok(total)
}

/// The job as an archive to upload.
fn job_archive(job: &Job) -> Result<Box<dyn Read>, Failure> {
    if let Some(archive) = &job.archive {
        let file = fs::File::open(archive).map_err(|e| Failure {
            error: format!("cannot open the archive {}: {e}", archive.display()).into(),
            code: 125,
        })?;
        return Ok(Box::new(file));
    }
    let script = match (&job.script, job.command.is_empty()) {
        (Some(path), _) => fs::read(path).map_err(|e| Failure {
            error: format!("cannot read the script {}: {e}", path.display()).into(),
            code: 125,
        })?,
        (None, false) => ops::exec_script(&job.command).into_bytes(),
        (None, true) => {
            return Err(Failure {
                error: "nothing to run: give a command after --, or --script FILE, or --archive FILE (or `command` in the config's target)".into(),
                code: 2,
            })
        }
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "auto_exec.sh", &script[..])?;
    for path in &job.upload {
        let name = path.file_name().ok_or_else(|| Failure {
            error: format!("--upload {}: name a file or directory", path.display()).into(),
            code: 2,
        })?;
        if path.is_dir() {
            builder.append_dir_all(name, path)?;
        } else {
            builder.append_path_with_name(path, name)?;
        }
    }
    Ok(Box::new(std::io::Cursor::new(builder.into_inner()?)))
}

/// With `--out DIR`: the shared area's files into DIR (created, or empty).
fn save_out(job: &Job, disk: &Path) -> Result<(), Failure> {
    let Some(out) = &job.out else { return Ok(()) };
    fs::create_dir_all(out)?;
    if fs::read_dir(out)?.next().is_some() {
        return Err(Failure {
            error: format!(
                "--out {} is not empty; nothing was put there",
                out.display()
            )
            .into(),
            code: 125,
        });
    }
    let area = ops::open_target(disk)?;
    area.walk(&WalkLimits::default(), &mut |entry, reader| {
        // Area paths are relative, with no `..`: they stay beneath `out`.
        let path = out.join(entry.path.as_str());
        match (entry.kind, reader) {
            (EntryKind::Dir, _) => fs::create_dir_all(&path),
            (_, Some(reader)) => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                std::io::copy(reader, &mut file).map(drop)
            }
            (_, None) => Ok(()),
        }
    })?;
    Ok(())
}

/// When the host saw each step of the boot, and the guest's uptime at it.
#[derive(Debug, Default)]
struct Marks {
    init: Option<(Duration, f64)>,
    daemon: Option<(Duration, f64)>,
    daemon_exit: Option<(Duration, f64)>,
    power_off: Option<(Duration, f64)>,
    done: Option<Duration>,
    exited: Option<Duration>,
}

impl Marks {
    fn see(&mut self, console: &str, now: Duration) {
        for (mark, text) in [
            (&mut self.init, "nlxtp-init: started at uptime "),
            (
                &mut self.daemon,
                "nlxtp-init: booted; starting the daemon at uptime ",
            ),
            (&mut self.daemon_exit, " at uptime "),
            (&mut self.power_off, "nlxtp-init: powering off at uptime "),
        ] {
            if mark.is_some() {
                continue;
            }
            let found = console
                .lines()
                .filter(|l| l.starts_with("nlxtp-init: "))
                .filter(|l| text != " at uptime " || l.contains("daemon exited"))
                .find_map(|l| l.split_once(text).map(|(_, up)| up.trim().parse().ok()));
            if let Some(uptime) = found {
                *mark = Some((now, uptime.unwrap_or(f64::NAN)));
            }
        }
    }

    fn print(&self, prepared: Duration, total: Duration, accel: Accel) {
        let s = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        let (init_at, kernel) = self
            .init
            .map_or((f64::NAN, f64::NAN), |(d, u)| (d.as_secs_f64(), u));
        let daemon_at = s(self.daemon.map(|m| m.0));
        note!(
            "nlxtp: timings ({}): prepare {:.2} s; QEMU start + firmware {:.2} s; kernel {:.2} s; \
             modules and init {:.2} s; daemon start -> job end seen {:.2} s; -> exit {:.2} s; total {:.2} s",
            accel.name(),
            prepared.as_secs_f64(),
            init_at - kernel - prepared.as_secs_f64(),
            kernel,
            daemon_at - init_at,
            s(self.done) - daemon_at,
            total.as_secs_f64() - s(self.done),
            total.as_secs_f64()
        );
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An `nlxtp.toml` of targets.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, rename = "target")]
    targets: Vec<TargetSpec>,
}

/// One target: what it does not say comes from the command line.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: String,
    kernel: Option<PathBuf>,
    arch: Option<Arch>,
    guest: Option<PathBuf>,
    initrd: Option<PathBuf>,
    image: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    command: Option<Vec<String>>,
    script: Option<PathBuf>,
    archive: Option<PathBuf>,
    upload: Option<Vec<PathBuf>>,
    timeout: Option<f64>,
    mem: Option<u32>,
    cpus: Option<u32>,
    append: Option<String>,
}

fn run_config(
    args: &RunArgs,
    rootfs: Option<&Path>,
    config: &Path,
    signals: &Signals,
) -> Result<ExitCode, Failure> {
    let text = fs::read_to_string(config).map_err(|e| Failure {
        error: format!("cannot read {}: {e}", config.display()).into(),
        code: 125,
    })?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| Failure {
        error: format!("{} is not a valid nlxtp.toml: {e}", config.display()).into(),
        code: 2,
    })?;
    let base = config.parent().unwrap_or(Path::new("."));
    let rel = |p: &PathBuf| base.join(p);
    let targets: Vec<&TargetSpec> = file
        .targets
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.contains(&t.name))
        .collect();
    if targets.is_empty() {
        return Err(Failure {
            error: format!("{} has no [[target]] to run", config.display()).into(),
            code: 2,
        });
    }
    let total = targets.len();
    let mut results = Vec::new();
    for (i, spec) in targets.into_iter().enumerate() {
        let mut job = Job::from_args(args, rootfs);
        job.name = spec.name.clone();
        // Whatever the target names, it names instead of the command line.
        if spec.kernel.is_some() {
            job.guest.kernel = spec.kernel.as_ref().map(rel);
        }
        if let Some(arch) = spec.arch {
            job.guest.arch = arch;
        }
        if spec.guest.is_some() {
            job.guest.guest = spec.guest.as_ref().map(rel);
        }
        job.initrd = spec.initrd.as_ref().map(rel).or(job.initrd);
        job.image = spec.image.as_ref().map(rel).or(job.image);
        job.rootfs = spec.rootfs.as_ref().map(rel).or(job.rootfs);
        if spec.command.is_some() || spec.script.is_some() || spec.archive.is_some() {
            job.command = spec.command.clone().unwrap_or_default();
            job.script = spec.script.as_ref().map(rel);
            job.archive = spec.archive.as_ref().map(rel);
        }
        if let Some(upload) = &spec.upload {
            job.upload = upload.iter().map(rel).collect();
        }
        if let Some(timeout) = spec.timeout {
            job.timeout = Some(Duration::from_secs_f64(timeout));
        }
        job.mem = spec.mem.unwrap_or(job.mem);
        job.cpus = spec.cpus.unwrap_or(job.cpus);
        job.append = spec.append.clone().or(job.append);
        job.out = job.out.map(|o| o.join(&spec.name));
        note!(
            "nlxtp: [{}/{total}] {}: starting ({})",
            i + 1,
            spec.name,
            job.guest.arch
        );
        let began = Instant::now();
        let result = run_job(&job, signals);
        let took = began.elapsed().as_secs_f64();
        let (line, code) = match &result {
            Ok(Ended {
                code: 0,
                interrupted: false,
            }) => (format!("passed (exit 0) in {took:.1} s"), 0),
            Ok(Ended { code, interrupted }) if *interrupted => {
                note!("nlxtp: [{}/{total}] {}: interrupted", i + 1, spec.name);
                return Ok(ExitCode::from(*code));
            }
            Ok(Ended { code, .. }) => (format!("FAILED (exit {code}) in {took:.1} s"), *code),
            Err(failure) => (format!("ERROR: {} (exit 125)", failure.error), 125),
        };
        note!("nlxtp: [{}/{total}] {}: {line}", i + 1, spec.name);
        results.push((spec.name.clone(), code));
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, c)| *c != 0)
        .map(|(n, c)| format!("{n} (exit {c})"))
        .collect();
    note!(
        "nlxtp: summary: {total} targets, {} passed, {} failed{}",
        total - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    Ok(ExitCode::from(
        results.iter().map(|r| r.1).find(|&c| c != 0).unwrap_or(0),
    ))
}
