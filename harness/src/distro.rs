//! Debian 12 guests with their own init system: systemd, or SysV init (`sysvinit-core`).
//!
//! What a user runs, built the way a user builds it:
//!
//! - [`image`] makes a minimal Debian 12 root file system with `debootstrap` (variant
//!   minbase, Debian's kernel and its initramfs-tools initrd) from the mirror this machine
//!   uses, once: it is cached under [`crate::cache_dir`]`/distro`, keyed by what goes in,
//!   and a file lock keeps parallel tests from building it twice. The SysV init system is
//!   the systemd one plus `apt-get install sysvinit-core` in a chroot, Debian's documented
//!   way to switch. Then it installs `nlxtp-guest` by running the install block of
//!   `guest-min/dist/README.md` for that init system in a chroot, word for word, adds the
//!   test agent (below), and packs the tree into an ext4 image (`mkfs.ext4 -d`), cached
//!   too, keyed by the guest binary and the dist files.
//! - [`DistroGuest`] is one VM: a qcow2 overlay on the cached image (which stays clean)
//!   and a fresh shared disk. It boots the image's own kernel and initrd with
//!   `root=/dev/vda console=ttyS0`; the shared disk is the second virtio disk.
//! - The **test agent** is a harness fixture, not part of nlxtp: a shell loop on the
//!   second serial port (ttyS1, a Unix socket on the host) that runs the host's commands
//!   as root, as a person at the console would (`systemctl stop nlxtp-guest`,
//!   `poweroff`). Its "ready" line is the boot's readiness signal.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nlxtp_host::area::vfat::{create_image, VfatImage};

use nlxtp_host::vm::qemu::accelerator;
use nlxtp_host::vm::{Arch, QemuConfig};

use crate::qemu::tail;

/// The Debian release the guests run.
pub const SUITE: &str = "bookworm";

/// Packages `debootstrap` adds to minbase: the init system, Debian's kernel (with its
/// initramfs-tools initrd), udev and kmod, as in a small cloud or VM image.
pub const PACKAGES: [&str; 4] = ["systemd-sysv", "linux-image-amd64", "udev", "kmod"];

/// Bump when the root file system recipe changes (the cache key includes it).
const ROOTFS_RECIPE: u32 = 1;
/// Bump when the image recipe (fixtures, size, install) changes.
const IMAGE_RECIPE: u32 = 1;
/// The root disk's size; the file is sparse, about 0.7 GiB of it is used.
const IMAGE_BYTES: u64 = 2 << 30;
/// Guest memory.
const MEMORY_MIB: u32 = 512;
/// Images kept in the cache per init system (older ones are removed).
const IMAGES_KEPT: usize = 2;

/// A Debian guest's init system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// systemd as PID 1 (Debian's default, `systemd-sysv`).
    Systemd,
    /// SysV init (`sysvinit-core`, with `sysv-rc` and `initscripts`).
    Sysvinit,
}

impl Init {
    /// The name used in the cache, in `guest-min/dist/README.md`'s install markers and
    /// in reports.
    pub fn name(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Sysvinit => "sysvinit",
        }
    }
}

/// A cached ext4 root disk with nlxtp-guest installed, and the kernel and initrd to boot
/// it with.
#[derive(Debug, Clone)]
pub struct DistroImage {
    /// The init system.
    pub init: Init,
    /// The raw ext4 image. Never written: VMs boot overlays of it.
    pub disk: PathBuf,
    /// The guest's kernel (`/boot/vmlinuz-*` of the root file system).
    pub vmlinuz: PathBuf,
    /// The guest's initrd, made by initramfs-tools in the root file system.
    pub initrd: PathBuf,
    /// The kernel's version (`6.1.0-N-amd64`).
    pub kernel_version: String,
}

