//! QEMU with no network device, the accelerator it runs with, and a guard that never
//! lets it outlive its owner.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Arch;

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's own translator: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("unknown accelerator {s:?}: use kvm or tcg")),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The guest's architecture.
    pub arch: Arch,
    /// The accelerator.
    pub accel: Accel,
    /// The kernel image (`-kernel`); none boots the first disk through the firmware.
    pub kernel: Option<PathBuf>,
    /// The initramfs (`-initrd`).
    pub initrd: Option<PathBuf>,
    /// The kernel command line, after the console.
    pub append: String,
    /// Raw disk images, attached as virtio disks in this order.
    pub disks: Vec<Disk>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Where the serial console is logged; QEMU's own messages go beside it
    /// (`.qemu.log`).
    pub serial_log: PathBuf,
}

/// A disk attached to the VM.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The raw image.
    pub path: PathBuf,
    /// Writes go to a temporary overlay that QEMU drops at exit (`snapshot=on`).
    pub snapshot: bool,
}

/// Why QEMU could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// The QEMU program is not installed.
    #[error("could not start {program}: install it (Debian: apt-get install {package})")]
    NotInstalled {
        /// The program.
        program: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// util-linux's `setpriv`, which starts a program with a parent-death signal.
const SETPRIV: &str = "/usr/bin/setpriv";

/// `program` as found in `$PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

impl QemuConfig {
    /// The QEMU program for the architecture, and the Debian package that has it.
    pub fn program(&self) -> (&'static str, &'static str) {
        Self::program_for(self.arch)
    }

    /// The QEMU program for `arch`, and the Debian package that has it.
    pub fn program_for(arch: Arch) -> (&'static str, &'static str) {
        match arch {
            Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// The command line: no default devices, no network, no display, the serial console
    /// into the log, no reboot (a guest's reboot or panic ends QEMU).
    ///
    /// QEMU never outlives the thread that starts it: it runs under util-linux's
    /// `setpriv --pdeathsig KILL` (in every Debian system), so a `nlxtp run` killed with
    /// SIGKILL, which can clean nothing up, still leaves no VM behind. Without setpriv,
    /// QEMU is started directly.
    pub fn command(&self) -> Command {
        let program = self.program().0;
        let mut command = match (Path::new(SETPRIV).is_file(), find_program(program)) {
            (true, Some(path)) => {
                let mut wrapped = Command::new(SETPRIV);
                wrapped.args(["--pdeathsig", "KILL", "--"]).arg(path);
                wrapped
            }
            // Not found: started as is, so that spawning fails with QEMU's own name.
            _ => Command::new(program),
        };
        let machine = match self.arch {
            Arch::X86_64 => "pc",
            Arch::Aarch64 => "virt",
        };
        command.args(["-accel", self.accel.name(), "-machine", machine]);
        match (self.arch, self.accel) {
            (Arch::Aarch64, Accel::Tcg) => command.args(["-cpu", "cortex-a57"]),
            (_, Accel::Kvm) => command.args(["-cpu", "host"]),
            _ => &mut command,
        };
        if self.arch == Arch::X86_64 && self.kernel.is_some() {
            // Direct kernel boot needs no BIOS services: qboot starts it sooner than SeaBIOS.
            if Path::new(QBOOT).is_file() {
                command.args(["-bios", QBOOT]);
            }
        }
        command
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", self.serial_log.display()));
        if let Some(kernel) = &self.kernel {
            command.arg("-kernel").arg(kernel);
            // no_timer_check: under TCG on a loaded host the kernel's check of the
            // IO-APIC timer can fail ("IO-APIC + timer doesn't work!") and panic at boot.
            let append = format!(
                "console={} panic=-1 no_timer_check {}",
                self.arch.console(),
                self.append
            );
            command.args(["-append", append.trim_end()]);
        }
        if let Some(initrd) = &self.initrd {
            command.arg("-initrd").arg(initrd);
        }
        for disk in &self.disks {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio{}",
                // QEMU's option syntax doubles commas in values.
                disk.path.display().to_string().replace(',', ",,"),
                if disk.snapshot { ",snapshot=on" } else { "" }
            ));
        }
        command.stdin(Stdio::null()).stdout(Stdio::null());
        match fs::File::create(self.serial_log.with_extension("qemu.log")) {
            Ok(file) => command.stderr(file),
            Err(_) => command.stderr(Stdio::null()),
        };
        command
    }
}

/// QEMU's `-qmp` value for a QMP server on the unix socket `socket` that does not wait
/// for a client before starting the guest.
pub fn qmp_option(socket: &Path) -> std::ffi::OsString {
    let mut option = std::ffi::OsString::from("unix:");
    // QEMU's option syntax doubles commas in values.
    option.push(socket.display().to_string().replace(',', ",,"));
    option.push(",server=on,wait=off");
    option
}

const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// A running QEMU. Dropping it stops QEMU: SIGTERM, then SIGKILL.
#[derive(Debug)]
pub struct Qemu {
    child: Option<Child>,
    exited: Option<ExitStatus>,
    serial_log: PathBuf,
    started: Instant,
}

impl Qemu {
    /// Starts QEMU as `config` says.
    ///
    /// # Errors
    /// [`QemuError::NotInstalled`] when the program cannot be started.
    pub fn spawn(config: &QemuConfig) -> Result<Qemu, QemuError> {
        Self::spawn_command(config, config.command())
    }

    /// [`Qemu::spawn`], with QEMU's machine protocol served on the unix socket `qmp`
    /// ([`qmp_option`]), so that shared disks can be hot-plugged into the running VM
    /// ([`crate::ops::hot`]; x86_64 `pc` machines, whose guest takes PCI hot-plug
    /// through ACPI). Connect with [`super::Qmp::connect`], which waits for the socket.
    ///
    /// # Errors
    /// As [`Qemu::spawn`].
    pub fn spawn_with_qmp(config: &QemuConfig, qmp: &Path) -> Result<Qemu, QemuError> {
        let mut command = config.command();
        command.arg("-qmp").arg(qmp_option(qmp));
        Self::spawn_command(config, command)
    }

    fn spawn_command(config: &QemuConfig, mut command: Command) -> Result<Qemu, QemuError> {
        let _ = fs::remove_file(&config.serial_log);
        let (program, package) = config.program();
        let started = Instant::now();
        let child = command.spawn().map_err(|source| QemuError::NotInstalled {
            program,
            package,
            source,
        })?;
        Ok(Qemu {
            child: Some(child),
            exited: None,
            serial_log: config.serial_log.clone(),
            started,
        })
    }

    /// QEMU's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    /// QEMU's own messages (its standard error).
    pub fn messages(&self) -> String {
        fs::read_to_string(self.serial_log.with_extension("qemu.log")).unwrap_or_default()
    }

    /// How QEMU ended, if it has by itself (the guest powered off, or it failed).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.exited = Some(status);
        Some(status)
    }

    /// Waits up to `within` for QEMU to end by itself; `None` if it has not (or was
    /// killed).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pulls the plug: SIGKILL, as a host crash or `virsh destroy` would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks QEMU to quit (SIGTERM), then kills it if it has not within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(child) = &self.child {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            if self.wait_exit(grace).is_none() {
                self.kill();
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The accelerator for `arch`: TCG for a guest of another architecture or when
/// `/dev/kvm` cannot be opened; else KVM if it actually runs a guest. That is found by
/// trying, since on some machines /dev/kvm opens and QEMU starts with KVM, yet the guest
/// never runs: `kernel` is booted with no root filesystem and given up to 3 s to print
/// its banner (KVM prints it well within 1 s). The answer is kept in the cache for this
/// host boot, so only the first run pays for the trial.
pub fn accelerator(arch: Arch, kernel: &Path) -> Accel {
    let kvm_possible = Arch::host() == Some(arch)
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    if !kvm_possible {
        return Accel::Tcg;
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let memo = super::cache_dir().join(format!("accel-{}", arch.name()));
    if let Ok(text) = fs::read_to_string(&memo) {
        if let Some((boot, accel)) = text.split_once(' ') {
            if boot == boot_id.trim() {
                if let Ok(accel) = accel.trim().parse() {
                    return accel;
                }
            }
        }
    }
    let accel = if try_kvm(arch, kernel) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    if let Some(dir) = memo.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(&memo, format!("{} {}\n", boot_id.trim(), accel.name()));
    accel
}

fn try_kvm(arch: Arch, kernel: &Path) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let config = QemuConfig {
        arch,
        accel: Accel::Kvm,
        kernel: Some(kernel.to_owned()),
        initrd: None,
        append: String::new(),
        disks: Vec::new(),
        memory_mib: 128,
        cpus: 1,
        serial_log: dir.path().join("probe.log"),
    };
    let Ok(mut qemu) = Qemu::spawn(&config) else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && qemu.try_wait().is_none() {
        if qemu.serial().contains("Linux version") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
