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
#[path = "../nlxtp/run.rs"]
mod run;
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

/// The URI given with `--connect`, if any.
static URI: OnceLock<Option<String>> = OnceLock::new();

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut uri = None;
    // `--connect URI` / `-c URI` / `--connect=URI`, before the command as with virsh.
    while let Some(first) = args.first().and_then(|a| a.to_str()).map(str::to_owned) {
        if first == "--connect" || first == "-c" {
            if args.len() < 2 {
                eprintln!("nlxtp-libvirt: --connect needs a URI (as virsh -c): qemu:///system, qemu+tcp://host/system");
                return ExitCode::from(2);
            }
            uri = args[1].to_str().map(str::to_owned);
            args.drain(..2);
        } else if let Some(value) = first.strip_prefix("--connect=") {
            uri = Some(value.to_owned());
            args.remove(0);
        } else {
            break;
        }
    }
    let _ = URI.set(uri.or_else(|| std::env::var("LIBVIRT_DEFAULT_URI").ok()));
    let _ = OPENER.set(open_domain);
    match args.first().and_then(|a| a.to_str()) {
        Some("attach" | "detach") => disks(args),
        _ => main_with(args),
    }
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
        let uri = URI.get().cloned().flatten();
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
        Err(error) => {
            eprintln!("nlxtp-libvirt: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  because: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
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
    let uri = URI.get().cloned().flatten();
    let conn = libvirt::connect(uri.as_deref())?;
    let shown = uri.unwrap_or_else(|| conn.uri().unwrap_or_else(|_| "libvirt".into()));
    let name = target.path.to_string_lossy();
    Ok(Box::new(LibvirtDomain::open(conn, &shown, &name)?))
}
