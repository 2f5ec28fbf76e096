//! An upload into a domain's shared volume ([`SharedArea::begin_replace`]).
//!
//! At the start the new image is begun in a local temporary file and a new volume is
//! created beside the old one. The file data goes into the image as the archive is read
//! (the vFAT writer lays it down first, in one sequential run, and never writes it
//! again), and, where a new volume reads as zeros, into the new volume too, a step of
//! [`EARLY_STEP`] bytes at a time, by a thread of its own (`send::Sender`). The commit
//! writes the directories and FATs, sends what was not sent yet, switches the domain's
//! definition to the new volume, and deletes the old one. An upload given up (an error,
//! the upload dropped) deletes its new volume; the definition never saw it.
//!
//! [`SharedArea::begin_replace`]: crate::area::SharedArea::begin_replace

use std::io::Read;
use std::ops::Range;

use tempfile::NamedTempFile;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::source::VolumeSource;
use super::{
    new_volume_name, permissions_of, send, xml_escape, CloneRef, DiskSource, LibvirtDomain,
    SharedDisk,
};
use crate::area::vfat::{self, ImageFile, Window};
use crate::area::{AreaError, AreaPath, Durability, ReplaceStream};

/// File data sent into the new volume while the build goes on, at least this much at a
/// time (each send is a stream of its own: a few round trips).
const EARLY_STEP: u64 = 2 << 20;

/// A new volume that is deleted unless [`NewVolume::keep`] was called.
struct NewVolume {
    volume: StorageVol,
    name: String,
    kept: bool,
}

impl NewVolume {
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for NewVolume {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = self.volume.delete(0) {
                tracing::warn!(
                    "could not delete the volume {} of an upload given up: {e}",
                    self.name
                );
            }
        }
    }
}

/// An upload into a domain's shared volume, under way (see the module docs).
pub(super) struct VolumeUpload<'a> {
    domain: &'a LibvirtDomain,
    started: std::time::Instant,
    /// The domain's persistent definition, as read at the start.
    xml: String,
    disk: SharedDisk,
    old: StorageVol,
    pool: StoragePool,
    len: u64,
    builder: vfat::Builder<Window<send::Written<ImageFile>>>,
    /// The file data's sender, where new volumes read as zeros. Before `new`: dropped
    /// (its thread stopped) before the volume is deleted.
    early: Option<send::Sender>,
    /// Where the file data not yet handed to `early` starts, in the volume.
    early_from: u64,
    new: NewVolume,
    /// Last: removed after the image's file is closed.
    temp: NamedTempFile,
}

impl<'a> VolumeUpload<'a> {
    /// Starts an upload into `domain`, refused while it is active.
    pub(super) fn begin(domain: &'a LibvirtDomain) -> Result<Self, AreaError> {
        let started = std::time::Instant::now();
        domain.refuse_if_active()?;
        let (xml, disk, old, len) = domain.volume()?;
        let old_source =
            VolumeSource::new(domain.conn.clone(), old.clone_ref()?, len, &domain.location);
        // The new image, built locally.
        let temp = tempfile::Builder::new()
            .prefix(".nlxtp-libvirt-")
            .suffix(".img")
            .tempfile()
            .map_err(|e| AreaError::io("create a temporary image for", &domain.location, e))?;
        let open = || {
            temp.as_file()
                .try_clone()
                .map_err(|e| AreaError::io("open", temp.path(), e))
        };
        let file = open()?;
        file.set_len(len)
            .map_err(|e| AreaError::io("size", temp.path(), e))?;
        let new_disk = ImageFile::with_len(file, len, temp.path());
        let builder = vfat::start_build(
            &old_source,
            send::Written::new(new_disk),
            Durability::Unsynced,
        )?;
        // The new volume, in the old one's pool, with its mode and owner: what libvirt's
        // DAC driver gives back to a volume when a domain that ran on it stops.
        let pool = old
            .lookup_storage_pool()
            .map_err(domain.call("find the pool of the shared volume of"))?;
        let name = new_volume_name(&domain.name);
        let permissions = old
            .xml_desc(0)
            .map(|xml| permissions_of(&xml))
            .unwrap_or_default();
        let volume = StorageVol::create_xml(
            &pool,
            &format!(
                "<volume><name>{name}</name><capacity unit='bytes'>{len}</capacity>\
                 <target><format type='raw'/>{permissions}</target></volume>"
            ),
            0,
        )
        .map_err(domain.call("create a new volume for"))?;
        let new = NewVolume {
            volume,
            name,
            kept: false,
        };
        let early = if send::new_volumes_read_as_zeros(&pool) {
            Some(send::Sender::start(
                domain.conn.clone(),
                new.volume.clone_ref()?,
                open()?,
                temp.path(),
            )?)
        } else {
            None
        };
        Ok(VolumeUpload {
            domain,
            started,
            xml,
            disk,
            old,
            pool,
            len,
            early_from: 0,
            builder,
            early,
            new,
            temp,
        })
    }

