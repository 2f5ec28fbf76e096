//! `nlxtp run` timings (docs/benchmarks.md): the wall time of `nlxtp run -- true`, the
//! time from a job's end to `nlxtp run` exiting, and how late live output lines arrive;
//! side by side, in the same run and interleaved round by round, vmtest on the same
//! kernel (see `vmtest.rs`).
//!
//! The guest marks moments on its serial console (`> /dev/console`), which the host sees
//! within milliseconds: `nlxtp run` through its console log, vmtest on its standard
//! output (it streams the guest's console there). The host timestamps each mark as it
//! appears, each output line as the tool prints it, and the tool's exit; QEMU's peak
//! RSS is its `VmHWM`, read while it runs.
//!
//! Run: `cargo build --release -p nlxtp-host && cargo run --release -p nlxtp-harness
//! --bin nlxtp-bench-run -- target/release/nlxtp [ARCH]`
//!
//! `NLXTP_BENCH_ROUNDS` (default 5) sets the rounds; `NLXTP_BENCH_VMTEST=0` leaves vmtest
//! out (it is left out for a guest of another architecture than the host's);
//! `NLXTP_VMTEST` names a vmtest program, else the one in `~/.cache/nlxtp/vmtest` is
//! used, installed there with cargo when missing.

mod vmtest;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nlxtp_host::vm::{Arch, Kernel};

use vmtest::Vmtest;

/// The script that marks its own end on the console.
const END: &str = "echo bench:end > /dev/console";
/// The same after 3 s of work (vmtest polls the agent with a growing backoff).
const END_AFTER_3S: &str = "sleep 3; echo bench:end > /dev/console";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lines with the time they were seen (seconds from the start).
type Seen = Vec<(String, f64)>;

/// One run of `nlxtp run` or vmtest.
struct Run {
    /// From spawn to exit, seconds.
    wall: f64,
    /// Console marks (`bench:...` lines of `nlxtp run`'s console log).
    marks: Seen,
    /// Standard output lines.
    lines: Seen,
    /// QEMU's peak RSS (VmHWM) in KiB, if it was seen.
    qemu_peak_kib: Option<u64>,
}

impl Run {
    /// When the first stdout line containing `text` was seen.
    fn line_with(&self, text: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(l, _)| l.contains(text))
            .map(|(_, t)| *t)
    }
}

/// The QEMU that `parent` started, if it runs now.
fn qemu_child(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        let state = stat[close + 1..].split_whitespace().next();
        // Not a finished one (vmtest leaves its `QEMU --help` check a zombie).
        if comm.starts_with("qemu-system")
            && ppid == Some(&parent.to_string())
            && state != Some("Z")
            && peak_kib(pid).is_some()
        {
            return Some(pid);
        }
    }
    None
}

/// A process's peak RSS in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` to its end (`what` names it in errors), watching `console` for marks.
fn watch(mut command: Command, console: Option<&Path>, what: &str) -> Result<Run> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let reader = std::thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .map(|l| (l, started.elapsed().as_secs_f64()))
            .collect::<Vec<_>>()
    });
    let mut marks: Seen = Vec::new();
    let mut qemu = None;
    let mut qemu_peak_kib = None;
    let deadline = started + Duration::from_secs(240);
    let mut tick = 0u64;
    let status = loop {
        let now = started.elapsed().as_secs_f64();
        if let Some(console) = console {
            for line in std::fs::read_to_string(console).unwrap_or_default().lines() {
                if line.starts_with("bench:") && !marks.iter().any(|(m, _)| m == line) {
                    marks.push((line.to_owned(), now));
                }
            }
        }
        // QEMU's peak RSS, every 50 ms or so (a /proc scan until it is found).
        if tick.is_multiple_of(25) {
            if qemu.is_none() {
                qemu = qemu_child(child.id());
            }
            if let Some(peak) = qemu.and_then(peak_kib) {
                qemu_peak_kib = Some(peak.max(qemu_peak_kib.unwrap_or(0)));
            }
        }
        tick += 1;
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            if let Some(pid) = qemu {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not end within 240 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = started.elapsed().as_secs_f64();
    let lines = reader.join().expect("reader");
    if !status.success() {
        let tail = lines[lines.len().saturating_sub(30)..]
            .iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{what} failed: {status}; its last output lines:\n{tail}");
    }
    Ok(Run {
        wall,
        marks,
        lines,
        qemu_peak_kib,
    })
}

/// `nlxtp run ARGS`.
fn nlxtp_run(nlxtp: &str, args: &[&str]) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let console = dir.path().join("console.log");
    let mut command = Command::new(nlxtp);
    command
        .arg("run")
        .arg("--console-log")
        .arg(&console)
        .args(args);
    watch(command, Some(&console), "nlxtp run")
}

/// `vmtest SCRIPT` on the kernel `image`.
fn vmtest_run(vmtest: &Vmtest, image: &Path, script: &str) -> Result<Run> {
    watch(vmtest.command(image, script), None, "vmtest")
}

