//! End to end on a real container (namespaces, chroot, no network): uploads run at once,
//! status, download, a planted symlink, and the paper's second experiment (a package
//! installed from an uploaded archive, checked by a second archive).

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use nlxtp_core::RunState;
use nlxtp_harness::container::Container;
use nlxtp_harness::vm::archive;
use nlxtp_host::ops::{self, Compression, UploadOptions, WaitOutcome};

fn run(container: &Container, members: &[(&str, &[u8], u32)]) -> nlxtp_core::StatusRecord {
    let area = ops::open_target(&container.shared()).unwrap();
    let bytes = archive(members).unwrap();
    ops::upload(area.as_ref(), &bytes[..], &UploadOptions::default()).unwrap();
    match ops::wait(
        area.as_ref(),
        Some(Duration::from_secs(30)),
        Duration::from_millis(50),
        &mut |_| Ok(()),
    )
    .unwrap()
    {
        WaitOutcome::Done(rec) => rec,
        other => panic!("run did not finish: {other:?}\n{}", container.log()),
    }
}

#[test]
fn upload_runs_at_once_and_download_never_follows_a_planted_symlink() {
    let container = Container::start(500).unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "HOST-SECRET-7c1d").unwrap();
    let script = format!(
        "ln -s {secret} leak\nln -s / root-link\nmkdir out && echo result > out/r.txt\narchive_setstatus planted\necho done\n",
        secret = secret.path().display()
    );
    let started = Instant::now();
    let rec = run(&container, &[("auto_exec.sh", script.as_bytes(), 0o755)]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ran at once: {:?}",
        started.elapsed()
    );
    assert_eq!(
        (rec.state, rec.custom.as_str()),
        (RunState::Exited(0), "planted")
    );

    let area = ops::open_target(&container.shared()).unwrap();
    let mut tar = Vec::new();
    ops::archive::write_download(
        area.as_ref(),
        &mut tar,
        Compression::None,
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    let text = String::from_utf8_lossy(&tar);
    assert!(
        !text.contains("HOST-SECRET-7c1d"),
        "a host file leaked through a symlink"
    );
    let mut names = Vec::new();
    for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "out/r.txt" {
            let mut s = String::new();
            entry.read_to_string(&mut s).unwrap();
            assert_eq!(s, "result\n");
        }
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "out/r.txt") && names.iter().any(|n| n == "nlxtp/stdout.txt"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("root-link/")),
        "never walked through a link: {names:?}"
    );
}

/// The paper's second experiment: install a software package in the guest from the
/// uploaded archive, then check from a second archive that it is installed.
#[test]
fn second_experiment_installs_a_package() {
    let container = Container::start(500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
    std::fs::write(pkg.join("DEBIAN/control"), "Package: hello-nlxtp\nVersion: 1.0\nArchitecture: all\nMaintainer: nlxtp <nlxtp@example.invalid>\nDescription: says hello\n").unwrap();
    std::fs::write(
        pkg.join("usr/bin/hello-nlxtp"),
        "#!/bin/sh\necho hello from a package\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(pkg.join("usr/bin/hello-nlxtp"))
        .status()
        .unwrap();
    let deb = work.path().join("hello.deb");
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb_bytes = std::fs::read(&deb).unwrap();

    assert!(!container.rootfs().join("usr/bin/hello-nlxtp").exists());
    let install = "dpkg -i \"$archive_dir/hello.deb\" && archive_setstatus installed\n";
    let rec = run(
        &container,
        &[
            ("auto_exec.sh", install.as_bytes(), 0o755),
            ("hello.deb", &deb_bytes, 0o644),
        ],
    );
    assert_eq!(
        (rec.state, rec.custom.as_str()),
        (RunState::Exited(0), "installed"),
        "{}",
        container.log()
    );
    assert!(
        container.rootfs().join("usr/bin/hello-nlxtp").exists(),
        "the guest system changed"
    );

    // busybox dpkg keeps the standard status database.
    let check = "archive_setstatus \"$(hello-nlxtp) / $(sed -n '/^Package: hello-nlxtp$/,/^$/p' /var/lib/dpkg/status | grep '^Status:')\"\n";
    let rec = run(&container, &[("auto_exec.sh", check.as_bytes(), 0o755)]);
    let db =
        std::fs::read_to_string(container.rootfs().join("var/lib/dpkg/status")).unwrap_or_default();
    assert_eq!(
        rec.custom.as_str(),
        "hello from a package / Status: install ok installed",
        "dpkg database:\n{db}"
    );
}

/// A custom status of 60 KB (the original's package-fetch tool wrote 9.4 KB), set 100
/// times by the script while the host reads the status as `nlxtp status` does: each
/// read is one whole text, never a mix of two, and the last one is there at the end.
#[test]
fn a_long_custom_status_is_read_whole_while_it_changes() {
    let container = Container::start(500).unwrap();
    // The container has no /dev/zero: the text is made by doubling.
    let script = "big=x\nwhile [ ${#big} -lt 60000 ]; do big=$big$big; done\nbig=$(printf %s \"$big\" | head -c 60000)\ni=1\nwhile [ $i -le 100 ]; do\n  archive_setstatus \"$i:$big\"\n  i=$((i + 1))\ndone\n";
    let area = ops::open_target(&container.shared()).unwrap();
    let bytes = archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap();
    ops::upload(area.as_ref(), &bytes[..], &UploadOptions::default()).unwrap();
    let body = "x".repeat(60_000);
    let (mut reads, mut whole) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = ops::status(area.as_ref()).unwrap();
        let Some(rec) = report.record else { continue };
        reads += 1;
        if !rec.custom.is_empty() {
            let (n, text) = rec.custom.split_once(':').expect("one whole text");
            assert!(
                (1..=100).contains(&n.parse::<u32>().unwrap()) && text == body,
                "a torn or mixed custom status of {} bytes: {:?}",
                rec.custom.len(),
                &rec.custom[..rec.custom.len().min(80)]
            );
            whole += 1;
        }
        if rec.done {
            assert_eq!(
                rec.custom,
                format!("100:{body}"),
                "the last text at the end"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no end\n{}", container.log());
    }
    eprintln!("{reads} status reads, {whole} with a whole 60 KB text");
}
