//! Which VMs a mount shows: `--vm NAME=TARGET` arguments and a TOML file.
//!
//! ```toml
//! # vms.toml: one line per VM; a relative TARGET is taken from this file's directory.
//! [vms]
//! web1 = "/var/lib/nlxtp/web1.img"
//! ct2 = "/var/lib/lxc/ct2/rootfs/nlxtp"
//! # A container area below directories the guest controls: resolved beneath the
//! # container's root without following links (as `nlxtp --rootfs`).
//! ct3 = { rootfs = "/var/lib/lxc/ct3/rootfs", area = "/mnt/nlXTP" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;
use crate::area::{AreaError, SharedArea};
use crate::ops;

/// One VM of a mount: the directory name it gets and its shared area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The name of its directory under the mount point.
    pub name: String,
    /// Its disk image or container directory; with `rootfs`, the area's path inside the
    /// container.
    pub target: PathBuf,
    /// A container's root filesystem, beneath which `target` is resolved without
    /// following any link.
    pub rootfs: Option<PathBuf>,
}

impl VmSpec {
    /// Opens its shared area.
    ///
    /// # Errors
    /// As [`ops::open_target`] and [`ops::open_target_in`].
    pub fn open(&self) -> Result<Box<dyn SharedArea>, AreaError> {
        match &self.rootfs {
            None => ops::open_target(&self.target),
            Some(rootfs) => ops::open_target_in(rootfs, &self.target),
        }
    }

    /// Where its area is on the host, for people.
    pub fn shown(&self) -> PathBuf {
        match &self.rootfs {
            None => self.target.clone(),
            Some(rootfs) => rootfs.join(self.target.strip_prefix("/").unwrap_or(&self.target)),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    vms: BTreeMap<String, ConfigEntry>,
}

/// A VM's line in the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum ConfigEntry {
    Target(PathBuf),
    Container(ContainerEntry),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerEntry {
    rootfs: PathBuf,
    area: PathBuf,
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
    })
}

/// Reads the VMs listed in the config file at `path`.
///
/// # Errors
/// [`ConfigError::Unreadable`], [`ConfigError::Invalid`] (its cause names the line and
/// column), [`ConfigError::BadName`].
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
    file.vms
        .into_iter()
        .map(|(name, entry)| {
            check_name(&name)?;
            Ok(match entry {
                ConfigEntry::Target(target) => VmSpec {
                    name,
                    target: base.join(target),
                    rootfs: None,
                },
                ConfigEntry::Container(c) => VmSpec {
                    name,
                    target: c.area,
                    rootfs: Some(base.join(c.rootfs)),
                },
            })
        })
        .collect()
}

/// The VMs of `cli` followed by those of `config`; a name given twice is an error.
///
/// # Errors
/// As [`read_config`], and [`ConfigError::DuplicateName`].
pub fn collect(cli: &[VmSpec], config: Option<&Path>) -> Result<Vec<VmSpec>, ConfigError> {
    let mut all = cli.to_vec();
    if let Some(path) = config {
        all.extend(read_config(path)?);
    }
    let mut seen = std::collections::HashSet::new();
    for spec in &all {
        if !seen.insert(spec.name.as_str()) {
            return Err(ConfigError::DuplicateName {
                name: spec.name.clone(),
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
        let err = collect(&cli, Some(&path)).unwrap_err();
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
}