/// From the console mark `bench:end` to the exit.
fn nlxtp_end(run: &Run) -> Result<f64> {
    let end = run
        .marks
        .iter()
        .find(|(m, _)| m == "bench:end")
        .context("no end mark from nlxtp run")?;
    Ok(run.wall - end.1)
}

/// From the console mark `bench:end` (on vmtest's stdout) to the exit.
fn vmtest_end(run: &Run) -> Result<f64> {
    let end = run
        .line_with("bench:end")
        .context("no end mark from vmtest")?;
    Ok(run.wall - end)
}

fn mib(kib: &[u64]) -> String {
    if kib.is_empty() {
        return "not seen".into();
    }
    let v: Vec<f64> = kib.iter().map(|k| *k as f64 / 1024.0).collect();
    format!(
        "{:.0} MiB (each: {})",
        median(v.clone()),
        v.iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// vmtest's kernel images: the package's compressed `vmlinuz` (what a vmtest user boots)
/// and, where `nlxtp run` boots one, its unpacked `vmlinux` (the same file `nlxtp run`
/// boots).
fn vmtest_images(kernel: &Kernel) -> Vec<(&'static str, PathBuf)> {
    let mut images = vec![("vmlinuz", kernel.image.clone())];
    let boot = kernel.boot_image();
    if boot != kernel.image {
        images.push(("vmlinux", boot));
    }
    images
}

/// `nlxtp run`'s arguments: the architecture's, then `script`'s.
fn run_args<'a>(arch: &[&'a str], script: &[&'a str]) -> Vec<&'a str> {
    [arch, script].concat()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nlxtp = args.get(1).map_or("target/release/nlxtp", String::as_str);
    let arch_name = args.get(2).map_or("x86_64", String::as_str);
    let arch: Arch = arch_name.parse().map_err(anyhow::Error::msg)?;
    let rounds: usize = std::env::var("NLXTP_BENCH_ROUNDS")
        .ok()
        .map(|r| r.parse())
        .transpose()
        .context("NLXTP_BENCH_ROUNDS")?
        .unwrap_or(5);
    ensure!(rounds > 0, "NLXTP_BENCH_ROUNDS must be at least 1");
    let arch_args = ["--arch", arch_name];
    let with_vmtest = std::env::var("NLXTP_BENCH_VMTEST").map_or(true, |v| v != "0");

    // Warm: the kernel fetched, its vmlinux unpacked, the accelerator probed.
    nlxtp_run(nlxtp, &run_args(&arch_args, &["--", "true"]))?;
    let baseline = if with_vmtest && Arch::host() == Some(arch) {
        // The kernel `nlxtp run` boots without --kernel.
        let kernel = Kernel::debian(arch, &mut |line| eprintln!("nlxtp-bench-run: {line}"))?;
        let vmtest = Vmtest::prepare(&kernel)?;
        let images = vmtest_images(&kernel);
        for (name, image) in &images {
            let run = vmtest_run(&vmtest, image, "exit 3");
            // A failing command fails the run: vmtest passes on the command's exit code.
            let err = run.err().context("vmtest \"exit 3\" succeeded")?;
            ensure!(
                format!("{err:#}").contains("exit status: 3"),
                "vmtest ({name}): {err:#}"
            );
            let run = vmtest_run(&vmtest, image, "true")?;
            if std::env::var_os("NLXTP_BENCH_VERBOSE").is_some() {
                for (line, at) in &run.lines {
                    eprintln!("vmtest ({name}) {at:6.2} {line}");
                }
            }
        }
        Some((kernel, vmtest, images))
    } else {
        if with_vmtest {
            eprintln!("nlxtp-bench-run: vmtest left out: it runs only host-architecture guests");
        }
        None
    };

    // Round by round, interleaved: nlxtp, then vmtest on each image.
    let mut walls = Vec::new();
    let mut nlxtp_peaks = Vec::new();
    let images = baseline.as_ref().map_or(0, |b| b.2.len());
    let mut vm_walls: Vec<Vec<f64>> = vec![Vec::new(); images];
    let mut vm_booted: Vec<Vec<f64>> = vec![Vec::new(); images];
    let mut vm_running: Vec<Vec<f64>> = vec![Vec::new(); images];
    let mut vm_peaks: Vec<Vec<u64>> = vec![Vec::new(); images];
    for round in 0..rounds {
        let run = nlxtp_run(nlxtp, &run_args(&arch_args, &["--", "true"]))?;
        eprintln!(
            "nlxtp-bench-run: round {}: nlxtp run -- true {:.2} s",
            round + 1,
            run.wall
        );
        walls.push(run.wall);
        nlxtp_peaks.extend(run.qemu_peak_kib);
        if let Some((_, vmtest, images)) = &baseline {
            for (i, (name, image)) in images.iter().enumerate() {
                let run = vmtest_run(vmtest, image, "true")?;
                eprintln!(
                    "nlxtp-bench-run: round {}: vmtest true ({name}) {:.2} s",
                    round + 1,
                    run.wall
                );
                vm_walls[i].push(run.wall);
                vm_booted[i].extend(run.line_with("> Setting up VM"));
                vm_running[i].extend(run.line_with("> Running command"));
                vm_peaks[i].extend(run.qemu_peak_kib);
            }
        }
    }

    // A job's end to the exit: at once, and after 3 s of work.
    let mut ends = Vec::new();
    let mut ends_3s = Vec::new();
    let mut vm_ends = Vec::new();
    let mut vm_ends_3s = Vec::new();
    for _ in 0..rounds {
        ends.push(nlxtp_end(&nlxtp_run(
            nlxtp,
            &run_args(&arch_args, &["--", "sh", "-c", END]),
        )?)?);
        ends_3s.push(nlxtp_end(&nlxtp_run(
            nlxtp,
            &run_args(&arch_args, &["--", "sh", "-c", END_AFTER_3S]),
        )?)?);
        if let Some((_, vmtest, images)) = &baseline {
            let image = &images[0].1;
            vm_ends.push(vmtest_end(&vmtest_run(vmtest, image, END)?)?);
            vm_ends_3s.push(vmtest_end(&vmtest_run(vmtest, image, END_AFTER_3S)?)?);
        }
    }

    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo bench:$i > /dev/console; echo line $i; sleep 0.5; done";
    let run = nlxtp_run(nlxtp, &run_args(&arch_args, &["--", "sh", "-c", script]))?;
    let mut lags = Vec::new();
    for (i, (line, seen)) in run.lines.iter().enumerate() {
        ensure!(*line == format!("line {}", i + 1), "out of order: {line}");
        let printed = run
            .marks
            .iter()
            .find(|(m, _)| *m == format!("bench:{}", i + 1))
            .context("mark")?
            .1;
        lags.push(seen - printed);
    }

    println!("| `nlxtp run` ({arch}, median of {rounds}) | value |");
    println!("|---|---|");
    println!(
        "| `nlxtp run -- true`, wall | {:.2} s |",
        median(walls.clone())
    );
    println!(
        "| `nlxtp run -- true`, fastest / slowest | {:.2} s / {:.2} s |",
        walls.iter().copied().fold(f64::MAX, f64::min),
        walls.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| job's end (console mark) -> `nlxtp run` exits | {:.2} s |",
        median(ends.clone())
    );
    println!(
        "| the same after 3 s of work (`sleep 3`) | {:.2} s |",
        median(ends_3s.clone())
    );
    println!(
        "| live line printed in the guest -> on the host's stdout (10 lines) | median {:.2} s, max {:.2} s |",
        median(lags.clone()),
        lags.iter().copied().fold(0.0, f64::max)
    );
    println!("| QEMU's peak RSS (`true`) | {} |", mib(&nlxtp_peaks));
    println!();
    println!("each `nlxtp run -- true`: {} s", list(&walls));
    println!("each end -> exit: {} s", list(&ends));
    println!("each end -> exit after 3 s: {} s", list(&ends_3s));

    if let Some((kernel, _, images)) = &baseline {
        println!();
        println!(
            "| vmtest {} side by side (same kernel {}, same rounds, median of {rounds}) | value |",
            vmtest::VERSION,
            kernel.name
        );
        println!("|---|---|");
        for (i, (name, _)) in images.iter().enumerate() {
            println!(
                "| `vmtest \"true\"` ({name}), wall | {:.2} s (fastest {:.2} s, slowest {:.2} s) |",
                median(vm_walls[i].clone()),
                vm_walls[i].iter().copied().fold(f64::MAX, f64::min),
                vm_walls[i].iter().copied().fold(0.0, f64::max)
            );
            if vm_booted[i].len() == rounds && vm_running[i].len() == rounds {
                println!(
                    "| ({name}) start -> agent answers / -> command starts | {:.2} s / {:.2} s |",
                    median(vm_booted[i].clone()),
                    median(vm_running[i].clone())
                );
            }
            let paired: Vec<f64> = walls.iter().zip(&vm_walls[i]).map(|(n, v)| n / v).collect();
            println!(
                "| ratio nlxtp / vmtest ({name}): of the medians; median of the rounds' ratios | {:.2}x; {:.2}x |",
                median(walls.clone()) / median(vm_walls[i].clone()),
                median(paired)
            );
            println!("| QEMU's peak RSS ({name}) | {} |", mib(&vm_peaks[i]));
        }
        println!(
            "| job's end (console mark) -> vmtest exits ({}) | {:.2} s |",
            images[0].0,
            median(vm_ends.clone())
        );
        println!(
            "| the same after 3 s of work (`sleep 3`) | {:.2} s |",
            median(vm_ends_3s.clone())
        );
        println!();
        for (i, (name, _)) in images.iter().enumerate() {
            println!("each `vmtest \"true\"` ({name}): {} s", list(&vm_walls[i]));
        }
        println!("each vmtest end -> exit: {} s", list(&vm_ends));
        println!("each vmtest end -> exit after 3 s: {} s", list(&vm_ends_3s));
    }
    Ok(())
}
