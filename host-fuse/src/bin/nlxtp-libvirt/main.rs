//! `nlxtp-libvirt`: `nlxtp` with libvirt domains as targets.
//!
//! `nlxtp-libvirt [--connect URI] COMMAND ... DOMAIN ...` takes the same commands as
//! `nlxtp` (the very same modules, `src/bin/nlxtp/`, compiled in here), and opens each
//! TARGET as the shared disk of the libvirt domain of that name
//! ([`LibvirtDomain`]), on the connection that
//! `--connect URI` (as `virsh -c`) or else `LIBVIRT_DEFAULT_URI` names. A second binary,
//! not a feature of `nlxtp`: it links the shared libvirt library (no static one exists),
//! which a process pays for at every start, and `nlxtp status IMAGE` must stay static
//! and fast.
//!
//! Hot jobs for a running domain ([`nlxtp_host::area::libvirt::hot`]): `upload --hot
//! DOMAIN ARCHIVE` and `detach --hot DOMAIN` are this binary's own; `status`, `wait`,
//! `logs` and `download` take `--hot [--volume NAME] [--pool POOL]`, which this binary
//! takes out of the arguments before nlxtp's parser sees them.
#![forbid(unsafe_code)]

#[path = "../nlxtp/args.rs"]
mod args;
#[path = "../nlxtp/out.rs"]
mod out;
#[path = "../nlxtp/progress.rs"]
mod progress;
#[path = "../nlxtp/run/mod.rs"]
mod run;
#[path = "../nlxtp/setup.rs"]
mod setup;
#[path = "../nlxtp/transfer.rs"]
mod transfer;
#[path = "../nlxtp/watch.rs"]
mod watch;

include!("../nlxtp/entry.rs");

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use args::{Target, OPENER};
use nlxtp_host::area::libvirt::hot::{self, HotDetachOptions, HotJob, HotOptions, HotSelect};
use nlxtp_host::area::libvirt::{self, LibvirtDomain};
use nlxtp_host::area::{AreaError, SharedArea};
use nlxtp_host::ops::hot::DetachOptions;

/// The URIs given with `--connect` (several for `status --all`), else
/// `LIBVIRT_DEFAULT_URI`; empty for libvirt's default.
static URIS: OnceLock<Vec<String>> = OnceLock::new();

/// The domain a command opened (for `upload --start`).
static OPENED: OnceLock<String> = OnceLock::new();

/// `--hot [--volume NAME] [--pool POOL]` of `status`, `wait`, `logs` and `download`:
/// TARGET's hot disk rather than its shared disk.
static HOT: OnceLock<HotSelect> = OnceLock::new();

/// The commands that take `--hot` to read a domain's hot disk.
const HOT_READERS: [&str; 4] = ["status", "wait", "logs", "download"];

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut uris = Vec::new();
    // `--connect URI` / `-c URI` / `--connect=URI`, before the command as with virsh.
    while let Some(first) = args.first().and_then(|a| a.to_str()).map(str::to_owned) {
        if first == "--connect" || first == "-c" {
            let Some(uri) = args.get(1).and_then(|a| a.to_str()).map(str::to_owned) else {
                eprintln!("nlxtp-libvirt: --connect needs a URI (as virsh -c): qemu:///system, qemu+tcp://host/system");
                return ExitCode::from(2);
            };
            uris.push(uri);
            args.drain(..2);
        } else if let Some(value) = first.strip_prefix("--connect=") {
            uris.push(value.to_owned());
            args.remove(0);
        } else {
            break;
        }
    }
    // `-c URI mount MOUNTPOINT`: every domain of URI in the view (as `--libvirt URI`).
    if args.first().is_some_and(|a| a == "mount") {
        args.extend(uris.iter().flat_map(|uri| ["--libvirt".into(), uri.into()]));
    }
    if uris.is_empty() {
        uris.extend(std::env::var("LIBVIRT_DEFAULT_URI").ok());
    }
    let _ = URIS.set(uris);
    let _ = OPENER.set(open_domain);
    let command = args.first().and_then(|a| a.to_str()).map(str::to_owned);
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let asks_help = has("-h") || has("--help");
    match command.as_deref() {
        None | Some("-h" | "--help" | "help") if args.len() <= 1 => help(command.is_some()),
        Some(name @ ("upload" | "status" | "wait" | "logs" | "download")) if asks_help => {
            subcommand_help(name)
        }
        Some("attach" | "detach") => disks(args),
        Some("status") if has("--all") => fleet(has("--json")),
        Some("upload") if has("--hot") => hot_upload(args),
        Some(name) if HOT_READERS.contains(&name) && has("--hot") => match take_hot(&mut args) {
            Ok(select) => {
                let _ = HOT.set(select);
                main_with(args)
            }
            Err(message) => {
                eprintln!("nlxtp-libvirt: {message}");
                ExitCode::from(2)
            }
        },
        Some("upload") if has("--start") => {
            args.retain(|a| a != "--start");
            let code = main_with(args);
            if code != ExitCode::SUCCESS {
                return code;
            }
            let started = OPENED
                .get()
                .ok_or_else(|| {
                    AreaError::io(
                        "start",
                        "?".as_ref(),
                        std::io::Error::other("no domain was opened"),
                    )
                })
                .and_then(|name| open_named(name))
                .and_then(|area| area.start().map(|()| area));
            match started {
                Ok(area) => {
                    eprintln!("started domain {}", area.name());
                    ExitCode::SUCCESS
                }
                Err(error) => report(&error),
            }
        }
        _ => main_with(args),
    }
}

