//! `--timings`: when the host saw each step of the boot, as one line at the end.

use std::time::Duration;

use nlxtp_host::vm::Accel;

use crate::out::note;

/// When the host saw each step of the boot, and the guest's uptime at it.
#[derive(Debug, Default)]
pub(super) struct Marks {
    init: Option<(Duration, f64)>,
    daemon: Option<(Duration, f64)>,
    daemon_exit: Option<(Duration, f64)>,
    power_off: Option<(Duration, f64)>,
    pub(super) done: Option<Duration>,
    pub(super) exited: Option<Duration>,
}

impl Marks {
    /// Marks the steps first seen in `console` at `now`.
    pub(super) fn see(&mut self, console: &str, now: Duration) {
        for (mark, text) in [
            (&mut self.init, "nlxtp-init: started at uptime "),
            (
                &mut self.daemon,
                "nlxtp-init: booted; starting the daemon at uptime ",
            ),
            (&mut self.daemon_exit, " at uptime "),
            (&mut self.power_off, "nlxtp-init: powering off at uptime "),
        ] {
            if mark.is_some() {
                continue;
            }
            let found = console
                .lines()
                .filter(|l| l.starts_with("nlxtp-init: "))
                .filter(|l| text != " at uptime " || l.contains("daemon exited"))
                .find_map(|l| l.split_once(text).map(|(_, up)| up.trim().parse().ok()));
            if let Some(uptime) = found {
                *mark = Some((now, uptime.unwrap_or(f64::NAN)));
            }
        }
    }

    pub(super) fn print(&self, prepared: Duration, total: Duration, accel: Accel) {
        let s = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        let (init_at, kernel) = self
            .init
            .map_or((f64::NAN, f64::NAN), |(d, u)| (d.as_secs_f64(), u));
        let daemon_at = s(self.daemon.map(|m| m.0));
        note!(
            "nlxtp: timings ({}): prepare {:.2} s; QEMU start + firmware {:.2} s; kernel {:.2} s; \
             modules and init {:.2} s; daemon start -> job end seen {:.2} s; -> exit {:.2} s; total {:.2} s",
            accel.name(),
            prepared.as_secs_f64(),
            init_at - kernel - prepared.as_secs_f64(),
            kernel,
            daemon_at - init_at,
            s(self.done) - daemon_at,
            total.as_secs_f64() - s(self.done),
            total.as_secs_f64()
        );
    }
}
