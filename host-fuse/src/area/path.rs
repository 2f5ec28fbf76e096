//! Paths inside a shared area, checked once so no backend resolves a name a guest
//! planted outside the area.

use std::fmt;

/// A path inside a shared area: relative, `/`-separated, each component non-empty and
/// neither `.` nor `..`, without NUL bytes, at most [`AreaPath::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaPath(String);

/// Why a string is not an [`AreaPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty or starts with `/`, or a component is empty, `.` or `..`.
    #[error("{path:?} is not a relative path inside the area: use names joined by single '/'")]
    NotRelative {
        /// The rejected path.
        path: String,
    },
    /// The path contains a NUL byte.
    #[error("{path:?} contains a NUL byte: remove it")]
    Nul {
        /// The rejected path.
        path: String,
    },
    /// The path is longer than [`AreaPath::MAX_LEN`] bytes.
    #[error(
        "a path of {len} bytes is longer than {} bytes: shorten it",
        AreaPath::MAX_LEN
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl AreaPath {
    /// The longest path accepted, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Checks `path` and wraps it.
    ///
    /// ```
    /// use nlxtp_host::area::AreaPath;
    /// let p = AreaPath::new("nlxtp/status.bin").unwrap();
    /// assert_eq!(p.file_name(), "status.bin");
    /// assert!(AreaPath::new("../etc/passwd").is_err());
    /// ```
    ///
    /// # Errors
    /// [`PathError`] saying which rule the path breaks.
    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        if path.len() > Self::MAX_LEN {
            return Err(PathError::TooLong { len: path.len() });
        }
        if path.contains('\0') {
            return Err(PathError::Nul { path });
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(PathError::NotRelative { path });
        }
        Ok(AreaPath(path))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path without its last component, if it has more than one.
    pub fn parent(&self) -> Option<AreaPath> {
        self.0.rsplit_once('/').map(|(p, _)| AreaPath(p.to_owned()))
    }

    /// This path with `name` appended as a further component.
    ///
    /// # Errors
    /// As [`AreaPath::new`], for `name` containing `/` or being empty, `.` or `..`.
    pub fn join(&self, name: &str) -> Result<AreaPath, PathError> {
        if name.contains('/') {
            return Err(PathError::NotRelative { path: name.into() });
        }
        AreaPath::new(format!("{}/{name}", self.0))
    }
}

impl fmt::Display for AreaPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_paths() {
        for good in ["a", "a/b.txt", "nlxtp/status.bin", "ü ber/x y"] {
            assert_eq!(AreaPath::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", "..", "a\0b"] {
            assert!(AreaPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(AreaPath::new("x".repeat(5000)).is_err());
        let p = AreaPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        assert!(p.join("..").is_err());
        assert!(p.join("d/e").is_err());
        assert_eq!(p.join("d").unwrap().as_str(), "a/b/c/d");
        assert_eq!(nlxtp_core::layout::START_SCRIPT, crate::area::START_SCRIPT);
    }
}
