//! vmtest, the baseline `nlxtp run` is measured against, on the same kernel.
//!
//! vmtest 0.18 boots a kernel with the host's root over 9p as the guest's root, starts
//! its own init script there (`init=` on the kernel command line), and runs the command
//! through qemu-guest-agent over virtio-serial. Debian's kernel has virtio_pci,
//! virtio_console, 9p and 9pnet_virtio as modules, which vmtest cannot load before it has
//! a root; and vmtest asks for KVM whenever `/dev/kvm` exists, with no option to turn
//! that off. So it runs here through a QEMU wrapper that
//! - adds an initramfs (made from the same kernel package's modules) whose `/init` loads
//!   the modules, mounts the 9p root as the kernel command line says (`rootfstype`,
//!   `rootflags`, `rw`) and hands over to vmtest's init (`init=`) with `switch_root`;
//! - when KVM does not run a guest here (nlxtp's own probe decides), drops vmtest's
//!   `-enable-kvm` and turns its `-cpu host` into `-cpu qemu64`, what vmtest itself picks
//!   without `/dev/kvm`.
//!
//! Everything else is vmtest's own: its QEMU command line (SeaBIOS, 2 CPUs, 4 GiB, a
//! verbose serial console), its init and its agent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use nlxtp_host::vm::initramfs::{self, Cpio};
use nlxtp_host::vm::{qemu, Accel, Arch, Kernel};

/// The vmtest release measured.
pub const VERSION: &str = "0.18.0";

/// What vmtest's guest needs before its root is there: virtio-pci, the virtio console
/// (qemu-guest-agent's port and the command output port) and the 9p root.
const MODULES: [&str; 4] = ["virtio_pci", "virtio_console", "9pnet_virtio", "9p"];

/// The initramfs's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
# Loads the modules vmtest's guest needs, mounts the 9p root as the kernel command line
# says and hands over to vmtest's init (init=).
b=/bin/busybox
$b mount -t proc proc /proc
for m in $($b cat /modules.list); do
  $b insmod "/modules/$m.ko" || echo "vmtest-initramfs: could not load $m"
done
init=/sbin/init fstype=9p flags= mode=ro
for arg in $($b cat /proc/cmdline); do
  case "$arg" in
    init=*) init="${arg#init=}" ;;
    rootfstype=*) fstype="${arg#rootfstype=}" ;;
    rootflags=*) flags="${arg#rootflags=}" ;;
    rw|ro) mode="$arg" ;;
  esac
done
$b mkdir -p /newroot
if ! $b mount -t "$fstype" -o "$mode,$flags" /dev/root /newroot; then
  echo "vmtest-initramfs: could not mount the root"
  $b poweroff -f
fi
$b umount /proc
exec $b switch_root /newroot "$init"
"#;

/// vmtest ready to run on one kernel: the program, the QEMU wrapper and its initramfs.
#[derive(Debug)]
pub struct Vmtest {
    program: PathBuf,
    wrapper: PathBuf,
    /// The working directory vmtest runs in (it shares it with the guest).
    dir: tempfile::TempDir,
}

impl Vmtest {
    /// vmtest for `kernel`'s modules, with its files in a new temporary directory.
    ///
    /// # Errors
    /// When vmtest or qemu-guest-agent is missing and cannot be installed, or the
    /// initramfs cannot be made.
    pub fn prepare(kernel: &Kernel) -> Result<Vmtest> {
        ensure!(
            Arch::host() == Some(kernel.arch),
            "vmtest runs the host's own programs in the guest: it needs a {} guest",
            std::env::consts::ARCH
        );
        let program = program()?;
        ensure!(
            Path::new("/usr/sbin/qemu-ga").is_file(),
            "vmtest's guest runs the host's qemu-ga (/usr/sbin/qemu-ga), which is not \
             installed: apt-get install qemu-guest-agent"
        );
        let dir = tempfile::Builder::new().prefix("nlxtp-vmtest").tempdir()?;
        let initrd = dir.path().join("initramfs.cpio");
        write_initramfs(kernel, &initrd)?;
        let accel = qemu::accelerator(kernel.arch, &kernel.boot_image());
        let wrapper = dir.path().join("qemu");
        let program_name = qemu::QemuConfig::program_for(kernel.arch).0;
        fs::write(&wrapper, wrapper_script(program_name, &initrd, accel)?)?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
        Ok(Vmtest {
            program,
            wrapper,
            dir,
        })
    }