/// The root disk image for `init`, built first if the cache has none for the current
/// guest binary and dist files. Safe to call from several processes and threads at once.
///
/// # Errors
/// When debootstrap, apt, the install steps or mkfs.ext4 fail (the message holds the
/// tail of their log), or the guest binary cannot be built.
pub fn image(init: Init) -> Result<DistroImage> {
    let cache = crate::cache_dir().join("distro");
    fs::create_dir_all(&cache).with_context(|| format!("could not create {}", cache.display()))?;
    let guest = crate::guest::guest_binary()?;
    let lock = File::create(cache.join(".lock"))?;
    lock.lock().context("could not lock the distro cache")?;
    let rootfs = rootfs(&cache, init)?;
    let (vmlinuz, initrd, kernel_version) = boot_files(&rootfs)?;

    let mut key = Fnv::new();
    key.add(format!("{IMAGE_RECIPE} {IMAGE_BYTES} {}", rootfs.display()).as_bytes());
    key.add(&fs::read(&guest)?);
    for file in DIST_FILES {
        key.add(file.as_bytes());
        key.add(&fs::read(dist_dir().join(file))?);
    }
    key.add(fixture_agent().as_bytes());
    let images = cache.join("images");
    fs::create_dir_all(&images)?;
    let disk = images.join(format!("{}-{:016x}.ext4", init.name(), key.finish()));
    if !disk.exists() {
        build_image(&cache, init, &rootfs, &guest, &disk)?;
        prune(&images, init, &disk);
    }
    Ok(DistroImage {
        init,
        disk,
        vmlinuz,
        initrd,
        kernel_version,
    })
}

/// The files of `guest-min/dist/` an install uses.
const DIST_FILES: [&str; 7] = [
    "README.md",
    "nlxtp-guest.service",
    "nlxtp-guest.init",
    "nlxtp-guest.modules",
    "nlxtp-guest-hotplug.service",
    "nlxtp-guest-hotplug.init",
    "S99nlxtp",
];

fn dist_dir() -> PathBuf {
    crate::repo_root().join("guest-min/dist")
}

/// The install block for `init` in `guest-min/dist/README.md`: the `sh` code block after
/// the line `<!-- install: NAME -->`.
///
/// # Errors
/// When the README has no such block.
pub fn install_steps(init: Init) -> Result<String> {
    let readme = fs::read_to_string(dist_dir().join("README.md"))?;
    let marker = format!("<!-- install: {} -->", init.name());
    let block = readme
        .split_once(&marker)
        .and_then(|(_, after)| after.split_once("```sh\n"))
        .and_then(|(_, code)| code.split_once("```"))
        .map(|(code, _)| code.to_string());
    block.with_context(|| format!("guest-min/dist/README.md has no sh block after {marker:?}"))
}

/// The cached root file system tree for `init` (the directory that holds `root/`).
/// Called with the cache locked.
fn rootfs(cache: &Path, init: Init) -> Result<PathBuf> {
    let mirror = debian_mirror()?;
    let mut key = Fnv::new();
    key.add(
        format!(
            "{ROOTFS_RECIPE} {SUITE} {mirror} minbase {}",
            PACKAGES.join(",")
        )
        .as_bytes(),
    );
    let systemd = cache.join(format!("{SUITE}-systemd-{:016x}", key.finish()));
    if !systemd.join("complete").exists() {
        build_systemd_rootfs(cache, &systemd, &mirror)?;
    }
    if init == Init::Systemd {
        return Ok(systemd);
    }
    key.add(b"+sysvinit-core");
    let sysv = cache.join(format!("{SUITE}-sysvinit-{:016x}", key.finish()));
    if !sysv.join("complete").exists() {
        build_sysvinit_rootfs(cache, &systemd, &sysv)?;
    }
    Ok(sysv)
}

