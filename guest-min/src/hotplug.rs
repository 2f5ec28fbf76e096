//! The hot-plug watcher (`nlxtp-guest hotplug`): runs the job on each shared disk the
//! host attaches to the running VM, then hands the disk back.
//!
//! The contract is nlxtp-core's (`layout::HOT_VOLUME_LABEL`, `GUEST_HOT_MOUNT_DIR`,
//! `RELEASE_MARK`): only FAT volumes with the hot label are taken, never the boot disk.
//! For each one a forked job process mounts it at `<mount-dir>/<devname>-<diskseq>`,
//! runs the daemon on it once (which starts a new upload exactly once, and leaves a
//! settled run alone), waits for that run to end, syncs and unmounts, and only then
//! writes the release mark into the volume's boot sector: the host may detach the disk.
//!
//! The watcher learns of disks from kernel uevents (a `NETLINK_KOBJECT_UEVENT` socket,
//! so no udev is needed) and from one look at `/sys/class/block` at start (a disk
//! attached before it started). When the host takes a disk away while its job runs,
//! the job gets SIGTERM and its mount is detached lazily. A disk is known by its name
//! and the kernel's disk sequence number, so a new disk that reuses a name is a new disk.
//!
//! Everything read from a disk, and every uevent, is hostile input: labels go through
//! `disk::fat_label`, uevents through the bounded parser in `uevent`.

use core::ffi::CStr;
use core::fmt::{self, Write as _};
use core::mem::MaybeUninit;

use nlxtp_core::layout;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self, Mode, OFlags, RawDir};
use rustix::io::Errno;
use rustix::mount::{unmount, UnmountFlags};
use rustix::net::{self, netlink, AddressFamily, RecvFlags, SocketFlags, SocketType};
use rustix::process::{kill_process, pidfd_open, waitpid, Pid, PidfdFlags, Signal, WaitOptions};

use crate::clock::{now_ms, sleep_ms, timespec_ms, Uptime};
use crate::daemon::{self, DaemonConfig};
use crate::disk::{self, DevicePath};
use crate::sys::{self, take_signal, CStrList};
use crate::uevent::{self, Action, BlockEvent, DEVNAME_MAX, MESSAGE_MAX};

/// How the watcher was asked to run.
#[derive(Debug, Clone, Copy)]
pub struct HotplugConfig<'a> {
    /// The FAT label a hot disk has (never the boot disk's).
    pub label: &'a str,
    /// Each hot disk is mounted in a directory of its own below this one.
    pub mount_dir: &'a str,
    /// Default heartbeat interval of a job's monitor.
    pub heartbeat_ms: u32,
    /// Default output cap per stream of a job.
    pub output_cap: u64,
}

/// The longest `--mount-dir` taken: room is left for the disk's own directory.
pub const MOUNT_DIR_MAX: usize = 160;
/// Hot disks with a job in progress at once; one more is refused (logged).
const JOBS_MAX: usize = 16;
/// Disks whose job has ended and that are still attached, remembered so that a second
/// look at `/sys/class/block` does not run them again.
const HANDLED_MAX: usize = 32;
/// The most entries read from `/sys/class/block` in one look.
const SCAN_MAX: usize = 4096;
/// How long jobs told to stop get before SIGKILL: the daemon gives its monitor 10 s.
const STOP_GRACE_MS: u64 = 15_000;
/// How long an unmount may keep failing with EBUSY (a process the script left behind
/// closing its last file) before the disk is left mounted and not released.
const UNMOUNT_RETRY_MS: u64 = 5_000;
/// Without a uevent socket, how often `/sys/class/block` is looked at.
const RESCAN_MS: u64 = 1_000;
/// The uevent socket's receive buffer: room for a burst (a disk with many partitions).
/// An overflow loses events but is noticed (ENOBUFS) and answered with a fresh look.
const RECV_BUFFER: usize = 1 << 20;
/// At most this many uevents are taken per wake-up, so signals are seen between bursts.
const EVENTS_PER_WAKE: usize = 256;

/// A disk as the kernel names it: its node below `/dev` and, where the kernel has one,
/// its disk sequence number (unique per boot; older kernels give partitions none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskId {
    name: heapless::String<DEVNAME_MAX>,
    diskseq: Option<u64>,
}

impl DiskId {
    fn of(event: &BlockEvent<'_>) -> Option<DiskId> {
        Some(DiskId {
            name: heapless::String::try_from(event.devname).ok()?,
            diskseq: event.diskseq,
        })
    }

