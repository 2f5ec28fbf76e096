// The command line's entry, shared by `nlxtp` (main.rs) and `nlxtp-libvirt`, which
// include!s it beside the same modules. Items only: no inner attributes here.

use std::io;
use std::process::ExitCode;

use args::{Cli, Command};
use out::note;

/// `nlxtp` with these arguments (after the program's name).
pub fn main_with(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = Cli::from_args(args);
    // Logging only when asked for: `nlxtp status` is called in tight loops, and setting
    // up a subscriber costs more than the status read itself.
    if cli.verbose > 0 {
        let level = if cli.verbose == 1 {
            tracing::Level::INFO
        } else {
            tracing::Level::DEBUG
        };
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(io::stderr)
            .without_time()
            .init();
    }
    match run(cli) {
        Ok(code) => code,
        // The reader of the output has gone: the quiet end of the output, not an error.
        Err(failure) if out::reader_gone() && failure.is_gone() => ExitCode::SUCCESS,
        Err(failure) => {
            note!("nlxtp: {}", failure.error);
            let mut source = failure.error.source();
            while let Some(cause) = source {
                note!("  because: {cause}");
                source = cause.source();
            }
            ExitCode::from(failure.code)
        }
    }
}

/// An error and the exit code it ends the process with.
struct Failure {
    error: Box<dyn std::error::Error>,
    code: u8,
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            error: Box::new(error),
            code: 1,
        }
    }
}

impl Failure {
    /// Whether a write to a reader that has gone caused it.
    fn is_gone(&self) -> bool {
        std::iter::successors(Some(&*self.error as &dyn std::error::Error), |e| e.source())
            .any(|e| e.downcast_ref::<io::Error>().is_some_and(out::is_gone))
    }
}

fn with_code(code: u8) -> impl FnOnce(Failure) -> Failure {
    move |f| Failure { code, ..f }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    // `nlxtp run --rootfs DIR`: the guest's root filesystem, not a container's.
    if let Command::Run(args) = cli.command {
        return run::run(&args, cli.rootfs.as_deref());
    }
    check_rootfs(&cli)?;
    match cli.command {
        Command::CreateDisk {
            image,
            size,
            fat,
            label,
            partition,
        } => setup::create_disk(&image, size, fat, label, partition),
        Command::Upload {
            target,
            archive,
            options,
            hot,
        } => transfer::upload(&target, &archive, &options, &hot),
        Command::Detach {
            image,
            qmp,
            timeout,
            force,
            json,
        } => transfer::detach(&image, &qmp, timeout, force, json),
        Command::Status { target, json } => watch::status(&target, json),
        Command::Wait { target, wait } => watch::wait(&target, &wait),
        Command::Download {
            target,
            output,
            live,
            format,
            json,
        } => transfer::download(&target, &output, live, format, json),
        Command::Logs {
            target,
            follow,
            streams,
            wait,
        } => watch::logs(&target, follow, streams.streams(), &wait),
        Command::Exec {
            target,
            options,
            and_wait,
            wait,
            command,
        } => transfer::exec(&target, &options, and_wait, &wait, &command),
        Command::Mount {
            mountpoint,
            vms,
            libvirt,
            config,
            daemon,
            allow_other,
            stage_dir,
        } => setup::mount(&nlxtp_host::fuse::MountOptions {
            mountpoint,
            vms,
            libvirt,
            config,
            daemon,
            allow_other,
            stage_dir,
        }),
        Command::Run(_) => unreachable!("handled above"),
        Command::Guest {
            command: args::GuestCommand::Build { guest, output },
        } => run::guest_build(&guest, &output),
        Command::Umount { mountpoint, lazy } => setup::umount(&mountpoint, lazy),
    }
}

/// Refuses `--rootfs` for a command that takes no TARGET.
fn check_rootfs(cli: &Cli) -> Result<(), Failure> {
    if cli.rootfs.is_some() && !cli.command.has_target() {
        return Err(Failure {
            error: "--rootfs names the container of a TARGET, and this command takes none; \
                    the FUSE view takes such containers from its config file: \
                    NAME = { rootfs = \"/var/lib/lxc/c1/rootfs\", area = \"/mnt/nlXTP\" }"
                .into(),
            code: 2,
        });
    }
    Ok(())
}
