//! Jobs for a VM that runs: hot-plugged shared disks (plain QEMU, through its QMP socket).
//!
//! The cycle: [`attach`] writes the job into a *hot disk* (an image whose FAT label is
//! [`HOT_VOLUME_LABEL`], created if missing; never one a VM holds) and plugs it into the
//! running VM (`blockdev-add`, then `device_add virtio-blk-pci`); the guest runs it once.
//! `status`, `wait` and `logs -f` read the image meanwhile, as for any VM. When the run
//! has ended, the guest unmounts the disk and writes the release mark into its boot
//! sector; [`detach`] waits for that mark (bounded), unplugs the disk (`device_del`,
//! the `DEVICE_DELETED` event, then `blockdev-del`, which closes QEMU's file) and
//! `download` reads a disk no guest writes any more.
//!
//! A guest that does not release the disk in time (or `force`) has it taken away: the
//! host then writes the run's final record itself, [`AbortReason::Detached`], when the
//! record still says the run goes on; the script's files stay as they are. A guest that
//! does not let go of the device at all (QEMU needs its ACPI cooperation) keeps it:
//! [`DetachReport::detached`] is then false and nothing is written.
//!
//! A hot disk's QMP names (block node and device id) derive from its canonical path
//! ([`node_name`]), so `detach` finds what `attach` made, also from another process.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nlxtp_core::layout::HOT_VOLUME_LABEL;
use nlxtp_core::record::{AbortReason, STATUS_SLOT_LEN};
use nlxtp_core::slots::{read_status, STATUS_FILE_LEN};
use nlxtp_core::{RunState, StatusWriter};
use serde_json::json;

use super::{open_target, upload, UploadError, UploadOptions, UploadReport};
use crate::area::vfat::{create_disk, BootSector, CreateError, DiskOptions};
use crate::area::{AreaError, SharedArea, StatusRead};
use crate::vm::{Qmp, QmpError};

/// Size of a hot disk [`attach`] creates unless told otherwise.
pub const HOT_DISK_SIZE: u64 = 64 << 20;

/// How long [`detach`] waits, after `device_del`, for QEMU's `DEVICE_DELETED` (the guest
/// acknowledges the unplug through ACPI; about 130 ms under TCG).
pub const DEVICE_DELETED_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`detach`] reads the boot sector for the release mark.
const RELEASE_POLL: Duration = Duration::from_millis(25);

/// What went wrong with a hot disk. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotError {
    /// The image is not a hot disk (a boot-time shared disk, say).
    #[error("{} is not a hot disk (its label is {}, a hot disk's is {HOT_VOLUME_LABEL}): give a path that does not exist yet, and nlxtp creates a hot disk there; upload to a boot-time shared disk while its VM is off", image.display(), label.as_deref().unwrap_or("missing"))]
    NotHot {
        /// The image.
        image: PathBuf,
        /// Its label.
        label: Option<String>,
    },
    /// A VM holds the image (it is attached, or a VM was booted with it).
    #[error("a VM still holds {} (QEMU has it locked): detach it first (nlxtp detach --qmp SOCKET {}), or give a new image", image.display(), image.display())]
    StillAttached {
        /// The image.
        image: PathBuf,
    },
    /// QEMU takes file names as JSON strings.
    #[error("{} is not UTF-8, which QMP needs for file names: rename it", image.display())]
    NotUtf8 {
        /// The image.
        image: PathBuf,
    },
    /// QEMU refused to plug the disk in.
    #[error("could not attach {} to the VM (block node {node}): if an earlier attach of it was not detached, run nlxtp detach --qmp SOCKET {} first", image.display(), image.display())]
    Attach {
        /// The image.
        image: PathBuf,
        /// Its block node and device id.
        node: String,
        /// QEMU's answer.
        #[source]
        source: QmpError,
    },
    /// The hot disk could not be created.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The upload failed.
    #[error(transparent)]
    Upload(UploadError),
    /// The image could not be read or written.
    #[error(transparent)]
    Area(AreaError),
    /// Talking to QEMU failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

