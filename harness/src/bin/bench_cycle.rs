//! Cycle timings on real VMs (issue 6) and the host's cost of following output live
//! (issue 8). Prints Markdown for docs/benchmarks.md.
//!
//! Run: `cargo run --release -p nlxtp-harness --bin nlxtp-bench-cycle`

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nlxtp_core::StatusReader;
use nlxtp_harness::vm::{archive, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::{read_status, Patience, SharedArea};
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, Compression, UploadOptions};

const ROUNDS: usize = 3;

fn uptime_after(serial: &str, marker: &str) -> Option<f64> {
    let line = serial.lines().find(|l| l.contains(marker))?;
    line.rsplit(' ').next()?.trim().parse().ok()
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<()> {
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        let cycle = Instant::now();
        let mut setup = GuestSetup::new(32)?;
        let script = "echo \"script started at uptime $(cut -d' ' -f1 /proc/uptime)\"\n";
        ops::upload(
            &setup.area(),
            &archive(&[("auto_exec.sh", script.as_bytes(), 0o755)])?[..],
            &UploadOptions::default(),
        )?;
        let uploaded = cycle.elapsed();
        let mut vm = setup.boot(false)?;
        let booted = vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE)?;
        vm.wait_exit(Duration::from_secs(120))?;
        let powered_off = vm.uptime();
        let mut out = Vec::new();
        ops::archive::write_download(
            &setup.area(),
            &mut out,
            Compression::None,
            &Default::default(),
            &mut |_| {},
        )?;
        let whole = cycle.elapsed();
        let stdout = String::from_utf8_lossy(
            &setup
                .area()
                .read_file(&nlxtp_host::area::AreaPath::new("nlxtp/stdout.txt")?, 4096)?,
        )
        .into_owned();
        let (Some(daemon), Some(script)) = (
            uptime_after(&vm.serial(), "starting the daemon at uptime"),
            uptime_after(&stdout, "script started at uptime"),
        ) else {
            bail!("round {round}: no uptimes in the serial log or stdout");
        };
        rows.push((uploaded, booted, daemon, script, powered_off, whole));
        eprintln!(
            "round {round} done in {:.1} s ({})",
            whole.as_secs_f64(),
            vm.accel()
        );
    }
    println!("| round | upload (incl. guest build, disk) | QEMU start -> guest /init | guest uptime at daemon start | daemon start -> script start | QEMU start -> power off | whole cycle |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (uploaded, booted, daemon, script, off, whole)) in rows.iter().enumerate() {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} s | {:.0} ms | {:.2} s | {:.2} s |",
            i + 1,
            uploaded.as_secs_f64(),
            booted.as_secs_f64(),
            daemon,
            (script - daemon) * 1000.0,
            off.as_secs_f64(),
            whole.as_secs_f64()
        );
    }

    // Following one VM's output for 20 s at the CLI's default poll interval (0.5 s).
    let mut setup = GuestSetup::new(32)?;
    let script = "i=1; while [ $i -le 40 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.5; done\n";
    ops::upload(
        &setup.area(),
        &archive(&[("auto_exec.sh", script.as_bytes(), 0o755)])?[..],
        &UploadOptions::default(),
    )?;
    let mut vm = setup.boot(true)?;
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE)?;
    let area = setup.area();
    // Wait for the run to start, so the measured time is all following.
    let mut reader = StatusReader::new();
    while read_status(&area, &mut reader, Patience::default())?.is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut bytes = 0usize;
    ops::logs::follow(
        &area,
        Streams::Stdout,
        Some(Duration::from_secs(120)),
        Duration::from_millis(500),
        &mut |_, b| {
            bytes += b.len();
            Ok(())
        },
        &mut || {},
    )?;
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!();
    println!("| following one VM's output (poll 0.5 s) | value |");
    println!("|---|---|");
    println!("| wall time | {wall:.1} s |");
    println!("| host CPU time of the follower | {cpu:.2} s |");
    println!("| share of one core | {:.2} % |", cpu / wall * 100.0);
    println!("| bytes followed | {bytes} |");
    Ok(())
}
