//! Which VMs a mount (or `nlxtp-serve`) shows: `--vm NAME=TARGET` arguments, the
//! domains of libvirt connections (`--libvirt URI`), and a TOML file.
//!
//! ```toml
//! # vms.toml: one line per VM; a relative TARGET is taken from this file's directory.
//! [vms]
//! web1 = "/var/lib/nlxtp/web1.img"
//! ct2 = "/var/lib/lxc/ct2/rootfs/nlxtp"
//! # A container area below directories the guest controls: resolved beneath the
//! # container's root without following links (as `nlxtp --rootfs`).
//! ct3 = { rootfs = "/var/lib/lxc/ct3/rootfs", area = "/mnt/nlXTP" }
//! # A libvirt domain's shared disk, on a local or remote connection (feature libvirt:
//! # nlxtp-libvirt, nlxtp-serve built with --features serve,libvirt). Without `domain`,
//! # the domain is named as the VM.
//! db1 = { libvirt = "qemu+tcp://host7/system", domain = "db1" }
//!
//! # Every domain with a shared disk on a connection, named by its domain name (after
//! # `prefix`, default none: give one when two hosts have domains of one name).
//! [[libvirt]]
//! uri = "qemu+tcp://host8/system"
//! prefix = "host8-"
//! ```
//!
//! A name given twice (also a domain's name against another VM's) is an error at start.
//! The domains of a connection are listed when the file is read: at start, and again
//! at each reload of the FUSE view (`SIGHUP`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;
use crate::area::{AreaError, SharedArea};
use crate::ops;

/// What a libvirt VM says in a build without libvirt.
pub(crate) const NO_LIBVIRT: &str = "this build has no libvirt support: use nlxtp-libvirt \
(nlxtp-libvirt mount), or build nlxtp-serve with --features serve,libvirt";

/// How many domains of one connection are opened at once when it is listed.
#[cfg(feature = "libvirt")]
const LIST_THREADS: usize = 8;

/// One VM of a mount: the directory name it gets and its shared area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The name of its directory under the mount point.
    pub name: String,
    /// Its disk image or container directory; with `rootfs`, the area's path inside the
    /// container; with `libvirt`, the domain's name.
    pub target: PathBuf,
    /// A container's root filesystem, beneath which `target` is resolved without
    /// following any link.
    pub rootfs: Option<PathBuf>,
    /// The URI of the libvirt connection that has the domain `target` (feature
    /// `libvirt`; without it, opening such a VM is an error).
    pub libvirt: Option<String>,
}

impl VmSpec {
    /// Opens its shared area: a disk image or container directory, or a libvirt domain
    /// (on the process's one connection to its URI, `area::libvirt::connection`).
    ///
    /// # Errors
    /// As [`ops::open_target`] and [`ops::open_target_in`]; for a libvirt domain, its
    /// `LibvirtError` as an [`AreaError::Io`], or without the
    /// feature an [`AreaError::Io`] that says so.
    pub fn open(&self) -> Result<Box<dyn SharedArea>, AreaError> {
        if let Some(uri) = &self.libvirt {
            return open_libvirt(uri, &self.target);
        }
        match &self.rootfs {
            None => ops::open_target(&self.target),
            Some(rootfs) => ops::open_target_in(rootfs, &self.target),
        }
    }

    /// Where its area is, for people: a path on the host, or `URI#DOMAIN`.
    pub fn shown(&self) -> PathBuf {
        if let Some(uri) = &self.libvirt {
            return PathBuf::from(format!("{uri}#{}", self.target.display()));
        }
        match &self.rootfs {
            None => self.target.clone(),
            Some(rootfs) => rootfs.join(self.target.strip_prefix("/").unwrap_or(&self.target)),
        }
    }

    /// The domain `domain` on the libvirt connection `uri`, as the VM `name`.
    pub fn libvirt_domain(name: &str, uri: &str, domain: &str) -> VmSpec {
        VmSpec {
            name: name.to_owned(),
            target: PathBuf::from(domain),
            rootfs: None,
            libvirt: Some(uri.to_owned()),
        }
    }
}

#[cfg(feature = "libvirt")]
fn open_libvirt(uri: &str, domain: &Path) -> Result<Box<dyn SharedArea>, AreaError> {
    let name = domain.to_string_lossy();
    Ok(Box::new(crate::area::libvirt::open_domain(uri, &name)?))
}