impl From<AreaError> for HotError {
    fn from(error: AreaError) -> Self {
        match error {
            AreaError::Busy { image } => HotError::StillAttached { image },
            other => HotError::Area(other),
        }
    }
}

impl From<UploadError> for HotError {
    fn from(error: UploadError) -> Self {
        match error {
            UploadError::Area(area) => area.into(),
            other => HotError::Upload(other),
        }
    }
}

/// The block node name and device id of the hot disk whose canonical path is `image`:
/// stable, and within QEMU's 31 characters.
pub fn node_name(image: &Path) -> String {
    format!("nlxtp-hot-{:016x}", crate::stable_hash::of_path(image))
}

/// A hot disk: an image whose volume label is [`HOT_VOLUME_LABEL`].
#[derive(Debug)]
pub struct HotDisk {
    image: PathBuf,
    node: String,
    area: Box<dyn SharedArea>,
    created: bool,
}

impl HotDisk {
    /// The hot disk at `image`; a new one of `size` bytes if nothing is there.
    ///
    /// # Errors
    /// [`HotError::NotHot`] for an image with another label (nothing is written),
    /// [`HotError::Create`], [`HotError::Area`].
    pub fn open_or_create(image: &Path, size: u64) -> Result<HotDisk, HotError> {
        let options = DiskOptions {
            size,
            label: Some(HOT_VOLUME_LABEL.into()),
            ..DiskOptions::default()
        };
        match create_disk(image, &options) {
            Ok(()) => Ok(HotDisk {
                created: true,
                ..Self::open(image)?
            }),
            Err(CreateError::Exists { .. }) => Self::open(image),
            Err(e) => Err(e.into()),
        }
    }

