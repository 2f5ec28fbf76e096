//! `nlxtp run` end to end: real QEMU (TCG here), real signals, the cached Debian kernel.
//!
//! Each test runs the `nlxtp` binary with its own TMPDIR, so what it leaves behind (a
//! temporary directory, a QEMU still running on its disk) is seen. Every wait has a
//! deadline; a `Child` guard kills a stuck `nlxtp`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NLXTP: &str = env!("CARGO_BIN_EXE_nlxtp");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static x86_64 guest binary, built once (cargo does nothing when it is up to date).
fn guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| build_guest("x86_64-unknown-linux-musl"))
}

fn build_guest(target: &str) -> PathBuf {
    {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--quiet", "--release", "--target", target])
            .arg("--manifest-path")
            .arg(repo().join("guest-min/Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            // Where .cargo/config.toml (the aarch64 linker) is found.
            .current_dir(repo())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building nlxtp-guest failed: rustup target add {target}"
        );
        repo().join(format!("guest-min/target/{target}/release/nlxtp-guest"))
    }
}

/// An `nlxtp run` with its own TMPDIR and the guest binary given.
struct Run {
    tmp: tempfile::TempDir,
    command: Command,
}

impl Run {
    fn new(args: &[&str]) -> Run {
        Run::with_guest(guest(), args)
    }

    fn with_guest(guest: &Path, args: &[&str]) -> Run {
        let tmp = tempfile::Builder::new()
            .prefix("nlxtp-run-test-")
            .tempdir()
            .unwrap();
        let mut command = Command::new(NLXTP);
        command
            .arg("run")
            .arg("--guest")
            .arg(guest)
            .args(args)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null());
        Run { tmp, command }
    }

    /// Starts it with its standard output and error piped.
    fn spawn(&mut self) -> Child {
        self.command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs it to its end (within 3 minutes).
    fn output(mut self) -> (Output, tempfile::TempDir) {
        let child = self.spawn();
        let out = wait_output(child, Duration::from_secs(180));
        (out, self.tmp)
    }
}

fn wait_output(child: Child, within: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("nlxtp run did not end within {within:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nothing left: no entry in the run's TMPDIR, no QEMU whose command line names it.
fn assert_nothing_left(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let needle = tmp.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = text(&cmdline);
        assert!(
            !(cmdline.contains("qemu-system") && cmdline.contains(&needle)),
            "a QEMU still runs: {cmdline}"
        );
    }
}

#[test]
fn exit_code_and_live_output_in_order() {
    let mut run = Run::new(&[
        "--timeout",
        "150",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line $i; sleep 1; done; echo oops >&2; exit 3",
    ]);
    let started = Instant::now();
    let mut child = run.spawn();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in stdout.lines() {
        lines.push((line.unwrap(), started.elapsed()));
    }
    let out = wait_output(child, Duration::from_secs(180));
    let ended = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let texts: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3"]);
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    // Live: the first line came while the job still had two seconds of sleep ahead.
    assert!(
        ended - lines[0].1 > Duration::from_millis(1500),
        "line 1 at {:?}, end at {ended:?}: not live",
        lines[0].1
    );
    assert_nothing_left(run.tmp.path());
}

#[test]
fn killed_by_a_signal_and_timeout() {
    let (out, tmp) = Run::new(&["--", "sh", "-c", "kill -KILL $$"]).output();
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));
    assert_nothing_left(tmp.path());

    let started = Instant::now();
    let (out, tmp) = Run::new(&["--timeout", "8", "--", "sleep", "600"]).output();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        text(&out.stderr).contains("--timeout"),
        "{}",
        text(&out.stderr)
    );
    assert_nothing_left(tmp.path());
}

#[test]
fn out_holds_the_results_and_uploads_go_beside_the_job() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in.txt");
    std::fs::write(&input, "hello from the host\n").unwrap();
    let results = work.path().join("results");
    let (out, tmp) = Run::new(&[
        "--upload",
        input.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "tr a-z A-Z < \"$archive_dir/in.txt\" > \"$archive_dir/result.txt\"; echo done",
    ])
    .output();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
    let result = std::fs::read_to_string(results.join("result.txt")).unwrap();
    assert_eq!(result, "HELLO FROM THE HOST\n");
    let captured = std::fs::read_to_string(results.join("nlxtp/stdout.txt")).unwrap();
    assert_eq!(captured, "done\n");
    assert!(results.join("auto_exec.sh").is_file());
    assert_nothing_left(tmp.path());
}

