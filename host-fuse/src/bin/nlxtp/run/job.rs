//! The job's shared disk: sized for what is uploaded, made, and given the job's archive
//! (the archive given, or one made of the command or script and `--upload`).

use std::fs;
use std::io::Read;
use std::path::Path;

use nlxtp_host::area::vfat::{create_disk, DiskOptions};
use nlxtp_host::area::Durability;
use nlxtp_host::ops::{self, UploadOptions};

use super::{Job, HEARTBEAT_MS};
use crate::Failure;

/// Makes the shared disk at `disk` and uploads the job's archive to it.
pub(super) fn prepare_disk(job: &Job, disk: &Path) -> Result<(), Failure> {
    create_disk(
        disk,
        &DiskOptions {
            size: disk_size(job)?,
            ..DiskOptions::default()
        },
    )?;
    let area = ops::open_target(disk)?;
    let options = UploadOptions {
        durability: Durability::Unsynced,
        heartbeat_ms: Some(HEARTBEAT_MS),
        ..UploadOptions::default()
    };
    ops::upload(area.as_ref(), job_archive(job)?, &options)?;
    Ok(())
}

/// The shared disk's size: as asked, else 64 MiB plus twice what is uploaded.
fn disk_size(job: &Job) -> Result<u64, Failure> {
    if let Some(size) = job.disk_size {
        return Ok(size);
    }
    let mut bytes = 0u64;
    for path in job.upload.iter().chain(&job.archive) {
        bytes += tree_size(path)?;
    }
    Ok((64 << 20) + (bytes * 2).div_ceil(1 << 20) * (1 << 20))
}

fn tree_size(path: &Path) -> Result<u64, Failure> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .map_err(|e| Failure {
            error: e.into(),
            code: 125,
        })?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path)?.flatten() {
        total += tree_size(&entry.path())?;
    }
    Ok(total)
}

/// The job as an archive to upload.
fn job_archive(job: &Job) -> Result<Box<dyn Read + Send>, Failure> {
    if let Some(archive) = &job.archive {
        let file = fs::File::open(archive).map_err(|e| Failure {
            error: format!("cannot open the archive {}: {e}", archive.display()).into(),
            code: 125,
        })?;
        return Ok(Box::new(file));
    }
    let script = match (&job.script, job.command.is_empty()) {
        (Some(path), _) => fs::read(path).map_err(|e| Failure {
            error: format!("cannot read the script {}: {e}", path.display()).into(),
            code: 125,
        })?,
        (None, false) => ops::exec_script(&job.command).into_bytes(),
        (None, true) => {
            return Err(Failure {
                error: "nothing to run: give a command after --, or --script FILE, or --archive FILE (or `command` in the config's target)".into(),
                code: 2,
            })
        }
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "auto_exec.sh", &script[..])?;
    for path in &job.upload {
        let name = path.file_name().ok_or_else(|| Failure {
            error: format!("--upload {}: name a file or directory", path.display()).into(),
            code: 2,
        })?;
        if path.is_dir() {
            builder.append_dir_all(name, path)?;
        } else {
            builder.append_path_with_name(path, name)?;
        }
    }
    Ok(Box::new(std::io::Cursor::new(builder.into_inner()?)))
}
