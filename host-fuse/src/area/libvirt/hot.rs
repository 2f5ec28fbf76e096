//! Jobs for a running libvirt domain: hot-plugged volumes (the libvirt side of
//! [`crate::ops::hot`]), on a local or a remote daemon, everything through libvirt.
//!
//! **The cycle.** [`HotJob::prepare`] checks that the domain runs and picks the volume: a
//! new one named `DOMAIN-hot-NANOS.img` in the pool of the domain's shared disk (else
//! `default`), or one named by the caller. The job is written into a freshly formatted
//! local image (FAT, label [`HOT_VOLUME_LABEL`]) through the ordinary upload
//! ([`HotJob::area`]), and [`HotJob::attach`] uploads that image into the volume through
//! a stream and plugs it into the domain with `virDomainAttachDeviceFlags(LIVE)`: a
//! virtio `<disk type='volume'>` with `<serial>NLXTP-HOT</serial>` ([`HOT_SERIAL`]) at the
//! first free `vdX` of the live XML. The guest runs the job once, unmounts the disk and
//! writes the release mark into its boot sector; [`detach`] polls that mark through the
//! volume stream, unplugs the disk (`virDomainDetachDeviceFlags(LIVE)`) and waits until
//! the live XML no longer has it.
//!
//! **Naming.** A [`HotVolume`] is a [`SharedArea`] over the volume (reads through
//! volume streams, as for the boot-time disk), for status, wait, logs and download while
//! the disk is attached and after. [`find_hot`] resolves "the domain's hot disk": the
//! one disk with serial `NLXTP-HOT` in the live XML (several: an error listing them);
//! when none is attached, the newest `DOMAIN-hot-*` volume of the pool (the last job's,
//! kept after detach); or the volume named in [`HotSelect::volume`].
//!
//! **After detach** the volume stays in its pool, readable, until [`HotVolume::remove`] (or
//! [`HotDetachOptions::remove`]) deletes it; a volume a running domain uses is never
//! deleted or written.
//!
//! **A guest that does not release** the disk in time (or with
//! [`DetachOptions::force`]) has it taken away; the host then writes the run's final
//! record, [`AbortReason::Detached`](nlxtp_core::AbortReason::Detached), into the volume
//! (one `virStorageVolUpload` of the status slot at its offset), when the record says
//! the run goes on. A guest that does not let go of the device at all keeps it:
//! [`DetachReport::detached`] is false and nothing is written.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nlxtp_core::layout::HOT_VOLUME_LABEL;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;

use super::attach::free_target;
use super::{
    find_shared_disk, marked_disks, running_users, safe_name, upload, volume_name, xml_escape,
    DiskSource, LibvirtError, SharedDisk, VolumeSource,
};
use crate::area::vfat::{self, create_disk, partition, BootSector, CreateError, DiskOptions};
use crate::area::{
    AreaError, AreaHold, AreaKind, AreaPath, Capabilities, Durability, SharedArea, StatusRead,
    UploadFile, Visitor, WalkLimits,
};
use crate::ops::hot::{
    millis, record_detached, wait_released, DetachOptions, DetachReport, HotError, HOT_DISK_SIZE,
};
use crate::ops::{self, UploadError, UploadOptions, UploadReport};

/// The `<serial>` of a hot disk in a domain's live XML (the same text as its FAT label).
pub const HOT_SERIAL: &str = HOT_VOLUME_LABEL;

/// How often [`detach`] reads the live XML for the unplugged disk.
const UNPLUG_POLL: Duration = Duration::from_millis(25);

