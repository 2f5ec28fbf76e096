//! `nlxtp-serve`: the host's HTTP API and web page (feature `serve`).
//!
//! A front end like the CLI and the FUSE view: every operation goes through [`crate::ops`]
//! and the [`SharedArea`](crate::area::SharedArea) trait, on the blocking thread pool,
//! never on the async executor. The API is in `docs/http-api.md`.
//!
//! What a client can do, and what it cannot:
//! - every `/api/` request needs the operator token (`Authorization: Bearer TOKEN`),
//!   except an upload or download that carries a valid grant (`?grant=...`, see
//!   [`grant`]), which allows that one operation on that one VM;
//! - a VM is named by its name in the configuration, never by a path;
//! - request bodies are unpacked while they arrive, under a size limit, with an idle
//!   and a total deadline, and written to the area only once whole; requests without
//!   bodies have a deadline; live output and list watchers have a limit on concurrent
//!   followers; downloads stream through a bounded channel.

mod api;
pub mod error;
pub mod grant;
mod output;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::Semaphore;

pub use error::ApiError;
pub use grant::{Grant, GrantError, GrantKey, Operation, UsedGrants};

use crate::fuse::VmSpec;
use crate::ops::ArchiveLimits;

/// The limits that keep the server's memory and threads bounded whatever clients do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest upload body, in bytes (a larger one is refused with 413).
    pub max_upload_bytes: u64,
    /// Bounds on the archive's content (as `nlxtp upload --max-entries/--max-bytes`).
    pub archive: ArchiveLimits,
    /// Deadline of a request without a streamed body or response (status, list, grants).
    pub request_timeout: Duration,
    /// The longest pause inside an upload body.
    pub body_idle_timeout: Duration,
    /// The longest whole upload body.
    pub upload_timeout: Duration,
    /// The longest time a connection may take to send a request's headers (also
    /// between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// Concurrent live-output followers (more get 503).
    pub max_followers: usize,
    /// Concurrent downloads (more get 503).
    pub max_downloads: usize,
    /// How often a follower looks at the area.
    pub follow_interval: Duration,
    /// How old the VM list may be (it is read again in the background when older).
    pub list_max_age: Duration,
    /// The longest lifetime of a grant.
    pub max_grant_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_upload_bytes: 4 << 30,
            archive: ArchiveLimits::default(),
            request_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(10),
            max_followers: 512,
            max_downloads: 32,
            follow_interval: Duration::from_millis(250),
            list_max_age: Duration::from_millis(500),
            max_grant_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a server serves and where it keeps its state.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The VMs, by name (`--vm NAME=TARGET`, `--libvirt URI` and the FUSE view's config
    /// file: [`crate::fuse::collect_vms`]).
    pub vms: Vec<VmSpec>,
    /// The key, the used grants and the operator token (when none is given) live here.
    pub state_dir: PathBuf,
    /// The operator token; `None`: the one in `state_dir/operator-token`, created on
    /// first start.
    pub operator_token: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// The URL clients reach the server at, for the grant URLs it hands out (without
    /// it they are relative).
    pub public_url: Option<String>,
    /// Where the VM list comes from again while the server runs (libvirt domains are
    /// defined and undefined meanwhile); `None`: `vms` for good.
    pub rescan: Option<Rescan>,
}

/// The VM list read again every so often: VMs that appeared are served from then on,
/// VMs that went away answer 404 (an upload already under way to one ends as it would
/// have).
#[derive(Clone)]
pub struct Rescan {
    /// How often.
    pub every: Duration,
    /// The whole list, as at start (`--vm`, `--libvirt`, `--config`); an error keeps the
    /// list served so far.
    pub source: Arc<dyn Fn() -> Result<Vec<VmSpec>, String> + Send + Sync>,
}

impl std::fmt::Debug for Rescan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rescan")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// The served VMs by name; replaced whole by a rescan.
type VmMap = Arc<BTreeMap<String, Arc<Vm>>>;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The key, the used grants or the token could not be read or created.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The operator token is empty or too short.
    #[error("the operator token must be at least 16 characters long")]
    WeakToken,
    /// Two VMs have one name.
    #[error("the VM name {name:?} is given twice")]
    DuplicateVm {
        /// The name.
        name: String,
    },
    /// Listening or serving failed.
    #[error("cannot serve on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("cannot load the TLS certificate {} and key {}", cert.display(), key.display())]
    Tls {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// The private key (PEM).
        key: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The default state directory: `/var/lib/nlxtp/serve` for root, else
/// `$XDG_STATE_HOME/nlxtp/serve` (`~/.local/state/nlxtp/serve`).
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/nlxtp/serve");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("nlxtp/serve")
}

