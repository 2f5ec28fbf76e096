//! libvirt domains when things go wrong, against real libvirtd daemons started by the
//! harness (`nlxtp_harness::libvirt`): an `nlxtp-libvirt upload` over `qemu+tcp://`
//! killed (SIGKILL) at several points leaves the domain on the old volume or on a
//! complete new one, never a mix; libvirt's DAC driver gets back the owner it took from
//! the shared volume when a domain shuts down, and nlxtp's new volumes keep the old
//! one's owner and mode; an upload given up half-way deletes its new volume; and the
//! clear errors for an authentication failure, two shared disks, and a shared disk
//! outside any pool.
//!
//! Every domain, pool and volume here is named `gaps-...`: the daemons may be shared with
//! other test runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nlxtp_harness::libvirt::{
    define_domain, idle_domain_xml, nlxtp_libvirt_binary, tcp_ports_of, virsh, wait_shut_off,
    Libvirtd, BASE, PORT,
};
use nlxtp_harness::vm::{archive, noise};
use nlxtp_host::area::libvirt::{connect, find_shared_disk, DiskSource, LibvirtDomain};
use nlxtp_host::area::vfat::{create_disk, DiskOptions};
use nlxtp_host::area::{AreaError, AreaPath, SharedArea};
use nlxtp_host::ops::{self, UploadError, UploadOptions};

/// Defines a domain from `xml` on `uri` (after taking away one of the same name).
fn define_xml(uri: &str, name: &str, xml: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), xml).unwrap();
    let _ = virsh(uri, &["destroy", name]);
    let _ = virsh(uri, &["undefine", name]);
    virsh(uri, &["define", file.path().to_str().unwrap()]).unwrap();
}

/// A domain that is never started, with its shared disk the volume `volume` of `pool`.
fn define_idle(uri: &str, name: &str, pool: &str, volume: &str) {
    define_xml(uri, name, &idle_domain_xml(name, pool, volume, "vdb"));
}

/// The volume the persistent definition of `domain` has as its shared disk.
fn defined_volume(uri: &str, domain: &str) -> String {
    let xml = virsh(uri, &["dumpxml", "--inactive", domain]).unwrap();
    match find_shared_disk(domain, &xml).unwrap().source {
        DiskSource::Volume { volume, .. } => volume,
        other => panic!("not a volume disk: {other:?}"),
    }
}

/// The whole volume, downloaded through `uri`.
fn download(uri: &str, pool: &str, volume: &str, to: &Path) -> Vec<u8> {
    virsh(
        uri,
        &["vol-download", "--pool", pool, volume, to.to_str().unwrap()],
    )
    .unwrap();
    std::fs::read(to).unwrap()
}

