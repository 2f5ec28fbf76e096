//! Live output (issue 8): a script prints a line every 0.5 s; the host follows it while
//! the guest runs and sees each line arrive, in order, once; what it printed equals the
//! captured stdout downloaded after the run. On a VM under QEMU and in a container.

use std::time::{Duration, Instant};

use nlxtp_core::live::Stream;
use nlxtp_core::RunState;
use nlxtp_harness::container::Container;
use nlxtp_harness::vm::{archive, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::{AreaPath, SharedArea};
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, UploadOptions, WaitOutcome};

const LINES: usize = 20;

fn script() -> String {
    format!("i=1\nwhile [ $i -le {LINES} ]; do echo \"line $i of {LINES}\"; i=$((i+1)); sleep 0.5; done\necho 'to stderr' >&2\n")
}

/// Follows the run; returns what was printed and when each line arrived.
fn follow(area: &dyn SharedArea) -> (Vec<u8>, Vec<(String, Instant)>, Instant) {
    let mut printed = Vec::new();
    let mut arrivals = Vec::new();
    let mut partial = String::new();
    let outcome = ops::logs::follow(
        area,
        Streams::Stdout,
        Some(Duration::from_secs(180)),
        Duration::from_millis(250),
        &mut |stream, bytes| {
            assert_eq!(stream, Stream::Stdout);
            printed.extend_from_slice(bytes);
            partial.push_str(&String::from_utf8_lossy(bytes));
            while let Some(end) = partial.find('\n') {
                arrivals.push((partial[..end].to_string(), Instant::now()));
                partial.drain(..=end);
            }
            Ok(())
        },
        &mut || panic!("a line every 0.5 s never outruns the ring"),
    )
    .unwrap();
    let done_at = Instant::now();
    let WaitOutcome::Done(rec) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rec.state, RunState::Exited(0));
    (printed, arrivals, done_at)
}

fn check(area: &dyn SharedArea, printed: &[u8], arrivals: &[(String, Instant)], done_at: Instant) {
    let expected: Vec<String> = (1..=LINES)
        .map(|i| format!("line {i} of {LINES}"))
        .collect();
    let got: Vec<&str> = arrivals.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(got, expected, "every line, in order, once");
    let captured = area
        .read_file(&AreaPath::new("nlxtp/stdout.txt").unwrap(), 1 << 20)
        .unwrap();
    assert_eq!(
        printed,
        &captured[..],
        "what was followed equals the captured stdout"
    );
    // Lines arrived while the script ran, not all at the end: the first half of the lines
    // were seen at least 4 s before the run ended (they were printed ~5 s before).
    let early = arrivals
        .iter()
        .filter(|(_, at)| done_at.duration_since(*at) >= Duration::from_secs(4))
        .count();
    assert!(
        early >= LINES / 2 - 2,
        "only {early} lines arrived 4 s before the end"
    );
    // Latency: consecutive lines are printed 0.5 s apart; arrivals never bunch up by more
    // than the flush interval (0.5 s) plus the poll interval (0.25 s) plus slack for a
    // slow, busy host (still half of the 10 s the whole run takes).
    let gaps: Vec<Duration> = arrivals
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        longest < Duration::from_secs(5),
        "a gap of {longest:?} between two lines"
    );
}

#[test]
fn follow_a_container() {
    let container = Container::start(500).unwrap();
    let area = ops::open_target(&container.shared()).unwrap();
    ops::upload(
        area.as_ref(),
        &archive(&[("auto_exec.sh", script().as_bytes(), 0o755)]).unwrap()[..],
        &UploadOptions::default(),
    )
    .unwrap();
    let (printed, arrivals, done_at) = follow(area.as_ref());
    check(area.as_ref(), &printed, &arrivals, done_at);
}

#[test]
fn follow_a_vm_while_it_runs() {
    let mut setup = GuestSetup::new(32).unwrap();
    let area = setup.area();
    ops::upload(
        &area,
        &archive(&[("auto_exec.sh", script().as_bytes(), 0o755)]).unwrap()[..],
        &UploadOptions::default(),
    )
    .unwrap();
    let mut vm = setup.boot(true).unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();
    let (printed, arrivals, done_at) = follow(&area);
    assert!(area.is_busy().unwrap(), "the VM was running all along");
    check(&area, &printed, &arrivals, done_at);
}
