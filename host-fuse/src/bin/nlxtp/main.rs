//! `nlxtp`: control a VM or a container through its shared disk or directory, with no
//! network: upload an archive that runs, watch its status, download the results.
//!
//! The command line only: it reads the arguments ([`args`]), calls the library's
//! operations, and prints what they return. What the operations decide (refusals,
//! busy policies, how a file is written) lives in `nlxtp_host::ops`.
#![forbid(unsafe_code)]

mod args;
mod out;
mod progress;
mod run;
mod setup;
mod transfer;
mod watch;

include!("entry.rs");

fn main() -> ExitCode {
    main_with(std::env::args_os().skip(1).collect())
}
