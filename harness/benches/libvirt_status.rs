//! The status of a libvirt domain's shared disk over an open connection, side by side
//! with its baselines, against a real libvirtd (started as the tests start it):
//!
//! - `status file`: [`SharedArea::read_status_file`] over TCP on loopback (the domain's
//!   XML, the volume lookup, then the boot sector, FAT pages, directories and the status
//!   file through volume streams at offsets, 16 KiB pages);
//! - `status report`: `ops::status` (what `nlxtp-libvirt status` prints), same connection;
//! - `8 KiB stream`: one `virStorageVolDownload` of 8 KiB on the open connection;
//! - `virsh 8 KiB`: a `virsh vol-download --offset 0 --length 8192` process;
//! - `whole volume`: the 64 MiB volume through one stream (what a reader that copies
//!   the image first would pay).
//!
//! `cargo bench -p nlxtp-harness --bench libvirt_status`. Median of 9 batches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::{RunState, StatusRecord};
use nlxtp_harness::libvirt::{idle_domain_xml, virsh, Libvirtd};
use nlxtp_harness::vm::status_file;
use nlxtp_host::area::libvirt::{connect, LibvirtDomain, VolumeSource};
use nlxtp_host::area::vfat::{create_image, BlockSource, VfatImage};
use nlxtp_host::area::{SharedArea, StatusRead, UploadFile};
use nlxtp_host::ops;

const POOL: &str = "nlxtp-bench";

fn median_per_op(batch: u32, mut op: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..9)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                op();
            }
            start.elapsed() / batch
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn status_bytes() -> Vec<u8> {
    let mut rec = StatusRecord {
        state: RunState::Running,
        heartbeat_interval_ms: 1000,
        ..Default::default()
    };
    rec.custom.push_str("benchmark").unwrap();
    status_file(rec)
}

fn main() {
    let daemon = Libvirtd::shared().unwrap();
    let pool_dir = daemon.pool(POOL).unwrap();
    let img = pool_dir.join("bench-shared.img");
    let _ = std::fs::remove_file(&img);
    create_image(&img, 64 << 20, None, None).unwrap();
    let mut files: Vec<UploadFile> = (0..200)
        .map(|i| UploadFile::bytes(&format!("out/file {i}.txt"), vec![b'x'; 1000 + i]).unwrap())
        .collect();
    files.push(UploadFile::bytes("nlxtp/status.bin", status_bytes()).unwrap());
    VfatImage::new(&img).replace(files).unwrap();
    virsh(daemon.uri(), &["pool-refresh", POOL]).unwrap();
    let xml = idle_domain_xml("nlxtp-bench", POOL, "bench-shared.img", "vda");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), xml).unwrap();
    let _ = virsh(daemon.uri(), &["undefine", "nlxtp-bench"]);
    virsh(daemon.uri(), &["define", file.path().to_str().unwrap()]).unwrap();

    let uri = daemon.tcp_uri().to_owned();
    let conn = connect(Some(&uri)).unwrap();
    let area = LibvirtDomain::open(conn.clone(), &uri, "nlxtp-bench").unwrap();
    let vol = conn
        .lookup_storage_pool_by_name(POOL)
        .unwrap()
        .lookup_storage_vol_by_name("bench-shared.img")
        .unwrap();
    let mut buf = Vec::new();
    let status_file = median_per_op(50, || {
        area.read_status_file(StatusRead::Cached, &mut buf).unwrap();
        black_box(&buf);
    });
    assert_eq!(buf.len(), STATUS_FILE_LEN);
    let report = median_per_op(20, || {
        black_box(ops::status(&area).unwrap());
    });
    let stream_8k = median_per_op(100, || {
        let vol = conn.lookup_storage_vol_by_key(&vol.key().unwrap()).unwrap();
        let source = VolumeSource::new(conn.clone(), vol, 64 << 20, "bench".as_ref());
        let mut page = [0u8; 8192];
        source.read_at(0, &mut page).unwrap();
        black_box(page);
    });
    let target = tempfile::NamedTempFile::new().unwrap();
    let target = target.path().to_str().unwrap().to_owned();
    let virsh_8k = median_per_op(5, || {
        virsh(
            &uri,
            &[
                "vol-download",
                "--pool",
                POOL,
                "bench-shared.img",
                &target,
                "--offset",
                "0",
                "--length",
                "8192",
            ],
        )
        .unwrap();
    });
    let whole = median_per_op(1, || {
        virsh(
            &uri,
            &["vol-download", "--pool", POOL, "bench-shared.img", &target],
        )
        .unwrap();
    });
    let _ = virsh(daemon.uri(), &["undefine", "nlxtp-bench"]);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!("over {uri}, 64 MiB volume, 200 files, open connection:");
    println!("  status file     {:>10}", ms(status_file));
    println!("  status report   {:>10}", ms(report));
    println!("  8 KiB stream    {:>10}", ms(stream_8k));
    println!("  virsh 8 KiB     {:>10}", ms(virsh_8k));
    println!("  whole volume    {:>10}", ms(whole));
}