fn build_systemd_rootfs(cache: &Path, dir: &Path, mirror: &str) -> Result<()> {
    eprintln!(
        "nlxtp-harness: debootstrap {SUITE} (minbase + {}) from {mirror}: about 4 minutes, once; cached in {}",
        PACKAGES.join(", "),
        dir.display()
    );
    let started = Instant::now();
    let work = fresh_dir(&cache.join(".build-systemd"))?;
    let root = work.join("root");
    let log = work.join("debootstrap.log");
    run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&root)
            .arg(mirror),
        "debootstrap (scripts/setup installs it)",
        &log,
    )?;
    // What an installer would have set up: the root file system in fstab (else it stays
    // read-only), a host name of its own, no downloaded packages left behind.
    fs::write(
        root.join("etc/fstab"),
        "/dev/vda / ext4 errors=remount-ro 0 1\n",
    )?;
    fs::write(root.join("etc/hostname"), "nlxtp-debian\n")?;
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 nlxtp-debian\n",
    )?;
    in_chroot(&root, "apt-get clean", &log)?;
    finish_dir(&work, dir)?;
    eprintln!(
        "nlxtp-harness: debootstrap done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_sysvinit_rootfs(cache: &Path, systemd: &Path, dir: &Path) -> Result<()> {
    eprintln!(
        "nlxtp-harness: deriving the SysV init root file system (apt-get install sysvinit-core); cached in {}",
        dir.display()
    );
    let work = fresh_dir(&cache.join(".build-sysvinit"))?;
    let root = work.join("root");
    let log = work.join("apt.log");
    copy_tree(&systemd.join("root"), &root)?;
    // No service starts inside the chroot (policy-rc.d, as Debian's build tools do).
    let policy = root.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    chmod(&policy, 0o755)?;
    in_chroot(
        &root,
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -q --no-install-recommends sysvinit-core && apt-get clean",
        &log,
    )?;
    fs::remove_file(&policy)?;
    if !root.join("etc/rc2.d").is_dir() || fs::read_link(root.join("sbin/init")).is_ok() {
        bail!(
            "sysvinit-core did not take over /sbin/init; log: {}",
            log.display()
        );
    }
    finish_dir(&work, dir)
}

/// Copies the root file system, installs nlxtp-guest with the README's steps and the
/// test agent, and packs it into `disk`.
fn build_image(cache: &Path, init: Init, rootfs: &Path, guest: &Path, disk: &Path) -> Result<()> {
    let started = Instant::now();
    let work = fresh_dir(&cache.join(format!(".image-{}", init.name())))?;
    let root = work.join("root");
    let log = work.join("install.log");
    copy_tree(&rootfs.join("root"), &root)?;

    // As the README says: nlxtp-guest and the dist files in one directory, the steps run
    // there as root.
    let install = root.join("root/nlxtp-install");
    fs::create_dir_all(&install)?;
    fs::copy(guest, install.join("nlxtp-guest"))?;
    for file in DIST_FILES {
        fs::copy(dist_dir().join(file), install.join(file))?;
    }
    let steps = install_steps(init)?;
    in_chroot(
        &root,
        &format!("set -e; cd /root/nlxtp-install\n{steps}"),
        &log,
    )
    .with_context(|| format!("the install steps for {} failed", init.name()))?;
    fs::remove_dir_all(&install)?;
    add_agent(&root, init, &log)?;

    let tmp = disk.with_extension("tmp");
    run_logged(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "debian-root", "-d"])
            .arg(&root)
            .arg(&tmp)
            .arg(format!("{}k", IMAGE_BYTES >> 10)),
        "mkfs.ext4",
        &log,
    )?;
    fs::rename(&tmp, disk)?;
    fs::remove_dir_all(&work)?;
    eprintln!(
        "nlxtp-harness: {} image with nlxtp-guest installed in {:.1} s: {}",
        init.name(),
        started.elapsed().as_secs_f64(),
        disk.display()
    );
    Ok(())
}

