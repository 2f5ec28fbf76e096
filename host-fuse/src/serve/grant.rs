//! One-time grants: a URL that allows one operation on one VM until it expires.
//!
//! A grant is `OPERATION.EXPIRY.NONCE.MAC` (the VM is the URL's): `EXPIRY` in Unix
//! seconds, `NONCE` 16 random bytes and `MAC` HMAC-SHA256 under the host's key, both in
//! hex, over `nlxtp-grant-v1 \0 OPERATION \0 EXPIRY \0 NONCE \0 VM` (a VM name holds no
//! NUL). The MAC is checked in constant time, before anything else about the grant is
//! believed. A grant is spent when its operation starts: its nonce is appended to
//! [`UsedGrants`]' file and fsynced first, so it stays spent across a restart.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// One upload (`PUT /api/v1/vms/{vm}/archive`).
    Upload,
    /// One download (`GET /api/v1/vms/{vm}/archive`).
    Download,
}

impl Operation {
    /// Its name in a grant and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Upload => "upload",
            Operation::Download => "download",
        }
    }

    /// The operation called `name`.
    pub fn from_name(name: &str) -> Option<Operation> {
        match name {
            "upload" => Some(Operation::Upload),
            "download" => Some(Operation::Download),
            _ => None,
        }
    }
}

/// Why a grant was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Not a grant at all, or not signed by this host's key for this VM and operation.
    #[error("the grant is not valid for this VM and operation")]
    Invalid,
    /// Its time is over.
    #[error("the grant expired {ago} s ago: ask for a new one")]
    Expired {
        /// Seconds since it expired.
        ago: u64,
    },
    /// It has been used once already.
    #[error("the grant has been used already: a grant allows one operation")]
    Used,
    /// The key or the record of used grants could not be read or written.
    #[error("the server's grant state at {} cannot be used", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// A grant, as signed: one `operation` on the VM `vm` until `expires_unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The VM's name in the server's configuration.
    pub vm: String,
    /// What it allows.
    pub operation: Operation,
    /// When it ends, in Unix seconds.
    pub expires_unix: u64,
    /// Its random nonce, which makes it single use.
    pub nonce: [u8; 16],
}

/// The host's signing key: 32 random bytes in a file only its owner can read.
#[derive(Clone)]
pub struct GrantKey {
    key: [u8; 32],
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

/// The current time in Unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn state_error(path: &Path) -> impl FnOnce(io::Error) -> GrantError + '_ {
    move |source| GrantError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the secret file at `path` (at most 4 KiB), or creates it (mode 0600, never
/// replacing one that appears meanwhile) with the bytes `fresh` makes.
pub(crate) fn load_or_create_secret(
    path: &Path,
    fresh: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, GrantError> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            let bytes = fresh();
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(state_error(path))?;
            Ok(bytes)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut file = File::open(path).map_err(state_error(path))?;
            let meta = file.metadata().map_err(state_error(path))?;
            use std::os::unix::fs::MetadataExt;
            if meta.mode() & 0o077 != 0 {
                return Err(GrantError::State {
                    path: path.to_path_buf(),
                    source: io::Error::other(
                        "others may read it (mode must be 0600): fix its mode or remove it",
                    ),
                });
            }
            let mut bytes = Vec::new();
            Read::by_ref(&mut file)
                .take(4096)
                .read_to_end(&mut bytes)
                .map_err(state_error(path))?;
            Ok(bytes)
        }
        Err(e) => Err(state_error(path)(e)),
    }
}

/// Random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system gives randomness");
    bytes
}

