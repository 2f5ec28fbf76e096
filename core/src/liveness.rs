//! Is the guest's monitor still alive? A pure state machine, with no clock of its own.
//!
//! The host feeds it its own monotonic time and each record it reads. Every write of the
//! status file advances the sequence number, and the monitor promises (in the record) to
//! write at least every `heartbeat_interval_ms` until the run ends. So the host needs no
//! clock agreement with the guest (the paper's "sequence number, not time" idea): if the
//! sequence has not moved for `missed_beats` promised intervals plus a slack, the monitor
//! is lost (killed, or the VM stopped or hung).
//!
//! The clock starts at the first observation: a host that starts watching a monitor that
//! died long ago needs one whole timeout to say so.

use crate::record::{BootId, RunId, RunState, StatusRecord};

/// How patient the host is. The guest's promised interval is clamped to
/// `[min_interval_ms, max_interval_ms]`, so a hostile record cannot make the host wait
/// for ever, nor call a healthy monitor lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// How many promised intervals may pass without a write.
    pub missed_beats: u32,
    /// Added to the timeout for flush delays and host polling.
    pub slack_ms: u64,
    /// Smallest interval believed.
    pub min_interval_ms: u32,
    /// Largest interval believed.
    pub max_interval_ms: u32,
}

impl Default for LivenessPolicy {
    /// Three missed beats plus 2 s; intervals between 100 ms and 10 min.
    fn default() -> Self {
        LivenessPolicy {
            missed_beats: 3,
            slack_ms: 2_000,
            min_interval_ms: 100,
            max_interval_ms: 600_000,
        }
    }
}

impl LivenessPolicy {
    /// How long the sequence may stand still before the monitor counts as lost, for a
    /// monitor that promised `interval_ms`.
    pub fn timeout_ms(&self, interval_ms: u32) -> u64 {
        let interval = interval_ms.clamp(
            self.min_interval_ms,
            self.max_interval_ms.max(self.min_interval_ms),
        );
        u64::from(interval) * u64::from(self.missed_beats.max(1)) + self.slack_ms
    }
}

/// The answer to "what is the run doing?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No status record exists (yet): no upload, or the guest has not started it.
    NoStatus,
    /// The run has ended; nothing will change any more.
    Done(RunState),
    /// The monitor is writing as it promised.
    Alive {
        /// The record's state (pending, running, or a non-terminal unknown state).
        state: RunState,
        /// Host milliseconds since the record last changed.
        silent_ms: u64,
        /// Host milliseconds of silence after which the monitor counts as lost.
        timeout_ms: u64,
    },
    /// The record has not changed for longer than the monitor's promise allows.
    MonitorLost {
        /// The record's last state.
        state: RunState,
        /// Host milliseconds since the record last changed.
        silent_ms: u64,
    },
}

/// The last change a [`Liveness`] saw: which record, and when (host milliseconds). A
/// host that polls from separate processes keeps it between them (see
/// [`Liveness::resume`]); the time must then come from a clock all of them share
/// (Linux: `CLOCK_BOOTTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The record's run.
    pub run_id: RunId,
    /// The record's guest boot.
    pub boot_id: BootId,
    /// The record's sequence number.
    pub sequence: u64,
    /// Host time when this record was first seen.
    pub changed_at_ms: u64,
}

/// Tracks one shared area's status over time.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    policy: LivenessPolicy,
    last: Option<Seen>,
}

impl Liveness {
    /// A tracker that has seen nothing yet.
    pub fn new(policy: LivenessPolicy) -> Self {
        Liveness { policy, last: None }
    }

    /// A tracker that continues from a remembered last change.
    pub fn resume(policy: LivenessPolicy, last: Option<Seen>) -> Self {
        Liveness { policy, last }
    }

    /// The last change seen, to remember for [`Liveness::resume`].
    pub fn last_change(&self) -> Option<Seen> {
        self.last
    }

