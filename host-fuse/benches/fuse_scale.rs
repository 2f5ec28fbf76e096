//! Scale of the FUSE view: how long `nlxtp mount` with 200 VMs takes to come up, how
//! fast `ls` of its root answers, and how the mount process's memory grows per VM, side
//! by side with 1 VM and with a plain directory of 200 subdirectories.
//!
//! Run as root (FUSE): `cargo bench -p nlxtp-host --bench fuse_scale`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{SharedArea, UploadFile};

const NLXTP: &str = env!("CARGO_BIN_EXE_nlxtp");
const VMS: usize = 200;
const ROUNDS: usize = 5;
const LS_RUNS: usize = 20;

struct Mount {
    child: Child,
    mountpoint: PathBuf,
    runtime: PathBuf,
}

impl Mount {
    /// Mounts `vms`; returns the mount and the time until the ready line.
    fn start(mountpoint: &Path, runtime: &Path, vms: &[(String, PathBuf)]) -> (Mount, Duration) {
        let start = Instant::now();
        let mut cmd = Command::new(NLXTP);
        cmd.arg("mount").arg(mountpoint);
        for (name, img) in vms {
            cmd.arg("--vm").arg(format!("{name}={}", img.display()));
        }
        let mut child = cmd
            .env("NLXTP_RUNTIME_DIR", runtime)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nlxtp starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("mounted"), "no ready line: {line:?}");
        let up = start.elapsed();
        (
            Mount {
                child,
                mountpoint: mountpoint.to_owned(),
                runtime: runtime.to_owned(),
            },
            up,
        )
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        let out = Command::new(NLXTP)
            .arg("umount")
            .arg(&self.mountpoint)
            .env("NLXTP_RUNTIME_DIR", &self.runtime)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = self.child.wait();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time of one `ls -l DIR` process (what a user waits for), checking it lists `expect`.
fn ls(dir: &Path, expect: usize) -> Duration {
    let start = Instant::now();
    let out = Command::new("ls").arg("-l").arg(dir).output().unwrap();
    let took = start.elapsed();
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, expect + 1, "ls -l {} lists {expect}", dir.display());
    took
}