/// Creates `dir` (and its parents) with mode 0700 where it creates it.
///
/// # Errors
/// [`ServeError::StateDir`].
pub fn create_state_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServeError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// The operator token in `state_dir/operator-token`, created (0600) on first use.
///
/// # Errors
/// [`ServeError::Grant`] when it cannot be read or created.
pub fn state_token(state_dir: &Path) -> Result<String, ServeError> {
    let path = state_dir.join("operator-token");
    let bytes = grant::load_or_create_secret(&path, || {
        format!("{}\n", grant::hex(&grant::random::<32>())).into_bytes()
    })?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// A configured server: its VMs, key, used grants and token. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    vms: std::sync::RwLock<VmMap>,
    rescan: Option<Rescan>,
    key: GrantKey,
    used: UsedGrants,
    token: String,
    token_hash: [u8; 32],
    limits: Limits,
    public_url: Option<String>,
    followers: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    list: ListCache,
    /// Where large members of uploads wait until the area is written.
    upload_dir: PathBuf,
}

#[derive(Debug)]
struct Vm {
    spec: VmSpec,
    /// Held for a whole upload (body and write): a second one gets 409 at once.
    uploading: Arc<tokio::sync::Mutex<()>>,
}

/// The JSON of the VM list and when it was made; one refresh at a time.
#[derive(Debug, Default)]
struct ListCache {
    value: Mutex<Option<(Instant, Bytes)>>,
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

impl ListCache {
    /// Makes the next request read the list again (in the background, as when it is
    /// old): the VMs changed.
    fn expire(&self) {
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, _)) = value.as_mut() {
            match at.checked_sub(Duration::from_secs(3600)) {
                Some(long_ago) => *at = long_ago,
                None => *value = None,
            }
        }
    }
}