/// What `nlxtp-libvirt --help` says before the commands.
const ABOUT: &str = "\
Control a libvirt domain through its shared disk, with no network and no agent in the guest.

TARGET is a domain's name. Its shared disk is the disk with <serial>NLXTP</serial> (made by
`attach`), a volume of a storage pool: nlxtp-libvirt reads and writes it through libvirt's
volume streams, so the domain may live on another host (qemu+ssh://, qemu+tls://). The
connection is `--connect URI` (as `virsh -c`; repeat it for `status --all`), else
LIBVIRT_DEFAULT_URI, else libvirt's default.

A typical cycle, the domain shut off:
  nlxtp-libvirt -c qemu:///system attach vm1          once: make and attach the disk
  nlxtp-libvirt -c qemu:///system upload --start vm1 job.tar.gz
  nlxtp-libvirt -c qemu:///system wait vm1            while it runs, from the raw volume
  nlxtp-libvirt -c qemu:///system download vm1 results.tar.gz
  nlxtp-libvirt -c qemu:///system -c qemu+ssh://h2/system status --all
  nlxtp-libvirt -c qemu+ssh://h2/system mount /mnt/vms   every domain's disk as files (FUSE)

An upload to a running domain's shared disk is refused, as with `nlxtp` and a running
QEMU: the guest reads its disk at boot. Containers are `nlxtp`'s.

Jobs for a RUNNING domain (no reboot): each job gets a new volume (FAT, label NLXTP-HOT) in the
pool of the domain's shared disk (else `default`; --pool), hot-plugged as a virtio disk with
<serial>NLXTP-HOT</serial>; the guest runs it once, unmounts it and marks it released. The
domain needs <features><acpi/></features>, else nothing is hot-plugged.
  nlxtp-libvirt -c URI upload --hot vm1 job.tar.gz        written, uploaded, plugged in
  nlxtp-libvirt -c URI wait --hot vm1                     status, logs -f work too
  nlxtp-libvirt -c URI detach --hot vm1                   waits for the release, unplugs
  nlxtp-libvirt -c URI download --hot vm1 results.tar.gz  the volume stays after detach
  nlxtp-libvirt -c URI detach --hot vm1 --remove          (or at detach) deletes the volume
`--hot` names the domain's hot disk: the one attached now (serial NLXTP-HOT in its live XML;
if several are, choose with --volume NAME), else the newest hot volume of the domain in the
pool (the last job's, kept after detach). A volume a running domain has is never written.";

/// `--hot`, `--volume`, `--pool` as the help of a command that reads a domain's hot
/// disk shows them (this binary takes them out before nlxtp's parser).
fn hot_reader_args(command: clap::Command) -> clap::Command {
    use clap::{Arg, ArgAction};
    command
        .arg(
            Arg::new("hot")
                .long("hot")
                .action(ArgAction::SetTrue)
                .help("The domain's hot disk, not its shared disk: the one attached now (serial NLXTP-HOT in the live XML), else the newest hot volume of the domain (kept after detach)"),
        )
        .arg(
            Arg::new("volume")
                .long("volume")
                .value_name("NAME")
                .help("With --hot: the hot volume of this name (needed when several are attached)"),
        )
        .arg(
            Arg::new("pool")
                .long("pool")
                .value_name("POOL")
                .help("With --hot: the pool of the volume (default: the attached disk's, else that of the domain's shared disk, else `default`)"),
        )
}

/// nlxtp's command line as this binary shows it: its name, TARGET, its own commands.
fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = args::Cli::command()
        .name("nlxtp-libvirt")
        .bin_name("nlxtp-libvirt")
        .about("Control a libvirt domain through its shared disk, with no network")
        .long_about(ABOUT)
        .override_usage("nlxtp-libvirt [--connect URI]... <COMMAND> [OPTIONS] DOMAIN ...")
        .mut_subcommand("status", |status| {
            status.after_help(
                "nlxtp-libvirt status --all [--json]: every domain with a shared disk on \
                 every --connect, read in parallel; a table, or one JSON object a line.",
            )
        })
        .mut_subcommand("upload", |upload| {
            upload
                .long_about("Replace the domain's shared disk's content with an archive whose auto_exec.sh \
                    the guest runs at its next boot (the domain must be off; --start boots it). \
                    With --hot: a job for the RUNNING domain, in a new hot volume hot-plugged into it \
                    (see nlxtp-libvirt --help and nlxtp-libvirt detach --help).")
                .mut_arg("socket", |a| a.hide(true))
                .mut_arg("hot", |a| a.help("Hot-plug the job into the running DOMAIN: a new hot volume (see nlxtp-libvirt --help), written, uploaded through a stream and attached live; nlxtp-libvirt detach --hot takes it out"))
                .mut_arg("size", |a| a.help("With --hot: the size of the volume that is made (default 64M)"))
                .arg(clap::Arg::new("pool").long("pool").value_name("POOL").help("With --hot: the pool of the new volume (default: that of the domain's shared disk, else `default`)"))
                .arg(clap::Arg::new("volume").long("volume").value_name("NAME").help("With --hot: the volume's name (default DOMAIN-hot-TIME.img); an existing hot volume is formatted anew, and refused while a running domain has it"))
                .after_help("nlxtp-libvirt upload --start DOMAIN ARCHIVE: start the domain once the upload is in.\nnlxtp-libvirt upload --hot DOMAIN ARCHIVE [--pool POOL] [--volume NAME] [--size SIZE] [--json]: a job for the running domain.")
        });
    for reader in HOT_READERS {
        command = command.mut_subcommand(reader, hot_reader_args);
    }
    // What takes no domain, or works on files only, is `nlxtp`'s to show.
    for files_only in ["create-disk", "run", "guest"] {
        command = command.mut_subcommand(files_only, |c| c.hide(true));
    }
    command = command.mut_arg("rootfs", |a| a.hide(true));
    // nlxtp's `detach` (a hot disk image, through QMP) gives way to this binary's.
    command = command.mut_subcommand("detach", |c| c.name("nlxtp-detach").hide(true));
    for own in Disks::command().get_subcommands() {
        command = command.subcommand(own.clone());
    }
    command
}

