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
//! A 64 MiB shared volume; the job, 16 MiB in 65 files (incompressible). Median of 7.
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
const RUNS: usize = 7;

fn median(mut op: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
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

    let cli = nlxtp_libvirt_binary().unwrap();
    let cli_upload = median(|| {
        ok(Command::new(&cli)
            .args(["-c", &uri, "upload", DOMAIN])
            .arg(&job));
    });
    let conn = connect(Some(&uri)).unwrap();
    let area = LibvirtDomain::open(conn, &uri, DOMAIN).unwrap();
    let lib_upload = median(|| {
        ops::upload(&area, &job_bytes[..], &UploadOptions::default()).unwrap();
    });

    // The finished image, as the last upload left it, and a volume to send it into.
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
    let virsh_upload = median(|| {
        ok(Command::new("virsh").args([
            "-c",
            &uri,
            "vol-upload",
            "--pool",
            POOL,
            "bench-virsh.img",
            image.to_str().unwrap(),
        ]));
    });
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
    println!(
        "over {uri}, {} MiB volume, job {} files / {:.1} MiB gzipped, median of {RUNS}:",
        SIZE >> 20,
        members.len(),
        job_bytes.len() as f64 / f64::from(1 << 20)
    );
    println!("  nlxtp-libvirt upload (process)  {:>10}", ms(cli_upload));
    println!("  ops::upload, open connection    {:>10}", ms(lib_upload));
    println!("  virsh vol-upload (process)      {:>10}", ms(virsh_upload));
    println!(
        "  ratio nlxtp-libvirt / virsh     {:>10.2}",
        cli_upload.as_secs_f64() / virsh_upload.as_secs_f64()
    );
}