impl GrantKey {
    /// The key in `state_dir/grant.key`, created on first use.
    ///
    /// # Errors
    /// [`GrantError::State`] when the file cannot be read or created, is not 32 bytes
    /// long, or others may read it.
    pub fn load_or_create(state_dir: &Path) -> Result<GrantKey, GrantError> {
        let path = state_dir.join("grant.key");
        let bytes = load_or_create_secret(&path, || random::<32>().to_vec())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| GrantError::State {
            path: path.clone(),
            source: io::Error::other("not 32 bytes long"),
        })?;
        Ok(GrantKey { key })
    }

    /// A key from its bytes (tests).
    pub fn from_bytes(key: [u8; 32]) -> GrantKey {
        GrantKey { key }
    }

    fn mac(&self, vm: &str, operation: Operation, expires_unix: u64, nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        for part in [
            b"nlxtp-grant-v1".as_slice(),
            operation.name().as_bytes(),
            expires_unix.to_string().as_bytes(),
            hex(nonce).as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\0");
        }
        mac.update(vm.as_bytes());
        mac
    }

    /// A fresh grant for `operation` on `vm` until `expires_unix`, as its token.
    pub fn issue(&self, vm: &str, operation: Operation, expires_unix: u64) -> (Grant, String) {
        let grant = Grant {
            vm: vm.to_owned(),
            operation,
            expires_unix,
            nonce: random(),
        };
        let tag = self
            .mac(vm, operation, expires_unix, &grant.nonce)
            .finalize()
            .into_bytes();
        let token = format!(
            "{}.{}.{}.{}",
            operation.name(),
            expires_unix,
            hex(&grant.nonce),
            hex(&tag)
        );
        (grant, token)
    }

    /// Checks `token` for `operation` on `vm` at `now_unix`: signature first (constant
    /// time), then expiry. Does not spend it (see [`UsedGrants::spend`]).
    ///
    /// # Errors
    /// [`GrantError::Invalid`] and [`GrantError::Expired`].
    pub fn verify(
        &self,
        token: &str,
        vm: &str,
        operation: Operation,
        now_unix: u64,
    ) -> Result<Grant, GrantError> {
        let mut parts = token.split('.');
        let (Some(op), Some(expiry), Some(nonce), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(GrantError::Invalid);
        };
        if op != operation.name() {
            return Err(GrantError::Invalid);
        }
        let expires_unix: u64 = expiry
            .parse()
            .ok()
            .filter(|_| expiry.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(GrantError::Invalid)?;
        let nonce: [u8; 16] = unhex(nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or(GrantError::Invalid)?;
        let tag = unhex(tag).ok_or(GrantError::Invalid)?;
        // Constant time (hmac uses `subtle`).
        self.mac(vm, operation, expires_unix, &nonce)
            .verify_slice(&tag)
            .map_err(|_| GrantError::Invalid)?;
        if now_unix >= expires_unix {
            return Err(GrantError::Expired {
                ago: now_unix - expires_unix,
            });
        }
        Ok(Grant {
            vm: vm.to_owned(),
            operation,
            expires_unix,
            nonce,
        })
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The grants spent so far and not yet expired, in memory and in an append-only file
/// (`NONCE EXPIRY` per line), fsynced before an operation starts.
#[derive(Debug)]
pub struct UsedGrants {
    path: PathBuf,
    inner: Mutex<Spent>,
}

#[derive(Debug)]
struct Spent {
    file: File,
    nonces: HashMap<[u8; 16], u64>,
}

impl UsedGrants {
    /// Opens `state_dir/used-grants`, keeping the entries that have not expired at
    /// `now_unix` (the file is rewritten without the others, atomically).
    ///
    /// # Errors
    /// [`GrantError::State`].
    pub fn open(state_dir: &Path, now_unix: u64) -> Result<UsedGrants, GrantError> {
        let path = state_dir.join("used-grants");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(state_error(&path)(e)),
        };
        let mut nonces = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let nonce: Option<[u8; 16]> =
                words.next().and_then(unhex).and_then(|n| n.try_into().ok());
            let expiry = words.next().and_then(|e| e.parse::<u64>().ok());
            if let (Some(nonce), Some(expiry)) = (nonce, expiry) {
                if expiry > now_unix {
                    nonces.insert(nonce, expiry);
                }
            }
        }
        let tmp = state_dir.join("used-grants.tmp");
        let mut kept = String::new();
        for (nonce, expiry) in &nonces {
            kept.push_str(&format!("{} {expiry}\n", hex(nonce)));
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(state_error(&tmp))?;
        file.write_all(kept.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(state_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(state_error(&path))?;
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(state_error(state_dir))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(state_error(&path))?;
        Ok(UsedGrants {
            path,
            inner: Mutex::new(Spent { file, nonces }),
        })
    }

    /// Spends `grant`: refused if it was spent before; otherwise recorded durably
    /// (fsynced) before this returns. Blocking: call it off the async executor.
    ///
    /// # Errors
    /// [`GrantError::Used`], and [`GrantError::State`] when it cannot be recorded (it
    /// is then not spent, and the operation must not start).
    pub fn spend(&self, grant: &Grant) -> Result<(), GrantError> {
        let mut spent = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if spent.nonces.contains_key(&grant.nonce) {
            return Err(GrantError::Used);
        }
        let line = format!("{} {}\n", hex(&grant.nonce), grant.expires_unix);
        spent
            .file
            .write_all(line.as_bytes())
            .and_then(|()| spent.file.sync_data())
            .map_err(state_error(&self.path))?;
        spent.nonces.insert(grant.nonce, grant.expires_unix);
        if spent.nonces.len() > 100_000 {
            let now = now_unix();
            spent.nonces.retain(|_, expiry| *expiry > now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_checked_for_its_vm_operation_time_and_signature() {
        let key = GrantKey::from_bytes([7; 32]);
        let (grant, token) = key.issue("web1", Operation::Upload, 1000);
        assert_eq!(
            key.verify(&token, "web1", Operation::Upload, 999).unwrap(),
            grant
        );
        assert!(matches!(
            key.verify(&token, "web1", Operation::Upload, 1000),
            Err(GrantError::Expired { ago: 0 })
        ));
        for (vm, op) in [("web2", Operation::Upload), ("web1", Operation::Download)] {
            assert!(matches!(
                key.verify(&token, vm, op, 1),
                Err(GrantError::Invalid)
            ));
        }
        let other = GrantKey::from_bytes([8; 32]);
        assert!(matches!(
            other.verify(&token, "web1", Operation::Upload, 1),
            Err(GrantError::Invalid)
        ));
        // A later expiry, the signature kept: forged.
        let forged = token.replacen(".1000.", ".9000.", 1);
        assert!(matches!(
            key.verify(&forged, "web1", Operation::Upload, 1),
            Err(GrantError::Invalid)
        ));
        for junk in [
            "",
            "upload",
            "upload.1.2.3.4",
            "upload.+1.00.00",
            "upload.1.zz.zz",
        ] {
            assert!(
                key.verify(junk, "web1", Operation::Upload, 0).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn spent_grants_stay_spent_across_a_reopen_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let key = GrantKey::from_bytes([1; 32]);
        let (a, _) = key.issue("vm", Operation::Upload, 100);
        let (b, _) = key.issue("vm", Operation::Upload, 200);
        let used = UsedGrants::open(dir.path(), 0).unwrap();
        used.spend(&a).unwrap();
        used.spend(&b).unwrap();
        assert!(matches!(used.spend(&a), Err(GrantError::Used)));
        drop(used);
        let used = UsedGrants::open(dir.path(), 50).unwrap();
        assert!(matches!(used.spend(&a), Err(GrantError::Used)));
        drop(used);
        // At 150, a has expired: pruned (it cannot be verified any more anyway).
        let used = UsedGrants::open(dir.path(), 150).unwrap();
        let text = std::fs::read_to_string(dir.path().join("used-grants")).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(matches!(used.spend(&b), Err(GrantError::Used)));
    }

    #[test]
    fn the_key_is_created_once_and_only_its_owner_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = GrantKey::load_or_create(dir.path()).unwrap();
        let b = GrantKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.key, b.key);
        let path = dir.path().join("grant.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(GrantKey::load_or_create(dir.path()).is_err());
    }
}