    /// `vmtest --kernel IMAGE --qemu-command WRAPPER SCRIPT`, to be started by the caller
    /// (output on its standard output, as lines, since it is not a terminal).
    pub fn command(&self, image: &Path, script: &str) -> Command {
        let mut command = Command::new(&self.program);
        command
            .current_dir(self.dir.path())
            .env("VMTEST_NO_UI", "1")
            .env_remove("RUST_LOG")
            .arg("--kernel")
            .arg(image)
            .arg("--qemu-command")
            .arg(&self.wrapper)
            .arg(script);
        command
    }
}

/// The vmtest program: `$NLXTP_VMTEST`, else the one in the cache, else installed there
/// with `cargo install` (once; it compiles for some minutes).
fn program() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NLXTP_VMTEST") {
        return Ok(PathBuf::from(path));
    }
    let root = nlxtp_host::vm::cache_dir().join("vmtest");
    let program = root.join("bin/vmtest");
    if program.is_file() {
        return Ok(program);
    }
    eprintln!(
        "nlxtp-bench-run: installing vmtest {VERSION} (the baseline) into {} with cargo, \
         once; it compiles for several minutes (set NLXTP_VMTEST to use another vmtest, \
         or NLXTP_BENCH_VMTEST=0 to measure nlxtp only)",
        root.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "vmtest",
            "--version",
            VERSION,
            "-j",
            "2",
            "--root",
        ])
        .arg(&root)
        .status()
        .context("could not run cargo to install vmtest")?;
    if !status.success() || !program.is_file() {
        bail!(
            "could not install vmtest: run `cargo install vmtest --version {VERSION} --root {}` \
             and look at its errors",
            root.display()
        );
    }
    Ok(program)
}

/// The initramfs: busybox, the modules in load order and the `/init` above.
fn write_initramfs(kernel: &Kernel, out: &Path) -> Result<()> {
    let modules = kernel
        .modules_for(&MODULES, &[])
        .context("the kernel lacks what vmtest's guest needs")?;
    let busybox = initramfs::busybox(kernel.arch, &mut |line| {
        eprintln!("nlxtp-bench-run: {line}");
    })?;
    let mut cpio = Cpio::new(std::io::BufWriter::new(fs::File::create(out)?));
    for dir in ["bin", "dev", "proc", "newroot", "modules"] {
        cpio.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for init's standard streams.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("bin/busybox", 0o755, &fs::read(&busybox)?)?;
    let mut names = Vec::new();
    for module in &modules {
        cpio.file(
            &format!("modules/{}.ko", module.name),
            0o644,
            &module.bytes()?,
        )?;
        names.push(module.name.as_str());
    }
    cpio.file("modules.list", 0o644, names.join("\n").as_bytes())?;
    cpio.file("init", 0o755, INIT.as_bytes())?;
    std::io::Write::flush(&mut cpio.finish()?)?;
    Ok(())
}

/// The QEMU wrapper vmtest starts (`--qemu-command`).
fn wrapper_script(qemu: &str, initrd: &Path, accel: Accel) -> Result<String> {
    let initrd = initrd
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    ensure!(
        !initrd.contains('\''),
        "a temporary path with a quote: {initrd}"
    );
    let kvm = if accel == Accel::Tcg {
        "KVM does not run a guest here: vmtest's -enable-kvm is dropped and -cpu host \
         becomes -cpu qemu64 (vmtest's own choice without KVM)."
    } else {
        "KVM works here: vmtest's KVM options are kept."
    };
    let tcg = if accel == Accel::Tcg { "1" } else { "0" };
    Ok(format!(
        r#"#!/bin/bash
# vmtest's QEMU, for a kernel with virtio, virtio-console and 9p as modules: the
# initramfs loads them and hands over to vmtest's init. {kvm}
tcg={tcg}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -enable-kvm) [ "$tcg" = 1 ] || args+=("$1") ;;
    -cpu)
      args+=("$1"); shift
      if [ "$tcg" = 1 ] && [ "$1" = host ]; then args+=(qemu64); else args+=("$1"); fi ;;
    *) args+=("$1") ;;
  esac
  shift
done
case " ${{args[*]}} " in
  *" -kernel "*) args+=(-initrd '{initrd}') ;;
esac
exec {qemu} "${{args[@]}}"
"#
    ))
}