    /// Hands the file data written since the last step to the sender, once there is
    /// [`EARLY_STEP`] of it.
    fn send_early(&mut self) {
        let Some(early) = &mut self.early else {
            return;
        };
        let offset = self.builder.volume().offset();
        let data = self.builder.data_written();
        let from = self.early_from.max(offset + data.start);
        let to = offset + data.end;
        if to >= from + EARLY_STEP {
            early.send(from..to);
            self.early_from = to;
        }
    }
}

impl ReplaceStream for VolumeUpload<'_> {
    fn dir(&mut self, path: AreaPath, _mode: u32) -> Result<(), AreaError> {
        self.builder.dir(&path)
    }

    fn file(
        &mut self,
        path: AreaPath,
        _mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), AreaError> {
        self.builder.file(path, len, data)?;
        self.send_early();
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), AreaError> {
        let VolumeUpload {
            domain,
            started,
            xml,
            disk,
            old,
            pool,
            len,
            builder,
            early,
            mut new,
            temp,
            ..
        } = *self;
        let written = match builder.finish() {
            Ok(volume) => volume.into_inner(),
            Err(e) => {
                // The sender stops before the new volume goes (`new` is dropped next).
                drop(early);
                return Err(e);
            }
        };
        let built = started.elapsed();
        // What is not in the new volume yet: everything, or what the build wrote but
        // for the file data handed to the early sender (never written again). The
        // sender takes that too: the data's tail first, which it sends with what it
        // still holds, in one stream.
        let (ranges, early_sent) = match early {
            Some(mut early) => {
                let early_sent = early.handed().to_vec();
                let mut rest = send::subtract(written.ranges(send::MERGE_GAP), &early_sent);
                rest.sort_by_key(|r| std::cmp::Reverse(r.start));
                for range in &rest {
                    early.send(range.clone());
                }
                early.finish()?;
                (rest, early_sent)
            }
            None => {
                let all = std::iter::once(0..len).collect::<Vec<_>>();
                let file = written.inner().file();
                send::upload(&domain.conn, &new.volume, file, temp.path(), &all)?;
                (all, Vec::new())
            }
        };
        let bytes = |ranges: &[Range<u64>]| ranges.iter().map(|r| r.end - r.start).sum::<u64>();
        tracing::debug!(
            "built the new image in {built:?}; sent {} of its {len} bytes while building and {} in {} stream(s) after, in {:?}",
            bytes(&early_sent),
            bytes(&ranges),
            ranges.len(),
            started.elapsed() - built
        );
        // The local image goes away (freeing its blocks takes a moment) while the
        // domain is switched.
        std::thread::scope(|scope| {
            scope.spawn(move || drop((written, temp)));
            domain.switch_volume(&xml, &disk, &old, &pool, &mut new)
        })
    }
}

impl LibvirtDomain {
    /// Switches the shared `disk` of the definition `xml` from `old` to `new` (kept from
    /// then on), then deletes `old` when no running domain uses it.
    fn switch_volume(
        &self,
        xml: &str,
        disk: &SharedDisk,
        old: &StorageVol,
        pool: &StoragePool,
        new: &mut NewVolume,
    ) -> Result<(), AreaError> {
        let old_name = old.name().map_err(self.call("name the shared volume of"))?;
        // Switched over in one redefinition of the persistent definition.
        let source_xml = match &disk.source {
            DiskSource::Volume { pool, .. } => format!(
                "<source pool='{}' volume='{}'/>",
                xml_escape(pool),
                xml_escape(&new.name)
            ),
            DiskSource::File(_) => format!(
                "<source file='{}'/>",
                xml_escape(
                    &new.volume
                        .path()
                        .map_err(self.call("find the path of the new volume of"))?
                )
            ),
        };
        let mut defined = xml.to_owned();
        defined.replace_range(disk.source_range.clone(), &source_xml);
        self.refuse_if_active()?;
        self.conn
            .define_domain_xml(&defined)
            .map_err(self.call("switch the shared disk of"))?;
        new.keep();
        tracing::info!(
            "domain {} now uses volume {} (was {old_name})",
            self.name,
            new.name
        );
        // The old volume goes only when no running domain uses it; meanwhile, what
        // interrupted uploads left.
        std::thread::scope(|scope| {
            scope.spawn(|| self.clean_leftovers(pool, &[&new.name, &old_name]));
            let used = scope.spawn(|| {
                let old_path = old.path().unwrap_or_default();
                self.used_by_a_running_domain(&disk.source, &old_path)
            });
            let active = self.active();
            let used = used.join().unwrap_or_else(|_| {
                Err(AreaError::io(
                    "list the running domains of",
                    &self.location,
                    std::io::Error::other("the listing thread failed"),
                ))
            });
            if !active? && !used? {
                old.delete(0)
                    .map_err(self.call("delete the old shared volume of"))?;
            } else {
                tracing::warn!("kept the old volume {old_name}: a running domain uses it");
            }
            Ok(())
        })
    }
}