/// The volumes of the pool directory `dir`, by name.
fn volumes_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The pool `pool` (a `dir` pool under the harness's base), emptied, with one fresh
/// shared disk `first` of `size` bytes; its directory and the disk's path.
fn fresh_pool(daemon: &Libvirtd, pool: &str, first: &str, size: u64) -> (PathBuf, PathBuf) {
    let dir = daemon.pool(pool).unwrap();
    for name in volumes_in(&dir) {
        let _ = virsh(daemon.uri(), &["vol-delete", "--pool", pool, &name]);
    }
    let disk = dir.join(first);
    create_disk(
        &disk,
        &DiskOptions {
            size,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    virsh(daemon.uri(), &["pool-refresh", pool]).unwrap();
    (dir, disk)
}

/// Runs `command`, which must succeed; its stderr.
fn succeeds(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{command:?}: {stderr}");
    stderr
}

/// Where an upload is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the process started.
    After(Duration),
    /// When its new volume appears in the pool, plus this long.
    NewVolume(Duration),
    /// As soon as the domain's persistent definition names another volume (the switch
    /// is done; the old volume's deletion may not be).
    Switched,
}

/// Kills `nlxtp-libvirt upload` over `qemu+tcp://` at several points and checks that the
/// domain is left on the old volume, byte for byte, or on a complete new one; the new
/// volumes that the kills left behind are used by no domain, and the next upload reports
/// them (and deletes those older than the grace time).
#[test]
fn a_crash_in_the_middle_of_a_remote_upload_leaves_old_or_new() {
    let daemon = Libvirtd::shared().unwrap();
    let uri = daemon.tcp_uri().to_owned();
    let pool = "gaps-crash";
    let domain = "gaps-crash";
    let (dir, _) = fresh_pool(&daemon, pool, "gaps-crash-first.img", 160 << 20);
    define_idle(daemon.uri(), domain, pool, "gaps-crash-first.img");
    let cli = nlxtp_libvirt_binary().unwrap();
    let work = tempfile::tempdir().unwrap();
    let small = work.path().join("small.tar.gz");
    std::fs::write(
        &small,
        archive(&[
            ("auto_exec.sh", b"#!/bin/sh\necho old\n", 0o755),
            ("which.txt", b"old", 0o644),
        ])
        .unwrap(),
    )
    .unwrap();
    let big_data = noise(64 << 20, 0x9e37_79b9_7f4a_7c15);
    let big = work.path().join("big.tar.gz");
    std::fs::write(
        &big,
        archive(&[
            ("auto_exec.sh", b"#!/bin/sh\necho new\n", 0o755),
            ("which.txt", b"new", 0o644),
            ("big.bin", &big_data, 0o644),
        ])
        .unwrap(),
    )
    .unwrap();
    let upload = |job: &Path, verbose: bool| {
        let mut command = Command::new(&cli);
        command.args(["-c", &uri]);
        if verbose {
            command.arg("-v");
        }
        command
            .args(["upload", domain])
            .arg(job)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let run = |job: &Path| succeeds(&mut upload(job, true));
    let area = LibvirtDomain::open(connect(Some(&uri)).unwrap(), &uri, domain).unwrap();
    let read = |path: &str, max: u64| area.read_file(&AreaPath::new(path).unwrap(), max);

    // One whole upload of the big job, timed: the kills are spread over it.
    let start = Instant::now();
    run(&big);
    let whole = start.elapsed();
    assert_eq!(read("which.txt", 16).unwrap(), b"new");
    eprintln!("a whole upload of the big job over {uri}: {whole:?}");

    let definition_file = PathBuf::from("/etc/libvirt/qemu").join(format!("{domain}.xml"));
    let mut points = vec![
        KillAt::After(Duration::from_millis(30)),
        KillAt::NewVolume(Duration::ZERO),
        KillAt::NewVolume(whole / 8),
        KillAt::After(whole * 3 / 10),
        KillAt::After(whole * 6 / 10),
        KillAt::After(whole * 9 / 10),
        KillAt::After(whole * 97 / 100),
        KillAt::Switched,
        KillAt::Switched,
    ];
    // A kill at the switch lands on a running client only when the client has not yet
    // ended by itself: the switch is tried again (up to this many times in all) until
    // one has.
    const SWITCH_TRIES: usize = 10;
    let (mut olds, mut killed_news, mut switch_tries) = (0, 0, 0);
    let mut next = 0;
    while let Some(&point) = points.get(next) {
        next += 1;
        // The state before: the small job, complete, downloaded.
        run(&small);
        let before = defined_volume(&uri, domain);
        let old_bytes = download(&uri, pool, &before, &work.path().join("before.img"));
        let pool_before = volumes_in(&dir);

        let mut child = upload(&big, false).spawn().unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let mut seen_new: Option<Instant> = None;
        loop {
            let fire = match point {
                KillAt::After(after) => started.elapsed() >= after,
                KillAt::NewVolume(after) => {
                    if seen_new.is_none()
                        && volumes_in(&dir).iter().any(|v| !pool_before.contains(v))
                    {
                        seen_new = Some(Instant::now());
                    }
                    seen_new.is_some_and(|t| t.elapsed() >= after)
                }
                KillAt::Switched => std::fs::read_to_string(&definition_file)
                    .is_ok_and(|xml| !xml.contains(&format!("volume='{before}'"))),
            };
            if fire || child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "{point:?} never came");
            std::thread::sleep(Duration::from_micros(500));
        }
        let ports = tcp_ports_of(child.id(), PORT);
        let _ = child.kill();
        let killed_after = started.elapsed();
        let status = child.wait().unwrap();

        // A request the killed client had already sent (the switch) is still carried
        // out by the daemon: read the definition once the daemon is done with it.
        daemon
            .wait_done_with(&ports, Duration::from_secs(120))
            .unwrap();
        let after = defined_volume(&uri, domain);
        let vols: Vec<String> = volumes_in(&dir);
        assert!(
            vols.contains(&after),
            "{after} is not in the pool: {vols:?}"
        );
        let outcome = if after == before {
            // Old: the very same volume, byte for byte.
            let now = download(&uri, pool, &after, &work.path().join("after.img"));
            assert!(now == old_bytes, "{point:?}: the old volume changed");
            assert_eq!(read("which.txt", 16).unwrap(), b"old");
            olds += 1;
            "old"
        } else {
            // New: complete, every byte of the big file there.
            assert_eq!(read("which.txt", 16).unwrap(), b"new", "{point:?}");
            assert!(
                read("big.bin", 1 << 27).unwrap() == big_data,
                "{point:?}: the new volume in use is not complete"
            );
            if !status.success() {
                killed_news += 1;
            }
            "new"
        };
        // Whatever else is in the pool now is used by no domain.
        let shared = virsh(&uri, &["list", "--all", "--name"]).unwrap();
        for other in vols.iter().filter(|v| **v != after) {
            for name in shared.lines().filter(|l| !l.trim().is_empty()) {
                // Other tests define and undefine their domains meanwhile.
                let Ok(xml) = virsh(&uri, &["dumpxml", "--inactive", name]) else {
                    continue;
                };
                assert!(
                    !xml.contains(&format!("volume='{other}'")),
                    "domain {name} uses the leftover {other} ({point:?}, in use: {after}): {xml}"
                );
            }
        }
        eprintln!(
            "{point:?}: killed after {killed_after:?} ({status}; its connections from ports {ports:?}): {outcome}, pool {vols:?}"
        );
        if matches!(point, KillAt::Switched) {
            switch_tries += 1;
            if next == points.len() && killed_news == 0 && switch_tries < SWITCH_TRIES {
                points.push(KillAt::Switched);
            }
        }
    }
    eprintln!("{olds} left the old volume, {killed_news} killed ones the new one");
    assert!(
        olds > 0 && killed_news > 0,
        "the kills never hit both sides of the switch"
    );

    // The leftovers: the next upload reports the young ones and keeps them (they may be
    // another upload's, in progress), deletes one older than the grace time, and never
    // touches a volume a domain uses.
    virsh(
        daemon.uri(),
        &[
            "vol-create-as",
            pool,
            "gaps-crash-nlxtp-1000000000000000000.img",
            "1M",
        ],
    )
    .unwrap();
    let young: Vec<String> = volumes_in(&dir)
        .into_iter()
        .filter(|v| {
            v.starts_with("gaps-crash-nlxtp-")
                && *v != defined_volume(&uri, domain)
                && !v.starts_with("gaps-crash-nlxtp-1000000000")
        })
        .collect();
    let log = run(&small);
    let now = volumes_in(&dir);
    assert!(
        !now.contains(&"gaps-crash-nlxtp-1000000000000000000.img".to_owned()),
        "an old leftover was kept: {now:?}\n{log}"
    );
    for v in &young {
        assert!(log.contains(v.as_str()), "{v} not reported:\n{log}");
        assert!(now.contains(v), "{v} (young) was deleted");
    }
    assert!(now.contains(&defined_volume(&uri, domain)));
    eprintln!("{} young leftovers reported", young.len());

    let _ = virsh(daemon.uri(), &["undefine", domain]);
    for name in volumes_in(&dir) {
        let _ = virsh(daemon.uri(), &["vol-delete", "--pool", pool, &name]);
    }
}

/// Owner, group and mode of `path`, and its `trusted.libvirt.security.*` xattrs.
fn ownership(path: &Path) -> ((u32, u32, u32), Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::listxattr(path, &mut buf[..]).unwrap();
    let xattrs = buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| n.starts_with("trusted.libvirt.security"))
        .collect();
    ((meta.uid(), meta.gid(), meta.mode() & 0o7777), xattrs)
}

/// The uid of the user `name`.
fn uid_of(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// libvirt's DAC driver (its defaults: the harness writes no qemu.conf, so
/// `dynamic_ownership = 1`, `remember_owner = 1`, user `libvirt-qemu`) chowns the shared
/// volume while the domain runs and gives the owner back at shutdown; nlxtp's uploads
/// keep the old volume's owner and mode, and an upload while the domain runs is refused
/// without touching either.
/// An upload into a `dir` pool sends only what the new image holds (the new volume reads
/// as zeros elsewhere): bytes that the old volume had where the new image has none (its
/// free clusters, filled with a marker here) must not come back in the new volume.
#[test]
fn a_new_volume_keeps_nothing_of_the_old_one() {
    const MARK: u8 = 0xa5;
    let daemon = Libvirtd::shared().unwrap();
    let uri = daemon.tcp_uri().to_owned();
    let pool = "gaps-zeros";
    let domain = "gaps-zeros";
    let (_, disk) = fresh_pool(&daemon, pool, "gaps-zeros-first.img", 32 << 20);
    // The fresh FAT's free clusters (and anything after them) marked.
    let mut old = std::fs::read(&disk).unwrap();
    old[4 << 20..].fill(MARK);
    std::fs::write(&disk, &old).unwrap();
    virsh(daemon.uri(), &["pool-refresh", pool]).unwrap();
    define_idle(daemon.uri(), domain, pool, "gaps-zeros-first.img");
    let area = LibvirtDomain::open(connect(Some(&uri)).unwrap(), &uri, domain).unwrap();
    let data = noise(3 << 20, 7);
    let job = archive(&[
        ("auto_exec.sh", b"#!/bin/sh\ntrue\n", 0o755),
        ("data.bin", &data, 0o644),
    ])
    .unwrap();
    ops::upload(&area, &job[..], &UploadOptions::default()).unwrap();
    let volume = defined_volume(daemon.uri(), domain);
    assert_ne!(volume, "gaps-zeros-first.img");
    let work = tempfile::tempdir().unwrap();
    let new = download(&uri, pool, &volume, &work.path().join("new.img"));
    assert_eq!(new.len(), old.len());
    let marked = new
        .chunks(512)
        .position(|sector| sector.iter().all(|&b| b == MARK));
    assert_eq!(marked, None, "a sector of the old volume came back");
    // What the new image does not use reads as zeros; its files read back whole.
    let used = new.iter().rposition(|&b| b != 0).unwrap();
    assert!(used < 16 << 20, "non-zero bytes up to {used}");
    assert_eq!(
        area.read_file(&AreaPath::new("data.bin").unwrap(), 4 << 20)
            .unwrap(),
        data
    );
    let _ = virsh(daemon.uri(), &["undefine", domain]);
    let _ = virsh(daemon.uri(), &["vol-delete", "--pool", pool, &volume]);
}

/// An upload is written into its new volume while the archive is read (the file data
/// already during the build). One that is given up half-way, after megabytes of it went
/// into the new volume (a link member at the end, refused; a gzip stream cut short, read
/// by the CLI beside the checks; more than the volume holds, found at the end), leaves
/// the domain on its old volume, byte for byte, and deletes the new one. A good one, of the same files, reads back whole and passes
/// `fsck.vfat`.
#[test]
fn an_upload_given_up_half_way_leaves_the_old_volume_and_no_new_one() {
    let daemon = Libvirtd::shared().unwrap();
    let uri = daemon.tcp_uri().to_owned();
    let pool = "gaps-given-up";
    let domain = "gaps-given-up";
    let (dir, _) = fresh_pool(&daemon, pool, "gaps-given-up-first.img", 32 << 20);
    define_idle(daemon.uri(), domain, pool, "gaps-given-up-first.img");
    let area = LibvirtDomain::open(connect(Some(&uri)).unwrap(), &uri, domain).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("out/part-{i:02}.bin"), noise(768 << 10, 40 + i)))
        .collect();
    let mut members: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice(), 0o644))
        .collect();
    members.push(("auto_exec.sh", b"#!/bin/sh\ntrue\n", 0o755));

    // A good upload: every file back, a clean volume.
    ops::upload(
        &area,
        &archive(&members).unwrap()[..],
        &UploadOptions::default(),
    )
    .unwrap();
    let good = defined_volume(daemon.uri(), domain);
    assert_ne!(good, "gaps-given-up-first.img");
    for (name, data) in &files {
        let back = area
            .read_file(&AreaPath::new(name.as_str()).unwrap(), 1 << 20)
            .unwrap();
        assert!(back == *data, "{name} read back different");
    }
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("good.img");
    let before = download(&uri, pool, &good, &image);
    let fsck = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert_eq!(volumes_in(&dir), std::slice::from_ref(&good));

    // The same files, then a link: refused at the end, after the files went in.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in &members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, *data).unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "escape", "/etc/passwd").unwrap();
    let linked = tar.into_inner().unwrap();
    let err = ops::upload(&area, &linked[..], &UploadOptions::default()).unwrap_err();
    assert!(
        matches!(err, UploadError::Archive(ops::ArchiveError::Link { .. })),
        "{err:?}"
    );
    let unchanged = |what: &str| {
        assert_eq!(defined_volume(daemon.uri(), domain), good, "{what}");
        assert_eq!(
            volumes_in(&dir),
            std::slice::from_ref(&good),
            "{what}: a new volume was left"
        );
        let now = download(&uri, pool, &good, &work.path().join("now.img"));
        assert!(now == before, "{what}: the old volume changed");
    };
    unchanged("after a refused link");

    // A gzip stream cut short, through the CLI (which reads it while it connects).
    let whole = archive(&members).unwrap();
    let cut = work.path().join("cut.tar.gz");
    std::fs::write(&cut, &whole[..whole.len() * 3 / 4]).unwrap();
    let out = Command::new(nlxtp_libvirt_binary().unwrap())
        .args(["-c", &uri, "upload", domain])
        .arg(&cut)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("truncated or corrupt"), "{stderr}");
    unchanged("after a cut-off archive");

    // More than the volume holds: found when the last file is in, after megabytes
    // went into the new volume.
    let big: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("big/part-{i:02}.bin"), noise(1 << 20, 90 + i)))
        .collect();
    let mut too_much: Vec<(&str, &[u8], u32)> = big
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice(), 0o644))
        .collect();
    too_much.push(("auto_exec.sh", b"#!/bin/sh\ntrue\n", 0o755));
    let err = ops::upload(
        &area,
        &archive(&too_much).unwrap()[..],
        &UploadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, UploadError::Area(AreaError::NoSpace { .. })),
        "{err:?}"
    );
    unchanged("after an upload too large for the volume");

    let _ = virsh(daemon.uri(), &["undefine", domain]);
    let _ = virsh(daemon.uri(), &["vol-delete", "--pool", pool, &good]);
}