/// What went wrong with a hot job of a libvirt domain. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotVolumeError {
    /// Hot jobs go to running domains.
    #[error("domain {domain} is not running: a hot job goes into a running domain; for a domain that is off, upload to its shared disk (nlxtp-libvirt upload --start {domain} ARCHIVE)")]
    NotRunning {
        /// The domain.
        domain: String,
    },
    /// No hot disk is attached and the pool holds none of the domain.
    #[error("domain {domain} has no hot disk attached and pool {pool} holds no hot volume of it: upload a job with nlxtp-libvirt upload --hot {domain} ARCHIVE, or name the volume with --volume (and --pool)")]
    NoHotDisk {
        /// The domain.
        domain: String,
        /// The pool looked in.
        pool: String,
    },
    /// Several hot disks are attached: which one is meant?
    #[error(
        "domain {domain} has {count} hot disks attached ({volumes}): choose one with --volume NAME"
    )]
    SeveralHotDisks {
        /// The domain.
        domain: String,
        /// How many.
        count: usize,
        /// Their volumes and targets.
        volumes: String,
    },
    /// A running domain holds the volume.
    #[error("volume {volume} of pool {pool} is attached to the running domain {domain} (as {target}): it is never written while a domain has it; detach it first (nlxtp-libvirt detach --hot {domain} --volume {volume}), or leave out --volume for a new volume")]
    StillAttached {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// The domain that has it.
        domain: String,
        /// Its target there.
        target: String,
    },
    /// The volume is not a hot disk.
    #[error("volume {volume} of pool {pool} is not a hot disk (its FAT label is {label}, a hot disk's is {HOT_VOLUME_LABEL}): give another name, or leave out --volume for a new volume")]
    NotHot {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
        /// Its label, or what it has instead.
        label: String,
    },
    /// libvirt refused to plug the disk in.
    #[error("libvirt could not hot-plug volume {volume} of pool {pool} into domain {domain} as {target}: the domain needs <features><acpi/></features> (without it nothing is hot-plugged) and a free virtio slot")]
    Attach {
        /// The domain.
        domain: String,
        /// The pool.
        pool: String,
        /// The volume (deleted again when it was made for this attach).
        volume: String,
        /// The target tried.
        target: String,
        /// libvirt's error.
        #[source]
        source: Box<virt::error::Error>,
    },
    /// Finding or talking to the domain, pool or volume failed.
    #[error(transparent)]
    Libvirt(Box<LibvirtError>),
    /// The local image could not be made.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The upload failed.
    #[error(transparent)]
    Upload(UploadError),
    /// The volume could not be read or written.
    #[error(transparent)]
    Area(AreaError),
}

impl From<LibvirtError> for HotVolumeError {
    fn from(error: LibvirtError) -> Self {
        HotVolumeError::Libvirt(Box::new(error))
    }
}

impl From<AreaError> for HotVolumeError {
    fn from(error: AreaError) -> Self {
        HotVolumeError::Area(error)
    }
}

impl From<UploadError> for HotVolumeError {
    fn from(error: UploadError) -> Self {
        match error {
            UploadError::Area(area) => area.into(),
            other => HotVolumeError::Upload(other),
        }
    }
}

fn call(action: &'static str) -> impl Fn(virt::error::Error) -> LibvirtError {
    move |source| LibvirtError::Call { action, source }
}

/// A hot volume: a storage volume formatted FAT with label [`HOT_VOLUME_LABEL`], as a
/// shared area read (and, for the host's own final record, written) through libvirt
/// streams. Busy while a running domain of its connection has it attached.
#[derive(Debug)]
pub struct HotVolume {
    conn: Arc<Connect>,
    pool: String,
    name: String,
    volume: StorageVol,
    len: u64,
    /// `URI#pool/volume`, for messages.
    location: PathBuf,
}

impl HotVolume {
    /// The volume `name` of `pool` on `conn` (whose URI is `uri`, for messages); it must
    /// be a hot disk.
    ///
    /// # Errors
    /// [`HotVolumeError::NotHot`], [`LibvirtError::Call`] when there is no such pool or
    /// volume, [`HotVolumeError::Area`] when it cannot be read.
    pub fn open(
        conn: Arc<Connect>,
        uri: &str,
        pool: &str,
        name: &str,
    ) -> Result<HotVolume, HotVolumeError> {
        let volume = conn
            .lookup_storage_pool_by_name(pool)
            .map_err(call("find the storage pool of the hot volume"))?
            .lookup_storage_vol_by_name(name)
            .map_err(call("find the hot volume in its pool"))?;
        Self::of(conn, uri, pool, name, volume)
    }

