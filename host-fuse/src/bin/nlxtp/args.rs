//! The command line as clap reads it, and what its arguments mean for the library.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nlxtp_host::area::{AreaError, Durability, SharedArea};
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, ArchiveLimits, Compression, UploadOptions};

const EXIT_CODES: &str = "\
Exit codes of `nlxtp wait` (and `nlxtp exec --wait`):
  0-123  the script's own exit code (0 also when a run of the original implementation,
         which records no exit code, is done)
  124    --timeout passed before the run ended
  125    nlxtp itself failed (bad target, unreadable image)
  126    the run will not finish: the monitor was lost (VM died or hung), the VM is off
         with the run cut off, or the run was aborted, timed out in the guest, or could
         not start
  127    there is no upload to wait for
  128+N  the script was killed by signal N
Other commands exit 0 on success, 1 on error, 2 on bad usage.";

/// `--rootfs`, the same for every command that takes a TARGET and at the top, where it
/// may come before the command's name.
const ROOTFS_HELP: &str = "A container's root filesystem as the host sees it: TARGET is then \
the area's path inside the container (`/nlxtp`), resolved beneath ROOTFS without following \
any symbolic link or `..`, so the container cannot point the host elsewhere. Without it, \
every component of TARGET but the last is followed as it is: give an area whose parent \
directories are the host's";