#[test]
fn ownership_is_restored_after_shutdown() {
    let daemon = Libvirtd::shared().unwrap();
    let uri = daemon.tcp_uri().to_owned();
    let pool = "gaps-dac";
    let domain = "gaps-dac";
    let (dir, first) = fresh_pool(&daemon, pool, "gaps-dac-first.img", 16 << 20);
    // Not what libvirt would pick for a new volume (0600): so a copy shows.
    std::fs::set_permissions(&first, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = nlxtp_harness::initramfs::guest_initramfs(work.path()).unwrap();
    define_domain(
        daemon.uri(),
        domain,
        &kernel.boot_image(),
        &initramfs,
        "loglevel=4 nlxtp.heartbeat_ms=500",
        pool,
        "gaps-dac-first.img",
    )
    .unwrap();
    let original = ownership(&first);
    assert_eq!(original, ((0, 0, 0o640), vec![]), "{}", first.display());
    let volume_path = || dir.join(defined_volume(&uri, domain));

    // Upload before the boot: the new volume has the old one's owner and mode.
    let area = LibvirtDomain::open(connect(Some(&uri)).unwrap(), &uri, domain).unwrap();
    let job = archive(&[("auto_exec.sh", b"#!/bin/sh\necho ran > out.txt\n", 0o755)]).unwrap();
    ops::upload(&area, &job[..], &UploadOptions::default()).unwrap();
    assert!(!first.exists(), "the old volume was kept");
    let second = volume_path();
    assert_eq!(ownership(&second), original, "{}", second.display());

    // Running: the QEMU user owns it, libvirt counts its reference in xattrs; an upload
    // is refused and changes neither, nor the pool.
    virsh(daemon.uri(), &["start", domain]).unwrap();
    let running = ownership(&second);
    let qemu = uid_of("libvirt-qemu");
    assert_eq!(running.0 .0, qemu, "DAC did not chown the running volume");
    assert!(!running.1.is_empty(), "no DAC xattrs while running");
    let pool_running = volumes_in(&dir);
    match ops::upload(&area, &job[..], &UploadOptions::default()) {
        Err(UploadError::Area(AreaError::Busy { .. })) => {}
        other => panic!("an upload to a running domain was not refused: {other:?}"),
    }
    let cli = nlxtp_libvirt_binary().unwrap();
    let job_file = work.path().join("job.tar.gz");
    std::fs::write(&job_file, &job).unwrap();
    let refused = Command::new(&cli)
        .args(["-c", &uri, "upload", domain])
        .arg(&job_file)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(ownership(&second), running);
    assert_eq!(volumes_in(&dir), pool_running);

    // Shut down (the job ends, the guest powers off): the owner is back, the xattrs gone.
    wait_shut_off(daemon.uri(), domain, Duration::from_secs(180)).unwrap();
    assert_eq!(read_out(&area), b"ran\n");
    assert_eq!(ownership(&second), original, "the owner was not restored");

    // Upload after, with --start, and a second boot on nlxtp's own volume: the same.
    succeeds(
        Command::new(&cli)
            .args(["-c", &uri, "upload", "--start", domain])
            .arg(&job_file),
    );
    let third = volume_path();
    assert_ne!(third, second);
    assert!(!second.exists(), "the old volume was kept");
    wait_shut_off(daemon.uri(), domain, Duration::from_secs(180)).unwrap();
    assert_eq!(read_out(&area), b"ran\n");
    assert_eq!(ownership(&third), original, "the owner was not restored");

    let _ = virsh(daemon.uri(), &["undefine", domain]);
    for name in volumes_in(&dir) {
        let _ = virsh(daemon.uri(), &["vol-delete", "--pool", pool, &name]);
    }
}

fn read_out(area: &LibvirtDomain) -> Vec<u8> {
    area.read_file(&AreaPath::new("out.txt").unwrap(), 1024)
        .unwrap()
}

/// The errors a user meets first, each one sentence that says what failed and what to
/// do, through the library and through `nlxtp-libvirt`.
#[test]
fn clear_errors_for_auth_two_disks_and_a_file_outside_pools() {
    let daemon = Libvirtd::shared().unwrap();
    let cli = nlxtp_libvirt_binary().unwrap();
    let cli_error = |args: &[&str]| {
        let out = Command::new(&cli)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };

    // A daemon that wants SASL credentials, and none given.
    let sasl = Libvirtd::sasl_host().unwrap();
    let err = connect(Some(sasl.tcp_uri())).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "libvirt at {} refused to authenticate",
            sasl.tcp_uri()
        )) && err.contains("auth.conf")
            && err.contains("qemu+ssh://"),
        "{err}"
    );
    let stderr = cli_error(&["-c", sasl.tcp_uri(), "status", "gaps-any"]);
    assert!(
        stderr.contains("refused to authenticate") && stderr.contains("authentication failed"),
        "{stderr}"
    );
    drop(sasl);

    // Two disks with the serial: the error names both, with their sources.
    let pool = "gaps-err";
    let dir = daemon.pool(pool).unwrap();
    let loose_dir = PathBuf::from(BASE).join("gaps-loose");
    std::fs::create_dir_all(&loose_dir).unwrap();
    let loose = loose_dir.join("loose.img");
    let options = DiskOptions {
        size: 8 << 20,
        ..DiskOptions::default()
    };
    for image in [dir.join("gaps-two-a.img"), loose.clone()] {
        let _ = std::fs::remove_file(&image);
        create_disk(&image, &options).unwrap();
    }
    virsh(daemon.uri(), &["pool-refresh", pool]).unwrap();
    let disk = |kind: &str, source: &str, target: &str| {
        format!(
            "<disk type='{kind}' device='disk'><driver name='qemu' type='raw'/>{source}\
             <target dev='{target}' bus='virtio'/><serial>NLXTP</serial></disk>"
        )
    };
    let domain = |name: &str, disks: &str| {
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os><devices>{disks}</devices></domain>"
        )
    };
    let in_pool = disk(
        "volume",
        &format!("<source pool='{pool}' volume='gaps-two-a.img'/>"),
        "vdb",
    );
    let outside = |target: &str| {
        disk(
            "file",
            &format!("<source file='{}'/>", loose.display()),
            target,
        )
    };
    define_xml(
        daemon.uri(),
        "gaps-two",
        &domain("gaps-two", &(in_pool + &outside("vdc"))),
    );
    let uri = daemon.tcp_uri();
    let open_err = |name: &str| {
        LibvirtDomain::open(connect(Some(uri)).unwrap(), uri, name)
            .unwrap_err()
            .to_string()
    };
    let err = open_err("gaps-two");
    let both = format!(
        "vdb (volume {pool}/gaps-two-a.img), vdc (file {})",
        loose.display()
    );
    assert!(
        err.contains("domain gaps-two has 2 disks with <serial>NLXTP</serial>")
            && err.contains(&both)
            && err.contains("virsh edit gaps-two"),
        "{err}"
    );
    let stderr = cli_error(&["-c", uri, "status", "gaps-two"]);
    assert!(stderr.contains(&both), "{stderr}");

    // A plain file in no pool: the error says how to put it in one.
    define_xml(
        daemon.uri(),
        "gaps-loose",
        &domain("gaps-loose", &outside("vdb")),
    );
    let err = open_err("gaps-loose");
    assert!(
        err.contains(&format!(
            "the shared disk vdb of domain gaps-loose is not a volume of a storage pool \
             (the file {}, which no pool holds)",
            loose.display()
        )) && err.contains("virsh pool-define-as NAME dir --target DIR")
            && err.contains("virsh pool-refresh POOL"),
        "{err}"
    );
    let stderr = cli_error(&["-c", uri, "upload", "gaps-loose", "/dev/null"]);
    assert!(stderr.contains("which no pool holds"), "{stderr}");

    // Done as it says: a dir pool over the file's directory, and the domain opens.
    let _ = virsh(daemon.uri(), &["pool-destroy", "gaps-loose"]);
    let _ = virsh(daemon.uri(), &["pool-undefine", "gaps-loose"]);
    virsh(
        daemon.uri(),
        &[
            "pool-define-as",
            "gaps-loose",
            "dir",
            "--target",
            loose_dir.to_str().unwrap(),
        ],
    )
    .unwrap();
    virsh(daemon.uri(), &["pool-start", "gaps-loose"]).unwrap();
    let area = LibvirtDomain::open(connect(Some(uri)).unwrap(), uri, "gaps-loose").unwrap();
    assert!(ops::status(&area).unwrap().record.is_none());

    for name in ["gaps-two", "gaps-loose"] {
        let _ = virsh(daemon.uri(), &["undefine", name]);
    }
    let _ = virsh(daemon.uri(), &["pool-destroy", "gaps-loose"]);
    let _ = virsh(daemon.uri(), &["pool-undefine", "gaps-loose"]);
    let _ = std::fs::remove_dir_all(&loose_dir);
    let _ = virsh(
        daemon.uri(),
        &["vol-delete", "--pool", pool, "gaps-two-a.img"],
    );
}