#[cfg(not(feature = "libvirt"))]
fn open_libvirt(uri: &str, domain: &Path) -> Result<Box<dyn SharedArea>, AreaError> {
    let shown = PathBuf::from(format!("{uri}#{}", domain.display()));
    Err(AreaError::io(
        "open",
        &shown,
        std::io::Error::other(NO_LIBVIRT),
    ))
}

/// Every domain with a shared disk on the libvirt connection `uri`, each a VM named
/// `prefix` and its domain name. A domain whose shared disk cannot be used (two marked
/// disks, a source outside a pool) is listed too: opening it says what is wrong.
///
/// # Errors
/// [`ConfigError::Libvirt`] when the connection fails or its domains cannot be listed,
/// [`ConfigError::BadName`], and without the feature `libvirt`
/// [`ConfigError::NoLibvirt`].
pub fn libvirt_vms(uri: &str, prefix: &str) -> Result<Vec<VmSpec>, ConfigError> {
    #[cfg(feature = "libvirt")]
    {
        let domains =
            crate::area::libvirt::shared_domains_at(uri, LIST_THREADS).map_err(|source| {
                ConfigError::Libvirt {
                    uri: uri.to_owned(),
                    source,
                }
            })?;
        domains
            .into_iter()
            .map(|(domain, _)| {
                let name = format!("{prefix}{domain}");
                check_name(&name)?;
                Ok(VmSpec::libvirt_domain(&name, uri, &domain))
            })
            .collect()
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = prefix;
        Err(ConfigError::NoLibvirt {
            what: format!("{uri} is a libvirt connection"),
        })
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    vms: BTreeMap<String, ConfigEntry>,
    /// Connections whose every domain with a shared disk is a VM.
    #[serde(default)]
    libvirt: Vec<LibvirtSource>,
}

/// A `[[libvirt]]` table of the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LibvirtSource {
    uri: String,
    #[serde(default)]
    prefix: String,
}

/// A VM's line in the config file.
#[derive(Debug)]
enum ConfigEntry {
    Target(PathBuf),
    Container {
        rootfs: PathBuf,
        area: PathBuf,
    },
    Domain {
        libvirt: String,
        domain: Option<String>,
    },
}

/// The keys a VM's table may have; which of them go together is checked after.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryTable {
    rootfs: Option<PathBuf>,
    area: Option<PathBuf>,
    libvirt: Option<String>,
    domain: Option<String>,
}