/// The agent's program: one request per line on ttyS1, `ID COMMAND`; the answer is the
/// command's output, then `@@nlxtp-agent ID EXIT`.
fn fixture_agent() -> &'static str {
    r#"#!/bin/sh
# nlxtp test agent: a fixture of the nlxtp harness (harness/src/distro.rs), not part of
# nlxtp. Runs the host's commands, one per line "ID COMMAND", from the second serial port.
tty=/dev/ttyS1
stty -F "$tty" raw -echo 115200 || exit 1
exec <"$tty" >"$tty" 2>&1
echo "@@nlxtp-agent ready $(cut -d' ' -f1 /proc/uptime)"
while IFS= read -r line; do
  id=${line%% *}
  sh -c "${line#* }" </dev/null 2>&1
  echo "@@nlxtp-agent $id $?"
done
"#
}

fn add_agent(root: &Path, init: Init, log: &Path) -> Result<()> {
    let agent = root.join("usr/local/sbin/nlxtp-test-agent");
    fs::create_dir_all(agent.parent().unwrap_or(root))?;
    fs::write(&agent, fixture_agent())?;
    chmod(&agent, 0o755)?;
    match init {
        Init::Systemd => {
            fs::write(
                root.join("etc/systemd/system/nlxtp-test-agent.service"),
                "# nlxtp harness fixture: the host's commands on ttyS1.\n[Unit]\nDescription=nlxtp test agent (harness fixture)\n\n[Service]\nExecStart=/usr/local/sbin/nlxtp-test-agent\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n",
            )?;
            // The journal on the console too: the serial log then shows the daemon's
            // lines, which the harness prints when a test fails.
            fs::create_dir_all(root.join("etc/systemd/journald.conf.d"))?;
            fs::write(
                root.join("etc/systemd/journald.conf.d/nlxtp-test.conf"),
                "[Journal]\nForwardToConsole=yes\n",
            )?;
            in_chroot(root, "systemctl enable nlxtp-test-agent.service", log)
        }
        Init::Sysvinit => {
            let inittab = root.join("etc/inittab");
            let mut text = fs::read_to_string(&inittab)?;
            text.push_str("\n# nlxtp harness fixture: the host's commands on ttyS1.\nNA:2345:respawn:/usr/local/sbin/nlxtp-test-agent\n");
            fs::write(&inittab, text)?;
            Ok(())
        }
    }
}

/// The kernel, initrd and kernel version in the root file system's `/boot`.
fn boot_files(rootfs: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let boot = rootfs.join("root/boot");
    let version = fs::read_dir(&boot)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .max()
        .with_context(|| format!("no kernel in {}", boot.display()))?;
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        bail!("{} is missing", initrd.display());
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd, version))
}

/// The Debian mirror this machine's apt uses: `$NLXTP_DEBIAN_MIRROR`, else the `URIs:`
/// of the stanza for the release in `/etc/apt/sources.list.d/debian.sources`, else the
/// first matching `deb` line of `/etc/apt/sources.list`.
///
/// # Errors
/// When neither names a mirror for the release.
pub fn debian_mirror() -> Result<String> {
    if let Ok(mirror) = std::env::var("NLXTP_DEBIAN_MIRROR") {
        return Ok(mirror);
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        if let Some(uri) = deb822_mirror(&text, SUITE) {
            return Ok(uri);
        }
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["deb", uri, suite, ..] = words[..] {
                if suite == SUITE {
                    return Ok(uri.to_string());
                }
            }
        }
    }
    bail!("no Debian mirror for {SUITE} in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set NLXTP_DEBIAN_MIRROR")
}

/// The first URI of the first deb822 stanza of type `deb` whose suites include `suite`.
fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let debs = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        (debs && has_suite)
            .then(|| field("URIs"))
            .flatten()
            .and_then(|u| u.split_whitespace().next())
            .map(str::to_string)
    })
}

