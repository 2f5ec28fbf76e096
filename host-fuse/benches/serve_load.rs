//! `nlxtp-serve` under load, over loopback (docs/benchmarks.md, "nlxtp-serve"):
//!
//! 1. the VM list of 200 VMs (container directories, half with a finished run's status)
//!    with 50 concurrent keep-alive clients: latency percentiles;
//! 2. 200 live-output followers at once for `NLXTP_SOAK_SECS` (default 20; the goal is
//!    measured with 300): the process's resident memory sampled;
//! 3. an upload of a 100 MiB archive into a vFAT image through HTTP, against
//!    `ops::upload` of the same file (what `nlxtp upload` does), best and median of 9 each.
//!
//! `cargo bench -p nlxtp-host --features serve --bench serve_load`
//! (`NLXTP_SERVE_BENCH=upload` for 3. alone)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nlxtp_host::area::vfat::create_image;
use nlxtp_host::fuse::parse_vm_arg;
use nlxtp_host::ops::{self, UploadOptions};
use nlxtp_host::serve::{Limits, ServeConfig, Server};

const TOKEN: &str = "bench-operator-token-0123456789";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn job(script: &str, extra: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, data).unwrap();
    };
    add("auto_exec.sh", script.as_bytes(), 0o755);
    if extra > 0 {
        let data: Vec<u8> = (0..extra).map(|i| (i * 7 + i / 4096) as u8).collect();
        add("payload.bin", &data, 0o644);
    }
    builder.into_inner().unwrap()
}

/// Reads one response on a kept-alive connection (Content-Length bodies only).
fn read_reply(reader: &mut BufReader<TcpStream>) -> (u16, Vec<u8>) {
    let mut status = 0;
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if status == 0 {
            status = line[9..12].parse().unwrap();
        } else if line == "\r\n" {
            break;
        } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, body)
}

fn list_latency(addr: SocketAddr, clients: usize, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut times = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    write!(
                        writer,
                        "GET /api/v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                    )
                    .unwrap();
                    let (status, body) = read_reply(&mut reader);
                    assert_eq!(status, 200);
                    assert!(body.len() > 10_000);
                    times.push(started.elapsed());
                }
                times
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    let at = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "list of 200 VMs, {clients} clients, {secs} s: {} requests ({:.0}/s), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        all.len() as f64 / secs as f64,
        at(0.50).as_secs_f64() * 1e3,
        at(0.90).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn followers(addr: SocketAddr, n: usize, secs: u64) {
    let before = rss_kib();
    let streams: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET /api/v1/vms/vm{i:03}/output HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    // Every follower answered (headers read).
    for s in &streams {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 12];
        (&*s).read_exact(&mut buf).unwrap();
        assert_eq!(&buf[9..12], b"200");
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs((secs / 10).max(1)));
        samples.push(rss_kib());
    }
    let (min, max) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
    println!(
        "{n} live followers for {secs} s: RSS before {} MiB, during {:.1}-{:.1} MiB (first sample {:.1}, last {:.1})",
        before / 1024,
        *min as f64 / 1024.0,
        *max as f64 / 1024.0,
        samples[0] as f64 / 1024.0,
        samples[samples.len() - 1] as f64 / 1024.0,
    );
    drop(streams);
}

fn http_upload(addr: SocketAddr, vm: &str, body: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /api/v1/vms/{vm}/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    started.elapsed()
}

fn main() {
    let soak: u64 = std::env::var("NLXTP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut vms = Vec::new();
    let done = job("#!/bin/sh\necho hi\n", 0);
    for i in 0..200 {
        let area = dir.path().join(format!("vm{i:03}"));
        std::fs::create_dir(&area).unwrap();
        if i % 2 == 0 {
            let opened = ops::open_target(&area).unwrap();
            ops::upload(opened.as_ref(), &done[..], &UploadOptions::default()).unwrap();
        }
        vms.push(parse_vm_arg(&format!("vm{i:03}={}", area.display())).unwrap());
    }
    let image = dir.path().join("big.img");
    create_image(&image, 512 << 20, None, None).unwrap();
    vms.push(parse_vm_arg(&format!("big={}", image.display())).unwrap());
    let server = Server::new(ServeConfig {
        vms,
        state_dir: dir.path().join("state"),
        operator_token: Some(TOKEN.into()),
        limits: Limits::default(),
        public_url: None,
        rescan: None,
    })
    .unwrap();
    let running = server
        .spawn(TcpListener::bind("127.0.0.1:0").unwrap(), None)
        .unwrap();
    let addr = running.addr();

    // NLXTP_SERVE_BENCH=upload: the upload comparison alone.
    if std::env::var("NLXTP_SERVE_BENCH").as_deref() != Ok("upload") {
        list_latency(addr, 50, 10);
        followers(addr, 200, soak);
    }

    let archive = job("#!/bin/sh\necho big\n", 100 << 20);
    let file = dir.path().join("job.tar");
    std::fs::write(&file, &archive).unwrap();
    let mut direct = Vec::new();
    let mut http = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let area = ops::open_target(&image).unwrap();
        let f = std::fs::File::open(&file).unwrap();
        let options = UploadOptions {
            archive_file: Some(Arc::new(f.try_clone().unwrap())),
            ..UploadOptions::default()
        };
        ops::upload(area.as_ref(), f, &options).unwrap();
        direct.push(started.elapsed());
        http.push(http_upload(addr, "big", &archive));
    }
    let best = |v: &[Duration]| v.iter().min().unwrap().as_secs_f64();
    println!(
        "upload of a 100 MiB tar into a 512 MiB image, best of 9: ops::upload (as nlxtp upload) {:.3} s, HTTP {:.3} s: {:.2}x",
        best(&direct),
        best(&http),
        best(&http) / best(&direct)
    );
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (direct, http) = (median(&mut direct), median(&mut http));
    println!(
        "  medians: ops::upload {direct:.3} s, HTTP {http:.3} s: {:.2}x",
        http / direct
    );
}
