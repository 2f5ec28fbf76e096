//! `nlxtp`: the host command line.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("nlxtp: the host CLI is not implemented yet (issue 4)");
    std::process::exit(2);
}
