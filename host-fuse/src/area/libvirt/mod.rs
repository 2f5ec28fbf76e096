//! A libvirt domain's shared disk: a FAT volume in a storage volume, on a local or remote
//! libvirt daemon, read through storage-volume streams at offsets (never the whole volume
//! for a status) and replaced whole.
//!
//! **Which disk.** The shared disk is the disk of the domain's persistent definition
//! whose `<serial>` is `NLXTP` (the guest sees it as `/dev/disk/by-id/virtio-NLXTP`),
//! and whose source is a storage volume: `<disk type='volume'>` with
//! `<source pool='P' volume='V'/>`, or `<disk type='file'>` whose file is a volume of a
//! pool. No such disk, or two, is an error saying what to do.
//!
//! **Reads** go through the host's own vFAT reader over a [`VolumeSource`], exactly as
//! for a local image.
//!
//! **Uploads** are old-or-new: the new image is built in a local temporary file by the
//! vFAT writer (from the old volume's partition table and boot sector) as the archive is
//! read, and uploaded into a new volume of the same pool (only the ranges the build
//! wrote, where a new volume reads as zeros: see `send`; the file data already while
//! the build goes on: see `upload`); the domain's persistent definition is switched to
//! it in one redefinition, and only then is the old volume deleted. libvirt itself does not
//! refuse `vol-upload` or `vol-delete` on a running domain's volume, so this backend
//! refuses while the domain is active, checked before it starts and again before the
//! switch and the deletion. The new volume takes the old one's mode, owner and group
//! (libvirt's DAC driver restores exactly those when a domain that ran on it stops).
//!
//! **A crash in the middle of an upload** (the process killed, the connection lost)
//! leaves the definition on the old volume or on the new one, both complete: the switch
//! is one redefinition, made only after the new volume was uploaded whole. What it can
//! leave is an unused volume `DOMAIN-nlxtp-NANOS.img` in the pool (killed before the
//! switch) or the old volume (killed between the switch and its deletion). The next
//! upload of that domain deletes the nlxtp-named ones that no domain's definition uses
//! and that are older than [`LEFTOVER_GRACE`] (younger ones may be another upload's,
//! still being written: they are logged, not touched).

mod attach;
mod connections;
pub mod hot;
mod send;
mod source;
mod upload;

pub use self::attach::{attach, detach, Attached};
pub use self::connections::{connection, open_domain, shared_domains_at};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;

pub use self::source::VolumeSource;
use crate::area::vfat::{self, partition};
use crate::area::{
    add_upload_file, AreaError, AreaKind, AreaPath, Capabilities, Durability, ReplaceStream,
    SharedArea, StatusRead, UploadFile, Visitor, WalkLimits,
};

/// The `<serial>` that marks a domain's shared disk.
pub const SERIAL: &str = "NLXTP";

