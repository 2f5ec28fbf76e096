//! `nlxtp-guest`: the program that runs inside a guest (daemon, monitor, status helper).
//!
//! Not written yet (issue 3). It only prints the protocol names it will use, so that the
//! workspace builds and the guest side's dependency on `nlxtp-core` is real.
#![forbid(unsafe_code)]

use nlxtp_core::layout;

fn main() {
    eprintln!(
        "nlxtp-guest is not implemented yet; it will run {} from {} and keep {}",
        layout::START_SCRIPT,
        layout::GUEST_MOUNT_POINT,
        layout::STATUS_FILE
    );
    std::process::exit(2);
}
