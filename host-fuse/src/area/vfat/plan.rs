//! An upload as it will be written: checked names (what vFAT can hold, no two the same
//! ignoring case, no path both a file and a directory), directories first, parents
//! before children, the start script last.

use std::collections::{BTreeMap, HashMap};

use nlxtp_core::layout::START_SCRIPT;

use crate::area::{AreaError, AreaPath, UploadData, UploadFile};

/// Files in the order they are written, directories first (parents before children),
/// the start script last. Every parent of a file is among `dirs`; names are valid vFAT
/// long names, unique ignoring case.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every directory, parents first.
    pub dirs: Vec<AreaPath>,
    /// The files in the order they are written.
    pub files: Vec<(AreaPath, UploadData)>,
}

/// Why a name cannot be a vFAT long file name (as fatfs and Linux's vfat accept them).
fn bad_vfat_name(name: &str) -> Option<String> {
    if name.len() > 255 {
        return Some(format!("a name of {} bytes, more than 255", name.len()));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Some("a name ending in '.' or ' ', which vFAT drops".into());
    }
    name.chars()
        .find(|&c| {
            !(c.is_ascii_alphanumeric()
                // Not C1 controls; not U+FFFF, which is padding in a long name.
                || ('\u{A0}'..='\u{FFFD}').contains(&c)
                || "$%'-_@~`!(){}. +,;=[]^#&".contains(c))
        })
        .map(|c| format!("the character {c:?}, which vFAT cannot hold"))
}

/// A name as vFAT compares it, for collisions: fatfs matches names upper-cased (so
/// "straße" opens "STRASSE"), the reader lower-cased; folding both ways catches both.
fn fold(name: &str) -> String {
    name.to_uppercase().to_lowercase()
}

impl Plan {
    /// Checks and orders `files`.
    ///
    /// # Errors
    /// [`AreaError::BadName`] and [`AreaError::NameCollision`].
    pub fn new(files: Vec<UploadFile>) -> Result<Self, AreaError> {
        // Every path and each of its parents, keyed by the case-folded path.
        let mut seen: HashMap<String, (AreaPath, bool)> = HashMap::new();
        let mut dirs = BTreeMap::new();
        let mut plan = Plan::default();
        let mut script = None;
        for file in files {
            let path = file.path;
            let bad = path.components().find_map(bad_vfat_name);
            if let Some(reason) = bad {
                return Err(AreaError::BadName { path, reason });
            }
            let is_dir = matches!(file.data, UploadData::Dir);
            let mut ancestors = Vec::new();
            let mut at = path.parent();
            while let Some(p) = at {
                at = p.parent();
                ancestors.push(p);
            }
            for (p, dir) in ancestors
                .into_iter()
                .map(|p| (p, true))
                .chain([(path.clone(), is_dir)])
            {
                match seen.get(&fold(p.as_str())) {
                    None => {
                        if dir {
                            dirs.insert((p.components().count(), p.as_str().to_owned()), p.clone());
                        }
                        seen.insert(fold(p.as_str()), (p, dir));
                    }
                    // A parent shared by several files, or a directory named twice.
                    Some((other, true)) if dir && *other == p => {}
                    Some((other, other_dir)) if *other == p && *other_dir != dir => {
                        return Err(AreaError::BadName {
                            path: path.clone(),
                            reason: format!("{p} is both a file and a directory"),
                        })
                    }
                    Some((other, _)) => {
                        return Err(AreaError::NameCollision {
                            first: other.clone(),
                            second: p,
                        })
                    }
                }
            }
            if is_dir {
                continue;
            }
            if path.as_str() == START_SCRIPT {
                script = Some((path, file.data));
            } else {
                plan.files.push((path, file.data));
            }
        }
        plan.dirs = dirs.into_values().collect();
        plan.files.extend(script);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<UploadFile> {
        paths
            .iter()
            .map(|p| UploadFile::bytes(p, b"x".to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn plans_dirs_first_and_the_start_script_last() {
        let plan = Plan::new(files(&["auto_exec.sh", "b/c/d.txt", "a.txt", "b/e"])).unwrap();
        let dirs: Vec<&str> = plan.dirs.iter().map(AreaPath::as_str).collect();
        assert_eq!(dirs, ["b", "b/c"]);
        let order: Vec<&str> = plan.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["b/c/d.txt", "a.txt", "b/e", "auto_exec.sh"]);
    }

    #[test]
    fn rejects_what_vfat_cannot_hold() {
        for (paths, needle) in [
            (&["a/B.txt", "a/b.TXT"][..], "would be the same file"),
            (&["straße", "STRASSE"], "would be the same file"),
            (&["Dir/x", "dir/y"], "would be the same file"),
            (&["x", "x"], "would be the same file"),
            (&["x", "x/y"], "both a file and a directory"),
            (&["x/y", "x"], "both a file and a directory"),
            (&["a:b"], "':'"),
            (&["ok/what?"], "'?'"),
            (&["trailing."], "ending in"),
            (&["emoji\u{1F600}"], "cannot hold"),
            (&["c1\u{85}control"], "cannot hold"),
            (&["pad\u{FFFF}"], "cannot hold"),
        ] {
            let err = Plan::new(files(paths)).unwrap_err().to_string();
            assert!(err.contains(needle), "{paths:?}: {err}");
        }
        let long = "n".repeat(256);
        assert!(Plan::new(files(&[&long])).is_err());
        assert!(Plan::new(files(&["Dir/x", "Dir/y", "dir2/z"])).is_ok());
    }
}
