//! `nlxtp-serve`: the host's HTTP API and web page for its VMs, and `nlxtp-serve grant`,
//! which signs a one-time grant URL with the server's key (no running server needed).
//!
//! A binary of its own (feature `serve` of nlxtp-host) so that the `nlxtp` CLI links no
//! async runtime. Everything it serves is `nlxtp_host::serve`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nlxtp_host::fuse::{self as config, VmSpec};
use nlxtp_host::serve::{self, GrantKey, Limits, Operation, ServeConfig, Server};

/// Serve the VMs of this host over HTTP: a JSON API (status, live output, upload,
/// download, one-time grants) and a web page at `/`.
#[derive(Debug, Parser)]
#[command(name = "nlxtp-serve", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a URL that allows one upload or download on one VM until it expires.
    Grant(GrantArgs),
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Where the signing key, the used grants and the operator token live (default
    /// /var/lib/nlxtp/serve for root, else $XDG_STATE_HOME/nlxtp/serve).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(serve::default_state_dir)
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on: loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8420", value_name = "ADDR")]
    listen: SocketAddr,
    /// A VM: its name in URLs and its disk image or container directory.
    #[arg(long = "vm", value_name = "NAME=TARGET", value_parser = parse_vm)]
    vms: Vec<VmSpec>,
    /// Every domain with a shared disk on this libvirt connection (URI, as virsh -c),
    /// named by its domain name; repeat for more (build with --features serve,libvirt).
    #[arg(long = "libvirt", value_name = "URI")]
    libvirt: Vec<String>,
    /// The VMs of a config file, as `nlxtp mount --config` reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How often the VM list of --libvirt and --config is read again, so that domains
    /// defined or undefined (and config edits) show up without a restart: seconds, or
    /// 30s, 10m; 0 never.
    #[arg(long, default_value = "30s", value_parser = parse_interval, value_name = "EVERY")]
    rescan: Duration,
    #[command(flatten)]
    state: StateArgs,
    /// A file holding the operator token (else $NLXTP_SERVE_TOKEN, else the state
    /// directory's operator-token, created on first start).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// TLS: the certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The URL clients reach this server at, for the grant URLs it hands out.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// The largest upload body.
    #[arg(long, default_value = "4G", value_parser = parse_size, value_name = "SIZE")]
    max_upload: u64,
    /// Concurrent live-output followers.
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_followers: usize,
}

#[derive(Debug, Args)]
struct GrantArgs {
    /// The VM's name, as the server knows it.
    vm: String,
    /// The operation it allows: upload or download.
    #[arg(value_parser = ["upload", "download"])]
    operation: String,
    /// How long it is valid: seconds, or 30s, 10m, 2h, 1d.
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    ttl: Duration,
    /// The server's URL (default: the one the server wrote into its state directory).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

fn parse_vm(arg: &str) -> Result<VmSpec, String> {
    config::parse_vm_arg(arg).map_err(|e| e.to_string())
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    serve::parse_ttl(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 90, 30s, 10m, 2h or 1d"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_ttl(text)
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, shift) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size like 512K, 100M or 4G"))
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!("\n  because: {e}"));
        cause = e.source();
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Grant(args)) => grant(&args),
        None => run(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nlxtp-serve: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn grant(args: &GrantArgs) -> Fallible<()> {
    config::check_name(&args.vm)?;
    let dir = args.state.dir();
    serve::create_state_dir(&dir)?;
    let key = GrantKey::load_or_create(&dir)?;
    let operation = Operation::from_name(&args.operation).expect("checked by clap");
    let expires = serve::grant::now_unix() + args.ttl.as_secs();
    let (_, token) = key.issue(&args.vm, operation, expires);
    let base = match &args.url {
        Some(url) => url.clone(),
        None => std::fs::read_to_string(dir.join("url"))
            .map(|u| u.trim().to_owned())
            .map_err(|_| {
                format!(
                    "no --url given and no server has written its URL into {}",
                    dir.display()
                )
            })?,
    };
    println!(
        "{}{}",
        base.trim_end_matches('/'),
        serve::grant_path(&args.vm, &token)
    );
    Ok(())
}

/// The list read again from `--libvirt` and `--config`, unless there are none or
/// `--rescan 0`.
fn rescan(args: &ServeArgs) -> Option<serve::Rescan> {
    if args.rescan.is_zero() || (args.libvirt.is_empty() && args.config.is_none()) {
        return None;
    }
    let (vms, libvirt, file) = (args.vms.clone(), args.libvirt.clone(), args.config.clone());
    Some(serve::Rescan {
        every: args.rescan,
        source: std::sync::Arc::new(move || {
            config::collect_vms(&vms, &libvirt, file.as_deref()).map_err(|e| chain(&e))
        }),
    })
}

fn run(args: ServeArgs) -> Fallible<()> {
    let vms = config::collect_vms(&args.vms, &args.libvirt, args.config.as_deref())?;
    if vms.is_empty() {
        return Err("no VMs: give --vm NAME=TARGET, --libvirt URI or --config FILE".into());
    }
    let operator_token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("NLXTP_SERVE_TOKEN").ok(),
    };
    let state_dir = args.state.dir();
    let rescan = rescan(&args);
    let tls = args.tls_cert.zip(args.tls_key);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let server = Server::new(ServeConfig {
        vms,
        state_dir: state_dir.clone(),
        operator_token,
        limits: Limits {
            max_upload_bytes: args.max_upload,
            max_followers: args.max_followers,
            ..Limits::default()
        },
        public_url: Some(url.clone()),
        rescan,
    })?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // For `nlxtp-serve grant` without --url.
    let _ = std::fs::write(state_dir.join("url"), format!("{url}\n"));
    if !args.listen.ip().is_loopback() && tls.is_none() {
        eprintln!("nlxtp-serve: warning: listening on {} without TLS: the token and grants cross the network in clear", args.listen);
    }
    eprintln!(
        "nlxtp-serve: serving on {url}/ (web page: {url}/#token=<the operator token in {}>)",
        state_dir.join("operator-token").display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        server
            .run(listener, tls, async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
            .map_err(Box::<dyn std::error::Error>::from)
    })?;
    Ok(())
}
