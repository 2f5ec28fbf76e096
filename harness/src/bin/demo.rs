//! The nlxtp demo: the whole cycle on a booted VM. Not written yet.
fn main() {
    eprintln!("nlxtp-demo: not written yet");
    std::process::exit(2);
}
