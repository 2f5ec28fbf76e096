//! Files in and out of a shared area: `upload`, `exec` and `download`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use std::path::PathBuf;
use std::time::Duration;

use nlxtp_host::area::{SharedArea, WalkLimits};
use nlxtp_host::ops::hot::{self, DetachOptions, HotDisk, HotError};
use nlxtp_host::ops::{self, Compression, DownloadOptions, UploadError, UploadReport};
use nlxtp_host::vm::Qmp;

use crate::args::{Format, HotArgs, QmpArg, Target, UploadArgs, WaitArgs};
use crate::out::{self, note};
use crate::progress::{CountingReader, Progress};
use crate::{watch, Failure};

/// `nlxtp upload`: the archive from a file, or from stdin for `-`; with `--hot`, into a
/// hot disk that is then plugged into the running VM.
pub fn upload(
    target: &Target,
    archive: &Path,
    args: &UploadArgs,
    hot: &HotArgs,
) -> Result<ExitCode, Failure> {
    with_archive(archive, |source, again| match hot.hot {
        true => upload_hot(target, source, again, args, hot),
        false => upload_from(target, source, again, args),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Calls `into` with the archive at `archive` (stdin for `-`) and, for a regular file, a
/// second handle on it (read again where large members lie).
pub fn with_archive(
    archive: &Path,
    into: impl FnOnce(Box<dyn Read + Send>, Option<Arc<File>>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if archive == Path::new("-") {
        return into(Box::new(io::stdin()), None);
    }
    let file = File::open(archive).map_err(|e| Failure {
        error: format!("cannot open the archive {}: {e}", archive.display()).into(),
        code: 1,
    })?;
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    let again = regular
        .then(|| file.try_clone().ok().map(Arc::new))
        .flatten();
    into(Box::new(file), again)
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
    source: Box<dyn Read + Send>,
    archive_file: Option<Arc<File>>,
    args: &UploadArgs,
) -> Result<(), Failure> {
    let (area, report) = match archive_file {
        // A file is read while the area is opened and checked: for a libvirt domain on
        // another host those are round trips.
        Some(file) => {
            let progress = Progress::new(UPLOADING);
            let (area, report) = ops::upload_opening(
                || target.open(),
                CountingReader::new(source, &progress),
                &args.options(Some(file)),
            )?;
            (area, finish_upload(&progress, report)?)
        }
        // A pipe may stall: the checks come first, so that a refusal comes at once.
        None => {
            let area = target.open()?;
            let report = write_upload(area.as_ref(), source, None, args)?;
            (area, report)
        }
    };
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

/// `nlxtp upload --hot`: the QMP socket first (nothing is written for a VM that cannot
/// be reached), then the disk made or checked, written, and plugged in.
fn upload_hot(
    target: &Target,
    source: Box<dyn Read + Send>,
    archive_file: Option<Arc<File>>,
    args: &UploadArgs,
    hot: &HotArgs,
) -> Result<(), Failure> {
    if target.rootfs.is_some() || crate::args::OPENER.get().is_some() {
        return Err(Failure {
            error: "--hot takes a disk image for a VM behind a QMP socket, not a container \
                    or a libvirt domain"
                .into(),
            code: 2,
        });
    }
    let mut qmp = connect(&hot.qmp)?;
    let disk = HotDisk::open_or_create(&target.path, hot.size.unwrap_or(hot::HOT_DISK_SIZE))?;
    let report = write_upload(disk.area(), source, archive_file, args).map_err(HotError::from)?;
    let (run_id, entries, bytes) = (report.run_id.clone(), report.entries, report.bytes);
    let attach = disk.attach(&mut qmp, Some(report))?;
    if args.json {
        out::json(&attach)?;
    } else {
        note!(
            "uploaded run {} ({} entries, {} bytes) into {}{} and attached it to the VM as {} \
             ({} ms); the guest runs it now. When it has ended: nlxtp detach --qmp {} {}",
            run_id,
            entries,
            bytes,
            target.path.display(),
            if attach.created { " (created)" } else { "" },
            attach.node,
            attach.attach_ms,
            qmp.socket().display(),
            target.path.display()
        );
    }
    Ok(())
}

/// The QMP connection `arg` names.
fn connect(arg: &QmpArg) -> Result<Qmp, Failure> {
    let socket: PathBuf = arg.socket().ok_or_else(|| Failure {
        error: "give the running VM's QMP socket with --qmp SOCKET (or $NLXTP_QMP); QEMU \
                serves one with -qmp unix:SOCKET,server=on,wait=off"
            .into(),
        code: 2,
    })?;
    Ok(Qmp::connect(&socket, Duration::from_secs(1))?)
}

/// `nlxtp detach`.
pub fn detach(
    image: &Path,
    qmp: &QmpArg,
    timeout: Duration,
    force: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let mut qmp = connect(qmp)?;
    let disk = HotDisk::open(image)?;
    if !force && !json {
        note!(
            "waiting up to {timeout:?} for the guest to release {}",
            image.display()
        );
    }
    let options = DetachOptions {
        timeout,
        force,
        ..DetachOptions::default()
    };
    let report = disk.detach(&mut qmp, &options)?;
    if json {
        out::json(&report)?;
    }
    detach_outcome(
        &report,
        &image.display().to_string(),
        &options,
        json,
        "retry nlxtp detach, or stop the VM",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// What a detach of the hot disk `shown` did, told the user (unless `json`); an error
/// when the VM still holds the disk (`retry` says what to do then).
pub fn detach_outcome(
    report: &hot::DetachReport,
    shown: &str,
    options: &DetachOptions,
    json: bool,
    retry: &str,
) -> Result<(), Failure> {
    if !report.detached {
        return Err(Failure {
            error: format!(
                "the guest did not let go of {shown} within {:?} of the unplug request (QEMU \
                 needs the guest's ACPI to acknowledge it; a hung or hostile guest never \
                 does): the VM still holds the disk and nothing was written to it; {retry}",
                options.device_timeout
            )
            .into(),
            code: 1,
        });
    }
    if !json {
        let how = match (report.was_attached, report.released_by_guest) {
            (false, _) => "it was not attached to this VM".to_owned(),
            (true, true) => format!("released by the guest after {} ms", report.waited_ms),
            (true, false) if options.force => "taken away at once (--force)".to_owned(),
            (true, false) => format!(
                "taken away: the guest had not released it after {} ms",
                report.waited_ms
            ),
        };
        note!("detached {shown}: {how}");
        if report.record_written {
            note!("nlxtp: note: the run had not ended; its record now says so (aborted: the host detached the disk)");
        }
    }
    Ok(())
}

/// What the progress line of an upload says: the archive is read and written at once.
const UPLOADING: &str = "uploading";

/// Reads the archive and writes it into `area`, with a progress line and notes on what
/// was left out or changed.
pub fn write_upload(
    area: &dyn SharedArea,
    source: Box<dyn Read + Send>,
    archive_file: Option<Arc<File>>,
    args: &UploadArgs,
) -> Result<UploadReport, UploadError> {
    let progress = Progress::new(UPLOADING);
    let report = ops::upload(
        area,
        CountingReader::new(source, &progress),
        &args.options(archive_file),
    );
    finish_upload(&progress, report)
}

/// The end of an upload's progress line, then the notes on what was left out or
/// changed.
fn finish_upload(
    progress: &Progress,
    report: Result<UploadReport, UploadError>,
) -> Result<UploadReport, UploadError> {
    let report = report?;
    progress.finish();
    upload_notes(&report);
    Ok(report)
}

/// Notes on what an upload left out or changed.
fn upload_notes(report: &UploadReport) {
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
