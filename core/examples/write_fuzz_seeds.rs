//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/*`): valid slots, files and
//! manifests that the fuzzers mutate from. Run: `cargo run -p nlxtp-core --example write_fuzz_seeds`.

use std::fs;
use std::path::Path;

use nlxtp_core::record::{MANIFEST_LEN, STATUS_SLOT_LEN};
use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::{AbortReason, Manifest, OutputInfo, RunId, RunState, StatusRecord, StatusWriter};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let states = [
        RunState::Pending,
        RunState::Running,
        RunState::Exited(0),
        RunState::Exited(-1),
        RunState::Signaled(9),
        RunState::TimedOut(15),
        RunState::Aborted(AbortReason::GuestRestarted),
        RunState::StartFailed(2),
        RunState::Unknown {
            kind: 99,
            terminal: true,
            detail: 7,
        },
    ];
    let mut writer = StatusWriter::new();
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    for (n, state) in states.into_iter().enumerate() {
        let mut record = StatusRecord {
            run_id: RunId([n as u8; 16]),
            state,
            heartbeat: n as u64,
            heartbeat_interval_ms: 2_000,
            stdout: OutputInfo {
                bytes: 10 * n as u64,
                truncated: n % 2 == 0,
            },
            started_unix: Some(1_700_000_000),
            updated_unix: 1_700_000_000 + n as u64,
            ..Default::default()
        };
        record
            .custom
            .push_str(&"progress ".repeat(n * 40))
            .expect("under the cap");
        let at = writer
            .encode(&mut record, &mut slot)
            .expect("slot-sized buffer");
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
        write(&root.join("status_decode"), &format!("state-{n}"), &slot)?;
        write(&root.join("status_file"), &format!("after-{n}"), &file)?;
    }
    let mut manifest = [0u8; MANIFEST_LEN];
    for (n, timeout) in [None, Some(60)].into_iter().enumerate() {
        Manifest {
            run_id: RunId([7; 16]),
            timeout_secs: timeout,
            ..Default::default()
        }
        .encode(&mut manifest)
        .expect("manifest-sized buffer");
        write(
            &root.join("manifest_decode"),
            &format!("manifest-{n}"),
            &manifest,
        )?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)
}