#[test]
fn sigint_mid_run_leaves_nothing_behind() {
    let mut run = Run::new(&["--", "sh", "-c", "echo started; sleep 600"]);
    let mut child = run.spawn();
    // Mid-run: the job has printed its first line.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the job starts");
    assert_eq!(line, "started\n");
    assert!(std::fs::read_dir(run.tmp.path()).unwrap().next().is_some());
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert_nothing_left(run.tmp.path());
}

/// SIGKILL, which `nlxtp run` cannot catch: its QEMU dies with it (a parent-death
/// signal), so no VM runs on; only its temporary directory stays behind.
#[test]
fn sigkill_mid_run_leaves_no_vm_running() {
    let mut run = Run::new(&["--", "sh", "-c", "echo started; sleep 600"]);
    let mut child = run.spawn();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let needle = run.tmp.path().to_string_lossy().into_owned();
    let qemus = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = text(&cmdline);
                cmdline.contains("qemu-system") && cmdline.contains(&needle)
            })
            .count()
    };
    assert_eq!(qemus(), 1, "the run's QEMU is found while it runs");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemus() > 0 {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived a SIGKILLed nlxtp run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kernel as an unpacked package holding only what `nlxtp run` needs, in `dir`,
/// optionally without some modules.
fn small_kernel(dir: &Path, without: &[&str]) -> PathBuf {
    let kernel = nlxtp_host::vm::Kernel::debian(nlxtp_host::vm::Arch::X86_64, &mut |_| {}).unwrap();
    let version = kernel
        .image
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    let root = dir.join("kernel");
    let modules = root.join("lib/modules").join(&version);
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(modules.join("kernel")).unwrap();
    std::fs::copy(
        &kernel.image,
        root.join("boot").join(format!("vmlinuz-{version}")),
    )
    .unwrap();
    for module in kernel
        .modules
        .iter()
        .filter(|m| !without.contains(&m.name.as_str()))
    {
        let file = module.path.file_name().unwrap();
        std::fs::copy(&module.path, modules.join("kernel").join(file)).unwrap();
    }
    root
}

#[test]
fn a_kernel_without_the_modules_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = small_kernel(dir.path(), &["vfat", "virtio_blk"]);
    let (out, tmp) = Run::new(&["--kernel", kernel.to_str().unwrap(), "--", "true"]).output();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("virtio_blk")
            && stderr.contains("vfat")
            && stderr.contains("CONFIG_VFAT_FS"),
        "{stderr}"
    );
    assert_nothing_left(tmp.path());
}

#[test]
fn guest_build_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let out = Command::new(NLXTP)
            .args(["guest", "build", "--guest"])
            .arg(guest())
            .arg("-o")
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::read(dir.path().join(name)).unwrap()
    };
    let (a, b) = (build("a.img"), build("b.img"));
    assert!(a.len() > 100_000);
    assert!(a == b, "two builds from the same inputs differ");
}

/// Runs `nlxtp run --kernel KERNEL -- echo ok` and checks the job ran.
fn runs_on(kernel: &Path) {
    let mut run = Run::new(&["--kernel", kernel.to_str().unwrap(), "--", "echo", "ok"]);
    let out = wait_output(run.spawn(), Duration::from_secs(180));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
}