/// `nlxtp-libvirt COMMAND --help` for the commands this binary shows otherwise than
/// nlxtp does.
fn subcommand_help(name: &str) -> ExitCode {
    let mut command = cli_command();
    let Some(sub) = command.find_subcommand_mut(name) else {
        return help(true);
    };
    let mut sub = sub.clone().bin_name(format!("nlxtp-libvirt {name}"));
    println!("{}", sub.render_long_help());
    ExitCode::SUCCESS
}

/// `nlxtp-libvirt --help`: nlxtp's commands with this binary's name, TARGET and own
/// commands (`attach`, `detach`, `status --all`, `upload --start`, `upload --hot`).
fn help(asked: bool) -> ExitCode {
    let help = cli_command().render_long_help();
    if asked {
        println!("{help}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{help}");
        ExitCode::from(2)
    }
}

/// The one connection a command uses.
fn the_uri() -> Option<String> {
    URIS.get().and_then(|u| u.first().cloned())
}

/// The connection, and its URI as messages show it.
fn connection() -> Result<(Arc<virt::connect::Connect>, String), AreaError> {
    let uri = the_uri();
    let conn = libvirt::connect(uri.as_deref())?;
    let shown = uri.unwrap_or_else(|| conn.uri().unwrap_or_else(|_| "libvirt".into()));
    Ok((conn, shown))
}

fn open_named(name: &str) -> Result<LibvirtDomain, AreaError> {
    let (conn, shown) = connection()?;
    Ok(LibvirtDomain::open(conn, &shown, name)?)
}