/// Control a VM or a container through its shared disk or directory, with no network.
///
/// TARGET is a VM's shared disk image (a raw vFAT image, attached to QEMU with
/// -drive file=IMAGE,format=raw,if=virtio) or a container's shared directory.
/// A typical cycle: create-disk, upload (VM off), boot the VM, wait, download.
/// For a VM that runs (QEMU with a QMP socket): upload --hot, wait, detach, download
/// (see `nlxtp detach --help`).
#[derive(Debug, Parser)]
#[command(name = "nlxtp", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log what happens (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    // `--rootfs` wherever it is given, also to a command without a TARGET (which refuses
    // it). A command with a TARGET reads it from its `Target`.
    #[arg(long, global = true, value_name = "ROOTFS", help = ROOTFS_HELP)]
    pub rootfs: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line `args` (without the program's name), parsed.
    ///
    /// `nlxtp status` is polled in tight loops, and building the whole command line's
    /// definition costs about a third of such a call (every subcommand's arguments, the
    /// pages of code that make them). Its two plain forms, `status TARGET` and
    /// `status --json TARGET` (either order), are therefore read without it; they mean
    /// exactly what clap would make of them. Everything else, and every form with
    /// another option, `--` or a TARGET that starts with `-`, goes through clap.
    pub fn from_args(args: Vec<std::ffi::OsString>) -> Cli {
        if let Some(cli) = Self::plain_status(&args) {
            return cli;
        }
        Cli::parse_from(std::iter::once("nlxtp".into()).chain(args))
    }

    fn plain_status(args: &[std::ffi::OsString]) -> Option<Cli> {
        let is_option = |a: &std::ffi::OsString| a.as_encoded_bytes().starts_with(b"-");
        let (json, target) = match args {
            [cmd, target] if cmd == "status" && !is_option(target) => (false, target),
            [cmd, flag, target] | [cmd, target, flag]
                if cmd == "status" && flag == "--json" && !is_option(target) =>
            {
                (true, target)
            }
            _ => return None,
        };
        Some(Cli {
            verbose: 0,
            rootfs: None,
            command: Command::Status {
                target: Target {
                    path: target.into(),
                    rootfs: None,
                },
                json,
            },
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a raw disk image with a FAT filesystem for a VM's shared area.
    ///
    /// Attach it with: qemu-system-x86_64 ... -drive file=IMAGE,format=raw,if=virtio
    CreateDisk {
        /// The image file to create (never overwritten).
        image: PathBuf,
        /// Size, in bytes or with K, M, G.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: u64,
        /// FAT type (12, 16 or 32); by default the size decides.
        #[arg(long, value_parser = clap::value_parser!(u8).range(12..=32))]
        fat: Option<u8>,
        /// Volume label; the guest finds its disk by it.
        #[arg(long)]
        label: Option<String>,
        /// Put the FAT volume in a partition (1 MiB in, to the end) of an MBR or GPT
        /// partition table, as installers and the original testbed made shared disks.
        /// The guest finds the partition by its label as it finds a whole disk.
        #[arg(long, value_enum, value_name = "TABLE")]
        partition: Option<PartitionTable>,
    },
    /// Replace the shared area's content with an archive whose auto_exec.sh the guest runs.
    ///
    /// A VM must be off (its disk is written while it cannot see it; the script runs at
    /// its next boot). A container runs the script at once. With --hot, TARGET is a hot
    /// disk for a VM that runs: written while no VM has it, then plugged into the VM
    /// (see `nlxtp detach --help` for the whole cycle).
    Upload {
        #[command(flatten)]
        target: Target,
        /// A .tar, .tar.gz or .tar.zst file (recognised by content), or - for stdin.
        archive: PathBuf,
        #[command(flatten)]
        options: UploadArgs,
        #[command(flatten)]
        hot: HotArgs,
    },
    /// Take a hot disk out of the running VM, once its guest has released it.
    ///
    /// The hot cycle, for a VM that runs (QEMU started with
    /// -qmp unix:SOCKET,server=on,wait=off; x86_64 pc machine, ACPI on):
    ///
    ///   nlxtp upload --hot --qmp SOCKET job1.img job.tar.gz   (created, written, plugged in)
    ///   nlxtp wait job1.img                                    (status, logs -f work too)
    ///   nlxtp detach --qmp SOCKET job1.img                     (unplugged)
    ///   nlxtp download job1.img results.tar.gz
    ///
    /// Each job gets its own image (several may be attached at once); a hot disk is
    /// never written while a VM holds it. When the run has ended the guest unmounts the
    /// disk and marks it released; detach waits for that mark (up to --timeout), then
    /// unplugs the disk (device_del, the guest's acknowledgement, blockdev-del). Without
    /// the mark in time, or with --force, the disk is taken away and, if the run had not
    /// ended, the host records it as aborted ("the host detached the disk"); the files
    /// the script wrote stay. A guest that does not let go of the device at all keeps
    /// it: detach says so and exits 1.
    #[command(verbatim_doc_comment)]
    Detach {
        /// The hot disk image.
        image: PathBuf,
        #[command(flatten)]
        qmp: QmpArg,
        /// How long to wait for the guest to release the disk (seconds, or with ms, s, m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Take the disk away now, without waiting for the guest.
        #[arg(long)]
        force: bool,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Show the run's status: state, exit code, custom text, output sizes, monitor liveness.
    ///
    /// Safe while the VM runs: the image is read, never mounted, and a record being
    /// written is read again, never shown half.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the run ends and exit with the script's exit code (see below).
    Wait {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Pack the whole shared area (script, outputs, status, results) into an archive.
    Download {
        #[command(flatten)]
        target: Target,
        /// Output file (.tar, .tar.gz/.tgz, .tar.zst by name), or - for stdout (tar).
        output: PathBuf,
        /// Download while the VM runs and the run is not done (files may be mid-write).
        #[arg(long)]
        live: bool,
        /// Output format, overriding the name: tar, tar.gz or tar.zst.
        #[arg(long, value_enum, hide_possible_values = true)]
        format: Option<Format>,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Print the script's output; with --follow, keep printing it as the guest flushes it.
    ///
    /// Works while the VM runs: new output comes from a checksummed ring the guest
    /// writes in place (nlxtp/live.bin), never from half-updated FAT metadata. With
    /// --follow, it ends when the run does and exits like `nlxtp wait`.
    Logs {
        #[command(flatten)]
        target: Target,
        /// Keep printing new output until the run ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        streams: StreamArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Upload an archive whose auto_exec.sh runs COMMAND (then optionally wait for it).
    Exec {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: UploadArgs,
        /// Wait for the command to finish and exit with its code (containers, or a VM you boot meanwhile).
        #[arg(long = "wait")]
        and_wait: bool,
        #[command(flatten)]
        wait: WaitArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Mount every VM's shared area under one directory (FUSE): MOUNTPOINT/NAME/ per VM.
    ///
    /// Read-only while a VM runs; read-write while it is stopped (and for containers),
    /// with changes committed atomically at close, fsync and unmount. NAME/.nlxtp/status.json
    /// shows the run's status. SIGHUP re-reads --config. Runs in the foreground until
    /// `nlxtp umount`, SIGINT or SIGTERM.
    Mount {
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        /// A VM as NAME=TARGET (a disk image or a container directory); repeat for more.
        #[arg(long = "vm", value_name = "NAME=TARGET")]
        vms: Vec<String>,
        /// Every domain with a shared disk on this libvirt connection (URI, as virsh -c),
        /// named by its domain name; repeat for more. Needs nlxtp-libvirt.
        #[arg(long = "libvirt", value_name = "URI")]
        libvirt: Vec<String>,
        /// A TOML file whose vms table lists NAME = "TARGET" lines, and libvirt domains
        /// and connections (re-read on SIGHUP).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Mount in the background and return once mounted.
        #[arg(long)]
        daemon: bool,
        /// Let users other than the one mounting use the view.
        #[arg(long)]
        allow_other: bool,
        /// Where staged changes are kept (default: the temporary directory).
        #[arg(long, value_name = "DIR")]
        stage_dir: Option<PathBuf>,
    },
    /// Run a job in a fresh VM: boot, run, stream its output, exit with its code.
    ///
    /// Makes a shared disk, uploads the job (COMMAND, --script or --archive, with
    /// --upload files beside it), boots QEMU with no network device (KVM when it works,
    /// TCG otherwise), prints the job's standard output and error as the guest flushes
    /// them, and exits with the job's exit code (as `nlxtp wait`; 130 or 143 when
    /// interrupted). Nothing is left behind: QEMU and the temporary directory go, also
    /// on SIGINT, SIGTERM or --timeout. The guest is the minimal image (busybox, the
    /// kernel's virtio and vfat modules, nlxtp-guest), or --rootfs DIR with nlxtp's
    /// files laid over it, or --initrd, or a distribution --image whose own init starts
    /// nlxtp-guest. With --config, runs each target of an nlxtp.toml in turn.
    Run(Box<RunArgs>),
    /// The guest image for `nlxtp run` and for your own QEMU command lines.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Commit everything pending and unmount a view made by `nlxtp mount`.
    ///
    /// Refuses (busy) while files are open, naming them. A view whose mount process died
    /// ("transport endpoint is not connected") is cleaned up.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Detach now even with files open; what they write is committed as they close.
        #[arg(long)]
        lazy: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Build the minimal guest image: an initramfs with busybox, the kernel's modules the
    /// shared disk needs, nlxtp-guest and an /init that runs it and powers off.
    ///
    /// The same inputs give the same bytes. Boot it with:
    /// qemu-system-x86_64 -kernel VMLINUZ -initrd IMAGE -append console=ttyS0
    /// -drive file=shared.img,format=raw,if=virtio
    Build {
        #[command(flatten)]
        guest: GuestArgs,
        /// Where to write the initramfs.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// What the guest is made of.
#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// The guest kernel: a kernel package (.deb), an unpacked one, a kernel build tree,
    /// or a vmlinuz (modules from ../lib/modules/VERSION). Default: Debian's current
    /// kernel for --arch, fetched once into ~/.cache/nlxtp.
    #[arg(long, value_name = "KERNEL")]
    pub kernel: Option<PathBuf>,
    /// The guest's architecture.
    #[arg(long, default_value = "x86_64", value_name = "ARCH")]
    pub arch: nlxtp_host::vm::Arch,
    /// The static nlxtp-guest binary for --arch (also $NLXTP_GUEST). Default: beside
    /// this nlxtp, then on PATH (as nlxtp-guest-ARCH or nlxtp-guest).
    #[arg(long, value_name = "PATH")]
    pub guest: Option<PathBuf>,
    /// A dynamically linked host program to add with its libraries (e.g. /bin/bash);
    /// repeat for more. Host architecture only.
    #[arg(long = "host-program", value_name = "PATH")]
    pub host_programs: Vec<PathBuf>,
}

/// `nlxtp run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Boot this initramfs instead of building the minimal one (it must start
    /// nlxtp-guest on the disk labelled NLXTP), or, with --image, the distribution's own
    /// initrd (its kernel needs it to mount the image).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// A distribution's raw disk image, attached as the first disk (its writes are
    /// dropped at the end); its own init must start nlxtp-guest. Booted with --kernel
    /// (and --initrd) and root=/dev/vda, else through the firmware.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub mem: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Give up after this many seconds from the start (exit 124; the VM is killed).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Put the shared area's files (script, outputs, status, results) in DIR at the end
    /// (created; must be empty).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A file or directory to put beside the job ($archive_dir/NAME); repeat for more.
    #[arg(long, value_name = "PATH", conflicts_with = "archive")]
    pub upload: Vec<PathBuf>,
    /// Run this archive (.tar, .tar.gz, .tar.zst with auto_exec.sh) instead of COMMAND.
    #[arg(long, conflicts_with_all = ["script", "command"])]
    pub archive: Option<PathBuf>,
    /// Run this script as auto_exec.sh instead of COMMAND.
    #[arg(long, conflicts_with = "command")]
    pub script: Option<PathBuf>,
    /// The accelerator: kvm or tcg. Default: KVM if it runs a guest here, else TCG.
    #[arg(long, value_name = "ACCEL")]
    pub accel: Option<nlxtp_host::vm::Accel>,
    /// More kernel command line.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// Size of the shared disk (default: 64M, more for large uploads).
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// Write the guest's console log here (it is also shown when the VM fails).
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// Print where the time went (boot, job, power-off) at the end.
    #[arg(long)]
    pub timings: bool,
    /// Run the targets of this TOML file in turn (see `nlxtp run --help`), with a line
    /// per target and a summary; COMMAND is then the default command.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --config: run only these targets (repeat for more).
    #[arg(long = "target", value_name = "NAME", requires = "config")]
    pub targets: Vec<String>,
    /// The command and its arguments, run by /bin/sh in the guest.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl Command {
    /// Whether the command works on a TARGET (and so takes `--rootfs`).
    pub fn has_target(&self) -> bool {
        !matches!(
            self,
            Command::CreateDisk { .. }
                | Command::Detach { .. }
                | Command::Mount { .. }
                | Command::Umount { .. }
                | Command::Run(_)
                | Command::Guest { .. }
        )
    }
}

/// How a [`Target`] becomes an area, for a front end built on these modules that opens
/// other kinds (`nlxtp-libvirt`: TARGET is a libvirt domain). Unset in `nlxtp`.
#[allow(dead_code, reason = "set only by nlxtp-libvirt")]
pub static OPENER: std::sync::OnceLock<Opener> = std::sync::OnceLock::new();

/// What [`OPENER`] holds.
pub type Opener = fn(&Target) -> Result<Box<dyn SharedArea>, AreaError>;

/// The shared area a command works on.
#[derive(Debug, Args)]
pub struct Target {
    /// The shared disk image or directory.
    #[arg(value_name = "TARGET")]
    pub path: PathBuf,
    // The same as `Cli::rootfs`, seen here whichever side of the command's name it was
    // given on (clap hands a global argument's value down to the subcommand).
    #[arg(long, global = true, value_name = "ROOTFS", help = ROOTFS_HELP)]
    pub rootfs: Option<PathBuf>,
}

impl Target {
    /// The area: TARGET itself, or with `--rootfs`, the container directory TARGET
    /// inside that root filesystem.
    pub fn open(&self) -> Result<Box<dyn SharedArea>, AreaError> {
        if let Some(open) = OPENER.get() {
            return open(self);
        }
        match &self.rootfs {
            None => ops::open_target(&self.path),
            Some(rootfs) => ops::open_target_in(rootfs, &self.path),
        }
    }
}

/// An archive format for `download --format`.
/// A partition table for `create-disk --partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionTable {
    /// A DOS (MBR) partition table.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl From<PartitionTable> for nlxtp_host::area::vfat::Scheme {
    fn from(table: PartitionTable) -> Self {
        match table {
            PartitionTable::Mbr => Self::Mbr,
            PartitionTable::Gpt => Self::Gpt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(name = "tar")]
    Tar,
    #[value(name = "tar.gz", alias = "tgz")]
    TarGz,
    #[value(name = "tar.zst", alias = "tzst")]
    TarZst,
}

impl From<Format> for Compression {
    fn from(format: Format) -> Compression {
        match format {
            Format::Tar => Compression::None,
            Format::TarGz => Compression::Gzip,
            Format::TarZst => Compression::Zstd,
        }
    }
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Standard error instead of standard output.
    #[arg(long, conflicts_with = "both")]
    stderr: bool,
    /// Both streams, interleaved as the guest captured them (stderr to stderr).
    #[arg(long)]
    both: bool,
}

impl StreamArgs {
    pub fn streams(&self) -> Streams {
        match (self.stderr, self.both) {
            (_, true) => Streams::Both,
            (true, false) => Streams::Stderr,
            (false, false) => Streams::Stdout,
        }
    }
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Upload files without an auto_exec.sh (nothing runs).
    #[arg(long)]
    files_only: bool,
    /// Replace the area even while its run goes on and its monitor is alive (a
    /// container's run: the guest then stops it). Not needed for a VM that is off: a run
    /// cut off by its power-off is replaced anyway. A running VM's disk is never written.
    #[arg(long)]
    force: bool,
    /// Run an archive that holds the status of an earlier run (a download uploaded
    /// again): refused without this, as the original implementation refused it. The old
    /// status files are left out.
    #[arg(long)]
    run_again: bool,
    /// Ask the guest to kill the script after this many seconds.
    #[arg(long = "kill-after", value_name = "SECS")]
    kill_after: Option<u32>,
    /// Heartbeat interval the guest's monitor should promise.
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u32>,
    /// Cap on each captured output stream in the guest (bytes, or K, M, G).
    #[arg(long, value_parser = parse_size)]
    output_cap: Option<u64>,
    /// Most archive members accepted.
    #[arg(long, default_value_t = ArchiveLimits::default().max_entries)]
    max_entries: usize,
    /// Most bytes of file content accepted (bytes, or K, M, G).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    max_bytes: u64,
    /// Do not wait for the disk: skip the fsync before the new content takes the old
    /// one's place. A crash of nlxtp still leaves the old content or the new, but a power
    /// loss or kernel crash soon after may leave neither. For throwaway images (CI),
    /// where the flush is most of an upload's time.
    #[arg(long)]
    no_sync: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

impl UploadArgs {
    /// The upload's options; `archive_file` as [`UploadOptions::archive_file`].
    pub fn options(&self, archive_file: Option<Arc<File>>) -> UploadOptions {
        UploadOptions {
            limits: ArchiveLimits {
                max_entries: self.max_entries,
                max_total_bytes: self.max_bytes,
            },
            files_only: self.files_only,
            force: self.force,
            run_again: self.run_again,
            timeout_secs: self.kill_after,
            heartbeat_ms: self.heartbeat_ms,
            output_cap: self.output_cap,
            archive_file,
            spool_dir: None,
            durability: if self.no_sync {
                Durability::Unsynced
            } else {
                Durability::Synced
            },
        }
    }
}

/// `--qmp`: the running VM's QMP socket.
#[derive(Debug, Args)]
pub struct QmpArg {
    /// The running VM's QMP socket (QEMU's -qmp unix:SOCKET,server=on,wait=off); also
    /// $NLXTP_QMP.
    #[arg(long = "qmp", value_name = "SOCKET")]
    socket: Option<PathBuf>,
}

impl QmpArg {
    /// The socket: `--qmp`, else `$NLXTP_QMP`.
    pub fn socket(&self) -> Option<PathBuf> {
        self.socket
            .clone()
            .or_else(|| std::env::var_os("NLXTP_QMP").map(PathBuf::from))
    }
}

/// `upload --hot`.
#[derive(Debug, Args)]
pub struct HotArgs {
    /// TARGET is a hot disk (FAT label NLXTP-HOT, created if missing) for the VM behind
    /// --qmp, which runs: write the job into it, then plug it into the VM.
    #[arg(long)]
    pub hot: bool,
    #[command(flatten)]
    pub qmp: QmpArg,
    /// With --hot: the size of a disk that is created (bytes, or K, M, G).
    #[arg(long, requires = "hot", value_parser = parse_size, value_name = "SIZE")]
    pub size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this many seconds (exit 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Seconds between two reads of the status.
    #[arg(long, default_value_t = 0.5, value_name = "SECS")]
    interval: f64,
    /// Print the final status as JSON.
    #[arg(long = "json-result")]
    pub json_result: bool,
    /// Print nothing while waiting.
    #[arg(short, long)]
    pub quiet: bool,
}

impl WaitArgs {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs_f64)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval.max(0.05))
    }
}

/// "64M" -> 67108864.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 512K, 64M, 2G)"))?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("unknown size unit in {text:?}: use K, M or G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// "30s" -> 30 s; also "500ms", "2m", or plain seconds ("1.5").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 30s, 500ms, 2m, 1.5)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