/// Runs `script` with `/bin/sh` inside `root`, with `/proc` mounted in a private mount
/// namespace (gone when it ends), its output appended to `log`.
fn in_chroot(root: &Path, script: &str, log: &Path) -> Result<()> {
    run_logged(
        Command::new("unshare")
            .args(["--mount", "--", "sh", "-c"])
            .arg(r#"mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -c "$2""#)
            .arg("sh")
            .arg(root)
            .arg(script)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
        &format!(
            "chroot {}: {}",
            root.display(),
            script.lines().last().unwrap_or("")
        ),
        log,
    )
}

/// Runs `command` with its output appended to `log`; on failure the error holds the
/// log's tail.
fn run_logged(command: &mut Command, what: &str, log: &Path) -> Result<()> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let status = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("could not run {what}"))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); {}:\n{}",
            log.display(),
            tail(&fs::read_to_string(log).unwrap_or_default())
        );
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("could not run cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed ({status})",
            from.display(),
            to.display()
        );
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::set_permissions(path, fs::Permissions::from_mode(mode))?)
}

/// An empty directory at `path` (a leftover of an interrupted build is removed).
fn fresh_dir(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("could not remove {}", path.display()))?;
    }
    fs::create_dir_all(path)?;
    Ok(path.to_path_buf())
}

/// Moves a finished build into its place and marks it complete.
fn finish_dir(work: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::rename(work, dir)?;
    File::create(dir.join("complete"))?;
    Ok(())
}

/// Removes all but the newest [`IMAGES_KEPT`] images of `init` (never `keep`).
fn prune(images: &Path, init: Init, keep: &Path) {
    let prefix = format!("{}-", init.name());
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".ext4"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    let old = found.len().saturating_sub(IMAGES_KEPT);
    for (_, path) in found.into_iter().take(old) {
        if path != keep {
            let _ = fs::remove_file(path);
        }
    }
}

/// FNV-1a, 64 bits: a stable cache key (std's hasher may change between releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One Debian guest: its root disk (an overlay of the cached image, kept across its
/// boots like a real VM's disk) and its shared disk, in a temporary directory.
#[derive(Debug)]
pub struct DistroGuest {
    dir: tempfile::TempDir,
    image: DistroImage,
    root: PathBuf,
    disk: PathBuf,
    boots: u32,
}

impl DistroGuest {
    /// A guest of `init` with a fresh shared disk of `disk_mib` MiB.
    ///
    /// # Errors
    /// As [`image`]; or when `qemu-img` or the shared disk fail.
    pub fn new(init: Init, disk_mib: u64) -> Result<DistroGuest> {
        let image = image(init)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("nlxtp-{}-", init.name()))
            .tempdir()?;
        let root = dir.path().join("root.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.disk)
            .arg(&root)
            .status()
            .context("could not run qemu-img (scripts/setup installs qemu-utils)")?;
        if !status.success() {
            bail!("qemu-img create of the root overlay failed ({status})");
        }
        let disk = dir.path().join("shared.img");
        create_image(&disk, disk_mib << 20, None, None)
            .context("could not create the shared disk")?;
        Ok(DistroGuest {
            dir,
            image,
            root,
            disk,
            boots: 0,
        })
    }

    /// The init system.
    pub fn init(&self) -> Init {
        self.image.init
    }

    /// The image this guest boots.
    pub fn image(&self) -> &DistroImage {
        &self.image
    }

    /// The shared disk image.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The shared area on the disk, as the host sees it.
    pub fn area(&self) -> VfatImage {
        VfatImage::new(&self.disk)
    }