/// Takes `--hot`, `--volume NAME` and `--pool POOL` (also `--volume=NAME`) out of `args`.
fn take_hot(args: &mut Vec<OsString>) -> Result<HotSelect, String> {
    let mut select = HotSelect::default();
    let mut kept = Vec::with_capacity(args.len());
    let mut rest = std::mem::take(args).into_iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_str().unwrap_or("");
        let slot = match text.split_once('=').map_or(text, |(flag, _)| flag) {
            "--hot" if text == "--hot" => continue,
            "--volume" => &mut select.volume,
            "--pool" => &mut select.pool,
            _ => {
                kept.push(arg);
                continue;
            }
        };
        let value = match text.split_once('=') {
            Some((_, value)) => Some(value.to_owned()),
            None => rest.next().and_then(|v| v.into_string().ok()),
        };
        *slot = Some(value.ok_or_else(|| format!("{text} needs a value"))?);
    }
    *args = kept;
    Ok(select)
}

/// TARGET as a libvirt domain's name.
fn open_domain(target: &Target) -> Result<Box<dyn SharedArea>, AreaError> {
    if target.rootfs.is_some() {
        return Err(AreaError::io(
            "open",
            &target.path,
            std::io::Error::other("--rootfs names a container; nlxtp-libvirt's TARGET is a libvirt domain: use nlxtp for containers"),
        ));
    }
    let name = target.path.to_string_lossy().into_owned();
    if let Some(select) = HOT.get() {
        let (conn, shown) = connection()?;
        return match hot::find_hot(&conn, &shown, &name, select) {
            Ok((volume, _)) => Ok(Box::new(volume)),
            Err(hot::HotVolumeError::Area(e)) => Err(e),
            Err(e) => Err(AreaError::io(
                "open the hot disk of",
                &target.path,
                std::io::Error::other(e),
            )),
        };
    }
    let area = open_named(&name)?;
    let _ = OPENED.set(name);
    Ok(Box::new(area))
}

