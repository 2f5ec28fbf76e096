//! Files in and out of a shared area: `upload`, `exec` and `download`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use nlxtp_host::area::WalkLimits;
use nlxtp_host::ops::{self, Compression, DownloadOptions};

use crate::args::{Format, Target, UploadArgs, WaitArgs};
use crate::out::{self, note};
use crate::progress::{CountingReader, Progress};
use crate::{watch, Failure};

/// `nlxtp upload`: the archive from a file, or from stdin for `-`.
pub fn upload(target: &Target, archive: &Path, args: &UploadArgs) -> Result<ExitCode, Failure> {
    if archive == Path::new("-") {
        upload_from(target, Box::new(io::stdin().lock()), None, args)?;
    } else {
        let file = File::open(archive).map_err(|e| Failure {
            error: format!("cannot open the archive {}: {e}", archive.display()).into(),
            code: 1,
        })?;
        // A regular file can be read again where large members lie.
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let again = regular
            .then(|| file.try_clone().ok().map(Arc::new))
            .flatten();
        upload_from(target, Box::new(file), again, args)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `nlxtp exec`: an archive whose script runs `command`, uploaded; then, with `--wait`,
/// as `nlxtp wait`.
pub fn exec(
    target: &Target,
    args: &UploadArgs,
    and_wait: bool,
    wait: &WaitArgs,
    command: &[String],
) -> Result<ExitCode, Failure> {
    let archive = ops::exec_archive(command);
    upload_from(target, Box::new(io::Cursor::new(archive)), None, args)?;
    if and_wait {
        watch::wait(target, wait)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn upload_from(
    target: &Target,
    source: Box<dyn Read>,
    archive_file: Option<Arc<File>>,
    args: &UploadArgs,
) -> Result<(), Failure> {
    let area = target.open()?;
    let progress = Progress::new("reading the archive");
    let prepared = ops::prepare_upload(
        area.as_ref(),
        CountingReader::new(source, &progress),
        &args.options(archive_file),
    )?;
    progress.phase(format!(
        "writing {} into {}",
        indicatif::HumanBytes(prepared.bytes()),
        target.path.display()
    ));
    let report = prepared.write()?;
    progress.finish();
    for name in &report.dropped {
        note!("nlxtp: note: left out {name} from the archive: it belongs to an earlier run");
    }
    for name in &report.stripped_mode_bits {
        note!("nlxtp: note: cleared setuid/setgid/sticky bits of {name}");
    }
    if let Some(run) = &report.cut_off_run {
        note!(
            "nlxtp: note: replaced run {run}, which was cut off (the VM went off before it ended)"
        );
    }
    if args.json {
        out::json(&report)?;
    } else {
        let when = if area.capabilities().live {
            "the guest runs it now"
        } else {
            "it runs at the VM's next boot"
        };
        note!(
            "uploaded run {} ({} entries, {} bytes); {when}",
            report.run_id,
            report.entries,
            report.bytes
        );
    }
    Ok(())
}

/// `nlxtp download`: into `output`, or to stdout for `-`.
pub fn download(
    target: &Target,
    output: &Path,
    live: bool,
    format: Option<Format>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let area = target.open()?;
    let prepared = ops::prepare_download(area.as_ref(), live)?;
    if prepared.is_mid_run() {
        note!("nlxtp: warning: the VM is running; files being written may be inconsistent in the archive");
    }
    let to_stdout = output == Path::new("-");
    let options = DownloadOptions {
        compression: match format {
            Some(format) => format.into(),
            None if to_stdout => Compression::None,
            None => Compression::from_name(output),
        },
        limits: WalkLimits::default(),
    };
    let progress = Progress::new("packing");
    let report = if to_stdout {
        prepared.to_writer(out::stdout(), &options, &mut |b| progress.set(b))?
    } else {
        prepared.to_file(output, &options, &mut |b| progress.set(b))?
    };
    progress.finish();
    if json {
        out::json(&report)?;
    } else if !to_stdout {
        note!(
            "packed {} files, {} directories, {} bytes into {}",
            report.files,
            report.dirs,
            report.bytes,
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