    /// Whether an event naming `name` and `diskseq` is about this disk. Only one device
    /// has a name at a time, so an event without a sequence number matches by name.
    fn is(&self, name: &str, diskseq: Option<u64>) -> bool {
        self.name == name
            && match (self.diskseq, diskseq) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }

    fn device(&self) -> DevicePath {
        let mut path = DevicePath::new();
        // Fits: "/dev/" and at most DEVNAME_MAX bytes.
        let _ = write!(path, "/dev/{}", self.name);
        path
    }
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diskseq {
            Some(seq) => write!(f, "{} (diskseq {seq})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A hot disk's mount point, `<mount-dir>/<devname>[-<diskseq>]`, NUL-terminated.
#[derive(Debug, Clone)]
struct MountPoint(heapless::String<{ MOUNT_DIR_MAX + DEVNAME_MAX + 24 }>);

impl MountPoint {
    fn new(dir: &str, disk: &DiskId) -> Option<MountPoint> {
        let mut path = heapless::String::new();
        write!(path, "{}/{}", dir.trim_end_matches('/'), disk.name).ok()?;
        if let Some(seq) = disk.diskseq {
            write!(path, "-{seq}").ok()?;
        }
        path.push('\0').ok()?;
        Some(MountPoint(path))
    }

    fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(self.0.as_bytes()).unwrap_or(c"/nonexistent")
    }

    fn as_str(&self) -> &str {
        self.0.trim_end_matches('\0')
    }

    /// Lazily unmounts (the disk is gone or its job is stuck) and removes the directory;
    /// each step may find nothing to do.
    fn detach_and_remove(&self) {
        match unmount(self.as_cstr(), UnmountFlags::DETACH) {
            Ok(()) => crate::log!("{}: detached", self.as_str()),
            Err(Errno::INVAL | Errno::NOENT) => {}
            Err(e) => crate::log!(warning: "cannot detach {}: {e:?}", self.as_str()),
        }
        let _ = fs::rmdir(self.as_cstr());
    }
}

/// A forked job process and the disk it has.
struct Job {
    disk: DiskId,
    pid: Pid,
    /// Readable when the job has ended (none on kernels before 5.3: polled then).
    pidfd: Option<OwnedFd>,
    mount_point: MountPoint,
    /// The disk went away while the job ran.
    removed: bool,
}

struct Watcher<'a> {
    config: HotplugConfig<'a>,
    env: CStrList,
    socket: Option<OwnedFd>,
    signals: Option<OwnedFd>,
    jobs: heapless::Vec<Job, JOBS_MAX>,
    handled: heapless::Vec<DiskId, HANDLED_MAX>,
}

/// Runs the watcher until SIGTERM, SIGINT or SIGHUP; returns the process exit code.
pub fn run(config: HotplugConfig<'_>, env: CStrList) -> i32 {
    let signals = match sys::signalfd_for_termination() {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::log!(warning: "cannot watch for SIGTERM ({e:?}); a stop will not stop the jobs");
            None
        }
    };
    let socket = match uevent_socket() {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::log!(
                warning: "no kernel uevents ({e:?}); looking at /sys/class/block every {RESCAN_MS} ms"
            );
            None
        }
    };
    crate::log!(
        "hot-plug watcher: disks labelled {} are run at {}/ (uptime {})",
        config.label,
        config.mount_dir.trim_end_matches('/'),
        Uptime::now()
    );
    let mut watcher = Watcher {
        config,
        env,
        socket,
        signals,
        jobs: heapless::Vec::new(),
        handled: heapless::Vec::new(),
    };
    // After the socket is open: a disk attached in between is seen twice, never not at all.
    watcher.rescan();
    loop {
        watcher.reap();
        watcher.wait();
        if let Some(signal) = watcher
            .signals
            .as_ref()
            .and_then(|fd| take_signal(fd.as_fd()))
        {
            watcher.stop_all(signal);
            return 0;
        }
        if watcher.socket.is_some() {
            watcher.take_uevents();
        } else {
            watcher.rescan();
        }
    }
}

/// A socket that receives the kernel's uevents (multicast group 1).
fn uevent_socket() -> Result<OwnedFd, Errno> {
    let fd = net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(netlink::KOBJECT_UEVENT),
    )?;
    // Beyond rmem_max needs CAP_NET_ADMIN; the default size is only a smaller margin.
    if net::sockopt::set_socket_recv_buffer_size_force(&fd, RECV_BUFFER).is_err() {
        let _ = net::sockopt::set_socket_recv_buffer_size(&fd, RECV_BUFFER);
    }
    net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
    Ok(fd)
}