/// Time of `read_dir` plus `stat` of each entry, in this process.
fn list(dir: &Path) -> Duration {
    let start = Instant::now();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::metadata(entry.unwrap().path()).unwrap();
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Writes through the view into a 64 MiB image: one file (its close commits), and
/// `cp -r` of 200 small files (a burst, committed together once quiet).
fn commit_costs(dir: &Path, mnt: &Path, runtime: &Path) -> Vec<(String, Duration)> {
    let img = dir.join("big.img");
    create_image(&img, 64 << 20, None, None).unwrap();
    let job = dir.join("job");
    std::fs::create_dir_all(&job).unwrap();
    for i in 0..200 {
        std::fs::write(job.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let (m, _) = Mount::start(mnt, runtime, &[("big".into(), img)]);
    let vm = mnt.join("big");
    let committed = || {
        let view = std::fs::read_to_string(vm.join(".nlxtp/view.json")).unwrap();
        view.contains("\"uncommitted_changes\": false")
    };
    let mut one = Vec::new();
    for i in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(300)); // not part of a burst
        let start = Instant::now();
        std::fs::write(vm.join(format!("one{i}.txt")), b"one file\n").unwrap();
        one.push(start.elapsed());
        assert!(committed());
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let out = Command::new("cp")
        .arg("-r")
        .arg(&job)
        .arg(vm.join("job"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let cp = start.elapsed();
    while !committed() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = start.elapsed();
    m.stop();
    vec![
        (
            "write one file into a 64 MiB image, close returns committed (median)".into(),
            median(one),
        ),
        (
            "`cp -r` of 200 small files into a 64 MiB image: cp returns".into(),
            cp,
        ),
        ("`cp -r` of 200 small files: until committed".into(), all),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches for their tests; there are none
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();

    let made = Instant::now();
    let vms: Vec<(String, PathBuf)> = (0..VMS)
        .map(|i| {
            let img = dir.path().join(format!("vm{i:03}.img"));
            create_image(&img, 1 << 20, None, None).unwrap();
            VfatImage::new(&img)
                .replace(vec![UploadFile::bytes(
                    "auto_exec.sh",
                    b"#!/bin/sh\n".to_vec(),
                )
                .unwrap()])
                .unwrap();
            (format!("vm{i:03}"), img)
        })
        .collect();
    println!("made {VMS} 1 MiB images in {}", ms(made.elapsed()));

    // Baseline: a plain directory of 200 subdirectories on the same filesystem.
    let plain = dir.path().join("plain");
    for (name, _) in &vms {
        std::fs::create_dir_all(plain.join(name)).unwrap();
    }
    let plain_ls = median((0..LS_RUNS).map(|_| ls(&plain, VMS)).collect());
    let plain_list = median((0..LS_RUNS).map(|_| list(&plain)).collect());

    // One VM, for the fixed cost of a mount.
    let mut one_up = Vec::new();
    let mut one_rss = 0;
    for _ in 0..ROUNDS {
        let (m, up) = Mount::start(&mnt, &runtime, &vms[..1]);
        one_up.push(up);
        ls(&mnt, 1);
        one_rss = m.rss_kib();
        m.stop();
    }

    let mut up = Vec::new();
    let mut first_ls = Vec::new();
    let mut warm_ls = Vec::new();
    let mut warm_list = Vec::new();
    let mut rss_root = 0;
    let mut rss_all = 0;
    let mut vm_ls = Vec::new();
    for round in 0..ROUNDS {
        let (m, took) = Mount::start(&mnt, &runtime, &vms);
        up.push(took);
        first_ls.push(ls(&mnt, VMS));
        warm_ls.extend((0..LS_RUNS).map(|_| ls(&mnt, VMS)));
        warm_list.extend((0..LS_RUNS).map(|_| list(&mnt)));
        rss_root = m.rss_kib();
        if round == 0 {
            // Every VM's directory listed once: each image is opened and walked.
            for (name, _) in &vms {
                vm_ls.push(ls(&mnt.join(name), 1));
            }
            rss_all = m.rss_kib();
        }
        m.stop();
    }

    let commits = commit_costs(dir.path(), &mnt, &runtime);

    println!();
    println!("| measure ({ROUNDS} mounts; ls: {LS_RUNS} runs each) | value |");
    println!("|---|---|");
    println!("| mount with 1 VM: up (median) | {} |", ms(median(one_up)));
    println!(
        "| mount with {VMS} VMs: up (median) | {} |",
        ms(median(up.clone()))
    );
    println!(
        "| mount with {VMS} VMs: up (worst) | {} |",
        ms(*up.iter().max().unwrap())
    );
    println!(
        "| `ls -l` of the view's root, first after mount (median) | {} |",
        ms(median(first_ls))
    );
    println!(
        "| `ls -l` of the view's root, warm (median) | {} |",
        ms(median(warm_ls.clone()))
    );
    println!(
        "| `ls -l` of the view's root, warm (worst) | {} |",
        ms(*warm_ls.iter().max().unwrap())
    );
    println!(
        "| `ls -l` of a plain directory of {VMS} subdirectories (median) | {} |",
        ms(plain_ls)
    );
    println!(
        "| read_dir + stat of the view's root (median) | {} |",
        ms(median(warm_list))
    );
    println!(
        "| read_dir + stat of the plain directory (median) | {} |",
        ms(plain_list)
    );
    println!(
        "| `ls -l` of one VM's directory, first (median over {VMS} VMs) | {} |",
        ms(median(vm_ls))
    );
    for (what, took) in commits {
        println!("| {what} | {} |", ms(took));
    }
    println!("| mount process RSS, 1 VM | {one_rss} KiB |");
    println!("| mount process RSS, {VMS} VMs, root listed | {rss_root} KiB |");
    println!("| mount process RSS, {VMS} VMs, every VM's directory listed | {rss_all} KiB |");
    println!(
        "| RSS per VM (every directory listed, less 1 VM, / {}) | {:.1} KiB |",
        VMS - 1,
        (rss_all.saturating_sub(one_rss)) as f64 / (VMS - 1) as f64
    );
}