    /// The hot disk at `image`, which must exist.
    ///
    /// # Errors
    /// [`HotError::NotHot`], [`HotError::Area`] ([`AreaError::NoImage`] when nothing is
    /// there).
    pub fn open(image: &Path) -> Result<HotDisk, HotError> {
        let image = std::fs::canonicalize(image).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AreaError::NoImage { path: image.into() },
            _ => AreaError::io("resolve", image, e),
        })?;
        let label = BootSector::open(&image)?.label().map(str::to_owned);
        if label.as_deref() != Some(HOT_VOLUME_LABEL) {
            return Err(HotError::NotHot { image, label });
        }
        Ok(HotDisk {
            node: node_name(&image),
            area: open_target(&image)?,
            image,
            created: false,
        })
    }

    /// The image's canonical path.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Its block node name and device id in QEMU.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its shared area, for status, logs and download.
    pub fn area(&self) -> &dyn SharedArea {
        self.area.as_ref()
    }

    /// Whether [`HotDisk::open_or_create`] made it.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Plugs the disk (into which `upload` has just been written, or as it is: the guest
    /// runs nothing that already ran, and marks a run cut off by a crash as aborted)
    /// into the VM behind `qmp`: `blockdev-add` (a raw node on the file), then `device_add virtio-blk-pci`;
    /// if the device is refused, the node is deleted again.
    ///
    /// # Errors
    /// [`HotError::Attach`] with QEMU's answer, [`HotError::NotUtf8`].
    pub fn attach(
        &self,
        qmp: &mut Qmp,
        upload: Option<UploadReport>,
    ) -> Result<AttachReport, HotError> {
        let filename = self.image.to_str().ok_or_else(|| HotError::NotUtf8 {
            image: self.image.clone(),
        })?;
        let start = Instant::now();
        let node = self.node.as_str();
        let failed = |source| HotError::Attach {
            image: self.image.clone(),
            node: node.into(),
            source,
        };
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "raw",
                "node-name": node,
                "file": { "driver": "file", "filename": filename },
            })),
        )
        .map_err(failed)?;
        let device = json!({ "driver": "virtio-blk-pci", "drive": node, "id": node });
        if let Err(e) = qmp.execute("device_add", Some(device)) {
            let _ = qmp.execute("blockdev-del", Some(json!({ "node-name": node })));
            return Err(failed(e));
        }
        Ok(AttachReport {
            image: self.image.clone(),
            node: self.node.clone(),
            created: self.created,
            upload,
            attach_ms: millis(start.elapsed()),
        })
    }

    /// Takes the disk out of the VM behind `qmp` (see the module docs and
    /// [`DetachOptions`]).
    ///
    /// # Errors
    /// [`HotError::Qmp`] when QEMU fails or refuses otherwise than expected;
    /// [`HotError::Area`] reading the boot sector or writing the record;
    /// [`HotError::StillAttached`] when another VM holds the image.
    pub fn detach(&self, qmp: &mut Qmp, options: &DetachOptions) -> Result<DetachReport, HotError> {
        let start = Instant::now();
        let node = self.node.as_str();
        let mut report = DetachReport {
            was_attached: is_attached(qmp, node)?,
            ..DetachReport::default()
        };
        if report.was_attached {
            let boot = BootSector::open(&self.image)?;
            report.released_by_guest = wait_released(|| boot.is_released(), options)?;
            report.waited_ms = millis(start.elapsed());
            let unplugged = Instant::now();
            match qmp.execute("device_del", Some(json!({ "id": node }))) {
                Ok(_) => {}
                // Gone meanwhile (the guest ejected it).
                Err(e) if e.class() == Some("DeviceNotFound") => {}
                Err(e) => return Err(e.into()),
            }
            let is_ours = |data: &serde_json::Value| data["device"] == node;
            match qmp.wait_event("DEVICE_DELETED", is_ours, options.device_timeout) {
                Ok(_) => {}
                Err(QmpError::NoEvent { .. }) if is_attached(qmp, node)? => return Ok(report),
                Err(QmpError::NoEvent { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            report.unplug_ms = Some(millis(unplugged.elapsed()));
        }
        // The node keeps the image open (and shows a re-added disk the old content)
        // until it is deleted; one left by an earlier, interrupted detach goes too.
        match qmp.execute("blockdev-del", Some(json!({ "node-name": node }))) {
            Ok(_) => {}
            Err(QmpError::Command { .. }) if !report.was_attached => {}
            Err(e) => return Err(e.into()),
        }
        report.detached = true;
        if report.was_attached && !report.released_by_guest {
            report.record_written = record_detached(self.area())?;
        }
        Ok(report)
    }
}

/// How [`detach`] waits for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachOptions {
    /// How long to wait for the guest's release mark before taking the disk away.
    pub timeout: Duration,
    /// Take the disk away at once, without waiting for the mark.
    pub force: bool,
    /// How long to wait for QEMU's `DEVICE_DELETED` after `device_del`.
    pub device_timeout: Duration,
}

impl Default for DetachOptions {
    fn default() -> Self {
        DetachOptions {
            timeout: Duration::from_secs(30),
            force: false,
            device_timeout: DEVICE_DELETED_TIMEOUT,
        }
    }
}

/// What [`detach`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DetachReport {
    /// The VM had the disk when `detach` began.
    pub was_attached: bool,
    /// The guest released the disk (its mark was there) before it was taken away.
    pub released_by_guest: bool,
    /// Milliseconds waited for the release mark.
    pub waited_ms: u64,
    /// Milliseconds from `device_del` to QEMU's `DEVICE_DELETED`.
    pub unplug_ms: Option<u64>,
    /// The VM no longer has the disk. False when the guest did not let go of the device
    /// within [`DetachOptions::device_timeout`]: the VM still holds the disk, and nothing
    /// was written to it.
    pub detached: bool,
    /// The host wrote the run's final record ([`AbortReason::Detached`]): the disk was
    /// taken from a run that had not ended.
    pub record_written: bool,
}

