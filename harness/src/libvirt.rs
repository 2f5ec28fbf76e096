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
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where boot files and pools live (the QEMU user cannot open files under `/root`).
pub const BASE: &str = "/var/lib/libvirt/nlxtp-test";

/// The TCP port of the test daemon.
pub const PORT: u16 = 16519;

/// The TCP port of the second host's daemon (on 127.0.0.2).
pub const PORT2: u16 = 16520;

/// The TCP port of the daemon that asks for SASL credentials (on 127.0.0.3).
pub const PORT_SASL: u16 = 16521;

/// A running libvirtd (and virtlogd) of the tests.
#[derive(Debug)]
pub struct Libvirtd {
    /// The URI the tests manage it through.
    uri: String,
    /// The TCP URI.
    tcp: String,
    /// Started here with `-d`: stopped through its pid files.
    started_here: bool,
    /// A daemon in its own mount namespace (a second host): its process, and virtlogd's
    /// pid file.
    isolated: Option<(Child, PathBuf)>,
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

    /// The URI to manage this daemon through: `qemu:///system` for the first host,
    /// TCP for a second one (whose local socket is in its own mount namespace).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The remote URI (TCP on loopback).
    pub fn tcp_uri(&self) -> &str {
        &self.tcp
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
        Ok(Libvirtd {
            uri: Self::SYSTEM.into(),
            tcp: format!("qemu+tcp://127.0.0.1:{PORT}/system"),
            started_here,
            isolated: None,
        })
    }

    /// A second host: a libvirtd (and its virtlogd) in a mount namespace of its own, with
    /// its own `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt/qemu`,
    /// `/var/cache/libvirt` and `/var/log/libvirt`, listening on 127.0.0.2:[`PORT2`].
    /// The rest of the filesystem (boot files and pools under [`BASE`]) is shared.
    ///
    /// # Errors
    /// When it does not come up within its deadline.
    pub fn second_host() -> Result<Libvirtd> {
        Self::isolated_host("host2", "127.0.0.2", PORT2, "none", true)
    }

    /// A host whose libvirtd asks TCP clients for SASL credentials (`auth_tcp =
    /// "sasl"`) and knows none: every client is refused. Isolated as
    /// [`Libvirtd::second_host`], on 127.0.0.3:[`PORT_SASL`], under
    /// `BASE/host-sasl`.
    ///
    /// # Errors
    /// When it does not listen within its deadline.
    pub fn sasl_host() -> Result<Libvirtd> {
        Self::isolated_host("host-sasl", "127.0.0.3", PORT_SASL, "sasl", false)
    }