    fn of(
        conn: Arc<Connect>,
        uri: &str,
        pool: &str,
        name: &str,
        volume: StorageVol,
    ) -> Result<HotVolume, HotVolumeError> {
        let len = volume
            .info()
            .map_err(call("read the hot volume's size"))?
            .capacity;
        let area = HotVolume {
            conn,
            pool: pool.into(),
            name: name.into(),
            volume,
            len,
            location: PathBuf::from(format!("{uri}#{pool}/{name}")),
        };
        let label = match BootSector::find_in(area.source(false)) {
            Ok(boot) => boot.label().unwrap_or("missing").to_owned(),
            Err(AreaError::Corrupt { .. }) => "none: no FAT volume".into(),
            Err(e) => return Err(e.into()),
        };
        if label != HOT_VOLUME_LABEL {
            return Err(HotVolumeError::NotHot {
                pool: pool.into(),
                volume: name.into(),
                label,
            });
        }
        Ok(area)
    }

    /// The pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The running domains that have the volume attached, with its target in each.
    ///
    /// # Errors
    /// [`AreaError::Io`] when libvirt cannot tell.
    pub fn attached_to(&self) -> Result<Vec<(String, String)>, AreaError> {
        let path = self.volume.path().unwrap_or_default();
        let source = DiskSource::Volume {
            pool: self.pool.clone(),
            volume: self.name.clone(),
        };
        running_users(&self.conn, &source, &path).map_err(|e| self.error("list the users of", e))
    }

    /// Whether the guest's release mark is in the volume's boot sector now.
    ///
    /// # Errors
    /// [`AreaError::Io`], [`AreaError::Corrupt`].
    pub fn is_released(&self) -> Result<bool, AreaError> {
        BootSector::find_in(self.source(false))?.is_released()
    }

    /// Deletes the volume; refused while a running domain has it.
    ///
    /// # Errors
    /// [`HotVolumeError::StillAttached`], [`LibvirtError::Call`].
    pub fn remove(self) -> Result<(), HotVolumeError> {
        self.refuse_if_attached()?;
        self.volume
            .delete(0)
            .map_err(call("delete the hot volume"))?;
        Ok(())
    }

    fn refuse_if_attached(&self) -> Result<(), HotVolumeError> {
        match self.attached_to()?.into_iter().next() {
            Some((domain, target)) => Err(HotVolumeError::StillAttached {
                pool: self.pool.clone(),
                volume: self.name.clone(),
                domain,
                target,
            }),
            None => Ok(()),
        }
    }

    fn source(&self, cached: bool) -> VolumeSource {
        let new = if cached {
            VolumeSource::new
        } else {
            VolumeSource::uncached
        };
        new(
            self.conn.clone(),
            self.volume.clone(),
            self.len,
            &self.location,
        )
    }

    fn error(&self, action: &'static str, e: virt::error::Error) -> AreaError {
        AreaError::io(action, &self.location, io::Error::other(e))
    }

    fn refuse_if_busy(&self) -> Result<(), AreaError> {
        if self.is_busy()? {
            return Err(AreaError::Busy {
                image: self.location.clone(),
            });
        }
        Ok(())
    }
}

impl SharedArea for HotVolume {
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
            atomic_replace: false,
            live: false,
            holdable: false,
        }
    }

    /// Attached to a running domain (its live XML names the volume).
    fn is_busy(&self) -> Result<bool, AreaError> {
        Ok(!self.attached_to()?.is_empty())
    }

    fn read_status_file(&self, _how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError> {
        super::read_status_in(&self.source(true), out)
    }

    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError> {
        vfat::Volume::new(partition::volume_in(self.source(true))?)?.read_file(path, max_len)
    }

    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError> {
        vfat::Volume::new(partition::volume_in(self.source(true))?)?.walk(limits, visit)
    }

    /// A fresh hot disk of the volume's size with `files`, built locally and uploaded
    /// over the volume; refused while a running domain has it.
    fn replace_with(
        &self,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        self.refuse_if_busy()?;
        let staged = Staged::new(self.len).map_err(|e| match e {
            HotVolumeError::Area(e) => e,
            other => AreaError::io("stage", &self.location, io::Error::other(other)),
        })?;
        staged.area.replace_with(files, durability)?;
        self.refuse_if_busy()?;
        upload(&self.conn, &self.volume, &staged.image, self.len)
    }

    /// One upload of the slot at its offset in the volume; refused while a running
    /// domain has it.
    fn write_status_slot(
        &self,
        _hold: &mut AreaHold,
        offset: usize,
        slot: &[u8],
    ) -> Result<(), AreaError> {
        self.refuse_if_busy()?;
        let volume = vfat::Volume::new_unchecked(partition::volume_in(self.source(true))?)?;
        vfat::write_slot_in(&volume, offset, slot)
    }
}

