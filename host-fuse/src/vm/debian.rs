//! Debian packages in the cache: `apt-get download`, then `dpkg-deb -x`, once per
//! package, under a file lock so that parallel runs fetch it once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Arch;

/// Why a package could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// apt knows no such package (or no version of the meta-package's dependency).
    #[error("apt does not know {package}: run `apt-get update` (for another architecture first `dpkg --add-architecture {arch}`), or name a kernel with --kernel")]
    Unknown {
        /// The package asked for.
        package: String,
        /// Its Debian architecture.
        arch: &'static str,
    },
    /// A tool failed.
    #[error("{command} failed ({status})")]
    Tool {
        /// The command line, shortened.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// A tool could not be started, or a cache file not written.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
        let what = what.into();
        move |source| FetchError::Io { what, source }
    }
}

/// Runs `command`; an error unless it succeeds.
pub(crate) fn run(command: &mut Command, name: &str) -> Result<(), FetchError> {
    let status = command
        .status()
        .map_err(FetchError::io(format!("starting {name}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(FetchError::Tool {
            command: name.to_owned(),
            status,
        })
    }
}

/// The versioned package a meta-package (`linux-image-amd64`) depends on first.
///
/// # Errors
/// [`FetchError::Unknown`] when apt's lists do not have it.
pub fn depends_of(meta: &str, arch: Arch) -> Result<String, FetchError> {
    let out = Command::new("apt-cache")
        .args(["depends", &format!("{meta}:{}", arch.debian())])
        .stderr(Stdio::null())
        .output()
        .map_err(FetchError::io("starting apt-cache"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|name| name.split(':').next().unwrap_or(name).to_owned())
        .ok_or(FetchError::Unknown {
            package: meta.to_owned(),
            arch: arch.debian(),
        })
}

/// The unpacked root of `package` for `arch` in the cache, fetching it first if needed.
/// `note` hears one line when a download starts; apt's own progress goes to standard
/// error.
///
/// # Errors
/// When apt cannot download the package or dpkg-deb cannot unpack it.
pub fn package(
    package: &str,
    arch: Arch,
    note: &mut dyn FnMut(&str),
) -> Result<PathBuf, FetchError> {
    let cache = super::cache_dir().join("packages");
    let root = cache.join(format!("{package}_{}", arch.debian()));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    fs::create_dir_all(&cache).map_err(FetchError::io(format!("creating {}", cache.display())))?;
    let _lock = lock(&cache)?;
    if root.join(".complete").exists() {
        return Ok(root);
    }
    note(&format!(
        "fetching {package} ({}) once; cached in {}",
        arch.debian(),
        cache.display()
    ));
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&cache)
        .map_err(FetchError::io("creating a download directory"))?;
    let mut apt = Command::new("apt-get");
    apt.arg("download");
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        apt.arg("-q");
    }
    run(
        apt.arg(format!("{package}:{}", arch.debian()))
            .current_dir(work.path())
            .stdout(Stdio::null()),
        &format!("apt-get download {package}:{}", arch.debian()),
    )?;
    let deb = fs::read_dir(work.path())
        .map_err(FetchError::io("listing the download"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or(FetchError::Unknown {
            package: package.to_owned(),
            arch: arch.debian(),
        })?;
    unpack_deb(&deb, &root)?;
    Ok(root)
}

/// Unpacks the package file `deb` into `root` (replacing what is there), marking it
/// complete last, so an interrupted unpack is done again.
///
/// # Errors
/// When dpkg-deb fails or the directory cannot be made.
pub fn unpack_deb(deb: &Path, root: &Path) -> Result<(), FetchError> {
    let parent = root.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(FetchError::io(format!("creating {}", parent.display())))?;
    let unpacked = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .map_err(FetchError::io("creating an unpack directory"))?;
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(unpacked.path()),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    File::create(unpacked.path().join(".complete"))
        .map_err(FetchError::io("marking the unpack complete"))?;
    let _ = fs::remove_dir_all(root);
    let kept = unpacked.keep();
    fs::rename(&kept, root).map_err(FetchError::io(format!("moving to {}", root.display())))?;
    Ok(())
}

/// An exclusive lock on `dir/.lock`, held until the file is dropped.
pub(crate) fn lock(dir: &Path) -> Result<File, FetchError> {
    let file = File::create(dir.join(".lock"))
        .map_err(FetchError::io(format!("creating {}/.lock", dir.display())))?;
    file.lock()
        .map_err(FetchError::io(format!("locking {}", dir.display())))?;
    Ok(file)
}