fn report(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("nlxtp-libvirt: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  because: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}

/// `status --all`: every domain with a shared disk on every connection, the connections
/// read in parallel; a table, or with `--json` one JSON object a line.
fn fleet(json: bool) -> ExitCode {
    let uris = URIS.get().cloned().unwrap_or_default();
    let uris: Vec<Option<String>> = if uris.is_empty() {
        vec![None]
    } else {
        uris.into_iter().map(Some).collect()
    };
    let results: Vec<(String, Result<Vec<serde_json::Value>, AreaError>)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = uris
                .iter()
                .map(|uri| scope.spawn(move || fleet_of(uri.as_deref())))
                .collect();
            handles
                .into_iter()
                .zip(&uris)
                .map(|(h, uri)| {
                    let shown = uri.clone().unwrap_or_else(|| "(default)".into());
                    (shown, h.join().expect("a fleet thread does not panic"))
                })
                .collect()
        });
    let mut failed = false;
    if !json {
        println!(
            "{:<40} {:<20} {:<14} {:<10} EXIT",
            "CONNECTION", "DOMAIN", "DOMAIN STATE", "RUN"
        );
    }
    for (uri, result) in results {
        match result {
            Ok(rows) => {
                for row in rows {
                    if json {
                        println!("{row}");
                    } else {
                        let text = |v: &serde_json::Value| match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "-".into(),
                            other => other.to_string(),
                        };
                        let status = &row["status"];
                        let run = if status.is_null() {
                            format!("error: {}", text(&row["error"]))
                        } else if status["record"].is_null() {
                            if status["upload_present"] == true {
                                "pending".into()
                            } else {
                                "-".into()
                            }
                        } else {
                            text(&status["record"]["state"])
                        };
                        println!(
                            "{:<40} {:<20} {:<14} {:<10} {}",
                            uri,
                            text(&row["domain"]),
                            text(&row["domain_state"]),
                            run,
                            text(&status["record"]["exit_code"]),
                        );
                    }
                }
            }
            Err(error) => {
                failed = true;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"connection": uri, "error": error.to_string()})
                    );
                } else {
                    report(&error);
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How many domains of one host `status --all` reads at once: each read is a series of
/// round trips, which the connection carries side by side.
const FLEET_THREADS: usize = 8;

/// The fleet rows of one connection.
fn fleet_of(uri: Option<&str>) -> Result<Vec<serde_json::Value>, AreaError> {
    let conn = libvirt::connect(uri)?;
    let shown = uri
        .map(str::to_owned)
        .unwrap_or_else(|| conn.uri().unwrap_or_else(|_| "libvirt".into()));
    let domains = libvirt::shared_domains(&conn, &shown, FLEET_THREADS)?;
    Ok(nlxtp_host::ops::parallel_map(
        &domains,
        FLEET_THREADS,
        |(name, opened)| {
            let area = match opened {
                Ok(area) => area,
                Err(e) => {
                    return serde_json::json!({
                        "connection": shown, "domain": name, "domain_state": null,
                        "status": null, "error": e.to_string(),
                    })
                }
            };
            let state = area.domain_state().unwrap_or("unknown");
            match nlxtp_host::ops::status(area) {
                Ok(status) => serde_json::json!({
                    "connection": shown, "domain": name, "domain_state": state,
                    "status": status,
                }),
                Err(e) => serde_json::json!({
                    "connection": shown, "domain": name, "domain_state": state,
                    "status": null, "error": e.to_string(),
                }),
            }
        },
    ))
}

/// `attach` and `detach`, the commands only nlxtp-libvirt has.
#[derive(Debug, clap::Parser)]
#[command(name = "nlxtp-libvirt", about = "A libvirt domain's shared disk")]
enum Disks {
    /// Creates a shared disk (vFAT, label NLXTP) as a volume of a storage pool and adds it
    /// to the domain's persistent definition, with <serial>NLXTP</serial> (from the next
    /// boot on, for a running domain).
    Attach {
        /// The domain.
        domain: String,
        /// The disk's size (K, M, G suffixes).
        #[arg(long, default_value = "64M", value_parser = args::parse_size)]
        size: u64,
        /// The storage pool that gets the volume.
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// Removes the shared disk from the domain's persistent definition, and deletes its
    /// volume unless a running domain uses it. With --hot: takes the domain's hot disk
    /// (a job hot-plugged by upload --hot) out of the running domain.
    ///
    /// With --hot, detach waits (up to --timeout) for the guest's release mark in the
    /// volume's boot sector (read through a volume stream every 25 ms), then unplugs the
    /// disk (virDomainDetachDeviceFlags, live) and waits until the live XML no longer has
    /// it. Without the mark in time, or with --force, the disk is taken away and, if the
    /// run had not ended, the host writes its final record into the volume: aborted, "the
    /// host detached the disk"; the script's files stay. A guest that does not let go of
    /// the device (no ACPI, hung) keeps it: detach says so, writes nothing and exits 1.
    /// The volume stays in its pool for download --hot, until --remove (now, or in a later
    /// detach --hot DOMAIN --volume NAME --remove).
    #[command(verbatim_doc_comment)]
    Detach {
        /// The domain.
        domain: String,
        /// The domain's hot disk (see nlxtp-libvirt --help), not its shared disk.
        #[arg(long)]
        hot: bool,
        /// With --hot: the hot volume of this name (needed when several are attached).
        #[arg(long, requires = "hot", value_name = "NAME")]
        volume: Option<String>,
        /// With --hot: the volume's pool (default: the attached disk's, else that of the
        /// domain's shared disk, else `default`).
        #[arg(long, requires = "hot", value_name = "POOL")]
        pool: Option<String>,
        /// With --hot: how long to wait for the guest to release the disk (seconds, or
        /// with ms, s, m).
        #[arg(long, default_value = "30s", value_parser = args::parse_duration)]
        timeout: Duration,
        /// With --hot: take the disk away now, without waiting for the guest.
        #[arg(long, requires = "hot")]
        force: bool,
        /// With --hot: delete the volume once it is detached (else it stays in its pool).
        #[arg(long, requires = "hot")]
        remove: bool,
        /// With --hot: print a JSON report.
        #[arg(long, requires = "hot")]
        json: bool,
    },
}

/// `upload --hot`: a job for a running domain.
#[derive(Debug, clap::Parser)]
#[command(name = "nlxtp-libvirt upload")]
struct HotUpload {
    /// Hot-plug the job into the running domain.
    #[arg(long)]
    hot: bool,
    /// The running domain.
    domain: String,
    /// A .tar, .tar.gz or .tar.zst file (recognised by content), or - for stdin.
    archive: PathBuf,
    /// The pool of the new volume.
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// The volume's name.
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    /// The size of the volume that is made.
    #[arg(long, value_parser = args::parse_size, value_name = "SIZE")]
    size: Option<u64>,
    #[command(flatten)]
    options: args::UploadArgs,
}

/// Ends the process as `nlxtp` does for `failure`.
fn failed(failure: Failure) -> ExitCode {
    report(&*failure.error);
    ExitCode::from(failure.code)
}

/// `nlxtp-libvirt upload --hot DOMAIN ARCHIVE`.
fn hot_upload(args: Vec<OsString>) -> ExitCode {
    use clap::Parser;
    let command = HotUpload::parse_from(
        std::iter::once(OsString::from("nlxtp-libvirt upload")).chain(args.into_iter().skip(1)),
    );
    let result = (|| -> Result<(), Failure> {
        let (conn, shown) = connection()?;
        let options = HotOptions {
            pool: command.pool.clone(),
            volume: command.volume.clone(),
            size: command.size.unwrap_or(nlxtp_host::ops::hot::HOT_DISK_SIZE),
            ..HotOptions::default()
        };
        transfer::with_archive(&command.archive, |source, again| {
            let job = HotJob::prepare(conn, &shown, &command.domain, &options)?;
            let into = format!("{}/{}", job.pool(), job.volume());
            let upload = transfer::write_upload(job.area(), source, again, &command.options)?;
            let (run, entries, bytes) = (upload.run_id.clone(), upload.entries, upload.bytes);
            let attached = job.attach(Some(upload))?;
            if command.options.json {
                out::json(&attached)?;
            } else {
                note!(
                    "uploaded run {run} ({entries} entries, {bytes} bytes) into volume {into} \
                     and hot-plugged it into {} as {} (upload {} ms, attach {} ms); the guest \
                     runs it now. Follow it: nlxtp-libvirt wait --hot {}; when it has ended: \
                     nlxtp-libvirt detach --hot {}",
                    attached.domain,
                    attached.target,
                    attached.upload_ms,
                    attached.attach_ms,
                    attached.domain,
                    attached.domain
                );
            }
            Ok(())
        })
    })();
    result.map_or_else(failed, |()| ExitCode::SUCCESS)
}

/// `nlxtp-libvirt detach --hot DOMAIN`.
fn hot_detach(domain: &str, options: &HotDetachOptions, json: bool) -> Result<(), Failure> {
    let (conn, shown) = connection()?;
    if !options.detach.force && !json {
        note!(
            "waiting up to {:?} for the guest of {domain} to release its hot disk",
            options.detach.timeout
        );
    }
    let report = hot::detach(&conn, &shown, domain, options)?;
    if json {
        out::json(&report)?;
    }
    let disk = format!("volume {}/{} of {domain}", report.pool, report.volume);
    transfer::detach_outcome(
        &report.detach,
        &disk,
        &options.detach,
        json,
        "retry nlxtp-libvirt detach --hot, or stop the domain",
    )?;
    if !json {
        if report.removed {
            note!("deleted {disk}");
        } else {
            note!(
                "the volume stays in its pool: nlxtp-libvirt download --hot {domain} --volume {} OUTPUT; \
                 delete it with nlxtp-libvirt detach --hot {domain} --volume {} --remove",
                report.volume,
                report.volume
            );
        }
    }
    Ok(())
}

fn disks(args: Vec<OsString>) -> ExitCode {
    use clap::Parser;
    let command = Disks::parse_from(std::iter::once(OsString::from("nlxtp-libvirt")).chain(args));
    if let Disks::Detach {
        domain,
        hot: true,
        volume,
        pool,
        timeout,
        force,
        remove,
        json,
    } = &command
    {
        let options = HotDetachOptions {
            select: HotSelect {
                volume: volume.clone(),
                pool: pool.clone(),
            },
            detach: DetachOptions {
                timeout: *timeout,
                force: *force,
                ..DetachOptions::default()
            },
            remove: *remove,
        };
        return hot_detach(domain, &options, *json).map_or_else(failed, |()| ExitCode::SUCCESS);
    }
    let result = (|| -> Result<String, AreaError> {
        let uri = the_uri();
        let conn = libvirt::connect(uri.as_deref())?;
        match command {
            Disks::Attach { domain, size, pool } => {
                let options = nlxtp_host::area::vfat::DiskOptions {
                    size,
                    ..Default::default()
                };
                let made = libvirt::attach(&conn, &domain, &pool, &options)?;
                Ok(format!(
                    "attached volume {} of pool {} to {domain} as {} (serial NLXTP)",
                    made.volume, made.pool, made.target
                ))
            }
            Disks::Detach { domain, .. } => Ok(if libvirt::detach(&conn, &domain)? {
                format!("detached the shared disk of {domain} and deleted its volume")
            } else {
                format!("detached the shared disk of {domain}; its volume stays while a running domain uses it")
            }),
        }
    })();
    match result {
        Ok(line) => {
            eprintln!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => report(&error),
    }
}
