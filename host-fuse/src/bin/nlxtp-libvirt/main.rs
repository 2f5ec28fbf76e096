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
use std::sync::OnceLock;

use args::{Target, OPENER};
use nlxtp_host::area::libvirt::{self, LibvirtDomain};
use nlxtp_host::area::{AreaError, SharedArea};

/// The URIs given with `--connect` (several for `status --all`), else
/// `LIBVIRT_DEFAULT_URI`; empty for libvirt's default.
static URIS: OnceLock<Vec<String>> = OnceLock::new();

/// The domain a command opened (for `upload --start`).
static OPENED: OnceLock<String> = OnceLock::new();

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
    match command.as_deref() {
        None | Some("-h" | "--help" | "help") if args.len() <= 1 => help(command.is_some()),
        Some("attach" | "detach") => disks(args),
        Some("status") if has("--all") => fleet(has("--json")),
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

An upload to a running domain is refused, as with `nlxtp` and a running QEMU: the guest
reads its disk at boot. Containers are `nlxtp`'s.";

/// `nlxtp-libvirt --help`: nlxtp's commands with this binary's name, TARGET and own
/// commands (`attach`, `detach`, `status --all`, `upload --start`).
fn help(asked: bool) -> ExitCode {
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
            upload.after_help("nlxtp-libvirt upload --start DOMAIN ARCHIVE: start the domain once the upload is in.")
        });
    // What takes no domain, or works on files only, is `nlxtp`'s to show.
    for files_only in ["create-disk", "run", "guest"] {
        command = command.mut_subcommand(files_only, |c| c.hide(true));
    }
    command = command.mut_arg("rootfs", |a| a.hide(true));
    for own in Disks::command().get_subcommands() {
        command = command.subcommand(own.clone());
    }
    let help = command.render_long_help();
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

fn open_named(name: &str) -> Result<LibvirtDomain, AreaError> {
    let uri = the_uri();
    let conn = libvirt::connect(uri.as_deref())?;
    let shown = uri.unwrap_or_else(|| conn.uri().unwrap_or_else(|_| "libvirt".into()));
    Ok(LibvirtDomain::open(conn, &shown, name)?)
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
    /// volume unless a running domain uses it.
    Detach {
        /// The domain.
        domain: String,
    },
}

fn disks(args: Vec<OsString>) -> ExitCode {
    use clap::Parser;
    let command = Disks::parse_from(std::iter::once(OsString::from("nlxtp-libvirt")).chain(args));
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
            Disks::Detach { domain } => Ok(if libvirt::detach(&conn, &domain)? {
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
