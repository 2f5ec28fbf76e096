//! A real libvirt daemon for tests: `virtlogd` and `libvirtd --listen` started here (no
//! systemd on the test machines), with what the Debian package's install script would
//! have made (the `libvirt-qemu` user, the `kvm` and `libvirt-qemu` groups,
//! `/var/log/libvirt`), TCP on 127.0.0.1 without authentication, a `dir` storage pool
//! under `/var/lib/libvirt/`, and TCG domains that boot the harness's guest kernel and
//! initramfs directly, with the shared disk as a volume of that pool
//! (`<serial>NLXTP</serial>`, the rule of `nlxtp_host::area::libvirt`).
//!
//! One daemon per test binary ([`Libvirtd::shared`]); it serves `qemu:///system` and
//! `qemu+tcp://127.0.0.1:PORT/system`. Dropping the last handle stops it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where boot files and pools live (the QEMU user cannot open files under `/root`).
pub const BASE: &str = "/var/lib/libvirt/nlxtp-test";

/// The TCP port of the test daemon.
pub const PORT: u16 = 16519;

/// A running libvirtd (and virtlogd) of the tests.
#[derive(Debug)]
pub struct Libvirtd {
    conf: PathBuf,
    started_here: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not run {program} (scripts/setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `virsh -c URI ARGS`.
///
/// # Errors
/// When virsh fails.
pub fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-c", uri];
    all.extend_from_slice(args);
    run("virsh", &all)
}

impl Libvirtd {
    /// The local URI.
    pub const SYSTEM: &'static str = "qemu:///system";

    /// The remote URI (TCP on loopback).
    pub fn tcp_uri(&self) -> String {
        format!("qemu+tcp://127.0.0.1:{PORT}/system")
    }

    /// The daemons of this test binary: started by the first caller, shared by the tests
    /// that run at the same time, stopped when the last of them drops its handle.
    ///
    /// # Errors
    /// As [`Libvirtd::start`].
    pub fn shared() -> Result<Arc<Libvirtd>> {
        static SHARED: Mutex<Weak<Libvirtd>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(daemon) = shared.upgrade() {
            return Ok(daemon);
        }
        let daemon = Arc::new(Self::start()?);
        *shared = Arc::downgrade(&daemon);
        Ok(daemon)
    }

    /// Starts the daemons, or uses ones already running (then leaves them running).
    ///
    /// # Errors
    /// When libvirt is not installed or does not come up within its deadline.
    pub fn start() -> Result<Libvirtd> {
        if !Path::new("/usr/sbin/libvirtd").exists() {
            bail!("libvirtd is not installed: run scripts/setup");
        }
        prepare_host()?;
        let conf = PathBuf::from(BASE).join("libvirtd.conf");
        std::fs::create_dir_all(BASE)?;
        std::fs::write(
            &conf,
            format!(
                "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n\
                 listen_addr = \"127.0.0.1\"\ntcp_port = \"{PORT}\"\n"
            ),
        )?;
        let up = || virsh(Self::SYSTEM, &["version"]).is_ok();
        let mut started_here = false;
        if !up() {
            let _ = run("virtlogd", &["-d"]);
            run(
                "libvirtd",
                &["-d", "--listen", "-f", conf.to_str().unwrap()],
            )?;
            started_here = true;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !up() {
                if Instant::now() > deadline {
                    bail!("libvirtd did not answer within 60 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(Libvirtd { conf, started_here })
    }

    /// Defines the `dir` pool `name` under [`BASE`] (started), unless it exists.
    ///
    /// # Errors
    /// When virsh fails.
    pub fn pool(&self, name: &str) -> Result<PathBuf> {
        let dir = PathBuf::from(BASE).join("pools").join(name);
        std::fs::create_dir_all(&dir)?;
        if virsh(Self::SYSTEM, &["pool-info", name]).is_err() {
            virsh(
                Self::SYSTEM,
                &[
                    "pool-define-as",
                    name,
                    "dir",
                    "--target",
                    dir.to_str().unwrap(),
                ],
            )?;
        }
        if !virsh(Self::SYSTEM, &["pool-info", name])?.contains("running") {
            virsh(Self::SYSTEM, &["pool-start", name])?;
        }
        virsh(Self::SYSTEM, &["pool-refresh", name])?;
        Ok(dir)
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if self.started_here {
            for pidfile in ["/run/libvirtd.pid", "/run/virtlogd.pid"] {
                if let Ok(pid) = std::fs::read_to_string(pidfile) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
        let _ = &self.conf;
    }
}

/// What the package's install script would make, and `/dev/kvm` as udev would leave it
/// (0660 root:kvm; at 0600 libvirt re-probes QEMU at every start, FIELD-NOTES).
fn prepare_host() -> Result<()> {
    for group in ["kvm", "libvirt-qemu", "libvirt"] {
        if run("getent", &["group", group]).is_err() {
            run("groupadd", &["--system", group])?;
        }
    }
    if run("getent", &["passwd", "libvirt-qemu"]).is_err() {
        run(
            "useradd",
            &[
                "--system",
                "--gid",
                "libvirt-qemu",
                "--groups",
                "kvm",
                "--home-dir",
                "/var/lib/libvirt",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
        )?;
    }
    std::fs::create_dir_all("/var/log/libvirt/qemu")?;
    if Path::new("/dev/kvm").exists() {
        let _ = run("chgrp", &["kvm", "/dev/kvm"]);
        let _ = run("chmod", &["0660", "/dev/kvm"]);
    }
    Ok(())
}

/// A TCG domain that boots `kernel` and `initramfs` (copied under [`BASE`]) with the
/// guest's command line `append`, and has the shared disk `volume` of `pool`
/// (`<serial>NLXTP</serial>`), defined persistently on `uri`. No network device.
///
/// # Errors
/// When copying or virsh fails.
pub fn define_domain(
    uri: &str,
    name: &str,
    kernel: &Path,
    initramfs: &Path,
    append: &str,
    pool: &str,
    volume: &str,
) -> Result<()> {
    let boot = PathBuf::from(BASE).join("boot").join(name);
    std::fs::create_dir_all(&boot)?;
    let k = boot.join("vmlinuz");
    let i = boot.join("initramfs.img");
    std::fs::copy(kernel, &k)?;
    std::fs::copy(initramfs, &i)?;
    let xml = format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
    <initrd>{}</initrd>
    <cmdline>console=ttyS0 panic=-1 no_timer_check {append}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
      <serial>NLXTP</serial>
    </disk>
    <serial type='file'><source path='{}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
        k.display(),
        i.display(),
        boot.join("serial.log").display(),
    );
    let file = boot.join("domain.xml");
    std::fs::write(&file, xml)?;
    let _ = virsh(uri, &["destroy", name]);
    let _ = virsh(uri, &["undefine", name]);
    virsh(uri, &["define", file.to_str().unwrap()])?;
    Ok(())
}

/// Waits until the domain `name` is shut off, up to `deadline`.
///
/// # Errors
/// When it still runs at the deadline.
pub fn wait_shut_off(uri: &str, name: &str, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if virsh(uri, &["domstate", name])?.trim() == "shut off" {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("domain {name} still runs after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
