//! A walk through the status protocol with no VM: a "guest" writes records into a status
//! file in a temporary directory, the "host" reads them, meets a torn write and a
//! monitor that stops, and says what it sees. Run: `scripts/demo` (until the VM demo lands).

use std::fs;
use std::time::Instant;

use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::{
    layout, AbortReason, Liveness, LivenessPolicy, RunId, RunState, StatusReader, StatusRecord,
    StatusWriter, Verdict,
};

fn main() -> std::io::Result<()> {
    let area = std::env::temp_dir().join(format!("nlxtp-walkthrough-{}", std::process::id()));
    let path = area.join(layout::STATUS_FILE);
    fs::create_dir_all(path.parent().expect("status file has a parent"))?;
    fs::write(&path, vec![0u8; STATUS_FILE_LEN])?;
    println!("shared area: {}", area.display());

    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut writer = StatusWriter::new();
    let mut reader = StatusReader::new();
    let mut live = Liveness::new(LivenessPolicy {
        slack_ms: 100,
        ..Default::default()
    });
    let mut record = StatusRecord {
        run_id: RunId([0x42; 16]),
        state: RunState::Running,
        heartbeat_interval_ms: 100,
        ..Default::default()
    };
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let mut write = |record: &mut StatusRecord, whole: bool| -> std::io::Result<()> {
        let at = writer.encode(record, &mut slot).expect("slot-sized buffer");
        let mut file = fs::read(&path)?;
        let end = if whole {
            STATUS_SLOT_LEN
        } else {
            STATUS_SLOT_LEN / 2
        };
        file[at..at + end].copy_from_slice(&slot[..end]);
        fs::write(&path, file)
    };
    let mut show = |what: &str| -> std::io::Result<()> {
        let bytes = fs::read(&path)?;
        match reader.read(&bytes) {
            Ok(rec) => {
                let verdict = live.observe(now_ms(), Some(&rec));
                println!(
                    "{what:<44} seq {:>2}  {:<22} custom {:?}  -> {}",
                    rec.sequence,
                    rec.state.to_string(),
                    rec.custom.as_str(),
                    describe(verdict)
                );
            }
            Err(e) => println!("{what:<44} {e}"),
        }
        Ok(())
    };

    show("before the guest writes")?;
    for step in 1..=3 {
        record.heartbeat += 1;
        record.custom.clear();
        record
            .custom
            .push_str(&format!("step {step}/3"))
            .expect("short text");
        write(&mut record, true)?;
        show(&format!("guest wrote step {step}"))?;
    }
    record.heartbeat += 1;
    write(&mut record, false)?;
    show("guest crashed half-way through a write")?;
    std::thread::sleep(std::time::Duration::from_millis(600));
    show("no write for 600 ms (promise: every 100 ms)")?;
    // The next boot: the daemon resumes the file and closes the interrupted run.
    let mut file = fs::read(&path)?;
    let mut resumed = StatusWriter::resume(&file);
    record.state = RunState::Aborted(AbortReason::GuestRestarted);
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let at = resumed
        .encode(&mut record, &mut slot)
        .expect("slot-sized buffer");
    file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    fs::write(&path, file)?;
    show("guest rebooted; daemon closed the run")?;
    fs::remove_dir_all(&area)
}

fn describe(verdict: Verdict) -> String {
    match verdict {
        Verdict::NoStatus => "no status".into(),
        Verdict::Done(state) => format!("done: {state}"),
        Verdict::Alive {
            silent_ms,
            timeout_ms,
            ..
        } => format!("alive (silent {silent_ms} ms of {timeout_ms})"),
        Verdict::MonitorLost { silent_ms, .. } => format!("MONITOR LOST (silent {silent_ms} ms)"),
    }
}