/// Why a domain's shared disk cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibvirtError {
    /// Connecting failed (daemon down, wrong URI, authentication refused).
    #[error("could not connect to libvirt at {uri}: check that libvirtd runs there and the URI (--connect, LIBVIRT_DEFAULT_URI), and your credentials")]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// The daemon refused to authenticate this client.
    #[error("libvirt at {uri} refused to authenticate this client: give it credentials it accepts (for SASL: a user and password in $XDG_CONFIG_HOME/libvirt/auth.conf), connect another way (qemu+ssh://, or qemu+tls:// with a client certificate), or have that host's admin change auth_tcp in its libvirtd.conf")]
    Auth {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// No such domain.
    #[error("there is no domain {domain} at {uri}: check the name (virsh -c {uri} list --all)")]
    NoDomain {
        /// The domain.
        domain: String,
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// The domain has no disk marked as shared.
    #[error("domain {domain} has no shared disk (a volume disk with <serial>NLXTP</serial>): attach one (nlxtp-libvirt attach {domain}, or add such a disk with virsh edit)")]
    NoSharedDisk {
        /// The domain.
        domain: String,
    },
    /// The domain has two or more disks marked as shared.
    #[error("domain {domain} has {count} disks with <serial>NLXTP</serial> ({targets}): keep the serial on one of them and remove it from the others (virsh edit {domain})")]
    TwoSharedDisks {
        /// The domain.
        domain: String,
        /// How many.
        count: usize,
        /// Their target devices and sources (`vda (volume pool/v.img), vdb (file /x.img)`).
        targets: String,
    },
    /// The shared disk's source is not a storage volume libvirt knows.
    #[error("the shared disk {target} of domain {domain} is not a volume of a storage pool ({what}): nlxtp-libvirt reads and replaces it through a pool, so put it in one: define a dir pool over the file's directory (virsh pool-define-as NAME dir --target DIR, then virsh pool-start NAME), or move the file into a pool's directory and run virsh pool-refresh POOL")]
    NotAVolume {
        /// The domain.
        domain: String,
        /// Its target device.
        target: String,
        /// What its source is.
        what: String,
        /// libvirt's error, when a lookup failed.
        #[source]
        source: Option<virt::error::Error>,
    },
    /// Another libvirt call failed.
    #[error("libvirt could not {action}: fix the cause below and retry")]
    Call {
        /// What was tried.
        action: &'static str,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
}

impl From<LibvirtError> for AreaError {
    fn from(e: LibvirtError) -> Self {
        let name = PathBuf::from(match &e {
            LibvirtError::Connect { uri, .. }
            | LibvirtError::Auth { uri, .. }
            | LibvirtError::NoDomain { uri, .. } => uri.clone(),
            LibvirtError::NoSharedDisk { domain }
            | LibvirtError::TwoSharedDisks { domain, .. }
            | LibvirtError::NotAVolume { domain, .. } => format!("domain {domain}"),
            LibvirtError::Call { .. } => "libvirt".into(),
        });
        AreaError::io("open", &name, io::Error::other(e))
    }
}

/// Opens the connection at `uri` (`None`: libvirt's default, `LIBVIRT_DEFAULT_URI`).
///
/// # Errors
/// [`LibvirtError::Auth`] when the daemon refused to authenticate this client,
/// [`LibvirtError::Connect`] for the other failures.
pub fn connect(uri: Option<&str>) -> Result<Arc<Connect>, LibvirtError> {
    use virt::enumutil::Enum;
    use virt::error::ErrorNumber as N;
    // libvirt's default handler prints every error to stderr; ours come back as values.
    virt::error::clear_error_callback();
    Connect::open(uri).map(Arc::new).map_err(|source| {
        let uri = uri.unwrap_or("(libvirt's default)").into();
        match source.code() {
            Enum::Known(N::AuthFailed | N::AuthCancelled | N::AuthUnavailable) => {
                LibvirtError::Auth { uri, source }
            }
            _ => LibvirtError::Connect { uri, source },
        }
    })
}

/// A domain's name, and the domain opened (or why it could not be).
pub type NamedDomain = (String, Result<LibvirtDomain, LibvirtError>);

/// Every domain on `conn` (whose URI is `uri`) that has a shared disk, by name; domains
/// without one are left out. A domain whose disk cannot be used (two marked disks, a
/// source outside a pool) is kept, with its error, so that one bad definition does not
/// hide a host's other domains. The domains are opened by `threads` threads at once on
/// the one connection (libvirt multiplexes calls on it), as each open costs a few round
/// trips.
///
/// # Errors
/// When the domains cannot be listed.
pub fn shared_domains(
    conn: &Arc<Connect>,
    uri: &str,
    threads: usize,
) -> Result<Vec<NamedDomain>, AreaError> {
    let all = conn
        .list_all_domains(0)
        .map_err(|e| AreaError::io("list the domains of", Path::new(uri), io::Error::other(e)))?;
    let mut names: Vec<String> = all.iter().filter_map(|d| d.name().ok()).collect();
    names.sort();
    let opened = crate::ops::parallel_map(&names, threads, |name| {
        LibvirtDomain::open(conn.clone(), uri, name)
    });
    Ok(names
        .into_iter()
        .zip(opened)
        .filter(|(_, opened)| {
            !matches!(
                opened,
                Err(LibvirtError::NoSharedDisk { .. } | LibvirtError::NoDomain { .. })
            )
        })
        .collect())
}

/// Where a domain's shared disk is in its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDisk {
    /// Its target device (`vdb`).
    pub target: String,
    /// Its source.
    pub source: DiskSource,
    /// The byte range of its `<source .../>` element in the XML it was found in.
    source_range: std::ops::Range<usize>,
    /// The byte range of the whole `<disk>` element.
    element_range: std::ops::Range<usize>,
}

/// A disk's source as the domain's XML gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `<disk type='volume'><source pool= volume=/>`.
    Volume {
        /// The pool.
        pool: String,
        /// The volume's name.
        volume: String,
    },
    /// `<disk type='file'><source file=/>`.
    File(String),
}