impl Watcher<'_> {
    /// Sleeps until a uevent, a signal or the end of a job (or the next look at sysfs).
    fn wait(&self) {
        let mut fds: heapless::Vec<PollFd<'_>, { JOBS_MAX + 2 }> = heapless::Vec::new();
        for fd in [self.socket.as_ref(), self.signals.as_ref()]
            .into_iter()
            .chain(self.jobs.iter().map(|job| job.pidfd.as_ref()))
            .flatten()
        {
            let _ = fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let ms = if self.socket.is_none() {
            RESCAN_MS
        } else if self.jobs.iter().any(|job| job.pidfd.is_none()) {
            1_000
        } else {
            60_000
        };
        let _ = poll(&mut fds, Some(&timespec_ms(ms)));
    }

    /// Reads the waiting uevents and acts on those about block devices.
    fn take_uevents(&mut self) {
        let mut buf = [0u8; MESSAGE_MAX + 1];
        for _ in 0..EVENTS_PER_WAKE {
            let Some(socket) = self.socket.as_ref() else {
                return;
            };
            match net::recvfrom(socket, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((_, len, from)) => {
                    // Only the kernel (port 0) sends on group 1; anything else is ignored.
                    let from_kernel = from
                        .and_then(|addr| netlink::SocketAddrNetlink::try_from(addr).ok())
                        .is_some_and(|addr| addr.pid() == 0);
                    // A datagram that filled the buffer may have been cut: not trusted.
                    if !from_kernel || len >= buf.len() {
                        continue;
                    }
                    if let Some(event) = uevent::parse_kernel_message(&buf[..len]) {
                        self.on_event(&event);
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::NOBUFS) => {
                    crate::log!(warning: "uevents were lost (buffer full); looking at /sys/class/block again");
                    self.rescan();
                }
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    crate::log!(warning: "cannot read uevents: {e:?}");
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, event: &BlockEvent<'_>) {
        match event.action {
            Action::Add => self.on_add(event),
            Action::Remove => self.on_remove(event.devname, event.diskseq),
            // A `change` also follows every close of a disk written through its node
            // (udev's watch): acting on it would loop on our own release mark.
            Action::Other => {}
        }
    }

    fn on_add(&mut self, event: &BlockEvent<'_>) {
        let Some(disk) = DiskId::of(event) else {
            return;
        };
        // The same name with another sequence number: the old disk is gone and its
        // remove event was lost.
        let stale = self
            .jobs
            .iter()
            .map(|job| &job.disk)
            .chain(self.handled.iter())
            .find(|known| known.name == disk.name && !known.is(&disk.name, disk.diskseq))
            .map(|known| known.diskseq);
        if let Some(old) = stale {
            self.on_remove(&disk.name, old);
        }
        let known = self.jobs.iter().any(|job| job.disk == disk) || self.handled.contains(&disk);
        if known || !disk::has_fat_label(&disk.device(), self.config.label) {
            return;
        }
        self.start_job(disk);
    }

    fn on_remove(&mut self, name: &str, diskseq: Option<u64>) {
        for job in self.jobs.iter_mut() {
            if job.removed || !job.disk.is(name, diskseq) {
                continue;
            }
            crate::log!(
                warning: "hot disk {} was removed while its job runs (uptime {}); stopping the job",
                job.disk,
                Uptime::now()
            );
            job.removed = true;
            let _ = kill_process(job.pid, Signal::TERM);
            // The disk is gone: nothing may wait on its mount. The job's daemon records
            // what it still can; its writes fail, as expected.
            job.mount_point.detach_and_remove();
        }
        self.handled.retain(|disk| !disk.is(name, diskseq));
    }

    fn start_job(&mut self, disk: DiskId) {
        if self.jobs.is_full() {
            crate::log!(error: "hot disk {disk}: {JOBS_MAX} jobs run already; not taken");
            return;
        }
        let Some(mount_point) = MountPoint::new(self.config.mount_dir, &disk) else {
            crate::log!(error: "hot disk {disk}: its mount point is too long; not taken");
            return;
        };
        crate::log!(
            "hot disk {disk} attached (uptime {}); mounting it at {}",
            Uptime::now(),
            mount_point.as_str()
        );
        match sys::fork() {
            Ok(None) => {
                // The watcher's descriptors are not the job's.
                drop(self.socket.take());
                drop(self.signals.take());
                self.jobs.clear();
                let code = run_job(&self.config, &disk, &mount_point, self.env);
                sys::exit_now(code);
            }
            Ok(Some(pid)) => {
                let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();
                let job = Job {
                    disk,
                    pid,
                    pidfd,
                    mount_point,
                    removed: false,
                };
                // Cannot fail: checked for room above.
                let _ = self.jobs.push(job);
            }
            Err(e) => crate::log!(error: "hot disk {disk}: cannot fork its job: {e:?}"),
        }
    }

    /// Collects the jobs that have ended.
    fn reap(&mut self) {
        let mut at = 0;
        while at < self.jobs.len() {
            let status = match waitpid(Some(self.jobs[at].pid), WaitOptions::NOHANG) {
                Ok(None) => {
                    at += 1;
                    continue;
                }
                Ok(Some((_, status))) => status.exit_status(),
                Err(_) => None,
            };
            let job = self.jobs.swap_remove(at);
            if job.removed {
                // Its own clean-up may have raced the removal.
                job.mount_point.detach_and_remove();
                crate::log!("hot disk {}: its job has ended after the removal", job.disk);
                continue;
            }
            if status != Some(0) {
                crate::log!(warning: "hot disk {}: its job ended with {status:?}", job.disk);
            }
            if self.handled.is_full() {
                self.handled.remove(0);
            }
            let _ = self.handled.push(job.disk);
        }
    }

    /// Looks at every block device that is there: takes hot disks not yet seen, and
    /// notices those that went away unseen (uevents lost, or none to be had).
    fn rescan(&mut self) {
        let Ok(dir) = fs::open(
            "/sys/class/block",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut entries = RawDir::new(dir.as_fd(), &mut buf);
        let mut seen = 0;
        while let Some(Ok(entry)) = entries.next() {
            seen += 1;
            if seen > SCAN_MAX {
                break;
            }
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            let mut text = [0u8; 1024];
            if let Some(event) = read_sysfs_uevent(name, &mut text) {
                self.on_add(&event);
            }
        }
        let mut gone: heapless::Vec<DiskId, { JOBS_MAX + HANDLED_MAX }> = heapless::Vec::new();
        for disk in self
            .jobs
            .iter()
            .filter(|job| !job.removed)
            .map(|job| &job.disk)
            .chain(self.handled.iter())
        {
            let mut text = [0u8; 1024];
            let now = read_sysfs_uevent(&disk.name, &mut text);
            if now.is_none_or(|event| event.diskseq != disk.diskseq) {
                let _ = gone.push(disk.clone());
            }
        }
        for disk in gone {
            self.on_remove(&disk.name, disk.diskseq);
        }
    }

    /// The watcher was told to stop: so is every job (each records the stop, unmounts
    /// and releases its disk), bounded by [`STOP_GRACE_MS`].
    fn stop_all(&mut self, signal: i32) {
        crate::log!(
            "hot-plug watcher stopping (signal {signal}); {} job(s) to stop",
            self.jobs.len()
        );
        for job in &self.jobs {
            let _ = kill_process(job.pid, Signal::TERM);
        }
        let until = now_ms() + STOP_GRACE_MS;
        while !self.jobs.is_empty() && now_ms() < until {
            sleep_ms(20);
            self.reap();
        }
        for job in &self.jobs {
            crate::log!(warning: "hot disk {}: its job did not stop; killing it", job.disk);
            let _ = kill_process(job.pid, Signal::KILL);
            let _ = waitpid(Some(job.pid), WaitOptions::empty());
            job.mount_point.detach_and_remove();
        }
    }
}

/// The device's properties from `/sys/class/block/NAME/uevent`, read into `buf`.
fn read_sysfs_uevent<'b>(name: &str, buf: &'b mut [u8]) -> Option<BlockEvent<'b>> {
    let mut path: heapless::String<{ DEVNAME_MAX + 32 }> = heapless::String::new();
    write!(path, "/sys/class/block/{name}/uevent").ok()?;
    let fd = fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let len = crate::area::read_fd(fd.as_fd(), buf).ok()?;
    // A file that fills the buffer may go on: not a block device's.
    if len >= buf.len() {
        return None;
    }
    uevent::parse_sysfs_uevent(&buf[..len])
}

/// The job process for one hot disk: mount, run, unmount, release. Returns its exit
/// code (0: the disk was released).
fn run_job(
    config: &HotplugConfig<'_>,
    disk: &DiskId,
    mount_point: &MountPoint,
    env: CStrList,
) -> i32 {
    let device = disk.device();
    // No `flush`: its 100 ms wait at every close of a written file would put 0.4 s
    // (the monitor's four files) between the script's end and the release; the volume
    // is synced before it is released instead.
    if let Err(e) = disk::mount_vfat(&device, mount_point.as_cstr(), false) {
        crate::log!(error: "hot disk {disk}: cannot mount it at {}: {e:?}", mount_point.as_str());
        let _ = fs::rmdir(mount_point.as_cstr());
        return 1;
    }
    crate::log!(
        "hot disk {disk}: mounted at {} (uptime {})",
        mount_point.as_str(),
        Uptime::now()
    );
    let daemon_config = DaemonConfig {
        area_path: mount_point.as_cstr(),
        watch: false,
        heartbeat_ms: config.heartbeat_ms,
        output_cap: config.output_cap,
        boot_id: None,
    };
    let code = daemon::run(daemon_config, env);
    crate::log!(
        "hot disk {disk}: the daemon is done with it (exit {code}, uptime {}); unmounting",
        Uptime::now()
    );
    if let Err(e) = unmount_synced(mount_point.as_cstr()) {
        if matches!(e, Errno::INVAL | Errno::NOENT) {
            // The watcher detached the mount: the disk was removed.
            crate::log!("hot disk {disk}: removed and detached; nothing to release");
            return 1;
        }
        crate::log!(
            error: "hot disk {disk}: cannot unmount {} ({e:?}); not released, the host detaches it when its wait ends",
            mount_point.as_str()
        );
        return 1;
    }
    let _ = fs::rmdir(mount_point.as_cstr());
    match release(&device, config.label, disk) {
        Ok(()) => {
            crate::log!("hot disk {disk}: released (uptime {})", Uptime::now());
            0
        }
        Err(e) => {
            crate::log!(warning: "hot disk {disk}: not released: {e}");
            1
        }
    }
}

/// Syncs the volume, then unmounts it, waiting a little for files still in use.
fn unmount_synced(mount_point: &CStr) -> Result<(), Errno> {
    // Results reach the disk before the release mark says that it may go.
    if let Ok(dir) = fs::open(
        mount_point,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let _ = fs::syncfs(&dir);
    }
    let until = now_ms() + UNMOUNT_RETRY_MS;
    loop {
        match unmount(mount_point, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            // A process the script left behind may be closing its last file.
            Err(Errno::BUSY) if now_ms() < until => sleep_ms(100),
            Err(e) => return Err(e),
        }
    }
}

/// Why a disk was not marked released.
#[derive(Debug)]
enum ReleaseError {
    /// The device could not be opened (gone, or still mounted somewhere: it is opened
    /// exclusively).
    Open(Errno),
    /// Another disk has the name now.
    Replaced,
    /// Its first sector is no longer a FAT boot sector with the hot label.
    NotOurs,
    /// Reading or writing the sector failed.
    Io(Errno),
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::Open(e) => write!(f, "cannot open the device exclusively ({e:?})"),
            ReleaseError::Replaced => f.write_str("another disk has its name now"),
            ReleaseError::NotOurs => {
                f.write_str("its boot sector is no longer a FAT one with the hot label")
            }
            ReleaseError::Io(e) => write!(f, "cannot read or write its boot sector ({e:?})"),
        }
    }
}

