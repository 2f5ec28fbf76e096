//! The nlxtp demo: the paper's first experiment, deferred, on a real QEMU VM.
//!
//! Builds a minimal guest (Debian kernel, busybox, the static nlxtp-guest), creates the
//! shared disk, uploads an archive while the VM is off, boots it, watches the run from
//! the host while the VM runs, lets it power off and downloads the results; then boots
//! it once more and gives the running VM three jobs by hot-plugged disks, without a
//! reboot. Every step says what it does, the `nlxtp` command that does the same, and
//! when.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nlxtp_core::{RunState, StatusReader};
use nlxtp_harness::qemu::Vm;
use nlxtp_harness::vm::{archive, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::vfat::VfatImage;
use nlxtp_host::area::{read_status, Patience, SharedArea};
use nlxtp_host::ops::hot::{self, AttachOptions, DetachOptions, HotDisk};
use nlxtp_host::ops::{self, Compression, UploadOptions, WaitOutcome};

const SCRIPT: &str = "\
#!/bin/sh
# The paper's first experiment: sleep, set a custom status, write a file, print.
sleep 1
archive_setstatus \"hello from $(uname -sr), no network needed\"
echo \"computed in the guest at $(date -u +%H:%M:%S)\" > \"$archive_dir/result.txt\"
sleep 1
echo \"stdout of auto_exec.sh: $(grep -c processor /proc/cpuinfo) CPU, network interfaces: $(ls /sys/class/net)\"
";

struct Clock(Instant);

impl Clock {
    fn say(&self, text: impl AsRef<str>) {
        println!(
            "[{:>6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            text.as_ref()
        );
    }
}

fn bold(s: &str) -> String {
    format!("\x1b[1m{s}\x1b[0m")
}

fn main() -> Result<()> {
    let clock = Clock(Instant::now());
    println!("{}", bold("nlxtp demo: upload, deferred execution, live status and download on a QEMU VM, without any network"));
    println!();
    let mut setup = build_guest(&clock)?;
    create_disk(&clock, &setup);
    upload(&clock, &setup)?;
    let mut vm = boot(&clock, &mut setup)?;
    let area = setup.area();
    watch(&clock, &area, &mut vm)?;
    download(&clock, &setup, &area)?;
    hot_jobs(&clock, &mut setup)?;
    println!();
    clock.say(bold(
        "done: the whole cycle ran with no network between host and guest",
    ));
    Ok(())
}

/// Step 1: the guest: kernel, busybox and nlxtp-guest in an initramfs.
fn build_guest(clock: &Clock) -> Result<GuestSetup> {
    clock.say(bold(
        "1. building the guest: Debian kernel, busybox, static nlxtp-guest -> initramfs",
    ));
    let setup = GuestSetup::new(32).context("could not build the guest")?;
    let guest = nlxtp_harness::guest::guest_binary()?;
    clock.say(format!(
        "   kernel {}, nlxtp-guest {} KiB, initramfs {} KiB",
        setup.kernel_package(),
        std::fs::metadata(&guest)?.len() / 1024,
        setup.initramfs_len() / 1024
    ));
    Ok(setup)
}

/// Step 2: the shared disk (made with the guest).
fn create_disk(clock: &Clock, setup: &GuestSetup) {
    clock.say(bold("2. creating the VM's shared disk (32 MiB vFAT)"));
    clock.say(format!(
        "   $ nlxtp create-disk {} --size 32M",
        setup.disk().display()
    ));
}

/// Step 3: the job, uploaded while the VM is off.
fn upload(clock: &Clock, setup: &GuestSetup) -> Result<()> {
    clock.say(bold("3. uploading an archive while the VM is off"));
    for line in SCRIPT.lines().skip(2) {
        println!("            | {line}");
    }
    let job = archive(&[("auto_exec.sh", SCRIPT.as_bytes(), 0o755)])?;
    let report = ops::upload(&setup.area(), &job[..], &UploadOptions::default())?;
    clock.say(format!(
        "   $ nlxtp upload {} job.tar.gz   -> run {}",
        setup.disk().display(),
        report.run_id
    ));
    Ok(())
}

/// Step 4: the boot, up to the guest's /init.
fn boot(clock: &Clock, setup: &mut GuestSetup) -> Result<Vm> {
    clock.say(bold("4. booting the VM; the guest runs the upload at boot"));
    let mut vm = setup.boot(false)?;
    clock.say(format!("   qemu-system-x86_64 -accel {} -kernel vmlinuz -initrd initramfs -drive file=shared.img,if=virtio (no network device)", vm.accel()));
    let booted = vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE)?;
    clock.say(format!(
        "   guest /init reached after {:.1} s of boot",
        booted.as_secs_f64()
    ));
    Ok(vm)
}

