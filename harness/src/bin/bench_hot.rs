//! A job for a running VM by hot-plug (issue 15) side by side with today's
//! reboot-per-job cycle, on the same busybox guest under the same QEMU, in one run.
//!
//! - Reboot per job (5 rounds): upload into the boot-time shared disk of a VM that is
//!   off, boot it, the job runs, the VM powers off, download.
//! - Hot-plug (20 jobs, one VM booted once): `ops::hot::attach` (create on the first,
//!   write, plug in), the guest runs the job, `detach` once the guest released the disk,
//!   download.
//!
//! Each job is the same one-line script. Prints Markdown for docs/benchmarks.md.
//!
//! Run: `cargo run --release -p nlxtp-harness --bin nlxtp-bench-hot`

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nlxtp_harness::vm::{archive, download_files, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::SharedArea;
use nlxtp_host::ops::hot::{self, AttachOptions, DetachOptions, HotDisk};
use nlxtp_host::ops::{self, UploadOptions, WaitOutcome};

const REBOOT_ROUNDS: usize = 5;
const HOT_JOBS: usize = 20;
const RUN_DEADLINE: Duration = Duration::from_secs(180);

fn job() -> Result<Vec<u8>> {
    archive(&[(
        "auto_exec.sh",
        b"#!/bin/sh\necho done > result.txt\n",
        0o755,
    )])
}

fn wait_done(area: &dyn SharedArea, poll: Duration) -> Result<()> {
    match ops::status::wait(area, Some(RUN_DEADLINE), poll, &mut |_| Ok(()))? {
        WaitOutcome::Done(_) => Ok(()),
        other => bail!("the run did not end: {other:?}"),
    }
}

fn started(area: &dyn SharedArea) -> Result<Instant> {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        if ops::status(area)?.record.is_some() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the job never started");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Upload, boot, run, power off, download: one job's whole cost with a reboot.
fn reboot_cycle(setup: &mut GuestSetup) -> Result<Duration> {
    let start = Instant::now();
    ops::upload(&setup.area(), &job()?[..], &UploadOptions::default())?;
    let mut vm = setup.boot(false)?;
    vm.wait_exit(RUN_DEADLINE)?;
    let files = download_files(&setup.area())?;
    if files.get("result.txt").map(Vec::as_slice) != Some(b"done\n") {
        bail!("the rebooted job left no result: {:?}", files.keys());
    }
    Ok(start.elapsed())
}

/// Per hot job: (whole job, command to script start, script end to results downloaded).
fn hot_jobs(setup: &mut GuestSetup) -> Result<Vec<(Duration, Duration, Duration)>> {
    let mut vm = setup.boot_hot()?;
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE)?;
    let mut qmp = vm.qmp()?;
    let image = setup.dir().join("bench-hot.img");
    let options = AttachOptions {
        size: 8 << 20,
        ..AttachOptions::default()
    };
    let mut rows = Vec::new();
    for i in 0..HOT_JOBS {
        let sent = Instant::now();
        hot::attach(&mut qmp, &image, &job()?[..], &options).with_context(|| format!("job {i}"))?;
        let disk = HotDisk::open(&image)?;
        let began = started(disk.area())?;
        wait_done(disk.area(), Duration::from_millis(10))?;
        let ended = Instant::now();
        let detached = disk.detach(&mut qmp, &DetachOptions::default())?;
        if !detached.released_by_guest {
            bail!("job {i}: the guest did not release its disk: {detached:?}");
        }
        let files = download_files(disk.area())?;
        if files.get("result.txt").map(Vec::as_slice) != Some(b"done\n") {
            bail!("hot job {i} left no result: {:?}", files.keys());
        }
        rows.push((sent.elapsed(), began - sent, ended.elapsed()));
    }
    vm.stop();
    Ok(rows)
}

fn main() -> Result<()> {
    let mut setup = GuestSetup::new(16)?;
    let mut reboots = Vec::new();
    for _ in 0..REBOOT_ROUNDS {
        reboots.push(reboot_cycle(&mut setup)?);
    }
    let hot = hot_jobs(&mut setup)?;
    let whole = median(hot.iter().map(|r| r.0).collect());
    let to_start = median(hot.iter().map(|r| r.1).collect());
    let to_results = median(hot.iter().map(|r| r.2).collect());
    let reboot = median(reboots.clone());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("| what | median | all |");
    println!("|---|---|---|");
    println!(
        "| reboot per job: upload, boot, run, power off, download ({REBOOT_ROUNDS} rounds) | {} | {} |",
        secs(reboot),
        reboots.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| hot-plug per job: attach, run, detach, download ({HOT_JOBS} jobs, one boot) | {} | min {}, max {} |",
        secs(whole),
        secs(hot.iter().map(|r| r.0).min().unwrap_or_default()),
        secs(hot.iter().map(|r| r.0).max().unwrap_or_default())
    );
    println!(
        "| hot-plug: host command to script start (goal < 1 s) | {} | max {} |",
        secs(to_start),
        secs(hot.iter().map(|r| r.1).max().unwrap_or_default())
    );
    println!(
        "| hot-plug: script end to results downloaded (goal < 1 s) | {} | max {} |",
        secs(to_results),
        secs(hot.iter().map(|r| r.2).max().unwrap_or_default())
    );
    println!(
        "| ratio hot-plug / reboot per job | {:.3} | |",
        whole.as_secs_f64() / reboot.as_secs_f64()
    );
    println!("\nload average: {}", load.trim());
    Ok(())
}
