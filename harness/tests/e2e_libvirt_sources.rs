//! libvirt domains as VMs of the front ends that take a list of VMs, against a real
//! libvirtd (`nlxtp_harness::libvirt`) over its TCP connection: `nlxtp-serve` with the
//! domains of a connection (`--libvirt URI`) beside an image VM, serving a domain's
//! status and a download over HTTP, and a domain defined (then undefined) while it runs; and the FUSE view (`nlxtp-libvirt mount` from a
//! config file naming a domain) showing a domain's files and `.nlxtp/status.json`. The
//! domains stay shut off: their shared volumes are written beforehand with a finished
//! run's files and status record, as the guest leaves them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nlxtp_core::{RunState, StatusRecord};
use nlxtp_harness::libvirt::{idle_domain_xml, nlxtp_libvirt_binary, virsh, Libvirtd};
use nlxtp_harness::vm::status_file;
use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{SharedArea, UploadFile, STATUS_FILE};
use nlxtp_host::fuse::{collect_vms, parse_vm_arg};
use nlxtp_host::serve::{Limits, Rescan, ServeConfig, Server};
use serde_json::Value;

const POOL: &str = "nlxtp-sources";
const TOKEN: &str = "e2e-sources-token-0123456789";

/// A status file holding one record: the run exited with code 0 and `custom`.
fn finished_status(custom: &str) -> Vec<u8> {
    let mut rec = StatusRecord {
        state: RunState::Exited(0),
        heartbeat_interval_ms: 1000,
        updated_unix: 1_700_000_000,
        ..Default::default()
    };
    rec.custom.push_str(custom).unwrap();
    status_file(rec)
}

/// A shut-off domain `name` on the shared daemon whose shared volume holds a finished
/// run: `out.txt` with `text`, and a status record with `custom`.
fn domain_with_a_finished_run(daemon: &Libvirtd, name: &str, text: &str, custom: &str) {
    // The tests define the pool and refresh it: one at a time.
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let pool_dir = daemon.pool(POOL).unwrap();
    let volume = format!("{name}-shared.img");
    let img = pool_dir.join(&volume);
    let _ = virsh(daemon.uri(), &["destroy", name]);
    let _ = virsh(daemon.uri(), &["undefine", name]);
    let _ = std::fs::remove_file(&img);
    create_image(&img, 16 << 20, None, None).unwrap();
    VfatImage::new(&img)
        .replace(vec![
            UploadFile::bytes("auto_exec.sh", b"#!/bin/sh\necho done\n".to_vec()).unwrap(),
            UploadFile::bytes("out.txt", text.as_bytes().to_vec()).unwrap(),
            UploadFile::bytes(STATUS_FILE, finished_status(custom)).unwrap(),
        ])
        .unwrap();
    virsh(daemon.uri(), &["pool-refresh", POOL]).unwrap();
    let xml = idle_domain_xml(name, POOL, &volume, "vda");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), xml).unwrap();
    virsh(daemon.uri(), &["define", file.path().to_str().unwrap()]).unwrap();
}

