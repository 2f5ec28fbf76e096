//! A container with no network: a busybox root filesystem with the static guest binary,
//! run in fresh mount, PID, UTS, IPC and network namespaces (`unshare ... chroot`). Its
//! shared area is the directory `/nlxtp` inside its root filesystem, watched by the
//! guest daemon.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The shared directory inside the container.
pub const SHARED_DIR: &str = "nlxtp";

/// A running container; dropping it kills everything in it.
#[derive(Debug)]
pub struct Container {
    root: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Container {
    /// Builds the root filesystem and starts the container with the guest daemon
    /// watching its shared directory; returns once the daemon says it watches.
    ///
    /// # Errors
    /// When the guest binary cannot be built or the container does not come up.
    pub fn start(heartbeat_ms: u32) -> Result<Container> {
        let guest = crate::guest::guest_binary()?;
        let root = tempfile::Builder::new().prefix("nlxtp-ct-").tempdir()?;
        let r = root.path();
        for dir in [
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "proc",
            "tmp",
            "etc",
            "root",
            "var/lib/dpkg/info",
            "var/log",
            SHARED_DIR,
        ] {
            fs::create_dir_all(r.join(dir))?;
        }
        fs::write(r.join("var/lib/dpkg/status"), "")?;
        fs::copy("/bin/busybox", r.join("bin/busybox"))
            .context("could not copy /bin/busybox (install busybox-static)")?;
        symlink("busybox", r.join("bin/sh"))?;
        fs::copy(&guest, r.join("bin/nlxtp-guest"))?;
        fs::set_permissions(r.join("bin/nlxtp-guest"), fs::Permissions::from_mode(0o755))?;
        for alias in ["archive_setstatus", "nlxtp-status"] {
            symlink("nlxtp-guest", r.join("bin").join(alias))?;
        }
        fs::write(
            r.join("etc/os-release"),
            "ID=nlxtp-container\nVERSION_ID=1\n",
        )?;
        let log = r.join("var/log/nlxtp-guest.log");
        let init = format!(
            "/bin/busybox mount -t proc proc /proc && /bin/busybox --install -s /bin && exec /bin/nlxtp-guest daemon --dir /{SHARED_DIR} --heartbeat-ms {heartbeat_ms} 2>>/var/log/nlxtp-guest.log"
        );
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--uts",
                "--ipc",
                "--net",
                "--fork",
                "--kill-child",
            ])
            .arg("chroot")
            .arg(r)
            .args(["/bin/sh", "-c", &init])
            .env_clear()
            .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("could not run unshare (util-linux) to start the container")?;
        let mut container = Container {
            root,
            child: Some(child),
            log,
        };
        container.wait_log("daemon watching", Duration::from_secs(30))?;
        Ok(container)
    }

    /// The container's root filesystem, as the host sees it.
    pub fn rootfs(&self) -> &Path {
        self.root.path()
    }

    /// The shared directory, as the host sees it (the TARGET for nlxtp).
    pub fn shared(&self) -> PathBuf {
        self.root.path().join(SHARED_DIR)
    }

    /// The guest daemon's log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `text` in the daemon's log.
    ///
    /// # Errors
    /// When the container exits or the deadline passes.
    pub fn wait_log(&mut self, text: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(text) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the container exited ({status}) before its log showed {text:?}:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the container's log did not show {text:?} within {within:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of the failed container ---\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            // --kill-child: when unshare dies, the container's PID 1 dies, and with it
            // every process in its PID namespace.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
