//! The fleet view: `nlxtp-libvirt status --all` over N domains (1,000 by default) spread
//! over two libvirt hosts (two real daemons, as the tests start them: the first on
//! 127.0.0.1, the second in a mount namespace of its own on 127.0.0.2), both reached
//! over TCP, side by side with what a script over `virsh` pays for the same answer.
//!
//! Each domain (shut off) has its own shared volume (2 MiB, sparse) holding a status
//! record and a few files. Measured, median of 5 runs of the whole process:
//! - `nlxtp-libvirt -c HOST1 -c HOST2 status --all --json`: wall time, CPU (user and
//!   system) and peak memory (from GNU time), and that it lists every domain;
//! - the `virsh` baseline: `virsh list --all --name` on both hosts, plus one
//!   `virsh vol-download` of 8 KiB per domain (a script's cheapest status read),
//!   measured for 20 domains and scaled to N.
//!
//! `cargo bench -p nlxtp-harness --bench libvirt_fleet` (`NLXTP_FLEET=N` for another
//! size). The domains and volumes are removed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nlxtp_core::{RunState, StatusRecord};
use nlxtp_harness::libvirt::{idle_domain_xml, nlxtp_libvirt_binary, virsh, Libvirtd};
use nlxtp_harness::vm::status_file;
use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{SharedArea, UploadFile};

/// Domains go to virsh in batches of this many commands per process.
const BATCH: usize = 100;

fn status_bytes() -> Vec<u8> {
    let mut rec = StatusRecord {
        state: RunState::Exited(0),
        heartbeat_interval_ms: 1000,
        ..Default::default()
    };
    rec.custom.push_str("fleet benchmark").unwrap();
    status_file(rec)
}

/// Copies `template` to `to`, writing only its non-zero 4 KiB blocks (a sparse copy).
fn sparse_copy(template: &[u8], to: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(to).unwrap();
    file.set_len(template.len() as u64).unwrap();
    for (i, block) in template.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
}

/// One host's share of the fleet: its pool, volumes and domain definitions.
struct Share {
    uri: String,
    pool: String,
    dir: PathBuf,
    names: Vec<String>,
}

impl Share {
    fn new(daemon: &Libvirtd, pool: &str, prefix: &str, count: usize, template: &[u8]) -> Share {
        let dir = daemon.pool(pool).unwrap();
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
        let xml_dir = tempfile::tempdir().unwrap();
        let mut defines = Vec::new();
        for name in &names {
            sparse_copy(template, &dir.join(format!("{name}.img")));
            let xml = idle_domain_xml(name, pool, &format!("{name}.img"), "vdb");
            let file = xml_dir.path().join(format!("{name}.xml"));
            std::fs::write(&file, xml).unwrap();
            defines.push(format!("define {}", file.display()));
        }
        let uri = daemon.uri().to_owned();
        virsh(&uri, &["pool-refresh", pool]).unwrap();
        for batch in defines.chunks(BATCH) {
            virsh(&uri, &[&batch.join(" ; ")]).unwrap();
        }
        Share {
            uri,
            pool: pool.to_owned(),
            dir,
            names,
        }
    }

    fn remove(&self) {
        let undefines: Vec<String> = self.names.iter().map(|n| format!("undefine {n}")).collect();
        for batch in undefines.chunks(BATCH) {
            let _ = virsh(&self.uri, &[&batch.join(" ; ")]);
        }
        for name in &self.names {
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.img")));
        }
        let _ = virsh(&self.uri, &["pool-refresh", &self.pool]);
    }
}