/// The VMs `specs` by name, reusing the entries of `served` whose spec is the same.
fn vm_map(
    specs: Vec<VmSpec>,
    served: &BTreeMap<String, Arc<Vm>>,
) -> Result<BTreeMap<String, Arc<Vm>>, ServeError> {
    let mut vms = BTreeMap::new();
    for spec in specs {
        let name = spec.name.clone();
        let vm = match served.get(&name) {
            Some(vm) if vm.spec == spec => vm.clone(),
            _ => Arc::new(Vm {
                spec,
                uploading: Arc::default(),
            }),
        };
        if vms.insert(name.clone(), vm).is_some() {
            return Err(ServeError::DuplicateVm { name });
        }
    }
    Ok(vms)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl Server {
    /// Opens the state directory (creating it, the key and the token as needed) and
    /// checks the VM list. Blocking.
    ///
    /// # Errors
    /// See [`ServeError`].
    pub fn new(config: ServeConfig) -> Result<Server, ServeError> {
        create_state_dir(&config.state_dir)?;
        let key = GrantKey::load_or_create(&config.state_dir)?;
        let used = UsedGrants::open(&config.state_dir, grant::now_unix())?;
        let token = match config.operator_token {
            Some(token) => token,
            None => state_token(&config.state_dir)?,
        };
        if token.len() < 16 {
            return Err(ServeError::WeakToken);
        }
        let upload_dir = config.state_dir.join("uploads");
        create_state_dir(&upload_dir)?;
        let vms = vm_map(config.vms, &BTreeMap::new())?;
        let limits = config.limits;
        Ok(Server {
            state: Arc::new(State {
                vms: std::sync::RwLock::new(Arc::new(vms)),
                rescan: config.rescan,
                key,
                used,
                token_hash: sha256(token.as_bytes()),
                token,
                followers: Arc::new(Semaphore::new(limits.max_followers)),
                downloads: Arc::new(Semaphore::new(limits.max_downloads)),
                limits,
                public_url: config
                    .public_url
                    .map(|u| u.trim_end_matches('/').to_owned()),
                list: ListCache::default(),
                upload_dir,
            }),
        })
    }

    /// Serves `vms` from now on: VMs that stay keep their state (an upload under way
    /// still holds off a second one), the others come and go. Returns the names added
    /// and the names removed.
    ///
    /// # Errors
    /// [`ServeError::DuplicateVm`]; the list served so far stays.
    pub fn set_vms(&self, vms: Vec<VmSpec>) -> Result<(Vec<String>, Vec<String>), ServeError> {
        let mut served = self.state.vms.write().unwrap_or_else(|e| e.into_inner());
        let next = vm_map(vms, &served)?;
        let added: Vec<String> = next
            .keys()
            .filter(|n| !served.contains_key(*n))
            .cloned()
            .collect();
        let removed: Vec<String> = served
            .keys()
            .filter(|n| !next.contains_key(*n))
            .cloned()
            .collect();
        let changed = !added.is_empty()
            || !removed.is_empty()
            || next.iter().any(|(n, vm)| !Arc::ptr_eq(vm, &served[n]));
        if changed {
            *served = Arc::new(next);
            drop(served);
            self.state.list.expire();
        }
        Ok((added, removed))
    }

    /// Reads the VM list again every [`Rescan::every`], for as long as the runtime runs.
    fn spawn_rescan(&self) {
        let Some(rescan) = self.state.rescan.clone() else {
            return;
        };
        let server = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(rescan.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // The last failure, told once (not at every tick) until it changes.
            let mut failing = String::new();
            loop {
                tick.tick().await;
                let source = rescan.source.clone();
                let server = server.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let vms = source()?;
                    let (added, removed) = server.set_vms(vms).map_err(|e| e.to_string())?;
                    if !added.is_empty() || !removed.is_empty() {
                        api::refresh_list(&server.state);
                    }
                    Ok::<_, String>((added, removed))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match outcome {
                    Ok((added, removed)) => {
                        failing.clear();
                        for name in added {
                            eprintln!("nlxtp-serve: now serving the VM {name}");
                        }
                        for name in removed {
                            eprintln!("nlxtp-serve: the VM {name} is gone: no longer served");
                        }
                    }
                    Err(e) if e != failing => {
                        eprintln!(
                            "nlxtp-serve: could not read the VM list again (serving the one read before): {e}"
                        );
                        failing = e;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// The operator token.
    pub fn operator_token(&self) -> &str {
        &self.state.token
    }

    /// The signing key of grants (for `nlxtp-serve grant`).
    pub fn grant_key(&self) -> &GrantKey {
        &self.state.key
    }

    /// The HTTP routes.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes (then lets requests end for up
    /// to 5 s), with TLS when `tls` names a certificate chain and key (PEM).
    ///
    /// # Errors
    /// [`ServeError::Listen`], [`ServeError::Tls`].
    pub async fn run(
        &self,
        listener: std::net::TcpListener,
        tls: Option<(PathBuf, PathBuf)>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let listen_error = |source| ServeError::Listen {
            addr: addr.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(listen_error)?;
        self.spawn_rescan();
        let handle = axum_server::Handle::<SocketAddr>::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let header_timeout = self.state.limits.header_timeout;
        let server = axum_server::from_tcp(listener).map_err(listen_error)?;
        match tls {
            None => {
                let mut server = server.handle(handle).first_request_timeout(header_timeout);
                server
                    .http_builder()
                    .http1()
                    .header_read_timeout(header_timeout);
                server.serve(app).await.map_err(listen_error)
            }
            Some((cert, key)) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|source| ServeError::Tls { cert, key, source })?;
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                    .handshake_timeout(header_timeout);
                let mut server = server
                    .acceptor(acceptor)
                    .handle(handle)
                    .first_request_timeout(header_timeout);
                server
                    .http_builder()
                    .http1()
                    .header_read_timeout(header_timeout);
                server.serve(app).await.map_err(listen_error)
            }
        }
    }

    /// Serves on `listener` in a thread of its own with its own runtime (tests,
    /// benchmarks): the server stops when the returned guard is dropped.
    ///
    /// # Errors
    /// When the runtime cannot be built.
    pub fn spawn(
        &self,
        listener: std::net::TcpListener,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("nlxtp-serve")
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let result = server
                    .run(listener, tls, async {
                        let _ = stopped.await;
                    })
                    .await;
                if let Err(e) = result {
                    eprintln!("nlxtp-serve: {}", error::chain(&e));
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        Ok(Running {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A server serving in a thread of its own ([`Server::spawn`]); dropping it stops it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Parses a duration like `90`, `90s`, `10m`, `2h` or `1d`.
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The path of one VM's archive endpoint with `grant`, its name percent-encoded.
pub fn grant_path(vm: &str, grant: &str) -> String {
    format!("/api/v1/vms/{}/archive?grant={grant}", percent_encode(vm))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_names_in_urls() {
        assert_eq!(parse_ttl("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_ttl("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("1d"), Some(Duration::from_secs(86_400)));
        for bad in ["", "0", "m", "10x", "-1", "1.5h"] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
        assert_eq!(percent_encode("a b/..%"), "a%20b%2F..%25");
        assert_eq!(
            grant_path("web 1", "g"),
            "/api/v1/vms/web%201/archive?grant=g"
        );
    }
}
