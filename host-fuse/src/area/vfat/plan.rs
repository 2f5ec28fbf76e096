//! The names of an upload, checked as they come: what vFAT can hold, no two the same
//! ignoring case, no path both a file and a directory; every directory recorded once,
//! parents before children.

use std::collections::HashMap;

use crate::area::{AreaError, AreaPath};

/// The names of an upload so far.
#[derive(Debug, Default)]
pub struct Names {
    /// Every path and each of its parents, keyed by the case-folded path: the path as
    /// given, and whether it is a directory.
    seen: HashMap<String, (AreaPath, bool)>,
    /// Every directory, named or implied by a file in it, parents first.
    pub dirs: Vec<AreaPath>,
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

impl Names {
    /// Checks `path` (a directory if `is_dir`) against the names so far and takes it,
    /// with its parents.
    ///
    /// # Errors
    /// [`AreaError::BadName`] and [`AreaError::NameCollision`]; nothing is taken then.
    pub fn add(&mut self, path: &AreaPath, is_dir: bool) -> Result<(), AreaError> {
        let bad = path.components().find_map(bad_vfat_name);
        if let Some(reason) = bad {
            return Err(AreaError::BadName {
                path: path.clone(),
                reason,
            });
        }
        let mut chain = Vec::new();
        let mut at = path.parent();
        while let Some(p) = at {
            at = p.parent();
            chain.push((p, true));
        }
        // Outermost first, so parents are recorded before their children.
        chain.reverse();
        chain.push((path.clone(), is_dir));
        let mut new = Vec::new();
        for (p, dir) in chain {
            match self.seen.get(&fold(p.as_str())) {
                None => new.push((p, dir)),
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
        for (p, dir) in new {
            if dir {
                self.dirs.push(p.clone());
            }
            self.seen.insert(fold(p.as_str()), (p, dir));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Result<Names, AreaError> {
        let mut names = Names::default();
        for p in paths {
            names.add(&AreaPath::new(*p).unwrap(), false)?;
        }
        Ok(names)
    }

    #[test]
    fn records_each_directory_once_parents_first() {
        let names = names(&["auto_exec.sh", "b/c/d.txt", "a.txt", "b/e"]).unwrap();
        let dirs: Vec<&str> = names.dirs.iter().map(AreaPath::as_str).collect();
        assert_eq!(dirs, ["b", "b/c"]);
        let mut named = Names::default();
        for (p, dir) in [("x/y", true), ("x", true), ("x/y", true)] {
            named.add(&AreaPath::new(p).unwrap(), dir).unwrap();
        }
        let dirs: Vec<&str> = named.dirs.iter().map(AreaPath::as_str).collect();
        assert_eq!(dirs, ["x", "x/y"]);
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
            let err = names(paths).unwrap_err().to_string();
            assert!(err.contains(needle), "{paths:?}: {err}");
        }
        let long = "n".repeat(256);
        assert!(names(&[&long]).is_err());
        assert!(names(&["Dir/x", "Dir/y", "dir2/z"]).is_ok());
    }

    #[test]
    fn a_refused_name_takes_none_of_its_parents() {
        let mut named = names(&["a/x"]).unwrap();
        assert!(named.add(&AreaPath::new("new/A/X").unwrap(), false).is_ok());
        assert!(named
            .add(&AreaPath::new("other/bad?").unwrap(), false)
            .is_err());
        assert!(named.dirs.iter().all(|d| d.as_str() != "other"));
    }
}