/// Writes the release mark into the unmounted volume's boot sector, and flushes it.
fn release(device: &str, label: &str, disk: &DiskId) -> Result<(), ReleaseError> {
    // O_EXCL on a block device fails while anything has it mounted: the mark never
    // says "released" about a mounted volume.
    let fd = fs::open(
        device,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::EXCL,
        Mode::empty(),
    )
    .map_err(ReleaseError::Open)?;
    if disk.diskseq.is_some() {
        let mut text = [0u8; 1024];
        let now = read_sysfs_uevent(&disk.name, &mut text).and_then(|event| event.diskseq);
        if now != disk.diskseq {
            return Err(ReleaseError::Replaced);
        }
    }
    let mut sector = [0u8; 512];
    match rustix::io::pread(&fd, &mut sector, 0) {
        Ok(512) => {}
        Ok(_) => return Err(ReleaseError::Io(Errno::IO)),
        Err(e) => return Err(ReleaseError::Io(e)),
    }
    if !disk::fat_label(&sector).is_some_and(|found| found.eq_ignore_ascii_case(label.as_bytes())) {
        return Err(ReleaseError::NotOurs);
    }
    if layout::has_release_mark(&sector) {
        return Ok(());
    }
    let mark =
        layout::RELEASE_MARK_OFFSET..layout::RELEASE_MARK_OFFSET + layout::RELEASE_MARK.len();
    sector[mark].copy_from_slice(&layout::RELEASE_MARK);
    crate::area::pwrite_all(fd.as_fd(), &sector, 0).map_err(ReleaseError::Io)?;
    fs::fsync(&fd).map_err(ReleaseError::Io)
}
