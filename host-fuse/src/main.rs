//! `nlxtp`: control a VM or a container through its shared disk or directory, with no
//! network: upload an archive that runs, watch its status, download the results.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nlxtp_core::live::Stream;
use nlxtp_core::RunState;
use nlxtp_host::area::{Durability, WalkLimits};
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{
    self, status::RecordView, ArchiveLimits, Compression, DownloadOptions, UploadOptions,
    WaitOutcome,
};

const EXIT_CODES: &str = "\
Exit codes of `nlxtp wait` (and `nlxtp exec --wait`):
  0-123  the script's own exit code
  124    --timeout passed before the run ended
  125    nlxtp itself failed (bad target, unreadable image)
  126    the run will not finish: the monitor was lost (VM died or hung) or the run was
         aborted, timed out in the guest, or could not start
  127    there is no upload to wait for
  128+N  the script was killed by signal N
Other commands exit 0 on success, 1 on error, 2 on bad usage.";

/// Control a VM or a container through its shared disk or directory, with no network.
///
/// TARGET is a VM's shared disk image (a raw vFAT image, attached to QEMU with
/// -drive file=IMAGE,format=raw,if=virtio) or a container's shared directory.
/// A typical cycle: create-disk, upload (VM off), boot the VM, wait, download.
#[derive(Debug, Parser)]
#[command(name = "nlxtp", version, after_help = EXIT_CODES)]
struct Cli {
    /// Log what happens (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// A container's root filesystem as the host sees it: TARGET is then the area's path
    /// inside the container (`/nlxtp`), resolved beneath ROOTFS without following any
    /// symbolic link or `..`, so the container cannot point the host elsewhere. Without
    /// it, every component of TARGET but the last is followed as it is: give an area
    /// whose parent directories are the host's.
    #[arg(long, global = true, value_name = "ROOTFS")]
    rootfs: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
    /// Replace the shared area's content with an archive whose auto_exec.sh the guest runs.
    ///
    /// A VM must be off (its disk is written while it cannot see it; the script runs at
    /// its next boot). A container runs the script at once.
    Upload {
        /// The shared disk image or directory.
        target: PathBuf,
        /// A .tar, .tar.gz or .tar.zst file (recognised by content), or - for stdin.
        archive: PathBuf,
        #[command(flatten)]
        options: UploadArgs,
    },
    /// Show the run's status: state, exit code, custom text, output sizes, monitor liveness.
    ///
    /// Safe while the VM runs: the image is read, never mounted, and a record being
    /// written is read again, never shown half.
    Status {
        /// The shared disk image or directory.
        target: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the run ends and exit with the script's exit code (see below).
    Wait {
        /// The shared disk image or directory.
        target: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Pack the whole shared area (script, outputs, status, results) into an archive.
    Download {
        /// The shared disk image or directory.
        target: PathBuf,
        /// Output file (.tar, .tar.gz/.tgz, .tar.zst by name), or - for stdout (tar).
        output: PathBuf,
        /// Download while the VM runs and the run is not done (files may be mid-write).
        #[arg(long)]
        live: bool,
        /// Output format, overriding the name: tar, tar.gz or tar.zst.
        #[arg(long)]
        format: Option<String>,
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
        /// The shared disk image or directory.
        target: PathBuf,
        /// Keep printing new output until the run ends.
        #[arg(short, long)]
        follow: bool,
        /// Standard error instead of standard output.
        #[arg(long, conflicts_with = "both")]
        stderr: bool,
        /// Both streams, interleaved as the guest captured them (stderr to stderr).
        #[arg(long)]
        both: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Upload an archive whose auto_exec.sh runs COMMAND (then optionally wait for it).
    Exec {
        /// The shared disk image or directory.
        target: PathBuf,
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
        /// A TOML file whose vms table lists NAME = "TARGET" lines (re-read on SIGHUP).
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

#[derive(Debug, Args)]
struct UploadArgs {
    /// Upload files without an auto_exec.sh (nothing runs).
    #[arg(long)]
    files_only: bool,
    /// Replace a container's area even while its run goes on.
    #[arg(long)]
    force: bool,
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
    json: bool,
}

#[derive(Debug, Args)]
struct WaitArgs {
    /// Give up after this many seconds (exit 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Seconds between two reads of the status.
    #[arg(long, default_value_t = 0.5, value_name = "SECS")]
    interval: f64,
    /// Print the final status as JSON.
    #[arg(long = "json-result")]
    json_result: bool,
    /// Print nothing while waiting.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logging only when asked for: `nlxtp status` is called in tight loops, and setting
    // up a subscriber costs more than the status read itself.
    if cli.verbose > 0 {
        let level = if cli.verbose == 1 {
            tracing::Level::INFO
        } else {
            tracing::Level::DEBUG
        };
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(io::stderr)
            .without_time()
            .init();
    }
    match run(cli.command, cli.rootfs.as_deref()) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("nlxtp: {}", failure.error);
            let mut source = failure.error.source();
            while let Some(cause) = source {
                eprintln!("  because: {cause}");
                source = cause.source();
            }
            ExitCode::from(failure.code)
        }
    }
}

/// An error and the exit code it ends the process with.
struct Failure {
    error: Box<dyn std::error::Error>,
    code: u8,
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            error: Box::new(error),
            code: 1,
        }
    }
}

fn with_code(code: u8) -> impl FnOnce(Failure) -> Failure {
    move |f| Failure { code, ..f }
}

fn run(command: Command, rootfs: Option<&Path>) -> Result<ExitCode, Failure> {
    let no_target = matches!(
        command,
        Command::CreateDisk { .. } | Command::Mount { .. } | Command::Umount { .. }
    );
    if rootfs.is_some() && no_target {
        return Err(Failure {
            error: "--rootfs names the container of a TARGET, and this command takes none; \
                    the FUSE view takes such containers from its config file: \
                    NAME = { rootfs = \"/var/lib/lxc/c1/rootfs\", area = \"/mnt/nlXTP\" }"
                .into(),
            code: 2,
        });
    }
    match command {
        Command::CreateDisk {
            image,
            size,
            fat,
            label,
        } => {
            nlxtp_host::area::vfat::create_image(&image, size, fat, label.as_deref())?;
            eprintln!(
                "created {} ({size} bytes); attach it with -drive file={},format=raw,if=virtio",
                image.display(),
                image.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Upload {
            target,
            archive,
            options,
        } => {
            if archive == Path::new("-") {
                upload(
                    rootfs,
                    &target,
                    Box::new(io::stdin().lock()),
                    None,
                    &options,
                )?;
            } else {
                let file = open_input(&archive)?;
                // A regular file can be read again where large members lie.
                let regular = file.metadata().is_ok_and(|m| m.is_file());
                let again = regular
                    .then(|| file.try_clone().ok().map(Arc::new))
                    .flatten();
                upload(rootfs, &target, Box::new(file), again, &options)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { target, json } => {
            let area = open_area(rootfs, &target)?;
            let report = ops::status(area.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ops::status::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait { target, wait } => wait_for(rootfs, &target, &wait),
        Command::Download {
            target,
            output,
            live,
            format,
            json,
        } => {
            let area = open_area(rootfs, &target)?;
            let prepared = ops::prepare_download(area.as_ref(), live)?;
            if prepared.is_mid_run() {
                eprintln!("nlxtp: warning: the VM is running; files being written may be inconsistent in the archive");
            }
            let compression = match format.as_deref() {
                None if output == Path::new("-") => Compression::None,
                None => Compression::from_name(&output),
                Some("tar") => Compression::None,
                Some("tar.gz" | "tgz") => Compression::Gzip,
                Some("tar.zst" | "tzst") => Compression::Zstd,
                Some(other) => {
                    return Err(Failure {
                        error: format!("unknown --format {other:?}: use tar, tar.gz or tar.zst")
                            .into(),
                        code: 2,
                    })
                }
            };
            let options = DownloadOptions {
                compression,
                limits: WalkLimits::default(),
            };
            let progress = Progress::new("packing");
            let report = if output == Path::new("-") {
                prepared.to_writer(io::stdout().lock(), &options, &mut |b| progress.set(b))?
            } else {
                prepared.to_file(&output, &options, &mut |b| progress.set(b))?
            };
            progress.finish();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if output != Path::new("-") {
                eprintln!(
                    "packed {} files, {} directories, {} bytes into {}",
                    report.files,
                    report.dirs,
                    report.bytes,
                    output.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            target,
            follow: true,
            stderr,
            both,
            wait,
        } => follow(rootfs, &target, streams(stderr, both), &wait),
        Command::Logs {
            target,
            follow: false,
            stderr,
            both,
            ..
        } => {
            let area = open_area(rootfs, &target)?;
            let mut follower = ops::logs::Follower::new(streams(stderr, both));
            let mut out = io::stdout().lock();
            let mut failed = None;
            follower.finish(area.as_ref(), &mut |stream, bytes| {
                let written = match stream {
                    Stream::Stdout => out.write_all(bytes),
                    Stream::Stderr => io::stderr().write_all(bytes),
                };
                failed = failed.take().or(written.err());
            })?;
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Exec {
            target,
            options,
            and_wait,
            wait,
            command,
        } => {
            let archive = ops::exec_archive(&command);
            upload(
                rootfs,
                &target,
                Box::new(io::Cursor::new(archive)),
                None,
                &options,
            )?;
            if and_wait {
                wait_for(rootfs, &target, &wait)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Mount {
            mountpoint,
            vms,
            config,
            daemon,
            allow_other,
            stage_dir,
        } => {
            nlxtp_host::fuse::mount(&nlxtp_host::fuse::MountOptions {
                mountpoint,
                vms,
                config,
                daemon,
                allow_other,
                stage_dir,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Umount { mountpoint, lazy } => {
            eprintln!("nlxtp: {}", nlxtp_host::fuse::umount(&mountpoint, lazy)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The area named on the command line: TARGET itself, or with `--rootfs`, the container
/// directory TARGET inside that root filesystem.
fn open_area(
    rootfs: Option<&Path>,
    target: &Path,
) -> Result<Box<dyn nlxtp_host::area::SharedArea>, nlxtp_host::area::AreaError> {
    match rootfs {
        None => ops::open_target(target),
        Some(rootfs) => ops::open_target_in(rootfs, target),
    }
}

fn open_input(path: &Path) -> Result<File, Failure> {
    File::open(path).map_err(|e| Failure {
        error: format!("cannot open the archive {}: {e}", path.display()).into(),
        code: 1,
    })
}

fn upload(
    rootfs: Option<&Path>,
    target: &Path,
    source: Box<dyn Read>,
    archive_file: Option<Arc<File>>,
    args: &UploadArgs,
) -> Result<(), Failure> {
    let area = open_area(rootfs, target)?;
    let options = UploadOptions {
        limits: ArchiveLimits {
            max_entries: args.max_entries,
            max_total_bytes: args.max_bytes,
        },
        files_only: args.files_only,
        force: args.force,
        timeout_secs: args.kill_after,
        heartbeat_ms: args.heartbeat_ms,
        output_cap: args.output_cap,
        archive_file,
        durability: if args.no_sync {
            Durability::Unsynced
        } else {
            Durability::Synced
        },
    };
    let progress = Progress::new("reading the archive");
    let prepared = ops::prepare_upload(
        area.as_ref(),
        CountingReader {
            inner: source,
            read: 0,
            progress: &progress,
        },
        &options,
    )?;
    progress.phase(format!(
        "writing {} into {}",
        indicatif::HumanBytes(prepared.bytes()),
        target.display()
    ));
    let report = prepared.write()?;
    progress.finish();
    for name in &report.dropped {
        eprintln!("nlxtp: note: left out {name} from the archive: it belongs to an earlier run");
    }
    for name in &report.stripped_mode_bits {
        eprintln!("nlxtp: note: cleared setuid/setgid/sticky bits of {name}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let when = if area.location().is_dir() {
            "the guest runs it now"
        } else {
            "it runs at the VM's next boot"
        };
        eprintln!(
            "uploaded run {} ({} entries, {} bytes); {when}",
            report.run_id, report.entries, report.bytes
        );
    }
    Ok(())
}

fn wait_for(rootfs: Option<&Path>, target: &Path, args: &WaitArgs) -> Result<ExitCode, Failure> {
    let area = open_area(rootfs, target).map_err(|e| with_code(125)(e.into()))?;
    let mut last_line = String::new();
    let quiet = args.quiet;
    let outcome = ops::wait(
        area.as_ref(),
        args.timeout(),
        args.interval(),
        &mut |record| {
            if let Some(rec) = record.filter(|_| !quiet) {
                let line = match rec.custom.as_str() {
                    "" => rec.state.to_string(),
                    custom => format!("{}: {custom}", rec.state),
                };
                if line != last_line {
                    eprintln!("nlxtp: {line}");
                    last_line = line;
                }
            }
            Ok(())
        },
    )
    .map_err(|e| with_code(125)(e.into()))?;
    finish_wait(target, args, &outcome)
}

/// Follows the output (`nlxtp logs --follow`), then ends as `nlxtp wait` does.
fn follow(
    rootfs: Option<&Path>,
    target: &Path,
    streams: Streams,
    wait: &WaitArgs,
) -> Result<ExitCode, Failure> {
    let area = open_area(rootfs, target).map_err(|e| with_code(125)(e.into()))?;
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr();
    let outcome = ops::logs::follow(
        area.as_ref(),
        streams,
        wait.timeout(),
        wait.interval(),
        &mut |stream, bytes| {
            let _ = match stream {
                Stream::Stdout => stdout.write_all(bytes).and_then(|()| stdout.flush()),
                Stream::Stderr => stderr.write_all(bytes),
            };
        },
        &mut || eprintln!("nlxtp: the output comes faster than the live ring keeps it; the rest is printed when the run ends"),
    )
    .map_err(|e| with_code(125)(e.into()))?;
    finish_wait(target, wait, &outcome)
}

/// The exit code and messages of a finished wait (documented in EXIT_CODES).
fn finish_wait(target: &Path, args: &WaitArgs, outcome: &WaitOutcome) -> Result<ExitCode, Failure> {
    let (code, record) = match outcome {
        WaitOutcome::Done(rec) => (
            match rec.state {
                RunState::Exited(c) => u8::try_from(c.clamp(0, 255)).unwrap_or(255),
                RunState::Signaled(sig) => 128u8.saturating_add(sig.clamp(0, 127) as u8),
                _ => 126,
            },
            Some(rec),
        ),
        WaitOutcome::MonitorLost(rec) => {
            eprintln!("nlxtp: the monitor stopped writing (the VM stopped or hung, or the monitor died); the run will not finish");
            (126, Some(rec))
        }
        WaitOutcome::TimedOut(rec) => {
            eprintln!(
                "nlxtp: gave up waiting after {:.1} s; the run goes on",
                args.timeout.unwrap_or(0.0)
            );
            (124, rec.as_ref())
        }
        WaitOutcome::NoUpload => {
            eprintln!(
                "nlxtp: there is no upload in {} (no auto_exec.sh): nothing to wait for",
                target.display()
            );
            (127, None)
        }
    };
    if args.json_result {
        let view = record.map(RecordView::new);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "exit": code, "record": view }))?
        );
    }
    Ok(ExitCode::from(code))
}

impl WaitArgs {
    fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs_f64)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval.max(0.05))
    }
}

fn streams(stderr: bool, both: bool) -> Streams {
    match (stderr, both) {
        (_, true) => Streams::Both,
        (true, false) => Streams::Stderr,
        (false, false) => Streams::Stdout,
    }
}

/// "64M" -> 67108864.
fn parse_size(text: &str) -> Result<u64, String> {
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

/// A progress line on a terminal; nothing when stderr is not one.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(what: &'static str) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .expect("static template"),
        );
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    fn set(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(bytes);
        }
    }

    /// A step whose bytes are not counted: the message and the time it has taken.
    fn phase(&self, message: String) {
        if let Some(bar) = &self.0 {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("static template"),
            );
            bar.set_message(message);
            bar.reset_elapsed();
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Counts bytes read, for the progress line.
struct CountingReader<'a> {
    inner: Box<dyn Read>,
    read: u64,
    progress: &'a Progress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.set(self.read);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
