//! `nlxtp run --config nlxtp.toml`: one job per target, in turn, then a summary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nlxtp_host::vm::Arch;

use super::{run_job, Ended, Job, Signals};
use crate::args::RunArgs;
use crate::out::note;
use crate::Failure;

/// An `nlxtp.toml` of targets.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, rename = "target")]
    targets: Vec<TargetSpec>,
}

/// One target: what it does not say comes from the command line.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: String,
    kernel: Option<PathBuf>,
    arch: Option<Arch>,
    guest: Option<PathBuf>,
    initrd: Option<PathBuf>,
    image: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    command: Option<Vec<String>>,
    script: Option<PathBuf>,
    archive: Option<PathBuf>,
    upload: Option<Vec<PathBuf>>,
    timeout: Option<f64>,
    mem: Option<u32>,
    cpus: Option<u32>,
    append: Option<String>,
}

impl TargetSpec {
    /// The job of this target: `job` (the command line's), with whatever the target
    /// names instead; its paths are relative to `base`, the config file's folder.
    fn over(&self, mut job: Job, base: &Path) -> Job {
        let rel = |p: &PathBuf| base.join(p);
        job.name = self.name.clone();
        if self.kernel.is_some() {
            job.guest.kernel = self.kernel.as_ref().map(rel);
        }
        if let Some(arch) = self.arch {
            job.guest.arch = arch;
        }
        if self.guest.is_some() {
            job.guest.guest = self.guest.as_ref().map(rel);
        }
        job.initrd = self.initrd.as_ref().map(rel).or(job.initrd);
        job.image = self.image.as_ref().map(rel).or(job.image);
        job.rootfs = self.rootfs.as_ref().map(rel).or(job.rootfs);
        if self.command.is_some() || self.script.is_some() || self.archive.is_some() {
            job.command = self.command.clone().unwrap_or_default();
            job.script = self.script.as_ref().map(rel);
            job.archive = self.archive.as_ref().map(rel);
        }
        if let Some(upload) = &self.upload {
            job.upload = upload.iter().map(rel).collect();
        }
        if let Some(timeout) = self.timeout {
            job.timeout = Some(Duration::from_secs_f64(timeout));
        }
        job.mem = self.mem.unwrap_or(job.mem);
        job.cpus = self.cpus.unwrap_or(job.cpus);
        job.append = self.append.clone().or(job.append);
        job.out = job.out.map(|o| o.join(&self.name));
        job
    }
}

/// Runs the targets of `config` that `args` selects (all, without `--target`) in turn.
pub(super) fn run_config(
    args: &RunArgs,
    rootfs: Option<&Path>,
    config: &Path,
    signals: &Signals,
) -> Result<ExitCode, Failure> {
    let file = read(config)?;
    let base = config.parent().unwrap_or(Path::new("."));
    let targets: Vec<&TargetSpec> = file
        .targets
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.contains(&t.name))
        .collect();
    if targets.is_empty() {
        return Err(Failure {
            error: format!("{} has no [[target]] to run", config.display()).into(),
            code: 2,
        });
    }
    let total = targets.len();
    let mut results = Vec::new();
    for (i, spec) in targets.into_iter().enumerate() {
        let job = spec.over(Job::from_args(args, rootfs), base);
        let counter = format!("[{}/{total}] {}", i + 1, spec.name);
        match run_target(&job, &counter, signals) {
            Ok(code) => results.push((spec.name.clone(), code)),
            Err(code) => return Ok(ExitCode::from(code)),
        }
    }
    Ok(summary(&results))
}

/// The config file at `config`, parsed.
fn read(config: &Path) -> Result<ConfigFile, Failure> {
    let text = fs::read_to_string(config).map_err(|e| Failure {
        error: format!("cannot read {}: {e}", config.display()).into(),
        code: 125,
    })?;
    toml::from_str(&text).map_err(|e| Failure {
        error: format!("{} is not a valid nlxtp.toml: {e}", config.display()).into(),
        code: 2,
    })
}

/// Runs one target's `job`, saying when it starts and how it ended, as target
/// `counter` (`[2/3] NAME`). Its exit code, or Err with the code to stop with at
/// once: the run was interrupted.
fn run_target(job: &Job, counter: &str, signals: &Signals) -> Result<u8, u8> {
    note!("nlxtp: {counter}: starting ({})", job.guest.arch);
    let began = Instant::now();
    let result = run_job(job, signals);
    let took = began.elapsed().as_secs_f64();
    let (line, code) = match &result {
        Ok(Ended {
            code: 0,
            interrupted: false,
        }) => (format!("passed (exit 0) in {took:.1} s"), 0),
        Ok(Ended { code, interrupted }) if *interrupted => {
            note!("nlxtp: {counter}: interrupted");
            return Err(*code);
        }
        Ok(Ended { code, .. }) => (format!("FAILED (exit {code}) in {took:.1} s"), *code),
        Err(failure) => (format!("ERROR: {} (exit 125)", failure.error), 125),
    };
    note!("nlxtp: {counter}: {line}");
    Ok(code)
}

/// Says how many targets passed and which failed; the first failure's exit code, or 0.
fn summary(results: &[(String, u8)]) -> ExitCode {
    let total = results.len();
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, c)| *c != 0)
        .map(|(n, c)| format!("{n} (exit {c})"))
        .collect();
    note!(
        "nlxtp: summary: {total} targets, {} passed, {} failed{}",
        total - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    ExitCode::from(results.iter().map(|r| r.1).find(|&c| c != 0).unwrap_or(0))
}