    /// The working directory (serial logs, the agent's socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Boots the guest. Returns once QEMU runs and the agent's port is connected; the
    /// guest is up when [`DistroVm::wait_ready`] says so.
    ///
    /// # Errors
    /// When QEMU cannot start or its agent port does not appear within 10 s.
    pub fn boot(&mut self) -> Result<DistroVm> {
        self.boots += 1;
        let n = self.boots;
        let console = self.dir().join(format!("console-{n}.log"));
        let socket = self.dir().join(format!("agent-{n}.sock"));
        let agent_log = self.dir().join(format!("agent-{n}.log"));
        // The library's command line (no network, the console into the log, no reboot,
        // the kernel's flags for TCG), with the disks and the agent's port added: the
        // root disk is a qcow2 overlay, which the library's raw disks cannot be.
        let config = QemuConfig {
            arch: Arch::X86_64,
            accel: accelerator(Arch::X86_64, &self.image.vmlinuz),
            kernel: Some(self.image.vmlinuz.clone()),
            initrd: Some(self.image.initrd.clone()),
            append: "root=/dev/vda".to_string(),
            disks: Vec::new(),
            memory_mib: MEMORY_MIB,
            cpus: 1,
            serial_log: console.clone(),
        };
        let mut command = config.command();
        command
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio",
                self.root.display()
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            // ttyS1: QEMU waits for the harness to connect before it starts the guest,
            // so no byte from the agent is lost.
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=on",
                socket.display()
            ))
            .args(["-serial", "chardev:agent"]);
        let _ = fs::remove_file(&console);
        let mut vm = Machine::spawn(command, console.clone())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline || !vm.is_running() => {
                    return Err(e).context(format!(
                        "QEMU's agent port {} did not open; QEMU's log:\n{}",
                        socket.display(),
                        vm.messages()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let agent = Agent::start(stream, agent_log)?;
        Ok(DistroVm { vm, agent })
    }
}

/// A running Debian guest and its test agent. Dropping it stops QEMU (SIGTERM, then
/// SIGKILL) and, if the thread is panicking (a failed test), prints the console and the
/// agent's port.
#[derive(Debug)]
pub struct DistroVm {
    vm: Machine,
    agent: Agent,
}

impl DistroVm {
    /// The serial console so far.
    pub fn console(&self) -> String {
        self.vm.console()
    }

    /// Waits until the agent says it is up (the guest has booted to its multi-user
    /// runlevel or target); returns the time since QEMU started.
    ///
    /// # Errors
    /// When the deadline passes or QEMU exits first.
    pub fn wait_ready(&mut self, within: Duration) -> Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if self.agent.text().contains("@@nlxtp-agent ready") {
                return Ok(self.vm.uptime());
            }
            self.check(deadline, "the agent did not start")?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `command` in the guest (as root, `sh -c`); returns its exit code and its
    /// output (standard output and error together).
    ///
    /// # Errors
    /// When the command has not finished within `within`, or QEMU exits first.
    pub fn run(&mut self, command: &str, within: Duration) -> Result<(i32, String)> {
        let (id, from) = self.agent.send(command)?;
        let marker = format!("@@nlxtp-agent {id} ");
        let deadline = Instant::now() + within;
        loop {
            let text = self.agent.text();
            let answer = text.get(from..).unwrap_or("");
            if let Some(at) = answer.find(&marker) {
                let rest = &answer[at + marker.len()..];
                if let Some((code, _)) = rest.split_once('\n') {
                    let code = code.trim().parse().unwrap_or(-1);
                    return Ok((code, answer[..at].to_string()));
                }
            }
            self.check(deadline, &format!("{command:?} did not finish"))?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `command` and requires exit code 0 within 60 s; returns its output.
    ///
    /// # Errors
    /// As [`DistroVm::run`], and when the command fails.
    pub fn sh(&mut self, command: &str) -> Result<String> {
        let (code, out) = self.run(command, Duration::from_secs(60))?;
        if code != 0 {
            bail!("{command:?} exited with {code}:\n{out}");
        }
        Ok(out)
    }

    /// Sends `command` without waiting for it (`poweroff`: the agent may not live to
    /// answer).
    ///
    /// # Errors
    /// When the agent's port is closed.
    pub fn send(&mut self, command: &str) -> Result<()> {
        self.agent.send(command).map(|_| ())
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    ///
    /// # Errors
    /// When the deadline passes (QEMU is then killed).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        match self.vm.wait_exit(within) {
            Some(status) => Ok(status),
            None => {
                self.vm.kill();
                bail!(
                    "the guest did not power off within {within:?}; console:\n{}",
                    tail(&self.console())
                )
            }
        }
    }

    /// Pulls the plug (SIGKILL to QEMU).
    pub fn kill(&mut self) {
        self.vm.kill();
    }

    fn check(&mut self, deadline: Instant, what: &str) -> Result<()> {
        if !self.vm.is_running() {
            bail!(
                "QEMU exited: {what}; console:\n{}\nagent:\n{}",
                tail(&self.console()),
                tail(&self.agent.text())
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} in time; console:\n{}\nagent:\n{}",
                tail(&self.console()),
                tail(&self.agent.text())
            );
        }
        Ok(())
    }
}

impl Drop for DistroVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- console of the failed VM ({}) ---\n{}\n--- its agent port ({}) ---\n{}",
                self.vm.console.display(),
                tail(&self.console()),
                self.agent.log.display(),
                tail(&self.agent.text())
            );
        }
        self.vm.stop();
    }
}