/// Modules compressed as distributions ship them (Debian 13 uses `.ko.xz`, Fedora and
/// Ubuntu `.ko.zst`): unpacked on the host for busybox's insmod.
#[test]
fn compressed_modules_ko_xz_and_ko_zst() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = small_kernel(dir.path(), &[]);
    let version = std::fs::read_dir(kernel.join("lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut compressed = [0, 0];
    for (i, entry) in std::fs::read_dir(version.join("kernel"))
        .unwrap()
        .enumerate()
    {
        let path = entry.unwrap().path();
        // Both replace the file with its compressed form (xz by default).
        let (tool, args, which) = if i % 2 == 0 {
            ("xz", &["-q"][..], 0)
        } else {
            ("zstd", &["-q", "--rm"][..], 1)
        };
        let status = Command::new(tool).args(args).arg(&path).status().unwrap();
        assert!(status.success(), "{tool} {}", path.display());
        compressed[which] += 1;
    }
    assert!(compressed[0] > 0 && compressed[1] > 0, "{compressed:?}");
    runs_on(&kernel);
}

/// A kernel build tree (`--kernel ~/linux`): `arch/x86/boot/bzImage`, the modules where
/// the build left them, `modules.builtin` and `include/config/kernel.release`.
#[test]
fn a_kernel_build_tree() {
    let dir = tempfile::tempdir().unwrap();
    let package = small_kernel(dir.path(), &[]);
    let version_dir = std::fs::read_dir(package.join("lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let version = version_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let tree = dir.path().join("linux");
    std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
    std::fs::create_dir_all(tree.join("include/config")).unwrap();
    std::fs::copy(
        package.join("boot").join(format!("vmlinuz-{version}")),
        tree.join("arch/x86/boot/bzImage"),
    )
    .unwrap();
    std::fs::write(
        tree.join("include/config/kernel.release"),
        format!("{version}\n"),
    )
    .unwrap();
    let debian = Path::new("/lib/modules")
        .join(&version)
        .join("modules.builtin");
    let builtin = std::fs::read(&debian)
        .or_else(|_| {
            let kernel =
                nlxtp_host::vm::Kernel::debian(nlxtp_host::vm::Arch::X86_64, &mut |_| {}).unwrap();
            std::fs::read(kernel.modules_dir.unwrap().join("modules.builtin"))
        })
        .unwrap();
    std::fs::write(tree.join("modules.builtin"), builtin).unwrap();
    // Each module in a directory of its own, as a build leaves them (drivers/..., fs/...).
    for entry in std::fs::read_dir(version_dir.join("kernel")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let sub = tree.join("drivers").join(name.trim_end_matches(".ko"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(&path, sub.join(&name)).unwrap();
    }
    runs_on(&tree);
}

#[test]
fn as_an_ordinary_user() {
    // Everything the user needs, in a directory it owns: no root, no mount, no loop.
    let dir = tempfile::tempdir().unwrap();
    let kernel = small_kernel(dir.path(), &[]);
    for (from, to) in [(Path::new(NLXTP), "nlxtp"), (guest(), "nlxtp-guest")] {
        std::fs::copy(from, dir.path().join(to)).unwrap();
    }
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(dir.path().join("nlxtp"))
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--", "id", "-u"])
        .env("HOME", dir.path())
        .env("TMPDIR", &tmp)
        .env_remove("NLXTP_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(180));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The guest runs the job as its root; the host side ran as nobody.
    assert_eq!(text(&out.stdout), "0\n");
    assert_nothing_left(&tmp);
}

#[test]
fn a_config_file_with_two_targets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nlxtp.toml");
    std::fs::write(
        &config,
        "[[target]]\nname = \"passes\"\ncommand = [\"sh\", \"-c\", \"echo first\"]\ntimeout = 150\n\n\
         [[target]]\nname = \"fails\"\ncommand = [\"sh\", \"-c\", \"echo second; exit 3\"]\ntimeout = 150\n",
    )
    .unwrap();
    let (out, tmp) = Run::new(&["--config", config.to_str().unwrap()]).output();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(text(&out.stdout), "first\nsecond\n");
    assert!(stderr.contains("[1/2] passes: passed (exit 0)"), "{stderr}");
    assert!(stderr.contains("[2/2] fails: FAILED (exit 3)"), "{stderr}");
    assert!(
        stderr.contains("summary: 2 targets, 1 passed, 1 failed: fails (exit 3)"),
        "{stderr}"
    );
    // No control characters when not on a terminal.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert_nothing_left(tmp.path());
}

#[test]
fn an_aarch64_guest() {
    // scripts/setup adds the target, qemu-system-arm and dpkg's arm64 architecture; the
    // kernel and busybox-static come from Debian's arm64 packages, fetched once.
    let guest = build_guest("aarch64-unknown-linux-musl");
    let run = Run::with_guest(
        &guest,
        &["--arch", "aarch64", "--timeout", "170", "--", "uname", "-m"],
    );
    let (out, tmp) = run.output();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "aarch64\n");
    assert_nothing_left(tmp.path());
}