    /// Feeds one observation: the host's monotonic time in milliseconds and the record
    /// just read (`None` if there is no status file yet).
    ///
    /// ```
    /// use nlxtp_core::{Liveness, LivenessPolicy, RunState, StatusRecord, Verdict};
    /// let mut live = Liveness::new(LivenessPolicy::default());
    /// let rec = StatusRecord { sequence: 1, state: RunState::Running, heartbeat_interval_ms: 1000, ..Default::default() };
    /// assert!(matches!(live.observe(0, Some(&rec)), Verdict::Alive { .. }));
    /// assert!(matches!(live.observe(60_000, Some(&rec)), Verdict::MonitorLost { .. }));
    /// ```
    pub fn observe(&mut self, now_ms: u64, record: Option<&StatusRecord>) -> Verdict {
        let Some(record) = record else {
            self.last = None;
            return Verdict::NoStatus;
        };
        if record.state.is_terminal() {
            return Verdict::Done(record.state);
        }
        let changed = match self.last {
            Some(seen) => {
                seen.run_id != record.run_id
                    || seen.boot_id != record.boot_id
                    || seen.sequence != record.sequence
            }
            None => true,
        };
        if changed {
            self.last = Some(Seen {
                run_id: record.run_id,
                boot_id: record.boot_id,
                sequence: record.sequence,
                changed_at_ms: now_ms,
            });
        }
        let changed_at = self.last.map_or(now_ms, |seen| seen.changed_at_ms);
        let silent_ms = now_ms.saturating_sub(changed_at);
        let timeout_ms = self.policy.timeout_ms(record.heartbeat_interval_ms);
        if silent_ms > timeout_ms {
            Verdict::MonitorLost {
                state: record.state,
                silent_ms,
            }
        } else {
            Verdict::Alive {
                state: record.state,
                silent_ms,
                timeout_ms,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::AbortReason;

    fn running(sequence: u64) -> StatusRecord {
        StatusRecord {
            sequence,
            state: RunState::Running,
            heartbeat_interval_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn heartbeats_keep_it_alive_and_silence_loses_it() {
        let mut live = Liveness::new(LivenessPolicy::default());
        let timeout = LivenessPolicy::default().timeout_ms(1_000);
        assert_eq!(timeout, 5_000);
        assert_eq!(live.observe(0, None), Verdict::NoStatus);
        for beat in 1..20u64 {
            let verdict = live.observe(beat * 1_000, Some(&running(beat)));
            assert!(
                matches!(verdict, Verdict::Alive { silent_ms: 0, .. }),
                "{verdict:?}"
            );
        }
        assert!(matches!(
            live.observe(19_000 + timeout, Some(&running(19))),
            Verdict::Alive { .. }
        ));
        assert_eq!(
            live.observe(19_001 + timeout, Some(&running(19))),
            Verdict::MonitorLost {
                state: RunState::Running,
                silent_ms: timeout + 1
            }
        );
        // A new write brings it back: the host reports what it sees.
        assert!(matches!(
            live.observe(30_000, Some(&running(20))),
            Verdict::Alive { silent_ms: 0, .. }
        ));
    }

    #[test]
    fn terminal_states_are_done_at_once() {
        let mut live = Liveness::new(LivenessPolicy::default());
        let mut rec = running(5);
        rec.state = RunState::Aborted(AbortReason::GuestRestarted);
        assert_eq!(live.observe(0, Some(&rec)), Verdict::Done(rec.state));
        assert_eq!(live.observe(u64::MAX, Some(&rec)), Verdict::Done(rec.state));
    }

    #[test]
    fn hostile_intervals_are_clamped_and_new_boots_reset_the_clock() {
        let policy = LivenessPolicy::default();
        assert_eq!(policy.timeout_ms(u32::MAX), 3 * 600_000 + 2_000);
        assert_eq!(policy.timeout_ms(0), 3 * 100 + 2_000);
        let mut live = Liveness::new(policy);
        let rec = running(7);
        live.observe(0, Some(&rec));
        let mut rebooted = rec.clone();
        rebooted.boot_id = BootId([1; 16]);
        assert!(matches!(
            live.observe(100_000, Some(&rebooted)),
            Verdict::Alive { silent_ms: 0, .. }
        ));
        // A clock that goes backwards is read as no time passing.
        assert!(matches!(
            live.observe(50, Some(&rebooted)),
            Verdict::Alive { silent_ms: 0, .. }
        ));
    }
}