impl std::fmt::Display for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::Volume { pool, volume } => write!(f, "volume {pool}/{volume}"),
            DiskSource::File(path) => write!(f, "file {path}"),
        }
    }
}

/// Finds the shared disk in a domain's XML (see the module docs).
///
/// # Errors
/// [`LibvirtError::NoSharedDisk`], [`LibvirtError::TwoSharedDisks`],
/// [`LibvirtError::NotAVolume`] for a marked disk of another type.
pub fn find_shared_disk(domain: &str, xml: &str) -> Result<SharedDisk, LibvirtError> {
    let mut marked = marked_disks(domain, xml, SERIAL)?;
    match marked.len() {
        0 => Err(LibvirtError::NoSharedDisk {
            domain: domain.into(),
        }),
        1 => Ok(marked.remove(0)),
        count => Err(LibvirtError::TwoSharedDisks {
            domain: domain.into(),
            count,
            targets: marked
                .iter()
                .map(|d| format!("{} ({})", d.target, d.source))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Every disk of a domain's XML whose `<serial>` is `serial`, in the XML's order.
///
/// # Errors
/// [`LibvirtError::NotAVolume`] for XML that does not parse, or a marked disk whose
/// source is neither a volume nor a file.
pub fn marked_disks(
    domain: &str,
    xml: &str,
    serial: &str,
) -> Result<Vec<SharedDisk>, LibvirtError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| LibvirtError::NotAVolume {
        domain: domain.into(),
        target: "?".into(),
        what: format!("its XML does not parse: {e}"),
        source: None,
    })?;
    doc.descendants()
        .filter(|n| n.has_tag_name("disk") && n.parent().is_some_and(|p| p.has_tag_name("devices")))
        .filter(|disk| {
            disk.children()
                .any(|c| c.has_tag_name("serial") && c.text().map(str::trim) == Some(serial))
        })
        .map(|disk| parse_disk(domain, &disk))
        .collect()
}

fn parse_disk(domain: &str, disk: &roxmltree::Node<'_, '_>) -> Result<SharedDisk, LibvirtError> {
    let target = disk
        .children()
        .find(|c| c.has_tag_name("target"))
        .and_then(|t| t.attribute("dev"))
        .unwrap_or("?")
        .to_string();
    let not_a_volume = |what: String| LibvirtError::NotAVolume {
        domain: domain.into(),
        target: target.clone(),
        what,
        source: None,
    };
    let source = disk
        .children()
        .find(|c| c.has_tag_name("source"))
        .ok_or_else(|| not_a_volume("it has no source".into()))?;
    let kind = disk.attribute("type").unwrap_or("");
    let parsed = match (
        kind,
        source.attribute("pool"),
        source.attribute("volume"),
        source.attribute("file"),
    ) {
        ("volume", Some(pool), Some(volume), _) => DiskSource::Volume {
            pool: pool.into(),
            volume: volume.into(),
        },
        ("file", _, _, Some(file)) => DiskSource::File(file.into()),
        _ => return Err(not_a_volume(format!("a disk of type '{kind}'"))),
    };
    Ok(SharedDisk {
        target,
        source: parsed,
        source_range: source.range(),
        element_range: disk.range(),
    })
}

/// A libvirt domain's shared area (see the module docs).
#[derive(Debug)]
pub struct LibvirtDomain {
    conn: Arc<Connect>,
    domain: Domain,
    name: String,
    /// `URI#domain`, for messages.
    location: PathBuf,
}

impl LibvirtDomain {
    /// The domain `name` on `conn` (whose URI is `uri`, for messages). Checks that it
    /// exists and has exactly one shared disk.
    ///
    /// # Errors
    /// [`LibvirtError::NoDomain`], those of [`find_shared_disk`].
    pub fn open(conn: Arc<Connect>, uri: &str, name: &str) -> Result<Self, LibvirtError> {
        let domain = conn
            .lookup_domain_by_name(name)
            .map_err(|source| LibvirtError::NoDomain {
                domain: name.into(),
                uri: uri.into(),
                source,
            })?;
        let area = LibvirtDomain {
            conn,
            domain,
            name: name.into(),
            location: PathBuf::from(format!("{uri}#{name}")),
        };
        area.volume()?;
        Ok(area)
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain's state as libvirt reports it: `running`, `shut off`, `crashed`,
    /// `paused`, ...
    ///
    /// # Errors
    /// [`AreaError::Io`] when libvirt cannot tell.
    pub fn domain_state(&self) -> Result<&'static str, AreaError> {
        use virt::domain::DomainState as S;
        use virt::enumutil::Enum;
        let (state, _) = self
            .domain
            .state()
            .map_err(self.call("ask libvirt the state of"))?;
        Ok(match state {
            Enum::Known(S::Running) => "running",
            Enum::Known(S::Blocked) => "blocked",
            Enum::Known(S::Paused) => "paused",
            Enum::Known(S::Shutdown) => "shutting down",
            Enum::Known(S::Shutoff) => "shut off",
            Enum::Known(S::Crashed) => "crashed",
            Enum::Known(S::PMSuspended) => "suspended",
            _ => "unknown",
        })
    }

    /// Starts (boots) the domain.
    ///
    /// # Errors
    /// [`AreaError::Io`] when libvirt refuses.
    pub fn start(&self) -> Result<(), AreaError> {
        self.domain.create().map_err(self.call("start the domain"))
    }

    /// The persistent definition's XML.
    fn definition(&self) -> Result<String, LibvirtError> {
        self.domain
            .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(|source| LibvirtError::Call {
                action: "read the domain's definition",
                source,
            })
    }

    /// The shared disk, its volume and its length, from the definition as it is now.
    fn volume(&self) -> Result<(String, SharedDisk, StorageVol, u64), LibvirtError> {
        let xml = self.definition()?;
        let disk = find_shared_disk(&self.name, &xml)?;
        let lookup = match &disk.source {
            DiskSource::Volume { pool, volume } => self
                .conn
                .lookup_storage_pool_by_name(pool)
                .and_then(|p| p.lookup_storage_vol_by_name(volume)),
            DiskSource::File(path) => self.conn.lookup_storage_vol_by_path(path),
        };
        let volume = lookup.map_err(|source| LibvirtError::NotAVolume {
            domain: self.name.clone(),
            target: disk.target.clone(),
            what: match &disk.source {
                DiskSource::File(path) => format!("the file {path}, which no pool holds"),
                DiskSource::Volume { .. } => format!("{}, which libvirt cannot find", disk.source),
            },
            source: Some(source),
        })?;
        let len = volume
            .info()
            .map_err(|source| LibvirtError::Call {
                action: "read the shared volume's size",
                source,
            })?
            .capacity;
        Ok((xml, disk, volume, len))
    }

    /// The shared disk's volume as a block source for one operation.
    fn source(&self) -> Result<VolumeSource, AreaError> {
        let (_, _, volume, len) = self.volume()?;
        Ok(VolumeSource::new(
            self.conn.clone(),
            volume,
            len,
            &self.location,
        ))
    }

    fn active(&self) -> Result<bool, AreaError> {
        self.domain.is_active().map_err(|e| {
            AreaError::io(
                "ask libvirt the state of",
                &self.location,
                io::Error::other(e),
            )
        })
    }

    fn refuse_if_active(&self) -> Result<(), AreaError> {
        if self.active()? {
            return Err(AreaError::Busy {
                image: self.location.clone(),
            });
        }
        Ok(())
    }

    fn call(&self, action: &'static str) -> impl Fn(virt::error::Error) -> AreaError + '_ {
        move |e| AreaError::io(action, &self.location, io::Error::other(e))
    }

    /// Whether a running domain on this connection uses the volume at `path` (or named
    /// `name` in `pool`).
    fn used_by_a_running_domain(&self, old: &DiskSource, path: &str) -> Result<bool, AreaError> {
        running_users(&self.conn, old, path)
            .map(|users| !users.is_empty())
            .map_err(self.call("list the running domains of"))
    }
}

/// The running domains on `conn` that use the volume `source` (or the file `path`), each
/// with the disk's target there (`?` for a domain whose XML does not parse: counted as a
/// user, to be safe).
fn running_users(
    conn: &Connect,
    source: &DiskSource,
    path: &str,
) -> Result<Vec<(String, String)>, virt::error::Error> {
    let mut users = Vec::new();
    for domain in conn.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
        let xml = domain.xml_desc(0)?;
        let name = domain.name().unwrap_or_else(|_| "?".into());
        let Ok(doc) = roxmltree::Document::parse(&xml) else {
            users.push((name, "?".into()));
            continue;
        };
        for target in disks_on(&doc, source, path) {
            users.push((name.clone(), target.to_owned()));
        }
    }
    Ok(users)
}

/// The status file of the FAT volume in `source` into `out` (empty when there is none).
fn read_status_in(source: &VolumeSource, out: &mut Vec<u8>) -> Result<(), AreaError> {
    out.clear();
    let volume = vfat::Volume::new_unchecked(partition::volume_in(source)?)?;
    let mut dirs = Default::default();
    if let Some(found) = vfat::locate_in(&volume, &mut dirs)? {
        volume.read_located(&found, out)?;
    }
    Ok(())
}

impl SharedArea for LibvirtDomain {
    fn location(&self) -> &Path {
        &self.location
    }

    fn kind(&self) -> AreaKind {
        AreaKind::LibvirtVolume
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            folds_case: true,
            keeps_modes: false,
            atomic_replace: true,
            live: false,
            holdable: false,
        }
    }

    /// The domain's state from libvirt: an active domain (running, paused, crashed but
    /// not yet cleaned up) holds its disk.
    fn is_busy(&self) -> Result<bool, AreaError> {
        self.active()
    }

    fn read_status_file(&self, _how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError> {
        read_status_in(&self.source()?, out)
    }

    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError> {
        let source = self.source()?;
        vfat::Volume::new(partition::volume_in(&source)?)?.read_file(path, max_len)
    }

    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError> {
        let source = self.source()?;
        vfat::Volume::new(partition::volume_in(&source)?)?.walk(limits, visit)
    }

    fn replace_with(
        &self,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let mut upload = self.begin_replace(durability, None)?;
        for file in files {
            add_upload_file(upload.as_mut(), file)?;
        }
        upload.commit()
    }

    /// The new image is built locally as the files come, and sent as it is built
    /// (`upload.rs`). It is a temporary file, sent and then removed, so it is never
    /// flushed: `durability` is the storage's business on the libvirt host, where the
    /// volume is written.
    fn begin_replace<'a>(
        &'a self,
        _durability: Durability,
        _spool_dir: Option<&Path>,
    ) -> Result<Box<dyn ReplaceStream + 'a>, AreaError> {
        Ok(Box::new(upload::VolumeUpload::begin(self)?))
    }
}

