//! nlxtp's boot cost on each kind of guest, side by side: the project's busybox guest,
//! Debian 12 with systemd, Debian 12 with SysV init (images as in `e2e_distro`). Prints
//! Markdown for docs/benchmarks.md.
//!
//! Run: `cargo run --release -p nlxtp-harness --bin nlxtp-bench-boot`
//!
//! Every time is the guest's own `CLOCK_BOOTTIME` (`/proc/uptime`): the script prints
//! when it starts, and when the daemon was started (the start time of its grandparent in
//! `/proc`: script <- monitor <- daemon); under systemd the agent also asks when the
//! unit's start began (`InactiveExitTimestampMonotonic`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nlxtp_harness::distro::{DistroGuest, Init};
use nlxtp_harness::vm::{archive, GuestSetup};
use nlxtp_host::area::{AreaPath, SharedArea};
use nlxtp_host::ops::{self, UploadOptions};

const ROUNDS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(180);

/// Prints the script's start (its first command, a shell builtin) and its daemon's start
/// (process start time, in clock ticks of 1/100 s since boot) as uptimes.
const SCRIPT: &str = r#"read start _ </proc/uptime
daemon=$(sed 's/.*) //' /proc/$PPID/stat | cut -d' ' -f2)
ticks=$(sed 's/.*) //' /proc/$daemon/stat | cut -d' ' -f20)
echo "script start $start"
echo "daemon start $((ticks / 100)).$(printf %02d $((ticks % 100)))"
"#;

/// One boot's figures, in seconds of guest uptime.
struct Boot {
    unit: Option<f64>,
    daemon: f64,
    script: f64,
    /// QEMU start until the host read a record of the run.
    host_seen: Duration,
}

fn main() -> Result<()> {
    let mut table: Vec<(&str, Vec<Boot>)> = Vec::new();
    for (name, init) in [
        ("busybox initramfs", None),
        ("Debian 12, systemd", Some(Init::Systemd)),
        ("Debian 12, SysV init", Some(Init::Sysvinit)),
    ] {
        let mut boots = Vec::new();
        for round in 1..=ROUNDS {
            let boot = match init {
                None => busybox()?,
                Some(init) => distro(init)?,
            };
            eprintln!(
                "{name}, round {round}: daemon start -> script start {:.0} ms",
                (boot.script - boot.daemon) * 1e3
            );
            boots.push(boot);
        }
        table.push((name, boots));
    }
    println!("| guest | round | unit start -> script start | daemon start -> script start | uptime at daemon start | uptime at script start | QEMU start -> run seen by the host |");
    println!("|---|---|---|---|---|---|---|");
    for (name, boots) in &table {
        for (i, b) in boots.iter().enumerate() {
            let unit = b.unit.map_or("(no unit)".to_string(), |u| {
                format!("{:.0} ms", (b.script - u) * 1e3)
            });
            println!(
                "| {name} | {} | {unit} | {:.0} ms | {:.2} s | {:.2} s | {:.1} s |",
                i + 1,
                (b.script - b.daemon) * 1e3,
                b.daemon,
                b.script,
                b.host_seen.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn upload(area: &dyn SharedArea) -> Result<()> {
    let bytes = archive(&[("auto_exec.sh", SCRIPT.as_bytes(), 0o755)])?;
    ops::upload(area, &bytes[..], &UploadOptions::default())?;
    Ok(())
}

/// Waits until the host reads a record of the run (running or ended).
fn wait_seen(area: &dyn SharedArea, since: Instant) -> Result<Duration> {
    let mut reader = nlxtp_core::StatusReader::new();
    while nlxtp_host::area::read_status(area, &mut reader, Default::default())?.is_none() {
        if since.elapsed() > DEADLINE {
            bail!("no record within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(since.elapsed())
}

fn uptimes(area: &dyn SharedArea) -> Result<(f64, f64)> {
    let stdout = area.read_file(&AreaPath::new("nlxtp/stdout.txt")?, 4096)?;
    let stdout = String::from_utf8_lossy(&stdout);
    let find = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no {label:?} in the script's output: {stdout:?}"))
    };
    Ok((find("daemon start ")?, find("script start ")?))
}

fn busybox() -> Result<Boot> {
    let mut setup = GuestSetup::new(32)?;
    upload(&setup.area())?;
    let started = Instant::now();
    let mut vm = setup.boot(false)?;
    let host_seen = wait_seen(&setup.area(), started)?;
    vm.wait_exit(DEADLINE)?;
    let (daemon, script) = uptimes(&setup.area())?;
    Ok(Boot {
        unit: None,
        daemon,
        script,
        host_seen,
    })
}

fn distro(init: Init) -> Result<Boot> {
    let mut guest = DistroGuest::new(init, 32)?;
    upload(&guest.area())?;
    let started = Instant::now();
    let mut vm = guest.boot()?;
    let host_seen = wait_seen(&guest.area(), started)?;
    vm.wait_ready(DEADLINE)?;
    let unit = match init {
        Init::Systemd => {
            let us =
                vm.sh("systemctl show -p InactiveExitTimestampMonotonic --value nlxtp-guest")?;
            Some(us.trim().parse::<f64>()? / 1e6)
        }
        Init::Sysvinit => None,
    };
    // The script's output is on the disk once the daemon is done; then power off.
    let done = match init {
        Init::Systemd => "systemctl show -p SubState --value nlxtp-guest | grep -qx exited",
        Init::Sysvinit => "! service nlxtp-guest status >/dev/null",
    };
    let deadline = Instant::now() + DEADLINE;
    while vm.run(done, DEADLINE)?.0 != 0 {
        if Instant::now() > deadline {
            bail!("the daemon did not finish");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.send("poweroff")?;
    vm.wait_exit(DEADLINE)?;
    let (daemon, script) = uptimes(&guest.area())?;
    Ok(Boot {
        unit,
        daemon,
        script,
        host_seen,
    })
}
