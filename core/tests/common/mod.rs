//! Shared record generators for the core's integration tests.
#![allow(dead_code)] // Each test file uses a different subset.

use nlxtp_core::record::CUSTOM_STATUS_MAX;
use nlxtp_core::{AbortReason, BootId, OutputInfo, RunId, RunState, StatusRecord};
use proptest::prelude::*;

pub fn run_state() -> impl Strategy<Value = RunState> {
    prop_oneof![
        Just(RunState::Pending),
        Just(RunState::Running),
        any::<i32>().prop_map(RunState::Exited),
        any::<i32>().prop_map(RunState::Signaled),
        any::<i32>().prop_map(RunState::TimedOut),
        Just(RunState::Aborted(AbortReason::GuestRestarted)),
        Just(RunState::Aborted(AbortReason::MonitorDied)),
        Just(RunState::Aborted(AbortReason::Detached)),
        (0..256).prop_map(|sig| RunState::Aborted(AbortReason::StoppedBySystem(sig))),
        (3..i32::MAX)
            .prop_filter("256-511 are StoppedBySystem", |c| !(256..512).contains(c))
            .prop_map(|c| RunState::Aborted(AbortReason::Unknown(c))),
        any::<i32>().prop_map(RunState::StartFailed),
        (7..u16::MAX, any::<bool>(), any::<i32>()).prop_map(|(kind, terminal, detail)| {
            RunState::Unknown {
                kind,
                terminal,
                detail,
            }
        }),
    ]
}

fn output() -> impl Strategy<Value = OutputInfo> {
    (any::<u64>(), any::<bool>()).prop_map(|(bytes, truncated)| OutputInfo { bytes, truncated })
}

/// Custom text: usually short, sometimes up to the cap, any Unicode.
fn custom() -> impl Strategy<Value = String> {
    prop_oneof![3 => "\\PC{0,40}", 1 => "\\PC{0,1200}"].prop_map(|mut text: String| {
        while text.len() > CUSTOM_STATUS_MAX {
            text.pop();
        }
        text
    })
}

pub fn record() -> impl Strategy<Value = StatusRecord> {
    (
        (
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            run_state(),
            any::<u64>(),
            any::<u32>(),
        ),
        (
            output(),
            output(),
            any::<Option<u64>>(),
            any::<u64>(),
            any::<Option<u64>>(),
            custom(),
        ),
    )
        .prop_map(
            |(
                (sequence, run, boot, state, heartbeat, heartbeat_interval_ms),
                (stdout, stderr, started_unix, updated_unix, finished_unix, text),
            )| {
                let mut custom = nlxtp_core::CustomStatus::new();
                custom.push_str(&text).expect("generator respects the cap");
                StatusRecord {
                    sequence,
                    run_id: RunId(run),
                    boot_id: BootId(boot),
                    state,
                    heartbeat,
                    heartbeat_interval_ms,
                    stdout,
                    stderr,
                    started_unix,
                    updated_unix,
                    finished_unix,
                    custom,
                }
            },
        )
}

/// The biggest record there can be: every varint at its longest, the custom text full.
pub fn largest_record() -> StatusRecord {
    let mut custom = nlxtp_core::CustomStatus::new();
    while custom.push('\u{10FFFF}').is_ok() {}
    while custom.push('x').is_ok() {}
    let out = OutputInfo {
        bytes: u64::MAX,
        truncated: true,
    };
    StatusRecord {
        sequence: u64::MAX,
        run_id: RunId([0xff; 16]),
        boot_id: BootId([0xff; 16]),
        state: RunState::Unknown {
            kind: u16::MAX,
            terminal: true,
            detail: i32::MIN,
        },
        heartbeat: u64::MAX,
        heartbeat_interval_ms: u32::MAX,
        stdout: out,
        stderr: out,
        started_unix: Some(u64::MAX),
        updated_unix: u64::MAX,
        finished_unix: Some(u64::MAX),
        custom,
    }
}
