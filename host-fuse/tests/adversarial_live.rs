//! Following a hostile guest's output (`nlxtp logs -f`, `ops::logs`): ring blocks with
//! offsets near the end of `u64` (found by fuzz/live_follower), and capture or ring
//! files that are huge, FIFOs or links out of the area. The follower ends within a
//! few seconds, in bounded memory, never panics and never shows a host byte.

mod common;
mod hostile;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use nlxtp_core::live::{put_block, Stream, LIVE_FILE_LEN};
use nlxtp_core::{layout, RunState};
use nlxtp_host::area::dir::ContainerDir;
use nlxtp_host::area::StatusError;
use nlxtp_host::ops::logs::{follow, Follower, Streams};
use nlxtp_host::ops::WaitOutcome;

fn ring(blocks: &[(u64, Stream, u64, &[u8])]) -> Vec<u8> {
    let mut file = vec![0u8; LIVE_FILE_LEN];
    for &(seq, stream, offset, payload) in blocks {
        put_block(&mut file, seq, stream, offset, payload).expect("a whole live file");
    }
    file
}

fn taken(follower: &mut Follower, file: &[u8]) -> Vec<(Stream, Vec<u8>)> {
    let mut out = Vec::new();
    follower.take(file, &mut |s, b| out.push((s, b.to_vec())));
    out
}

/// The input fuzz/live_follower found (fuzz/corpus/live_follower/regress-offset-overflow):
/// a first block whose offset plus length overflows `u64`. A debug build panicked
/// ("attempt to add with overflow"); a release build wrapped around.
#[test]
fn offsets_near_the_end_of_u64_stop_live_output_without_a_panic() {
    for offset in [u64::MAX, u64::MAX - 5, u64::MAX - 479, 1 << 63] {
        let mut f = Follower::new(Streams::Both);
        let file = ring(&[(1, Stream::Stdout, offset, &[b'x'; 480])]);
        assert_eq!(taken(&mut f, &file), []);
        assert!(f.is_behind(), "a hole at {offset}");
    }
    // After real output, too.
    let mut f = Follower::new(Streams::Stdout);
    let file = ring(&[
        (1, Stream::Stdout, 0, b"ok"),
        (2, Stream::Stdout, u64::MAX - 1, b"wrap"),
    ]);
    assert_eq!(taken(&mut f, &file), [(Stream::Stdout, b"ok".to_vec())]);
    assert!(f.is_behind());
}

/// A container area whose run has ended (a terminal status record), for `follow`.
fn ended_area(dir: &Path) -> ContainerDir {
    fs::create_dir_all(dir.join("nlxtp")).unwrap();
    let rec = common::record(9, RunState::Exited(0), "");
    fs::write(dir.join(layout::STATUS_FILE), common::status_file(1, &rec)).unwrap();
    ContainerDir::open(dir).unwrap()
}

fn follow_within(dir: &Path) -> (Result<WaitOutcome, StatusError>, Vec<u8>, Duration) {
    let dir = dir.to_path_buf();
    let ((outcome, shown), took) =
        hostile::deadline(Duration::from_secs(10), "follow", move || {
            let area = ContainerDir::open(&dir).unwrap();
            let mut shown = Vec::new();
            let outcome = follow(
                &area,
                Streams::Both,
                Some(Duration::from_secs(5)),
                Duration::from_millis(10),
                &mut |_, bytes| {
                    shown.extend_from_slice(bytes);
                    Ok(())
                },
                &mut || {},
            );
            (outcome, shown)
        });
    (outcome, shown, took)
}

#[test]
fn a_huge_capture_file_ends_the_follow_with_an_error_not_a_huge_read() {
    let tmp = hostile::scratch();
    let dir = tmp.path().join("area");
    ended_area(&dir);
    // 64 GiB of holes: a read of the whole file would take minutes and all memory.
    let out = fs::File::create(dir.join(layout::STDOUT_FILE)).unwrap();
    out.set_len(64 << 30).unwrap();
    fs::write(dir.join(layout::STDERR_FILE), b"the end\n").unwrap();
    let before = hostile::peak_rss_kib();
    let (outcome, shown, took) = follow_within(&dir);
    let grew = hostile::peak_rss_kib().saturating_sub(before);
    eprintln!("64 GiB stdout.txt: {outcome:?} after {took:?}, memory +{grew} KiB");
    let err = outcome.unwrap_err().to_string();
    assert!(err.contains("exceeds the limit"), "{err}");
    assert!(shown.is_empty());
    assert!(grew < 64 << 10, "memory grew by {grew} KiB");
}

#[test]
fn live_and_capture_files_that_are_fifos_or_links_show_no_host_byte() {
    let tmp = hostile::scratch();
    let secret = hostile::secret("live");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), &secret).unwrap();
    for (what, live, stdout) in [
        ("live.bin a link to a host file", "link", "plain"),
        ("live.bin a FIFO", "fifo", "plain"),
        ("stdout.txt a link to a host file", "none", "link"),
        ("stdout.txt a FIFO", "none", "fifo"),
    ] {
        let dir = tmp.path().join(what.replace(' ', "-"));
        ended_area(&dir);
        for (name, how) in [(layout::LIVE_FILE, live), (layout::STDOUT_FILE, stdout)] {
            let at = dir.join(name);
            match how {
                "link" => symlink(outside.join("secret"), &at).unwrap(),
                "fifo" => rustix::fs::mkfifoat(
                    rustix::fs::CWD,
                    &at,
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .unwrap(),
                "plain" => fs::write(&at, b"inside\n").unwrap(),
                _ => {}
            }
        }
        let (outcome, shown, took) = follow_within(&dir);
        eprintln!("{what}: {outcome:?} after {took:?}");
        assert!(
            !hostile::contains(&shown, secret.as_bytes()),
            "{what}: leaked"
        );
        let err = outcome.unwrap_err().to_string();
        assert!(
            err.contains("which the host never follows or opens"),
            "{what}: {err}"
        );
    }
}
