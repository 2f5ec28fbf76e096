//! Time, from the kernel's clocks: monotonic for every decision, wall-clock only for the
//! informative timestamps in the record.

use rustix::time::{clock_gettime, ClockId, Timespec};

/// Milliseconds on the monotonic clock.
pub fn now_ms() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000 + t.tv_nsec as u64 / 1_000_000
}

/// Seconds since the Unix epoch on the guest's wall clock (informative only).
pub fn unix_secs() -> u64 {
    clock_gettime(ClockId::Realtime).tv_sec.max(0) as u64
}

/// A poll timeout of `ms` milliseconds.
pub fn timespec_ms(ms: u64) -> Timespec {
    Timespec {
        tv_sec: (ms / 1_000) as i64,
        tv_nsec: ((ms % 1_000) * 1_000_000) as i64,
    }
}

/// Sleeps, by polling no descriptors.
pub fn sleep_ms(ms: u64) {
    let _ = rustix::event::poll(&mut [], Some(&timespec_ms(ms)));
}

/// The time since boot (`CLOCK_BOOTTIME`, the clock of `/proc/uptime`), shown in log lines
/// as seconds with two decimals: how far into the boot something happened.
#[derive(Debug, Clone, Copy)]
pub struct Uptime(u64);

impl Uptime {
    /// Now.
    pub fn now() -> Uptime {
        let t = clock_gettime(ClockId::Boottime);
        Uptime(t.tv_sec as u64 * 1_000 + t.tv_nsec as u64 / 1_000_000)
    }
}

impl core::fmt::Display for Uptime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:02} s", self.0 / 1_000, self.0 % 1_000 / 10)
    }
}