/// What [`attach`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachReport {
    /// The image's canonical path.
    pub image: PathBuf,
    /// Its block node name and device id in QEMU.
    pub node: String,
    /// The image was created.
    pub created: bool,
    /// The upload, unless the disk was plugged in again as it was (its job ran, or was
    /// cut off, before).
    pub upload: Option<UploadReport>,
    /// Milliseconds from `blockdev-add` to `device_add`'s reply.
    pub attach_ms: u64,
}

/// How [`attach`] makes and fills the disk.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The upload's options.
    pub upload: UploadOptions,
    /// Size of a disk that is created.
    pub size: u64,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            upload: UploadOptions::default(),
            size: HOT_DISK_SIZE,
        }
    }
}

/// Writes the job from `source` into the hot disk at `image` (created if missing) and
/// plugs it into the VM behind `qmp`.
///
/// # Errors
/// [`HotError::NotHot`], [`HotError::StillAttached`] (nothing is written then), the
/// upload's errors, [`HotError::Attach`].
pub fn attach(
    qmp: &mut Qmp,
    image: &Path,
    source: impl Read + Send,
    options: &AttachOptions,
) -> Result<AttachReport, HotError> {
    let disk = HotDisk::open_or_create(image, options.size)?;
    // A VM that holds the disk refuses the upload as `Busy`: StillAttached, here.
    let upload = upload(disk.area(), source, &options.upload)?;
    disk.attach(qmp, Some(upload))
}

/// Takes the hot disk at `image` out of the VM behind `qmp` (see the module docs).
///
/// # Errors
/// As [`HotDisk::open`] and [`HotDisk::detach`].
pub fn detach(
    qmp: &mut Qmp,
    image: &Path,
    options: &DetachOptions,
) -> Result<DetachReport, HotError> {
    HotDisk::open(image)?.detach(qmp, options)
}

/// Polls `is_released` (a hot disk's release mark, read where the disk is) every 25 ms
/// until it says yes, [`DetachOptions::timeout`] has passed or at once with
/// [`DetachOptions::force`]; returns the last answer. Backend-neutral: [`HotDisk::detach`]
/// reads an image, the libvirt backend a volume through streams.
///
/// # Errors
/// Those of `is_released`.
pub fn wait_released(
    mut is_released: impl FnMut() -> Result<bool, AreaError>,
    options: &DetachOptions,
) -> Result<bool, AreaError> {
    let start = Instant::now();
    loop {
        let released = is_released()?;
        if released || options.force || start.elapsed() >= options.timeout {
            return Ok(released);
        }
        std::thread::sleep(RELEASE_POLL);
    }
}

/// Whether QEMU has a device with id `id`.
fn is_attached(qmp: &mut Qmp, id: &str) -> Result<bool, QmpError> {
    let path = format!("/machine/peripheral/{id}");
    match qmp.execute("qom-list", Some(json!({ "path": path }))) {
        Ok(_) => Ok(true),
        Err(QmpError::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes [`AbortReason::Detached`] as the run's final record into `area` when its
/// record says the run had not ended, and says whether it did; only that slot of the
/// status file changes. An area with no valid record (the guest never started the job)
/// is left as it is. [`HotDisk::detach`] calls it once the VM no longer has the disk.
///
/// # Errors
/// [`HotError::StillAttached`] while a VM holds the image; [`HotError::Area`].
pub fn record_detached(area: &dyn SharedArea) -> Result<bool, HotError> {
    let mut hold = area.hold()?;
    let mut file = Vec::with_capacity(STATUS_FILE_LEN + 1);
    area.read_status_file(StatusRead::Relocate, &mut file)?;
    let Ok(mut record) = read_status(&file) else {
        return Ok(false);
    };
    if record.state.is_terminal() {
        return Ok(false);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    record.state = RunState::Aborted(AbortReason::Detached);
    record.updated_unix = now;
    record.finished_unix = Some(now);
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let offset = StatusWriter::resume(&file)
        .encode(&mut record, &mut slot)
        .expect("a record fits its slot");
    area.write_status_slot(&mut hold, offset, &slot)?;
    Ok(true)
}

/// `d` in whole milliseconds, for reports.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
