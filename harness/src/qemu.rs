//! Booting a guest in QEMU, and making sure it never outlives the harness.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kernel::Kernel;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel.
    pub kernel: Kernel,
    /// Initramfs from [`crate::initramfs`].
    pub initramfs: PathBuf,
    /// The shared disk image, attached as a virtio disk.
    pub disk: PathBuf,
    /// Stay up after the daemon has handled the upload (instead of powering off).
    pub stay: bool,
    /// Heartbeat interval the guest's monitor promises.
    pub heartbeat_ms: u32,
    /// Guest memory.
    pub memory_mib: u32,
    /// Where the serial console is logged.
    pub serial_log: PathBuf,
}

/// A running VM. Dropping it stops QEMU (SIGTERM, then SIGKILL) and, if the thread is
/// panicking (a failed test), prints the serial log.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    serial_log: PathBuf,
    started: Instant,
    accel: &'static str,
}

/// The accelerator to use: KVM when it actually runs a guest, TCG otherwise. Probed
/// once per process by trying: on some machines /dev/kvm opens and QEMU starts with
/// KVM, yet the guest never runs. The probe boots the kernel image `vmlinuz` with no
/// root filesystem and waits up to 3 s for its banner on the serial console (KVM prints
/// it well within 1 s).
pub fn accelerator(vmlinuz: &Path) -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let log = std::env::temp_dir().join(format!("nlxtp-kvm-probe-{}.log", std::process::id()));
        let probe = qemu_command("kvm", vmlinuz, &log, 128)
            .args(["-append", "console=ttyS0 panic=-1"])
            .spawn();
        let Ok(mut child) = probe else { return "tcg" };
        let deadline = Instant::now() + Duration::from_secs(3);
        let works = loop {
            if fs::read_to_string(&log).is_ok_and(|text| text.contains("Linux version")) {
                break true;
            }
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(&log);
        let _ = fs::remove_file(log.with_extension("qemu.log"));
        if works {
            "kvm"
        } else {
            "tcg"
        }
    })
}

impl Vm {
    /// Starts QEMU.
    ///
    /// # Errors
    /// When QEMU cannot be started (not installed: `scripts/setup` installs it).
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        let accel = accelerator(&config.kernel.vmlinuz);
        let _ = fs::remove_file(&config.serial_log);
        let mut append = String::from("console=ttyS0 panic=-1 loglevel=4");
        if config.stay {
            append.push_str(" nlxtp.stay");
        }
        append.push_str(&format!(" nlxtp.heartbeat_ms={}", config.heartbeat_ms));
        let mut command = qemu_command(
            accel,
            &config.kernel.vmlinuz,
            &config.serial_log,
            config.memory_mib,
        );
        command
            .arg("-initrd")
            .arg(&config.initramfs)
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio",
                config.disk.display()
            ));
        Vm::spawn(command, &config.serial_log, accel)
    }

    /// Starts `command` (made by [`qemu_command`]) as a VM whose console is logged to
    /// `serial_log`.
    pub(crate) fn spawn(
        mut command: Command,
        serial_log: &Path,
        accel: &'static str,
    ) -> Result<Vm> {
        let child = command
            .spawn()
            .context("could not start qemu-system-x86_64 (scripts/setup installs it)")?;
        Ok(Vm {
            child: Some(child),
            serial_log: serial_log.to_path_buf(),
            started: Instant::now(),
            accel,
        })
    }

    /// The accelerator this VM runs with ("kvm" or "tcg").
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) | None => false,
        }
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// The serial log's path.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Waits until the serial console shows `text`.
    ///
    /// # Errors
    /// When QEMU exits first or the deadline passes; the message holds the log's tail.
    pub fn wait_serial(&mut self, text: &str, within: Duration) -> Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if self.serial().contains(text) {
                return Ok(self.uptime());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "QEMU exited ({status}) before the guest printed {text:?}; serial log:\n{}",
                    tail(&self.serial())
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the guest did not print {text:?} within {within:?}; serial log:\n{}",
                    tail(&self.serial())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    ///
    /// # Errors
    /// When the deadline passes (QEMU is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("QEMU already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "the guest did not power off within {within:?}; serial log:\n{}",
                    tail(&self.serial())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pulls the plug: SIGKILL, as a host crash or `virsh destroy` would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks QEMU to quit (SIGTERM), then kills it if it has not within 3 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- serial log of the failed VM ({}) ---\n{}",
                self.serial_log.display(),
                tail(&self.serial())
            );
        }
        self.stop();
    }
}

/// QEMU with no devices but a serial console logged to `serial_log` (QEMU's own messages
/// go beside it, `.qemu.log`), booting the kernel image `vmlinuz` directly, one CPU, no
/// network.
pub(crate) fn qemu_command(
    accel: &str,
    vmlinuz: &Path,
    serial_log: &Path,
    memory_mib: u32,
) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            accel,
            "-machine",
            "pc",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-m", &memory_mib.to_string(), "-smp", "1"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match fs::File::create(serial_log.with_extension("qemu.log")) {
        Ok(file) => command.stderr(file),
        Err(_) => command.stderr(Stdio::null()),
    };
    command
}

/// The last 60 lines of a log, for error messages.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