/// How old an unused `DOMAIN-nlxtp-NANOS.img` volume must be before an upload deletes it
/// as left over from an interrupted one: a younger one may be another upload's, still
/// being written.
pub const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

impl LibvirtDomain {
    /// Deletes the volumes of `pool` that interrupted uploads of this domain left (see
    /// the module docs), except `keep`; logs what it removed and what it left. Best
    /// effort: a failure here does not undo the upload that succeeded.
    fn clean_leftovers(&self, pool: &virt::storage_pool::StoragePool, keep: &[&str]) {
        let result = (|| -> Result<(), virt::error::Error> {
            let pool_name = pool.name()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            for name in pool.list_volumes()? {
                let Some(made) = leftover_time(&self.name, &name) else {
                    continue;
                };
                if keep.contains(&name.as_str()) {
                    continue;
                }
                let vol = pool.lookup_storage_vol_by_name(&name)?;
                let path = vol.path().unwrap_or_default();
                let source = DiskSource::Volume {
                    pool: pool_name.clone(),
                    volume: name.clone(),
                };
                if let Some(user) = defined_user(&self.conn, &source, &path)? {
                    tracing::debug!("volume {name} is not left over: domain {user} uses it");
                    continue;
                }
                if now.saturating_sub(made) < LEFTOVER_GRACE {
                    tracing::warn!(
                        "volume {name} in pool {pool_name} looks left over from an interrupted \
                         upload; it is younger than {} min, so maybe still being written: \
                         a later upload removes it (or: virsh vol-delete --pool {pool_name} {name})",
                        LEFTOVER_GRACE.as_secs() / 60
                    );
                    continue;
                }
                vol.delete(0)?;
                tracing::info!(
                    "removed {name} from pool {pool_name}, left over from an interrupted upload"
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!("could not look for volumes left over from interrupted uploads: {e}");
        }
    }
}

/// When the volume `name` was made, if it is named as an upload of `domain` names its new
/// volume (`DOMAIN-nlxtp-SECSNANOS.img`).
fn leftover_time(domain: &str, name: &str) -> Option<std::time::Duration> {
    let digits = name
        .strip_prefix(&format!("{}-nlxtp-", safe_name(domain)))?
        .strip_suffix(".img")?;
    if digits.len() <= 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (secs, nanos) = digits.split_at(digits.len() - 9);
    Some(std::time::Duration::new(
        secs.parse().ok()?,
        nanos.parse().ok()?,
    ))
}

/// A domain on `conn` (defined or running) whose definition or live XML has a disk on
/// the volume `source` (or the file `path`), if any.
fn defined_user(
    conn: &Connect,
    source: &DiskSource,
    path: &str,
) -> Result<Option<String>, virt::error::Error> {
    use virt::enumutil::Enum;
    use virt::error::ErrorNumber as N;
    for domain in conn.list_all_domains(0)? {
        let name = domain.name().unwrap_or_else(|_| "?".into());
        let xmls = (|| -> Result<Vec<String>, virt::error::Error> {
            let mut xmls = vec![domain.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?];
            if domain.is_active()? {
                xmls.push(domain.xml_desc(0)?);
            }
            Ok(xmls)
        })();
        let xmls = match xmls {
            Ok(xmls) => xmls,
            // Undefined since it was listed: it uses nothing.
            Err(e) if matches!(e.code(), Enum::Known(N::NoDomain)) => continue,
            Err(e) => return Err(e),
        };
        for xml in xmls {
            // A definition that does not parse counts as a user, to be safe.
            if roxmltree::Document::parse(&xml)
                .map(|doc| !disks_on(&doc, source, path).is_empty())
                .unwrap_or(true)
            {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// The targets of the disks of `doc` whose source is the volume `source` or the file
/// `path`.
fn disks_on<'a>(doc: &'a roxmltree::Document<'_>, source: &DiskSource, path: &str) -> Vec<&'a str> {
    let uses = |s: &roxmltree::Node<'_, '_>| {
        (!path.is_empty() && s.attribute("file") == Some(path))
            || matches!(source, DiskSource::Volume { pool, volume }
                if s.attribute("pool") == Some(pool) && s.attribute("volume") == Some(volume))
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("disk"))
        .filter(|disk| {
            disk.children()
                .any(|c| c.has_tag_name("source") && uses(&c))
        })
        .map(|disk| {
            disk.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .unwrap_or("?")
        })
        .collect()
}

/// The `<permissions>` element of a volume's XML (mode, owner, group), to give a new
/// volume the same; empty when it has none.
fn permissions_of(volume_xml: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(volume_xml) else {
        return String::new();
    };
    let Some(perms) = doc.descendants().find(|n| {
        n.has_tag_name("permissions") && n.parent().is_some_and(|p| p.has_tag_name("target"))
    }) else {
        return String::new();
    };
    let mut out = String::from("<permissions>");
    for field in ["mode", "owner", "group"] {
        let value = perms
            .children()
            .find(|c| c.has_tag_name(field))
            .and_then(|c| c.text())
            .map(str::trim)
            .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty());
        if let Some(value) = value {
            out.push_str(&format!("<{field}>{value}</{field}>"));
        }
    }
    out.push_str("</permissions>");
    out
}

/// A fresh volume name for `domain`'s shared disk.
fn new_volume_name(domain: &str) -> String {
    volume_name(domain, "nlxtp")
}

/// A fresh volume name `DOMAIN-KIND-NANOS.img` (the domain's name with what a file
/// name should not hold replaced by `_`), ordered by time of making.
fn volume_name(domain: &str, kind: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{kind}-{}{:09}.img",
        safe_name(domain),
        now.as_secs(),
        now.subsec_nanos()
    )
}

/// `domain` with what a file name should not hold replaced by `_`.
fn safe_name(domain: &str) -> String {
    domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Sends the `len` bytes of the file at `path` into `volume`, whole.
fn upload(conn: &Connect, volume: &StorageVol, path: &Path, len: u64) -> Result<(), AreaError> {
    let file = std::fs::File::open(path).map_err(|e| AreaError::io("open", path, e))?;
    send::upload(conn, volume, &file, path, std::slice::from_ref(&(0..len)))
}

/// A second handle on a volume (the same volume, looked up again by its key).
trait CloneRef: Sized {
    fn clone_ref(&self) -> Result<Self, AreaError>;
}

impl CloneRef for StorageVol {
    fn clone_ref(&self) -> Result<Self, AreaError> {
        let conn = self
            .connect()
            .map_err(|e| AreaError::io("reach", Path::new("libvirt"), io::Error::other(e)))?;
        let key = self
            .key()
            .map_err(|e| AreaError::io("reach", Path::new("libvirt"), io::Error::other(e)))?;
        conn.lookup_storage_vol_by_key(&key)
            .map_err(|e| AreaError::io("reach", Path::new("libvirt"), io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_this_domains_upload_volumes_only() {
        let name = new_volume_name("web.1");
        assert!(leftover_time("web.1", &name).is_some(), "{name}");
        assert_eq!(
            leftover_time("web1", "web1-nlxtp-1700000000123456789.img"),
            Some(std::time::Duration::new(1_700_000_000, 123_456_789))
        );
        for other in [
            "web1-shared.img",
            "web1-nlxtp.img",
            "web1-hot-1700000000123456789.img",
            "web1-nlxtp-nlxtp-1700000000123456789.img",
            "web10-nlxtp-1700000000123456789.img",
            "web1-nlxtp-123.img",
        ] {
            assert_eq!(leftover_time("web1", other), None, "{other}");
        }
    }

    #[test]
    fn permissions_are_copied_from_a_volume_xml() {
        let xml = "<volume><name>v</name><target><path>/p/v</path><format type='raw'/>\
                   <permissions><mode>0640</mode><owner>0</owner><group>64055</group>\
                   <label>x</label></permissions></target></volume>";
        assert_eq!(
            permissions_of(xml),
            "<permissions><mode>0640</mode><owner>0</owner><group>64055</group></permissions>"
        );
        assert_eq!(permissions_of("<volume><target/></volume>"), "");
        assert_eq!(permissions_of("not xml"), "");
    }
}
