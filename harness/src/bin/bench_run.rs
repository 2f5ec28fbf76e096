//! `nlxtp run` timings (docs/benchmarks.md): the wall time of `nlxtp run -- true`, the
//! time from a job's end to `nlxtp run` exiting, and how late live output lines arrive.
//!
//! The guest marks moments on its serial console (`> /dev/console`), which the host sees
//! within milliseconds through the console log; the host timestamps each mark as it
//! appears and each output line as `nlxtp run` prints it.
//!
//! Run: `cargo build --release -p nlxtp-host && cargo run --release -p nlxtp-harness
//! --bin nlxtp-bench-run -- target/release/nlxtp [ARCH]`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Lines with the time they were seen (seconds from the start).
type Seen = Vec<(String, f64)>;

/// Runs `nlxtp run ARGS`; returns the wall time, when each console mark and each stdout
/// line was seen.
fn run(nlxtp: &str, args: &[&str]) -> Result<(f64, Seen, Seen)> {
    let dir = tempfile::tempdir()?;
    let console = dir.path().join("console.log");
    let started = Instant::now();
    let mut child = Command::new(nlxtp)
        .arg("run")
        .arg("--console-log")
        .arg(&console)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting nlxtp")?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let reader = std::thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .map(|l| (l, started.elapsed().as_secs_f64()))
            .collect::<Vec<_>>()
    });
    let mut marks: Vec<(String, f64)> = Vec::new();
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        let now = started.elapsed().as_secs_f64();
        for line in std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
        {
            if line.starts_with("bench:") && !marks.iter().any(|(m, _)| m == line) {
                marks.push((line.to_owned(), now));
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "nlxtp run did not end");
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = started.elapsed().as_secs_f64();
    ensure!(status.success(), "nlxtp run failed: {status}");
    let lines = reader.join().expect("reader");
    Ok((wall, marks, lines))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nlxtp = args.get(1).map_or("target/release/nlxtp", String::as_str);
    let arch = args.get(2).map_or("x86_64", String::as_str);
    let arch_args = ["--arch", arch];
    // Warm: the kernel fetched, its vmlinux unpacked, the accelerator probed.
    run(nlxtp, &[&arch_args[..], &["--", "true"]].concat())?;

    let mut walls = Vec::new();
    for _ in 0..ROUNDS {
        walls.push(run(nlxtp, &[&arch_args[..], &["--", "true"]].concat())?.0);
    }
    let mut ends = Vec::new();
    for _ in 0..ROUNDS {
        let (wall, marks, _) = run(
            nlxtp,
            &[
                &arch_args[..],
                &["--", "sh", "-c", "echo bench:end > /dev/console"],
            ]
            .concat(),
        )?;
        let end = marks
            .iter()
            .find(|(m, _)| m == "bench:end")
            .context("no end mark")?;
        ends.push(wall - end.1);
    }
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo bench:$i > /dev/console; echo line $i; sleep 0.5; done";
    let (_, marks, lines) = run(
        nlxtp,
        &[&arch_args[..], &["--", "sh", "-c", script]].concat(),
    )?;
    let mut lags = Vec::new();
    for (i, (line, seen)) in lines.iter().enumerate() {
        ensure!(*line == format!("line {}", i + 1), "out of order: {line}");
        let printed = marks
            .iter()
            .find(|(m, _)| *m == format!("bench:{}", i + 1))
            .context("mark")?
            .1;
        lags.push(seen - printed);
    }
    println!("| `nlxtp run` ({arch}, median of {ROUNDS}) | value |");
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
        median(ends)
    );
    println!(
        "| live line printed in the guest -> on the host's stdout (10 lines) | median {:.2} s, max {:.2} s |",
        median(lags.clone()),
        lags.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}
