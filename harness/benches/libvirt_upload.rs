//! An upload to a remote shut-off domain, side by side with `virsh vol-upload` of the same
//! finished image, against a real libvirtd (started as the tests start it), both over
//! `qemu+tcp://` on loopback:
//!
//! - `nlxtp-libvirt upload`: the whole process (`-c URI upload DOMAIN job.tar.gz`): the
//!   old volume's layout read through streams, the new image built locally, uploaded as
//!   a new volume, the definition switched, the old volume deleted;
//! - `ops::upload` on an open connection: the same in-process (no process start, no
//!   connect);
//! - `virsh vol-upload`: a `virsh` process sending the finished image (the volume as the
//!   upload left it, downloaded once) into a volume of the same size, the floor for
//!   getting those bytes there.
//!
//! A 64 MiB shared volume; the job, 16 MiB in 65 files (incompressible), packed twice:
//! by flate2's fastest level (which Huffman-codes incompressible data: the slowest to
//! inflate) and by GNU `tar czf` (whose gzip stores it). Medians of 11 interleaved
//! rounds.
//! `cargo build --release -p nlxtp-host --features libvirt --bin nlxtp-libvirt && cargo
//! bench -p nlxtp-harness --bench libvirt_upload`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nlxtp_harness::libvirt::{idle_domain_xml, nlxtp_libvirt_binary, virsh, Libvirtd};
use nlxtp_harness::vm::{archive, noise};
use nlxtp_host::area::libvirt::{connect, LibvirtDomain};
use nlxtp_host::area::vfat::{create_disk, DiskOptions};
use nlxtp_host::ops::{self, UploadOptions};

const POOL: &str = "nlxtp-bench-upload";
const DOMAIN: &str = "nlxtp-bench-upload";
const SIZE: u64 = 64 << 20;
const RUNS: usize = 11;

fn timed(op: impl FnOnce()) -> Duration {
    let start = Instant::now();
    op();
    start.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let daemon = Libvirtd::shared().unwrap();
    let uri = daemon.tcp_uri().to_owned();
    let dir = daemon.pool(POOL).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let _ = virsh(daemon.uri(), &["vol-delete", "--pool", POOL, &name]);
    }
    create_disk(
        &dir.join("bench-first.img"),
        &DiskOptions {
            size: SIZE,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    virsh(daemon.uri(), &["pool-refresh", POOL]).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        idle_domain_xml(DOMAIN, POOL, "bench-first.img", "vdb"),
    )
    .unwrap();
    let _ = virsh(daemon.uri(), &["undefine", DOMAIN]);
    virsh(daemon.uri(), &["define", file.path().to_str().unwrap()]).unwrap();

    let work = tempfile::tempdir().unwrap();
    let data: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("data/part-{i:02}.bin"), noise(256 << 10, i + 1)))
        .collect();
    let mut members: Vec<(&str, &[u8], u32)> = data
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice(), 0o644))
        .collect();
    members.push(("auto_exec.sh", b"#!/bin/sh\ntrue\n", 0o755));
    let job_bytes = archive(&members).unwrap();
    let job = work.path().join("job.tar.gz");
    std::fs::write(&job, &job_bytes).unwrap();

    // The same files as GNU tar and gzip pack them (`tar czf`): gzip stores what does
    // not compress, where flate2's fast level above Huffman-codes it (slower to inflate).
    let tree = work.path().join("tree");
    for (name, bytes, _) in &members {
        let path = tree.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let gnu_job = work.path().join("job-gnu.tar.gz");
    ok(Command::new("tar")
        .arg("czf")
        .arg(&gnu_job)
        .arg("-C")
        .arg(&tree)
        .args(["data", "auto_exec.sh"]));

    let cli = nlxtp_libvirt_binary().unwrap();
    let cli_upload = |job: &Path| {
        ok(Command::new(&cli)
            .args(["-c", &uri, "upload", DOMAIN])
            .arg(job));
    };
    cli_upload(&job);
    let conn = connect(Some(&uri)).unwrap();
    let area = LibvirtDomain::open(conn, &uri, DOMAIN).unwrap();

    // The finished image, as an upload left it, and a volume to send it into.
    let image = work.path().join("finished.img");
    let xml = virsh(&uri, &["dumpxml", "--inactive", DOMAIN]).unwrap();
    let volume = nlxtp_host::area::libvirt::find_shared_disk(DOMAIN, &xml)
        .unwrap()
        .source;
    let nlxtp_host::area::libvirt::DiskSource::Volume { volume, .. } = volume else {
        panic!("not a volume disk");
    };
    ok(Command::new("virsh").args([
        "-c",
        &uri,
        "vol-download",
        "--pool",
        POOL,
        &volume,
        image.to_str().unwrap(),
    ]));
    virsh(
        &uri,
        &["vol-create-as", POOL, "bench-virsh.img", &SIZE.to_string()],
    )
    .unwrap();
    let virsh_upload = || {
        ok(Command::new("virsh").args([
            "-c",
            &uri,
            "vol-upload",
            "--pool",
            POOL,
            "bench-virsh.img",
            image.to_str().unwrap(),
        ]));
    };

    // Interleaved rounds, so that the machine's load falls on every column alike.
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..RUNS {
        times[0].push(timed(|| cli_upload(&job)));
        times[1].push(timed(|| {
            ops::upload(&area, &job_bytes[..], &UploadOptions::default()).unwrap();
        }));
        times[2].push(timed(|| cli_upload(&gnu_job)));
        times[3].push(timed(virsh_upload));
    }
    let [cli_time, lib_time, gnu_time, virsh_time] = times.map(median);
    assert_eq!(
        std::fs::read(dir.join("bench-virsh.img")).unwrap(),
        std::fs::read(Path::new(&image)).unwrap()
    );

    let _ = virsh(daemon.uri(), &["undefine", DOMAIN]);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let _ = virsh(daemon.uri(), &["vol-delete", "--pool", POOL, &name]);
    }
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let gnu_len = std::fs::metadata(&gnu_job).unwrap().len();
    println!(
        "over {uri}, {} MiB volume, job {} files, median of {RUNS} interleaved rounds:",
        SIZE >> 20,
        members.len(),
    );
    println!(
        "  nlxtp-libvirt upload (process), flate2 fast job ({:.1} MiB)  {:>10}",
        job_bytes.len() as f64 / f64::from(1 << 20),
        ms(cli_time)
    );
    println!(
        "  ops::upload, open connection, the same job          {:>10}",
        ms(lib_time)
    );
    println!(
        "  nlxtp-libvirt upload (process), tar czf job ({:.1} MiB)  {:>10}",
        gnu_len as f64 / f64::from(1 << 20),
        ms(gnu_time)
    );
    println!(
        "  virsh vol-upload (process) of the finished image     {:>10}",
        ms(virsh_time)
    );
    let ratio = |t: Duration| t.as_secs_f64() / virsh_time.as_secs_f64();
    println!(
        "  ratio nlxtp-libvirt / virsh: flate2 fast job {:.2}, tar czf job {:.2}",
        ratio(cli_time),
        ratio(gnu_time)
    );
}
