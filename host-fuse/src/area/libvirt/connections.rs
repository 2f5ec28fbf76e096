//! One libvirt connection per URI for the whole process.
//!
//! Opening a connection costs about 10 ms and a socket (a TLS or SSH handshake more), and
//! the front ends that list many VMs open their areas often: `nlxtp-serve` reads its
//! whole VM list every half second, and opens a VM's area for each request. So a URI's
//! connection is opened once and shared ([`connection`]); libvirt multiplexes concurrent
//! calls on it. A connection that broke (the daemon restarted, the network went) is
//! noticed by libvirt at the first call that fails on it; [`open_domain`] and
//! [`shared_domains_at`] then open a new one and try once more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use virt::connect::Connect;

use super::{connect, shared_domains, LibvirtDomain, LibvirtError, NamedDomain};
use crate::area::AreaError;

/// The open connections, by URI (`None`: libvirt's default).
static OPEN: Mutex<Option<HashMap<Option<String>, Arc<Connect>>>> = Mutex::new(None);

/// The process's connection to `uri` (`None`: libvirt's default, `LIBVIRT_DEFAULT_URI`):
/// the one opened before while it is alive, else a new one (kept for the next caller).
///
/// # Errors
/// [`LibvirtError::Connect`].
pub fn connection(uri: Option<&str>) -> Result<Arc<Connect>, LibvirtError> {
    let key = uri.map(str::to_owned);
    // Held across a connect, so that threads asking at once open one connection.
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let open = open.get_or_insert_with(HashMap::new);
    if let Some(conn) = open.get(&key) {
        if conn.is_alive().unwrap_or(false) {
            return Ok(conn.clone());
        }
        tracing::info!("the libvirt connection to {uri:?} broke: connecting again");
    }
    let conn = connect(uri)?;
    open.insert(key, conn.clone());
    Ok(conn)
}

/// Whether `conn` is no longer usable, so that a call that failed on it may be tried
/// again on a new connection.
fn broken(conn: &Connect) -> bool {
    !conn.is_alive().unwrap_or(false)
}

/// The domain `name` on the process's connection to `uri` ([`connection`]); when the
/// open fails because the connection broke, once more on a new connection.
///
/// # Errors
/// As [`connection`] and [`LibvirtDomain::open`].
pub fn open_domain(uri: &str, name: &str) -> Result<LibvirtDomain, LibvirtError> {
    let conn = connection(Some(uri))?;
    match LibvirtDomain::open(conn.clone(), uri, name) {
        Err(_) if broken(&conn) => LibvirtDomain::open(connection(Some(uri))?, uri, name),
        result => result,
    }
}

/// [`shared_domains`] on the process's connection to `uri`, once more on a new
/// connection when it broke.
///
/// # Errors
/// [`LibvirtError::Connect`] (as an [`AreaError`]), and as [`shared_domains`].
pub fn shared_domains_at(uri: &str, threads: usize) -> Result<Vec<NamedDomain>, AreaError> {
    let conn = connection(Some(uri))?;
    match shared_domains(&conn, uri, threads) {
        Err(_) if broken(&conn) => shared_domains(&connection(Some(uri))?, uri, threads),
        result => result,
    }
}