/// A hot disk image being made locally, before its upload.
#[derive(Debug)]
struct Staged {
    _dir: tempfile::TempDir,
    image: PathBuf,
    area: Box<dyn SharedArea>,
}

impl Staged {
    fn new(size: u64) -> Result<Staged, HotVolumeError> {
        let dir = tempfile::Builder::new()
            .prefix(".nlxtp-hot-")
            .tempdir()
            .map_err(|e| AreaError::io("create a directory in", &std::env::temp_dir(), e))?;
        let image = dir.path().join("hot.img");
        create_disk(
            &image,
            &DiskOptions {
                size,
                label: Some(HOT_VOLUME_LABEL.into()),
                ..DiskOptions::default()
            },
        )?;
        let area = ops::open_target(&image)?;
        Ok(Staged {
            _dir: dir,
            image,
            area,
        })
    }
}

/// Which hot disk of a domain (see [`find_hot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HotSelect {
    /// The volume by name; `None`: the one attached, else the newest of the domain.
    pub volume: Option<String>,
    /// The pool; `None`: the attached disk's, else that of the domain's shared disk,
    /// else `default`.
    pub pool: Option<String>,
}

/// A hot disk attached to a running domain, as its live XML shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedHot {
    /// The pool.
    pub pool: String,
    /// The volume.
    pub volume: String,
    /// Its target device (`vdc`).
    pub target: String,
    /// Its `<disk>` element, as the live XML has it (what detaching names).
    element: String,
}

/// The hot disks attached to `domain` now, from its live XML (none when it is off).
///
/// # Errors
/// [`LibvirtError`] when libvirt fails or a marked disk is not a volume of a pool.
pub fn attached_hot_disks(
    conn: &Connect,
    domain: &Domain,
    name: &str,
) -> Result<Vec<AttachedHot>, LibvirtError> {
    if !domain
        .is_active()
        .map_err(call("ask the state of the domain"))?
    {
        return Ok(Vec::new());
    }
    let xml = domain
        .xml_desc(0)
        .map_err(call("read the domain's live XML"))?;
    marked_disks(name, &xml, HOT_SERIAL)?
        .into_iter()
        .map(|disk| {
            let (pool, volume) = pool_and_name(conn, name, &disk)?;
            Ok(AttachedHot {
                pool,
                volume,
                element: xml[disk.element_range.clone()].to_owned(),
                target: disk.target,
            })
        })
        .collect()
}

fn pool_and_name(
    conn: &Connect,
    domain: &str,
    disk: &SharedDisk,
) -> Result<(String, String), LibvirtError> {
    match &disk.source {
        DiskSource::Volume { pool, volume } => Ok((pool.clone(), volume.clone())),
        DiskSource::File(path) => {
            let not_a_volume = |source| LibvirtError::NotAVolume {
                domain: domain.into(),
                target: disk.target.clone(),
                what: format!("the file {path}"),
                source: Some(source),
            };
            let vol = conn
                .lookup_storage_vol_by_path(path)
                .map_err(not_a_volume)?;
            let pool = vol
                .lookup_storage_pool()
                .and_then(|p| p.name())
                .map_err(not_a_volume)?;
            Ok((pool, vol.name().map_err(not_a_volume)?))
        }
    }
}