/// A QEMU process that never outlives its owner: stopped on drop, SIGTERM first.
#[derive(Debug)]
struct Machine {
    child: Option<Child>,
    console: PathBuf,
    started: Instant,
}

impl Machine {
    fn spawn(mut command: Command, console: PathBuf) -> Result<Machine> {
        let child = command
            .spawn()
            .context("could not start qemu-system-x86_64 (scripts/setup installs it)")?;
        Ok(Machine {
            child: Some(child),
            console,
            started: Instant::now(),
        })
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// QEMU's own messages (its standard error, beside the console log).
    fn messages(&self) -> String {
        fs::read_to_string(self.console.with_extension("qemu.log")).unwrap_or_default()
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) | None => false,
        }
    }

    /// Waits up to `within` for QEMU to end by itself.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pulls the plug: SIGKILL, as a host crash or `virsh destroy` would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks QEMU to quit (SIGTERM), then kills it if it has not within 3 s.
    fn stop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                self.kill();
            }
        }
    }
}

/// The host's end of the agent's serial port: a thread copies everything the guest
/// writes into memory and into a log file.
#[derive(Debug)]
struct Agent {
    stream: UnixStream,
    received: Arc<Mutex<Vec<u8>>>,
    log: PathBuf,
    next_id: u32,
}

impl Agent {
    fn start(stream: UnixStream, log: PathBuf) -> Result<Agent> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut reader = stream.try_clone()?;
        let mut file = File::create(&log)?;
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when QEMU closes the port (it exited).
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let _ = file.write_all(&buf[..n]);
                if let Ok(mut all) = sink.lock() {
                    all.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(Agent {
            stream,
            received,
            log,
            next_id: 0,
        })
    }

    fn text(&self) -> String {
        let bytes = self.received.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Sends a request; returns its id and where its answer starts in [`Agent::text`].
    fn send(&mut self, command: &str) -> Result<(u32, usize)> {
        if command.contains('\n') {
            bail!("an agent command is one line: {command:?}");
        }
        self.next_id += 1;
        let from = self.text().len();
        self.stream
            .write_all(format!("{} {command}\n", self.next_id).as_bytes())
            .context("the agent's port is closed")?;
        Ok((self.next_id, from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822() {
        let text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            deb822_mirror(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(deb822_mirror(text, "trixie"), None);
    }

    #[test]
    fn install_blocks_are_in_the_readme() {
        for init in [Init::Systemd, Init::Sysvinit] {
            let steps = install_steps(init).unwrap();
            assert!(steps.contains("install -m 0755 nlxtp-guest"), "{steps}");
        }
    }
}
