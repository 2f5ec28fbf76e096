//! Downloads as the host makes them, for every front end: the busy policy, then the
//! archive ([`write_download`]) into a writer or a file.
//!
//! The busy policy: an image that a running VM holds is packed only when its run is
//! done, or when the caller accepts files that may be mid-write (`live`). A download into
//! a file is written beside it and renamed into place, so that the name never holds half
//! an archive.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::archive::{write_download, Compression, DownloadReport};
use super::status::status;
use crate::area::{AreaError, SharedArea, StatusError, WalkLimits};

/// Why a download failed. A download into a file leaves no archive under its name then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// A running VM holds the image and its run is not done, and the caller did not
    /// accept files that may be mid-write.
    #[error("the VM is running and its run is not done: wait for it (nlxtp wait), or pass --live to pack files that may be mid-write")]
    RunNotDone,
    /// The area could not be read, or the archive not written.
    #[error(transparent)]
    Area(#[from] AreaError),
    /// The status could not be read to tell whether the run is done.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The file the archive is written to first could not be created.
    #[error("cannot create {}", path.display())]
    Create {
        /// The file, beside the output.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The finished archive could not be renamed to the output's name.
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        /// The finished archive.
        from: PathBuf,
        /// The output's name.
        to: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// How a download is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadOptions {
    /// The archive's compression.
    pub compression: Compression,
    /// Bounds on the walk of the area.
    pub limits: WalkLimits,
}

/// A download that the busy policy allows, not yet packed: the check first, so that a
/// caller can warn before packing files that may be mid-write.
#[derive(Debug)]
pub struct PreparedDownload<'a> {
    area: &'a dyn SharedArea,
    mid_run: bool,
}

/// The first step of a download: the busy policy. An area that a running VM holds may be
/// packed only when its run is done, or with `live` (its files may then be mid-write).
///
/// # Errors
/// [`DownloadError::RunNotDone`] when the VM runs, its run goes on and `live` is false;
/// [`DownloadError::Area`] and [`DownloadError::Status`] when the area or its status
/// cannot be read.
pub fn prepare_download(
    area: &dyn SharedArea,
    live: bool,
) -> Result<PreparedDownload<'_>, DownloadError> {
    let mut mid_run = false;
    if area.is_busy()? {
        let report = status(area)?;
        let done = report.record.as_ref().is_some_and(|r| r.done);
        if !done && !live {
            return Err(DownloadError::RunNotDone);
        }
        mid_run = !done;
    }
    Ok(PreparedDownload { area, mid_run })
}

impl PreparedDownload<'_> {
    /// Whether the VM runs and its run goes on: files being written may be inconsistent
    /// in the archive (only with `live`).
    pub fn is_mid_run(&self) -> bool {
        self.mid_run
    }

    /// Packs the area into `out`; `progress` is called with the bytes packed so far.
    ///
    /// # Errors
    /// [`DownloadError::Area`]: the walk's errors, or writing to `out` failed
    /// ([`AreaError::Sink`]).
    pub fn to_writer(
        self,
        out: impl Write,
        options: &DownloadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<DownloadReport, DownloadError> {
        Ok(write_download(
            self.area,
            out,
            options.compression,
            &options.limits,
            progress,
        )?)
    }

    /// Packs the area into the file `path`: written as `path` with the extension
    /// `partial` first, then renamed, so that `path` never holds half an archive.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use nlxtp_host::area::WalkLimits;
    /// use nlxtp_host::ops::{self, Compression, DownloadOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let area_dir = dir.path().join("area");
    /// std::fs::create_dir(&area_dir)?;
    /// std::fs::write(area_dir.join("result.txt"), "42\n")?;
    /// let area = ops::open_target(&area_dir)?;
    ///
    /// let output = dir.path().join("results.tar.gz");
    /// let options = DownloadOptions {
    ///     compression: Compression::from_name(&output),
    ///     limits: WalkLimits::default(),
    /// };
    /// let report = ops::prepare_download(area.as_ref(), false)?
    ///     .to_file(&output, &options, &mut |_| {})?;
    /// assert_eq!((report.files, report.bytes), (1, 3));
    /// assert!(output.is_file() && !dir.path().join("results.tar.partial").exists());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`to_writer`](Self::to_writer), and [`DownloadError::Create`] and
    /// [`DownloadError::Rename`]. When packing fails, the partial file is removed.
    pub fn to_file(
        self,
        path: &Path,
        options: &DownloadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<DownloadReport, DownloadError> {
        let tmp = path.with_extension("partial");
        let file = File::create(&tmp).map_err(|source| DownloadError::Create {
            path: tmp.clone(),
            source,
        })?;
        match self.to_writer(io::BufWriter::new(file), options, progress) {
            Ok(report) => {
                std::fs::rename(&tmp, path).map_err(|source| DownloadError::Rename {
                    from: tmp,
                    to: path.to_path_buf(),
                    source,
                })?;
                Ok(report)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DownloadOptions {
        DownloadOptions {
            compression: Compression::None,
            limits: WalkLimits::default(),
        }
    }

    #[test]
    fn a_failed_download_leaves_nothing_under_either_name() {
        let dir = tempfile::tempdir().unwrap();
        let area_dir = dir.path().join("area");
        std::fs::create_dir(&area_dir).unwrap();
        std::fs::write(area_dir.join("a.txt"), "a").unwrap();
        std::fs::write(area_dir.join("b.txt"), "b").unwrap();
        let area = super::super::open_target(&area_dir).unwrap();
        let output = dir.path().join("out.tar");
        let tight = DownloadOptions {
            limits: WalkLimits {
                max_entries: 1,
                ..WalkLimits::default()
            },
            ..options()
        };
        let failed =
            prepare_download(area.as_ref(), false)
                .unwrap()
                .to_file(&output, &tight, &mut |_| {});
        assert!(matches!(failed, Err(DownloadError::Area(_))), "{failed:?}");
        assert!(!output.exists() && !dir.path().join("out.partial").exists());

        let missing = dir.path().join("no-such-dir/out.tar");
        let failed = prepare_download(area.as_ref(), false).unwrap().to_file(
            &missing,
            &options(),
            &mut |_| {},
        );
        assert!(
            matches!(failed, Err(DownloadError::Create { .. })),
            "{failed:?}"
        );

        let report = prepare_download(area.as_ref(), false)
            .unwrap()
            .to_file(&output, &options(), &mut |_| {})
            .unwrap();
        assert_eq!(report.files, 2);
        assert!(output.is_file() && !dir.path().join("out.partial").exists());
    }
}