/// One request with the operator token, `Connection: close`: the status and the body
/// (de-chunked).
fn request(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk line");
        let line = std::str::from_utf8(&data[..end]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// The files of a tar archive, by path.
fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

#[test]
fn nlxtp_serve_lists_the_domains_of_a_connection_beside_an_image() {
    let daemon = Libvirtd::shared().unwrap();
    domain_with_a_finished_run(&daemon, "nlxtp-src-serve", "served by libvirt\n", "via tcp");
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("img1.img");
    create_image(&image, 8 << 20, None, None).unwrap();

    // `--vm img1=IMAGE --libvirt qemu+tcp://...`, as nlxtp-serve reads them.
    let uri = daemon.tcp_uri().to_owned();
    let vms = collect_vms(
        &[parse_vm_arg(&format!("img1={}", image.display())).unwrap()],
        std::slice::from_ref(&uri),
        None,
    )
    .unwrap();
    let spec = vms
        .iter()
        .find(|s| s.name == "nlxtp-src-serve")
        .unwrap_or_else(|| panic!("the domain is not listed: {vms:?}"));
    assert_eq!(spec.libvirt.as_deref(), Some(uri.as_str()));
    // One connection per URI for the process, whoever opens the domain.
    let conn = nlxtp_host::area::libvirt::connection(Some(&uri)).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &conn,
        &nlxtp_host::area::libvirt::connection(Some(&uri)).unwrap()
    ));
    // The front ends see it through the trait only.
    assert_eq!(spec.open().unwrap().kind().name(), "libvirt-volume");

    // Read again every 200 ms, as `nlxtp-serve --rescan` does from the same arguments.
    let image_arg = format!("img1={}", image.display());
    let source_uri = uri.clone();
    let rescan = Rescan {
        every: Duration::from_millis(200),
        source: std::sync::Arc::new(move || {
            collect_vms(
                &[parse_vm_arg(&image_arg).map_err(|e| e.to_string())?],
                std::slice::from_ref(&source_uri),
                None,
            )
            .map_err(|e| e.to_string())
        }),
    };
    let server = Server::new(ServeConfig {
        vms,
        state_dir: work.path().join("state"),
        operator_token: Some(TOKEN.into()),
        limits: Limits::default(),
        public_url: None,
        rescan: Some(rescan),
    })
    .unwrap()
    .spawn(TcpListener::bind("127.0.0.1:0").unwrap(), None)
    .unwrap();
    let addr = server.addr();

    let (status, body) = request(addr, "/api/v1/vms");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list = json(&body);
    let vms = list["vms"].as_array().unwrap();
    let of = |name: &str| {
        vms.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the list: {list}"))
    };
    assert!(of("img1")["error"].is_null(), "{list}");
    let domain = of("nlxtp-src-serve");
    assert!(domain["error"].is_null(), "{list}");
    assert_eq!(domain["status"]["record"]["state"], "exited", "{list}");
    assert_eq!(domain["status"]["backend"], "libvirt-volume", "{list}");

    let (status, body) = request(addr, "/api/v1/vms/nlxtp-src-serve");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report = json(&body);
    assert_eq!(report["status"]["record"]["exit_code"], 0, "{report}");
    assert_eq!(report["status"]["record"]["custom"], "via tcp", "{report}");

    let (status, body) = request(addr, "/api/v1/vms/nlxtp-src-serve/archive?format=tar");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let files = untar(&body);
    let out = files
        .iter()
        .find(|(p, _)| p.ends_with("out.txt"))
        .unwrap_or_else(|| {
            panic!(
                "no out.txt in the download: {:?}",
                files.iter().map(|f| &f.0).collect::<Vec<_>>()
            )
        });
    assert_eq!(out.1, b"served by libvirt\n");

    // A domain defined while the server runs is served within a rescan or two; once
    // undefined it is gone (404), and the list follows.
    let late = "nlxtp-src-late";
    assert_eq!(request(addr, &format!("/api/v1/vms/{late}")).0, 404);
    domain_with_a_finished_run(&daemon, late, "defined later\n", "late");
    let listed = |name: &str| {
        let (_, body) = request(addr, "/api/v1/vms");
        json(&body)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == name)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (status, body) = request(addr, &format!("/api/v1/vms/{late}"));
        if status == 200 {
            break json(&body);
        }
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
        assert!(Instant::now() < deadline, "{late} was never served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["status"]["record"]["custom"], "late", "{report}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listed(late) {
        assert!(Instant::now() < deadline, "{late} never came into the list");
        std::thread::sleep(Duration::from_millis(100));
    }
    virsh(daemon.uri(), &["undefine", late]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(addr, &format!("/api/v1/vms/{late}")).0 != 404 || listed(late) {
        assert!(Instant::now() < deadline, "{late} is still served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The VMs that stayed are served as before.
    assert_eq!(request(addr, "/api/v1/vms/nlxtp-src-serve").0, 200);
}

/// A FUSE mount made by `nlxtp-libvirt mount --daemon`; dropping it unmounts.
struct Mounted {
    exe: PathBuf,
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let done = Command::new(&self.exe)
            .args(["umount", self.dir.to_str().unwrap()])
            .output();
        if !done.is_ok_and(|o| o.status.success()) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", self.dir.to_str().unwrap()])
                .status();
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_fuse_view_shows_a_domains_files_and_status() {
    let daemon = Libvirtd::shared().unwrap();
    domain_with_a_finished_run(&daemon, "nlxtp-src-fuse", "mounted from libvirt\n", "fuse");
    let work = tempfile::tempdir().unwrap();
    create_image(&work.path().join("img1.img"), 8 << 20, None, None).unwrap();
    let config = work.path().join("vms.toml");
    std::fs::write(
        &config,
        format!(
            "[vms]\nimg1 = \"img1.img\"\nlv = {{ libvirt = \"{}\", domain = \"nlxtp-src-fuse\" }}\n",
            daemon.tcp_uri()
        ),
    )
    .unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let exe = nlxtp_libvirt_binary().unwrap();
    let out = Command::new(&exe)
        .args(["mount", mnt.to_str().unwrap(), "--daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nlxtp-libvirt mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounted = Mounted {
        exe,
        dir: mnt.clone(),
    };
    wait_for(&mnt.join("lv/out.txt"));
    assert_eq!(
        std::fs::read_to_string(mnt.join("lv/out.txt")).unwrap(),
        "mounted from libvirt\n"
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(mnt.join("lv/.nlxtp/status.json")).unwrap()).unwrap();
    assert_eq!(status["record"]["state"], "exited", "{status}");
    assert_eq!(status["record"]["custom"], "fuse", "{status}");
    let view: Value =
        serde_json::from_slice(&std::fs::read(mnt.join("lv/.nlxtp/view.json")).unwrap()).unwrap();
    assert_eq!(view["backend"], "libvirt-volume", "{view}");
    assert!(
        view["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("#nlxtp-src-fuse")),
        "{view}"
    );
    assert!(mnt.join("img1").is_dir());
    drop(mounted);
}

#[test]
fn a_broken_connection_is_opened_again() {
    let host = Libvirtd::second_host().unwrap();
    let uri = host.tcp_uri().to_owned();
    let first = nlxtp_host::area::libvirt::connection(Some(&uri)).unwrap();
    // The daemon goes and comes back: the process's connection to it is broken.
    drop(host);
    let host = Libvirtd::second_host().unwrap();
    domain_with_a_finished_run(&host, "nlxtp-src-again", "again\n", "reconnected");
    let area = nlxtp_host::area::libvirt::open_domain(&uri, "nlxtp-src-again").unwrap();
    let report = nlxtp_host::ops::status(&area).unwrap();
    assert_eq!(report.record.unwrap().custom, "reconnected");
    let now = nlxtp_host::area::libvirt::connection(Some(&uri)).unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&first, &now),
        "still the broken connection"
    );
    let _ = virsh(host.uri(), &["undefine", "nlxtp-src-again"]);
}