/// The pool hot volumes of `domain` go to by default: that of its shared disk, else
/// `default`.
fn default_pool(conn: &Connect, domain: &Domain, name: &str) -> String {
    domain
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .ok()
        .and_then(|xml| find_shared_disk(name, &xml).ok())
        .and_then(|disk| pool_and_name(conn, name, &disk).ok())
        .map_or_else(|| "default".into(), |(pool, _)| pool)
}

fn lookup_domain(conn: &Connect, uri: &str, name: &str) -> Result<Domain, LibvirtError> {
    conn.lookup_domain_by_name(name)
        .map_err(|source| LibvirtError::NoDomain {
            domain: name.into(),
            uri: uri.into(),
            source,
        })
}

/// The hot disk of domain `name` that `which` selects (see the module docs), with the
/// attachment that has it now, if any.
///
/// # Errors
/// [`HotVolumeError::NoHotDisk`], [`HotVolumeError::SeveralHotDisks`],
/// [`HotVolumeError::NotHot`], [`LibvirtError`].
pub fn find_hot(
    conn: &Arc<Connect>,
    uri: &str,
    name: &str,
    which: &HotSelect,
) -> Result<(HotVolume, Option<AttachedHot>), HotVolumeError> {
    let domain = lookup_domain(conn, uri, name)?;
    let mut attached = attached_hot_disks(conn, &domain, name)?;
    attached.retain(|a| {
        which.volume.as_ref().is_none_or(|v| *v == a.volume)
            && which.pool.as_ref().is_none_or(|p| *p == a.pool)
    });
    match attached.len() {
        1 => {
            let hot = attached.remove(0);
            let volume = HotVolume::open(conn.clone(), uri, &hot.pool, &hot.volume)?;
            return Ok((volume, Some(hot)));
        }
        0 => {}
        count => {
            return Err(HotVolumeError::SeveralHotDisks {
                domain: name.into(),
                count,
                volumes: attached
                    .iter()
                    .map(|a| format!("{}/{} as {}", a.pool, a.volume, a.target))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
    let pool = which
        .pool
        .clone()
        .unwrap_or_else(|| default_pool(conn, &domain, name));
    let volume = match &which.volume {
        Some(volume) => volume.clone(),
        None => newest_hot_volume(conn, &pool, name)?.ok_or_else(|| HotVolumeError::NoHotDisk {
            domain: name.into(),
            pool: pool.clone(),
        })?,
    };
    Ok((HotVolume::open(conn.clone(), uri, &pool, &volume)?, None))
}

/// The newest `DOMAIN-hot-NANOS.img` volume of `pool`.
fn newest_hot_volume(
    conn: &Connect,
    pool: &str,
    domain: &str,
) -> Result<Option<String>, LibvirtError> {
    let prefix = format!("{}-{HOT_KIND}-", safe_name(domain));
    let names = conn
        .lookup_storage_pool_by_name(pool)
        .and_then(|p| p.refresh(0).and_then(|_| p.list_volumes()))
        .map_err(call("list the volumes of the pool"))?;
    Ok(names
        .into_iter()
        .filter_map(|n| Some((hot_stamp(&prefix, &n)?, n)))
        .max()
        .map(|(_, n)| n))
}

/// The time stamp of a hot volume named `PREFIX-NANOS.img`; `None` for other names.
fn hot_stamp(prefix: &str, name: &str) -> Option<u128> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(".img")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The kind part of a hot volume's name.
const HOT_KIND: &str = "hot";

/// How [`HotJob::prepare`] picks and makes the volume.
#[derive(Debug, Clone)]
pub struct HotOptions {
    /// The pool (see [`HotSelect::pool`]).
    pub pool: Option<String>,
    /// The volume's name: a new `DOMAIN-hot-NANOS.img` when `None`. An existing volume
    /// of that name must be a hot disk no running domain has; it is formatted anew.
    pub volume: Option<String>,
    /// The size of a volume that is made.
    pub size: u64,
    /// The upload's options (for [`attach`]).
    pub upload: UploadOptions,
}

impl Default for HotOptions {
    fn default() -> Self {
        HotOptions {
            pool: None,
            volume: None,
            size: HOT_DISK_SIZE,
            upload: UploadOptions::default(),
        }
    }
}

/// What [`HotJob::attach`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HotAttachReport {
    /// The domain.
    pub domain: String,
    /// The pool.
    pub pool: String,
    /// The volume.
    pub volume: String,
    /// Its target device in the domain.
    pub target: String,
    /// The volume was made for this job.
    pub created: bool,
    /// The upload written into it.
    pub upload: Option<UploadReport>,
    /// Milliseconds to send the image into the volume.
    pub upload_ms: u64,
    /// Milliseconds of `virDomainAttachDeviceFlags`.
    pub attach_ms: u64,
}

/// A hot job being prepared for a running domain: the volume chosen, its image made
/// locally (see the module docs).
#[derive(Debug)]
pub struct HotJob {
    conn: Arc<Connect>,
    domain: Domain,
    domain_name: String,
    pool: String,
    volume: String,
    existing: Option<StorageVol>,
    size: u64,
    staged: Staged,
}

impl HotJob {
    /// Checks that domain `name` runs, picks the volume (refusing one a running domain
    /// has) and formats a local image for the job. Nothing is written into libvirt.
    ///
    /// # Errors
    /// [`HotVolumeError::NotRunning`], [`HotVolumeError::StillAttached`],
    /// [`HotVolumeError::NotHot`], [`LibvirtError`], [`HotVolumeError::Create`].
    pub fn prepare(
        conn: Arc<Connect>,
        uri: &str,
        name: &str,
        options: &HotOptions,
    ) -> Result<HotJob, HotVolumeError> {
        let domain = lookup_domain(&conn, uri, name)?;
        if !domain
            .is_active()
            .map_err(call("ask the state of the domain"))?
        {
            return Err(HotVolumeError::NotRunning {
                domain: name.into(),
            });
        }
        let pool = options
            .pool
            .clone()
            .unwrap_or_else(|| default_pool(&conn, &domain, name));
        let (volume, existing, size) = match &options.volume {
            None => (volume_name(name, HOT_KIND), None, options.size),
            Some(volume) => {
                let found = conn
                    .lookup_storage_pool_by_name(&pool)
                    .map_err(call("find the storage pool"))?
                    .lookup_storage_vol_by_name(volume);
                match found {
                    Ok(vol) => {
                        let hot = HotVolume::of(conn.clone(), uri, &pool, volume, vol)?;
                        hot.refuse_if_attached()?;
                        (volume.clone(), Some(hot.volume), hot.len)
                    }
                    Err(_) => (volume.clone(), None, options.size),
                }
            }
        };
        Ok(HotJob {
            staged: Staged::new(size)?,
            conn,
            domain,
            domain_name: name.into(),
            pool,
            volume,
            existing,
            size,
        })
    }

    /// The local image's area: upload the job into it (as [`ops::upload`] does).
    pub fn area(&self) -> &dyn SharedArea {
        self.staged.area.as_ref()
    }

    /// The pool.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Sends the image (with `upload` written into it) into the volume, made now unless
    /// it existed, and hot-plugs it into the domain. A volume made here is deleted again
    /// when this fails.
    ///
    /// # Errors
    /// [`HotVolumeError::StillAttached`] (an existing volume attached meanwhile),
    /// [`HotVolumeError::Attach`], [`HotVolumeError::Area`] for the upload,
    /// [`LibvirtError`].
    pub fn attach(self, upload: Option<UploadReport>) -> Result<HotAttachReport, HotVolumeError> {
        let start = Instant::now();
        let created = self.existing.is_none();
        let vol = match &self.existing {
            Some(vol) => {
                let hot = HotVolume {
                    conn: self.conn.clone(),
                    pool: self.pool.clone(),
                    name: self.volume.clone(),
                    volume: vol.clone(),
                    len: self.size,
                    location: PathBuf::new(),
                };
                hot.refuse_if_attached()?;
                vol.clone()
            }
            None => {
                let pool = self
                    .conn
                    .lookup_storage_pool_by_name(&self.pool)
                    .map_err(call("find the storage pool"))?;
                StorageVol::create_xml(
                    &pool,
                    &format!(
                        "<volume><name>{}</name><capacity unit='bytes'>{}</capacity>\
                         <target><format type='raw'/></target></volume>",
                        xml_escape(&self.volume),
                        self.size
                    ),
                    0,
                )
                .map_err(call("create the hot volume"))?
            }
        };
        let discard = |vol: &StorageVol| {
            if created {
                let _ = vol.delete(0);
            }
        };
        if let Err(e) = super::upload(&self.conn, &vol, &self.staged.image, self.size) {
            discard(&vol);
            return Err(e.into());
        }
        let upload_ms = millis(start.elapsed());
        let plugged = Instant::now();
        let live = match self.domain.xml_desc(0) {
            Ok(live) => live,
            Err(e) => {
                discard(&vol);
                return Err(call("read the domain's live XML")(e).into());
            }
        };
        let target = free_target(&live);
        let disk = format!(
            "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
             <source pool='{}' volume='{}'/><target dev='{target}' bus='virtio'/>\
             <serial>{HOT_SERIAL}</serial></disk>",
            xml_escape(&self.pool),
            xml_escape(&self.volume)
        );
        if let Err(source) = self
            .domain
            .attach_device_flags(&disk, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
        {
            discard(&vol);
            return Err(HotVolumeError::Attach {
                domain: self.domain_name,
                pool: self.pool,
                volume: self.volume,
                target,
                source: Box::new(source),
            });
        }
        Ok(HotAttachReport {
            domain: self.domain_name,
            pool: self.pool,
            volume: self.volume,
            target,
            created,
            upload,
            upload_ms,
            attach_ms: millis(plugged.elapsed()),
        })
    }
}

/// Writes the job from `source` into a hot volume and hot-plugs it into the running
/// domain `name` (see the module docs).
///
/// # Errors
/// As [`HotJob::prepare`], the upload's, and [`HotJob::attach`].
pub fn attach(
    conn: Arc<Connect>,
    uri: &str,
    name: &str,
    source: impl Read + Send,
    options: &HotOptions,
) -> Result<HotAttachReport, HotVolumeError> {
    let job = HotJob::prepare(conn, uri, name, options)?;
    let upload = ops::upload(job.area(), source, &options.upload)?;
    job.attach(Some(upload))
}

/// How [`detach`] finds the disk and waits.
#[derive(Debug, Clone, Default)]
pub struct HotDetachOptions {
    /// Which hot disk.
    pub select: HotSelect,
    /// The waits: for the release mark (`timeout`, `force`), and for the unplug
    /// (`device_timeout`).
    pub detach: DetachOptions,
    /// Delete the volume once it is detached (else it stays in its pool for download).
    pub remove: bool,
}

/// What [`detach`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HotDetachReport {
    /// The domain.
    pub domain: String,
    /// The pool.
    pub pool: String,
    /// The volume.
    pub volume: String,
    /// Its target device, when it was attached.
    pub target: Option<String>,
    /// What was waited for and done, as for a plain QEMU hot disk (`unplug_ms`: from
    /// the detach request until the live XML no longer has the disk).
    #[serde(flatten)]
    pub detach: DetachReport,
    /// The volume was deleted.
    pub removed: bool,
}

/// Takes the hot disk `options.select` names out of the running domain `name` (see the
/// module docs); with [`HotDetachOptions::remove`], deletes its volume once it is out.
///
/// # Errors
/// As [`find_hot`]; [`HotVolumeError::Area`] reading the mark or writing the record;
/// [`LibvirtError::Call`] when libvirt refuses the detach.
pub fn detach(
    conn: &Arc<Connect>,
    uri: &str,
    name: &str,
    options: &HotDetachOptions,
) -> Result<HotDetachReport, HotVolumeError> {
    let start = Instant::now();
    let (volume, attached) = find_hot(conn, uri, name, &options.select)?;
    let mut report = DetachReport {
        was_attached: attached.is_some(),
        ..DetachReport::default()
    };
    if let Some(hot) = &attached {
        let boot = BootSector::find_in(volume.source(false))?;
        report.released_by_guest = wait_released(|| boot.is_released(), &options.detach)?;
        report.waited_ms = millis(start.elapsed());
        let unplugged = Instant::now();
        let domain = lookup_domain(conn, uri, name)?;
        let still_there = || -> Result<bool, LibvirtError> {
            Ok(attached_hot_disks(conn, &domain, name)?
                .iter()
                .any(|a| a.target == hot.target && a.volume == hot.volume))
        };
        if let Err(e) = domain.detach_device_flags(&hot.element, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
        {
            // Gone meanwhile is what was asked for.
            if still_there()? {
                return Err(call("hot-unplug the disk")(e).into());
            }
        }
        let deadline = unplugged + options.detach.device_timeout;
        while still_there()? {
            if Instant::now() >= deadline {
                return finish(name, volume, attached, report, false);
            }
            std::thread::sleep(UNPLUG_POLL);
        }
        report.unplug_ms = Some(millis(unplugged.elapsed()));
    }
    report.detached = true;
    if report.was_attached && !report.released_by_guest {
        report.record_written = record_detached(&volume).map_err(|e| match e {
            HotError::Area(e) => HotVolumeError::Area(e),
            HotError::StillAttached { image } => AreaError::Busy { image }.into(),
            other => AreaError::io(
                "record the detach in",
                Path::new(&volume.name),
                io::Error::other(other),
            )
            .into(),
        })?;
    }
    finish(name, volume, attached, report, options.remove)
}

fn finish(
    name: &str,
    volume: HotVolume,
    attached: Option<AttachedHot>,
    detach: DetachReport,
    remove: bool,
) -> Result<HotDetachReport, HotVolumeError> {
    let mut report = HotDetachReport {
        domain: name.into(),
        pool: volume.pool.clone(),
        volume: volume.name.clone(),
        target: attached.map(|a| a.target),
        detach,
        removed: false,
    };
    if remove {
        volume.remove()?;
        report.removed = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_disks_are_found_by_serial_in_live_xml() {
        let xml = "<domain><devices>\
            <disk type='volume' device='disk'><source pool='p' volume='boot.img' index='2'/>\
              <target dev='vda' bus='virtio'/><serial>NLXTP</serial></disk>\
            <disk type='volume' device='disk'><source pool='p' volume='vm-hot-1.img' index='3'/>\
              <target dev='vdb' bus='virtio'/><serial>NLXTP-HOT</serial><alias name='virtio-disk1'/></disk>\
            <disk type='file' device='disk'><source file='/pool/vm-hot-2.img'/>\
              <target dev='vdc' bus='virtio'/><serial>NLXTP-HOT</serial></disk>\
            </devices></domain>";
        let hot = marked_disks("vm", xml, HOT_SERIAL).unwrap();
        assert_eq!(
            hot.iter().map(|d| d.target.as_str()).collect::<Vec<_>>(),
            ["vdb", "vdc"]
        );
        assert_eq!(
            hot[0].source,
            DiskSource::Volume {
                pool: "p".into(),
                volume: "vm-hot-1.img".into()
            }
        );
        assert!(xml[hot[0].element_range.clone()].contains("virtio-disk1"));
        assert_eq!(find_shared_disk("vm", xml).unwrap().target, "vda");
        assert_eq!(free_target(xml), "vdd");
    }

    #[test]
    fn hot_volume_names_order_by_time() {
        let name = volume_name("web 1", HOT_KIND);
        let prefix = format!("{}-{HOT_KIND}-", safe_name("web 1"));
        assert!(name.starts_with("web_1-hot-"), "{name}");
        assert!(hot_stamp(&prefix, &name).is_some());
        assert_eq!(hot_stamp(&prefix, "web_1-hot-17.img"), Some(17));
        for other in [
            "web_1-hot-.img",
            "web_1-hot-+1.img",
            "web_1-nlxtp-1.img",
            "web_1-hot-1",
        ] {
            assert_eq!(hot_stamp(&prefix, other), None, "{other}");
        }
    }
}
