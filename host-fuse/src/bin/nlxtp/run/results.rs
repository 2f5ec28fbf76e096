//! `--out DIR`: the shared area's files, fetched once the job has ended.

use std::fs;
use std::path::Path;

use nlxtp_host::area::{EntryKind, WalkLimits};
use nlxtp_host::ops;

use super::Job;
use crate::Failure;

/// With `--out DIR`: the shared area's files into DIR (created, or empty).
pub(super) fn save_out(job: &Job, disk: &Path) -> Result<(), Failure> {
    let Some(out) = &job.out else { return Ok(()) };
    fs::create_dir_all(out)?;
    if fs::read_dir(out)?.next().is_some() {
        return Err(Failure {
            error: format!(
                "--out {} is not empty; nothing was put there",
                out.display()
            )
            .into(),
            code: 125,
        });
    }
    let area = ops::open_target(disk)?;
    area.walk(&WalkLimits::default(), &mut |entry, reader| {
        // Area paths are relative, with no `..`: they stay beneath `out`.
        let path = out.join(entry.path.as_str());
        match (entry.kind, reader) {
            (EntryKind::Dir, _) => fs::create_dir_all(&path),
            (_, Some(reader)) => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                std::io::copy(reader, &mut file).map(drop)
            }
            (_, None) => Ok(()),
        }
    })?;
    Ok(())
}