/// Wall time, user and system CPU seconds, peak RSS (KiB), and stdout of `command`
/// run under GNU time.
fn timed(program: &Path, args: &[&str]) -> (Duration, f64, f64, u64, String) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(report.path())
        .arg(program)
        .args(args)
        .output()
        .expect("GNU time (Debian package time; scripts/setup installs it)");
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(report.path()).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let user = fields[0].parse().unwrap();
    let system = fields[1].parse().unwrap();
    let rss_kib = fields[2].parse().unwrap();
    (
        wall,
        user,
        system,
        rss_kib,
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let total: usize = std::env::var("NLXTP_FLEET")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let host1 = Libvirtd::shared().unwrap();
    let host2 = Libvirtd::second_host().unwrap();
    let cli = nlxtp_libvirt_binary().unwrap();

    let work = tempfile::tempdir().unwrap();
    let template_path = work.path().join("template.img");
    create_image(&template_path, 2 << 20, None, None).unwrap();
    let mut files: Vec<UploadFile> = (0..5)
        .map(|i| UploadFile::bytes(&format!("out/file{i}.txt"), vec![b'x'; 500]).unwrap())
        .collect();
    files.push(UploadFile::bytes("nlxtp/status.bin", status_bytes()).unwrap());
    VfatImage::new(&template_path).replace(files).unwrap();
    let template = std::fs::read(&template_path).unwrap();

    let setup = Instant::now();
    let shares = [
        Share::new(&host1, "nlxtp-fleet1", "fleet-a", total / 2, &template),
        Share::new(
            &host2,
            "nlxtp-fleet2",
            "fleet-b",
            total - total / 2,
            &template,
        ),
    ];
    eprintln!(
        "set up {total} domains with their volumes on two hosts in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let uris = [host1.tcp_uri(), host2.tcp_uri()];
    let fleet_args = ["-c", uris[0], "-c", uris[1], "status", "--all", "--json"];

    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let (wall, user, system, kib, out) = timed(&cli, &fleet_args);
        let listed = out
            .lines()
            .filter(|l| l.contains("\"fleet-a-") || l.contains("\"fleet-b-"))
            .filter(|l| l.contains("\"exit_code\":0"))
            .count();
        assert_eq!(listed, total, "every domain, each with its record");
        walls.push(wall);
        cpus.push(user + system);
        rss.push(kib);
    }

    // The virsh baseline: the listing, and the cheapest status read per domain.
    let list = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for uri in uris {
                    virsh(uri, &["list", "--all", "--name"]).unwrap();
                }
                start.elapsed()
            })
            .collect(),
    );
    let target = work.path().join("page");
    let target = target.to_str().unwrap();
    let sample = 20.min(shares[1].names.len());
    let start = Instant::now();
    for name in &shares[1].names[..sample] {
        virsh(
            uris[1],
            &[
                "vol-download",
                "--pool",
                &shares[1].pool,
                &format!("{name}.img"),
                target,
                "--offset",
                "0",
                "--length",
                "8192",
            ],
        )
        .unwrap();
    }
    let per_domain = start.elapsed() / sample as u32;
    let virsh_total = list + per_domain * total as u32;

    for share in &shares {
        share.remove();
    }
    let wall = median(walls);
    println!(
        "{total} domains over two hosts ({} and {}), all shut off, each a 2 MiB volume with a record:",
        uris[0], uris[1]
    );
    println!(
        "  nlxtp-libvirt status --all --json   {:>8.3} s wall  {:>6.2} s CPU  {:>6.1} MiB peak RSS  (median of 5)",
        wall.as_secs_f64(),
        median(cpus),
        median(rss) as f64 / 1024.0
    );
    println!(
        "  virsh list --all on both hosts      {:>8.3} s",
        list.as_secs_f64()
    );
    println!(
        "  virsh vol-download 8 KiB, a domain  {:>8.3} s  (mean of {sample})",
        per_domain.as_secs_f64()
    );
    println!(
        "  a virsh script for the fleet        {:>8.3} s  (list + one read a domain, scaled)",
        virsh_total.as_secs_f64()
    );
    println!(
        "  ratio nlxtp / virsh script          {:>8.3}",
        wall.as_secs_f64() / virsh_total.as_secs_f64()
    );
}