/// Step 5: the run's status from the host, each change as it is seen, until the VM has
/// powered off.
fn watch(clock: &Clock, area: &VfatImage, vm: &mut Vm) -> Result<()> {
    clock.say(bold(
        "5. watching from the host while the VM runs ($ nlxtp status / nlxtp wait)",
    ));
    let mut reader = StatusReader::new();
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        if let Some(rec) = read_status(area, &mut reader, Patience::default())? {
            let line = format!(
                "   status: {:<22} custom: {:?}  (heartbeat {}, vm running: {})",
                rec.state.to_string(),
                rec.custom.as_str(),
                rec.heartbeat,
                area.is_busy()?
            );
            let key = format!("{} {}", rec.state, rec.custom.as_str());
            if key != last {
                clock.say(line);
                last = key;
            }
            if rec.state.is_terminal() {
                break rec;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the run did not end within 120 s; serial log:\n{}",
                vm.serial()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if record.state != RunState::Exited(0) {
        bail!("the script ended with {}", record.state);
    }
    vm.wait_exit(Duration::from_secs(60))?;
    clock.say(format!(
        "   the VM powered off by itself after {:.1} s",
        vm.uptime().as_secs_f64()
    ));
    Ok(())
}

/// Step 6: the shared area, downloaded and listed.
fn download(clock: &Clock, setup: &GuestSetup, area: &VfatImage) -> Result<()> {
    clock.say(bold(
        "6. downloading the shared area ($ nlxtp download shared.img results.tar.gz)",
    ));
    let out = setup.dir().join("results.tar.gz");
    let packed = ops::archive::write_download(
        area,
        std::fs::File::create(&out)?,
        Compression::Gzip,
        &Default::default(),
        &mut |_| {},
    )?;
    clock.say(format!(
        "   {} files, {} bytes -> {}",
        packed.files,
        packed.bytes,
        out.display()
    ));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&out)?));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let size = entry.header().size()?;
        let mut text = String::new();
        if path.ends_with(".txt") {
            entry.read_to_string(&mut text)?;
        }
        println!("            {size:>6}  {path:<22} {}", text.trim_end());
    }
    Ok(())
}

/// Step 7: jobs for the VM while it runs: each on a disk of its own, plugged in over
/// QMP, run once, released by the guest, unplugged and read.
fn hot_jobs(clock: &Clock, setup: &mut GuestSetup) -> Result<()> {
    clock.say(bold(
        "7. three jobs for the VM while it runs: hot-plugged disks, no reboot",
    ));
    let mut vm = setup.boot_hot()?;
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE)?;
    let socket = vm
        .qmp_socket()
        .map(|s| s.display().to_string())
        .unwrap_or_default();
    let mut qmp = vm.qmp()?;
    clock.say(format!("   VM up, QMP on {socket}"));
    let image = setup.dir().join("job.img");
    let options = AttachOptions {
        size: 8 << 20,
        ..AttachOptions::default()
    };
    for job in 1..=3 {
        let script = format!("#!/bin/sh\necho \"hot job {job} ran at uptime $(cut -d' ' -f1 /proc/uptime)\"\nexit {job}\n");
        let started = Instant::now();
        hot::attach(
            &mut qmp,
            &image,
            &archive(&[("auto_exec.sh", script.as_bytes(), 0o755)])?[..],
            &options,
        )?;
        let disk = HotDisk::open(&image)?;
        let record = match ops::status::wait(
            disk.area(),
            Some(Duration::from_secs(120)),
            Duration::from_millis(20),
            &mut |_| Ok(()),
        )? {
            WaitOutcome::Done(record) => record,
            other => bail!("hot job {job} did not end: {other:?}"),
        };
        let detached = disk.detach(&mut qmp, &DetachOptions::default())?;
        let out = disk
            .area()
            .read_file(&nlxtp_host::area::AreaPath::new("nlxtp/stdout.txt")?, 4096)?;
        clock.say(format!(
            "   $ nlxtp upload --hot --qmp {socket} job.img job{job}.tar.gz; nlxtp wait job.img; nlxtp detach --qmp {socket} job.img"
        ));
        clock.say(format!(
            "     {} ({}, released by the guest: {}) in {:.2} s: {}",
            record.state,
            if record.state == RunState::Exited(job) {
                "as the script said"
            } else {
                "unexpected"
            },
            detached.released_by_guest,
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out).trim_end()
        ));
    }
    clock.say(format!(
        "   one boot for all three: the VM has been up {:.1} s",
        vm.uptime().as_secs_f64()
    ));
    vm.stop();
    Ok(())
}
