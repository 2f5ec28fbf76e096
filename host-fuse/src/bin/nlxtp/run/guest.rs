//! The guest a job boots: its kernel, the `nlxtp-guest` binary, the boot image built
//! from them; and `nlxtp guest build`, which writes that image for use elsewhere.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nlxtp_host::vm::initramfs::{busybox, elf};
use nlxtp_host::vm::{Arch, GuestImage, Kernel, QemuConfig};

use super::Job;
use crate::args::GuestArgs;
use crate::out::note;
use crate::Failure;

/// What a job's VM boots.
pub(super) struct Boot {
    /// None with `--image` alone: the image boots itself.
    pub(super) kernel: Option<Kernel>,
    pub(super) initrd: Option<PathBuf>,
}

impl Boot {
    /// The kernel `job` names (else Debian's, fetched once) and its boot image: the
    /// job's `--initrd`, or one built in `dir`.
    pub(super) fn prepare(job: &Job, dir: &Path) -> Result<Boot, Failure> {
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
                let out = dir.join("initramfs.cpio");
                build_image(&job.guest, kernel, job.rootfs.as_deref(), &out)?;
                Some(out)
            }
            _ => None,
        };
        Ok(Boot { kernel, initrd })
    }
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