    /// A libvirtd in a mount namespace of its own under `BASE/dir`, on `addr:port` with
    /// `auth_tcp = auth`; waits until `virsh version` answers (`answers`), else until
    /// the port takes connections.
    fn isolated_host(
        dir: &str,
        addr: &str,
        port: u16,
        auth: &str,
        answers: bool,
    ) -> Result<Libvirtd> {
        prepare_host()?;
        let root = PathBuf::from(BASE).join(dir);
        for dir in ["etc", "qemu", "cache", "log"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let conf = root.join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"{auth}\"\n\
                 listen_addr = \"{addr}\"\ntcp_port = \"{port}\"\n"
            ),
        )?;
        let virtlogd_pid = root.join("virtlogd.pid");
        let r = root.display();
        let script = format!(
            "set -e
mkdir -p /run/libvirt
mount -t tmpfs tmpfs /run/libvirt
mount --bind {r}/etc /etc/libvirt
mount --bind {r}/qemu /var/lib/libvirt/qemu
mount --bind {r}/cache /var/cache/libvirt
mount --bind {r}/log /var/log/libvirt
virtlogd -d -p {}
exec libvirtd --listen -f {} -p /run/libvirt/libvirtd.pid",
            virtlogd_pid.display(),
            conf.display()
        );
        let log = std::fs::File::create(root.join("libvirtd.log"))?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start the libvirtd of {dir}"))?;
        let tcp = format!("qemu+tcp://{addr}:{port}/system");
        let daemon = Libvirtd {
            uri: tcp.clone(),
            tcp,
            started_here: false,
            isolated: Some((child, virtlogd_pid)),
        };
        let up = || {
            if answers {
                virsh(daemon.uri(), &["version"]).is_ok()
            } else {
                std::net::TcpStream::connect((addr, port)).is_ok()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !up() {
            if Instant::now() > deadline {
                bail!(
                    "the libvirtd of {dir} did not answer within 60 s: see {}/libvirtd.log",
                    root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }

    /// Defines the `dir` pool `name` under [`BASE`] (started), unless it exists.
    ///
    /// # Errors
    /// When virsh fails.
    pub fn pool(&self, name: &str) -> Result<PathBuf> {
        let dir = PathBuf::from(BASE).join("pools").join(name);
        std::fs::create_dir_all(&dir)?;
        if virsh(&self.uri, &["pool-info", name]).is_err() {
            virsh(
                &self.uri,
                &[
                    "pool-define-as",
                    name,
                    "dir",
                    "--target",
                    dir.to_str().unwrap(),
                ],
            )?;
        }
        if !virsh(&self.uri, &["pool-info", name])?.contains("running") {
            virsh(&self.uri, &["pool-start", name])?;
        }
        virsh(&self.uri, &["pool-refresh", name])?;
        Ok(dir)
    }
}

/// Whether the process `pid` has ended: gone, or a zombie (a daemon's parent is init,
/// which may not reap it at once).
fn exited(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Sends SIGTERM to the daemons whose pid files are `pidfiles` and waits (up to 30 s,
/// then SIGKILL) until each has exited, so that the next daemon started in their place
/// meets none of them still going away.
fn stop_daemons(pidfiles: &[&Path]) {
    let pids: Vec<String> = pidfiles
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|pid| pid.trim().to_owned())
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    for pid in &pids {
        let _ = Command::new("kill").arg(pid).status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for pid in &pids {
        while !exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited(pid) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
            let killed = Instant::now() + Duration::from_secs(5);
            while !exited(pid) && Instant::now() < killed {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if self.started_here {
            stop_daemons(&[
                Path::new("/run/libvirtd.pid"),
                Path::new("/run/virtlogd.pid"),
            ]);
        }
        if let Some((child, virtlogd_pid)) = &mut self.isolated {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            stop_daemons(&[virtlogd_pid.as_path()]);
        }
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

/// The local ports of the TCP connections that the process `pid` holds to `port`
/// (its libvirt connections, to find them among the daemon's clients).
pub fn tcp_ports_of(pid: u32, port: u16) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
            (port_of(remote)? == port && inodes.iter().any(|i| i == inode))
                .then(|| port_of(local))?
        })
        .collect()
}

impl Libvirtd {
    /// Waits until this daemon (the first host's) has let go of the clients that
    /// connected from the local TCP ports `ports`, and none of its workers is busy: a
    /// request a killed client had sent is then carried out (or dropped), not pending.
    ///
    /// # Errors
    /// When it is still busy at the deadline, or `virt-admin` fails.
    pub fn wait_done_with(&self, ports: &[u16], deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        let admin = |args: &[&str]| run("virt-admin", args);
        loop {
            let mut busy = Vec::new();
            for line in admin(&["srv-clients-list", "libvirtd"])?.lines() {
                let mut cols = line.split_whitespace();
                let (Some(id), Some("tcp")) = (cols.next(), cols.next()) else {
                    continue;
                };
                // A client that left meanwhile has no info any more.
                let Ok(info) = admin(&["client-info", "libvirtd", id]) else {
                    continue;
                };
                let from = info
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("sock_addr"))
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.trim().parse::<u16>().ok());
                if from.is_some_and(|p| ports.contains(&p)) {
                    busy.push(format!("client {id}"));
                }
            }
            if busy.is_empty() {
                let pool = admin(&["srv-threadpool-info", "libvirtd"])?;
                let field = |name: &str| {
                    pool.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(':'))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                if field("jobQueueDepth") == Some(0) && field("freeWorkers") == field("nWorkers") {
                    return Ok(());
                }
                busy.push(format!("workers: {}", pool.trim().replace('\n', ", ")));
            }
            if Instant::now() > end {
                bail!(
                    "libvirtd still busy after {deadline:?}: {}",
                    busy.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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

/// The `nlxtp-libvirt` binary: the one `cargo test --workspace --features
/// nlxtp-host/libvirt` built beside this test, else built now (into a target directory
/// of its own, as the outer cargo holds the lock of its own).
///
/// # Errors
/// When cargo fails.
pub fn nlxtp_libvirt_binary() -> Result<PathBuf> {
    crate::host_binary("nlxtp-libvirt", "libvirt")
}

/// The definition of a domain that is never booted: only its shared disk, the volume
/// `volume` of `pool` as `target` (`vda`, `vdb`), marked with `<serial>NLXTP</serial>`.
pub fn idle_domain_xml(name: &str, pool: &str, volume: &str, target: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>\
         <disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
         <source pool='{pool}' volume='{volume}'/><target dev='{target}' bus='virtio'/>\
         <serial>NLXTP</serial></disk></devices></domain>"
    )
}
