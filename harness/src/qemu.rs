//! Booting a guest in QEMU (the library's [`nlxtp_host::vm::Qemu`]), with waits on the
//! serial console for tests, and the serial log printed when a test fails.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nlxtp_host::vm::qemu::{accelerator, Disk};
use nlxtp_host::vm::{Qemu, QemuConfig, Qmp};

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
    /// Serve QEMU's machine protocol on this unix socket, for hot-plugged disks.
    pub qmp: Option<PathBuf>,
}

/// A running VM. Dropping it stops QEMU (SIGTERM, then SIGKILL) and, if the thread is
/// panicking (a failed test), prints the serial log.
#[derive(Debug)]
pub struct Vm {
    qemu: Qemu,
    accel: &'static str,
    qmp: Option<PathBuf>,
}

impl Vm {
    /// Starts QEMU: KVM when it runs a guest here, TCG otherwise.
    ///
    /// # Errors
    /// When QEMU cannot be started (not installed: `scripts/setup` installs it).
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        let kernel = &config.kernel;
        let accel = accelerator(kernel.arch, &kernel.image);
        let mut append = String::from("loglevel=4");
        if config.stay {
            append.push_str(" nlxtp.stay");
        }
        append.push_str(&format!(" nlxtp.heartbeat_ms={}", config.heartbeat_ms));
        let qemu_config = QemuConfig {
            arch: kernel.arch,
            accel,
            kernel: Some(kernel.boot_image()),
            initrd: Some(config.initramfs.clone()),
            append,
            disks: vec![Disk {
                path: config.disk.clone(),
                snapshot: false,
            }],
            memory_mib: config.memory_mib,
            cpus: 1,
            serial_log: config.serial_log.clone(),
        };
        let qemu = match &config.qmp {
            Some(socket) => Qemu::spawn_with_qmp(&qemu_config, socket),
            None => Qemu::spawn(&qemu_config),
        }
        .context("could not boot the VM")?;
        Ok(Vm {
            qemu,
            accel: accel.name(),
            qmp: config.qmp.clone(),
        })
    }

    /// A connection to the VM's QMP socket (waiting up to 20 s for QEMU to open it).
    ///
    /// # Errors
    /// When the VM was booted without one ([`VmConfig::qmp`]), or QEMU does not answer.
    pub fn qmp(&self) -> Result<Qmp> {
        let Some(socket) = &self.qmp else {
            bail!("this VM was booted without a QMP socket (VmConfig::qmp)");
        };
        Qmp::connect(socket, Duration::from_secs(20)).context("could not reach the VM's QMP socket")
    }

    /// The VM's QMP socket, if it has one.
    pub fn qmp_socket(&self) -> Option<&Path> {
        self.qmp.as_deref()
    }

    /// The accelerator this VM runs with ("kvm" or "tcg").
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.qemu.uptime()
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        self.qemu.serial()
    }

    /// The serial log's path.
    pub fn serial_log(&self) -> &Path {
        self.qemu.serial_log()
    }

    /// Waits until the serial console shows `text`.
    ///
    /// # Errors
    /// When QEMU exits first or the deadline passes; the message holds the log's tail.
    pub fn wait_serial(&mut self, text: &str, within: Duration) -> Result<Duration> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.serial().contains(text) {
                return Ok(self.uptime());
            }
            if let Some(status) = self.qemu.try_wait() {
                bail!(
                    "QEMU exited ({status}) before the guest printed {text:?}; serial log:\n{}",
                    tail(&self.serial())
                );
            }
            if std::time::Instant::now() >= deadline {
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
    /// When QEMU was already stopped, or the deadline passes (QEMU is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        match self.qemu.wait_exit(within) {
            Some(status) => Ok(status),
            None => {
                self.kill();
                bail!(
                    "the guest did not power off within {within:?}; serial log:\n{}",
                    tail(&self.serial())
                )
            }
        }
    }

    /// Pulls the plug: SIGKILL, as a host crash or `virsh destroy` would.
    pub fn kill(&mut self) {
        self.qemu.kill();
    }

    /// Asks QEMU to quit (SIGTERM), then kills it if it has not within 3 s.
    pub fn stop(&mut self) {
        self.qemu.stop(Duration::from_secs(3));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- serial log of the failed VM ({}) ---\n{}",
                self.serial_log().display(),
                tail(&self.serial())
            );
        }
        self.stop();
    }
}

/// The last 60 lines of a log, for error messages.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