impl<'de> serde::Deserialize<'de> for ConfigEntry {
    // By hand rather than `untagged`: serde's untagged enums drop the inner error, and
    // the user should read "unknown field `path`" at its line and column.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ConfigEntry;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a path, { rootfs = ..., area = ... } or { libvirt = URI, domain = ... }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ConfigEntry, E> {
                Ok(ConfigEntry::Target(PathBuf::from(text)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ConfigEntry, A::Error> {
                use serde::de::Error;
                use serde::Deserialize;
                let table =
                    EntryTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match table {
                    EntryTable {
                        rootfs: Some(rootfs),
                        area: Some(area),
                        libvirt: None,
                        domain: None,
                    } => Ok(ConfigEntry::Container { rootfs, area }),
                    EntryTable {
                        rootfs: None,
                        area: None,
                        libvirt: Some(libvirt),
                        domain,
                    } => Ok(ConfigEntry::Domain { libvirt, domain }),
                    _ => Err(A::Error::custom(
                        "a VM's table holds either rootfs and area (a container) or libvirt \
                         and, optionally, domain (a libvirt domain)",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

/// Checks that `name` can be a directory name of the view.
///
/// # Errors
/// [`ConfigError::BadName`] saying why not.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name.contains('/') || name.contains('\0') {
        Some("it contains '/' or a NUL byte")
    } else if name.starts_with('.') {
        Some("it starts with '.' (reserved for the view's own files)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::BadName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Parses one `NAME=TARGET` argument.
///
/// # Errors
/// [`ConfigError::BadVmArg`] without `=`, [`ConfigError::BadName`] for a bad name.
pub fn parse_vm_arg(arg: &str) -> Result<VmSpec, ConfigError> {
    let (name, target) = arg.split_once('=').ok_or_else(|| ConfigError::BadVmArg {
        arg: arg.to_owned(),
    })?;
    check_name(name)?;
    if target.is_empty() {
        return Err(ConfigError::BadVmArg {
            arg: arg.to_owned(),
        });
    }
    Ok(VmSpec {
        name: name.to_owned(),
        target: PathBuf::from(target),
        rootfs: None,
        libvirt: None,
    })
}

/// Reads the VMs listed in the config file at `path`, listing the domains of its
/// `[[libvirt]]` connections.
///
/// # Errors
/// [`ConfigError::Unreadable`], [`ConfigError::Invalid`] (its cause names the line and
/// column), [`ConfigError::BadName`]; for libvirt domains, [`ConfigError::Libvirt`]
/// and, without the feature `libvirt`, [`ConfigError::NoLibvirt`].
pub fn read_config(path: &Path) -> Result<Vec<VmSpec>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let file: ConfigFile = toml::from_str(&text).map_err(|source| ConfigError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs = file
        .vms
        .into_iter()
        .map(|(name, entry)| {
            check_name(&name)?;
            Ok(match entry {
                ConfigEntry::Target(target) => VmSpec {
                    name,
                    target: base.join(target),
                    rootfs: None,
                    libvirt: None,
                },
                ConfigEntry::Container { rootfs, area } => VmSpec {
                    name,
                    target: area,
                    rootfs: Some(base.join(rootfs)),
                    libvirt: None,
                },
                ConfigEntry::Domain { libvirt, domain } => {
                    if cfg!(not(feature = "libvirt")) {
                        return Err(ConfigError::NoLibvirt {
                            what: format!(
                                "the VM {name} of {} is a libvirt domain",
                                path.display()
                            ),
                        });
                    }
                    let domain = domain.unwrap_or_else(|| name.clone());
                    VmSpec::libvirt_domain(&name, &libvirt, &domain)
                }
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    for source in &file.libvirt {
        specs.extend(libvirt_vms(&source.uri, &source.prefix)?);
    }
    Ok(specs)
}

/// The VMs of `cli`, then every domain with a shared disk on each connection of
/// `libvirt` ([`libvirt_vms`], without a prefix), then those of `config`; a name given
/// twice is an error.
///
/// # Errors
/// As [`read_config`] and [`libvirt_vms`], and [`ConfigError::DuplicateName`].
pub fn collect_vms(
    cli: &[VmSpec],
    libvirt: &[String],
    config: Option<&Path>,
) -> Result<Vec<VmSpec>, ConfigError> {
    let mut all = cli.to_vec();
    for uri in libvirt {
        all.extend(libvirt_vms(uri, "")?);
    }
    if let Some(path) = config {
        all.extend(read_config(path)?);
    }
    let mut seen = std::collections::HashMap::new();
    for spec in &all {
        if let Some(first) = seen.insert(spec.name.as_str(), spec.shown()) {
            return Err(ConfigError::DuplicateName {
                name: spec.name.clone(),
                first,
                second: spec.shown(),
            });
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_args_and_names() {
        let spec = parse_vm_arg("web1=/x/y.img").unwrap();
        assert_eq!(spec.name, "web1");
        assert_eq!(spec.target, PathBuf::from("/x/y.img"));
        assert_eq!(parse_vm_arg("a=b=c").unwrap().target, PathBuf::from("b=c"));
        for bad in ["noequals", "=x", "a/b=x", ".hidden=x", "a="] {
            assert!(parse_vm_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_file_relative_targets_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vms.toml");
        std::fs::write(&path, "[vms]\nb = \"b.img\"\na = \"/abs/a.img\"\n").unwrap();
        let specs = read_config(&path).unwrap();
        assert_eq!(specs[0].name, "a");
        assert_eq!(specs[0].target, PathBuf::from("/abs/a.img"));
        assert_eq!(specs[1].target, dir.path().join("b.img"));
        let cli = vec![parse_vm_arg("a=/other.img").unwrap()];
        let err = collect_vms(&cli, &[], Some(&path)).unwrap_err();
        assert!(matches!(err, ConfigError::DuplicateName { .. }), "{err}");
        std::fs::write(&path, "[vm]\n").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("vms.toml"), "{err}");
        // toml's own error, with its line and column, is the cause.
        std::fs::write(&path, "[vms]\na = \"a.img\"\nb = 3\n").unwrap();
        let err = read_config(&path).unwrap_err();
        let cause = std::error::Error::source(&err)
            .expect("a cause")
            .to_string();
        assert!(cause.contains("line 3, column 5"), "{cause}");
        assert!(!err.to_string().contains("line 3"), "not repeated: {err}");
    }

    #[test]
    fn config_file_containers_beneath_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vms.toml");
        let text = "[vms]\nct = { rootfs = \"ct/rootfs\", area = \"/mnt/nlXTP\" }\n";
        std::fs::write(&path, text).unwrap();
        let specs = read_config(&path).unwrap();
        assert_eq!(specs[0].rootfs, Some(dir.path().join("ct/rootfs")));
        assert_eq!(specs[0].target, PathBuf::from("/mnt/nlXTP"));
        assert_eq!(specs[0].shown(), dir.path().join("ct/rootfs/mnt/nlXTP"));
        let typo = "[vms]\nct = { rootfs = \"r\", path = \"/a\" }\n";
        std::fs::write(&path, typo).unwrap();
        assert!(read_config(&path).is_err(), "unknown keys are refused");
    }

    #[test]
    fn config_file_libvirt_domains_and_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vms.toml");
        let text = "[vms]\nimg = \"a.img\"\n\
                    db1 = { libvirt = \"qemu+tcp://h7/system\", domain = \"db-one\" }\n\
                    web2 = { libvirt = \"qemu:///system\" }\n";
        std::fs::write(&path, text).unwrap();
        if cfg!(feature = "libvirt") {
            let specs = read_config(&path).unwrap();
            assert_eq!(specs[0].name, "db1");
            assert_eq!(specs[0].libvirt.as_deref(), Some("qemu+tcp://h7/system"));
            assert_eq!(specs[0].target, PathBuf::from("db-one"));
            assert_eq!(
                specs[0].shown(),
                PathBuf::from("qemu+tcp://h7/system#db-one")
            );
            assert_eq!(specs[1].libvirt, None);
            assert_eq!(
                specs[2].target,
                PathBuf::from("web2"),
                "the VM's name by default"
            );
        } else {
            let e = read_config(&path).unwrap_err();
            assert!(e.to_string().contains("nlxtp-libvirt"), "{e}");
        }
        // Keys of two kinds, and unknown keys: at their line and column.
        for (bad, says) in [
            (
                "[vms]\na = \"a.img\"\nx = { libvirt = \"qemu:///system\", area = \"/a\" }\n",
                "either rootfs and area",
            ),
            (
                "[vms]\na = \"a.img\"\nx = { libvirt = \"qemu:///system\", domian = \"d\" }\n",
                "unknown field `domian`",
            ),
            (
                "[vms]\na = \"a.img\"\nx = { rootfs = \"r\" }\n",
                "either rootfs and area",
            ),
            (
                "[[libvirt]]\nuri = \"qemu:///system\"\nprefx = \"h-\"\n",
                "unknown field `prefx`",
            ),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_config(&path).unwrap_err();
            let cause = std::error::Error::source(&err)
                .expect("a cause")
                .to_string();
            assert!(cause.contains(says), "{bad}: {cause}");
            assert!(cause.contains("line 3"), "{bad}: {cause}");
        }
        // A connection that cannot be reached is an error at start that names it.
        std::fs::write(
            &path,
            "[[libvirt]]\nuri = \"qemu+tcp://127.0.0.1:1/system\"\n",
        )
        .unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("qemu+tcp://127.0.0.1:1/system"), "{err}");
    }

    #[test]
    fn a_libvirt_vm_in_a_build_without_libvirt_says_what_to_use() {
        let spec = VmSpec::libvirt_domain("web1", "qemu:///nowhere-here", "web1");
        if cfg!(not(feature = "libvirt")) {
            let err = spec.open().unwrap_err();
            let cause = std::error::Error::source(&err)
                .expect("a cause")
                .to_string();
            assert!(cause.contains("no libvirt support"), "{err}: {cause}");
        }
        let dup = collect_vms(
            &[parse_vm_arg("web1=/a.img").unwrap(), spec.clone()],
            &[],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            dup.contains("/a.img") && dup.contains("qemu:///nowhere-here#web1"),
            "{dup}"
        );
        assert!(dup.contains("prefix"), "{dup}");
    }
}
