//! `attach` and `detach`: a domain's shared disk made as a volume of a storage pool and
//! added to (removed from) its persistent definition, with the `<serial>` that marks it
//! (see the module docs of [`super`]).

use std::io;
use std::path::Path;

use virt::connect::Connect;
use virt::storage_vol::StorageVol;

use super::{find_shared_disk, upload, xml_escape, LibvirtError, SERIAL};
use crate::area::vfat::{create_disk, DiskOptions};
use crate::area::AreaError;

/// What [`attach`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The pool.
    pub pool: String,
    /// The new volume's name.
    pub volume: String,
    /// The target device it has in the domain (`vdb`).
    pub target: String,
}

fn call(action: &'static str) -> impl Fn(virt::error::Error) -> AreaError {
    move |e| AreaError::io(action, Path::new("libvirt"), io::Error::other(e))
}

/// Makes a shared disk of `options` as a new volume `DOMAIN-nlxtp.img` of `pool` and
/// adds it to the persistent definition of `domain` (a virtio disk with
/// `<serial>NLXTP</serial>`, at the next boot for a running domain).
///
/// # Errors
/// When the domain already has a shared disk, when the volume exists, and libvirt's.
pub fn attach(
    conn: &Connect,
    domain: &str,
    pool: &str,
    options: &DiskOptions,
) -> Result<Attached, AreaError> {
    let dom = conn
        .lookup_domain_by_name(domain)
        .map_err(|source| LibvirtError::NoDomain {
            domain: domain.into(),
            uri: conn.uri().unwrap_or_default(),
            source,
        })?;
    let xml = dom
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .map_err(call("read the definition of the domain"))?;
    match find_shared_disk(domain, &xml) {
        Err(LibvirtError::NoSharedDisk { .. }) => {}
        Ok(disk) => {
            return Err(AreaError::io(
                "attach a shared disk to",
                Path::new(domain),
                io::Error::other(format!(
                    "the domain has one already ({}); detach it first",
                    disk.target
                )),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let target = free_target(&xml);
    let pool_handle = conn
        .lookup_storage_pool_by_name(pool)
        .map_err(call("find the storage pool"))?;
    let volume = format!("{domain}-nlxtp.img");
    let temp = tempfile::tempdir().map_err(|e| AreaError::io("create", Path::new("/tmp"), e))?;
    let image = temp.path().join("shared.img");
    create_disk(&image, options)
        .map_err(|e| AreaError::io("create", &image, io::Error::other(e)))?;
    let vol = StorageVol::create_xml(
        &pool_handle,
        &format!(
            "<volume><name>{}</name><capacity unit='bytes'>{}</capacity>\
             <target><format type='raw'/></target></volume>",
            xml_escape(&volume),
            options.size
        ),
        0,
    )
    .map_err(call("create the shared volume"))?;
    if let Err(e) = upload(conn, &vol, &image, options.size) {
        let _ = vol.delete(0);
        return Err(e);
    }
    let disk = format!(
        "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
         <source pool='{}' volume='{}'/><target dev='{target}' bus='virtio'/>\
         <serial>{SERIAL}</serial></disk>",
        xml_escape(pool),
        xml_escape(&volume)
    );
    if let Err(e) = dom.attach_device_flags(&disk, virt::sys::VIR_DOMAIN_AFFECT_CONFIG) {
        let _ = vol.delete(0);
        return Err(call("add the shared disk to the domain")(e));
    }
    Ok(Attached {
        pool: pool.into(),
        volume,
        target,
    })
}

/// Removes the shared disk from the persistent definition of `domain`, and deletes its
/// volume unless the domain (or another) runs on it; returns whether it was deleted.
///
/// # Errors
/// When the domain has no shared disk, and libvirt's.
pub fn detach(conn: &Connect, domain: &str) -> Result<bool, AreaError> {
    let area = super::LibvirtDomain::open(
        std::sync::Arc::new(conn.clone()),
        &conn.uri().unwrap_or_default(),
        domain,
    )?;
    let (xml, disk, vol, _) = area.volume()?;
    let fragment = xml[disk.element_range.clone()].to_string();
    area.domain
        .detach_device_flags(&fragment, virt::sys::VIR_DOMAIN_AFFECT_CONFIG)
        .map_err(call("remove the shared disk from the domain"))?;
    let path = vol.path().unwrap_or_default();
    if area.active()? || area.used_by_a_running_domain(&disk.source, &path)? {
        return Ok(false);
    }
    vol.delete(0).map_err(call("delete the shared volume"))?;
    Ok(true)
}

/// The first `vdX` the definition does not use.
pub(super) fn free_target(xml: &str) -> String {
    ('b'..='z')
        .map(|c| format!("vd{c}"))
        .find(|dev| {
            !xml.contains(&format!("dev='{dev}'")) && !xml.contains(&format!("dev=\"{dev}\""))
        })
        .unwrap_or_else(|| "vdz".into())
}
