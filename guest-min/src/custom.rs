//! The monitor's side of the custom status file (`nlxtp/custom.bin`, see
//! `nlxtp_core::custom`): status helpers write the whole text there themselves; the
//! monitor notices (inotify, else a look every half second, and at every heartbeat) and
//! puts the text's start into the status record, for hosts that read only the record.

use core::ffi::CStr;

use nlxtp_core::custom::{read_custom, status_prefix, CUSTOM_FILE_LEN};
use nlxtp_core::{CustomStatus, RunId};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::inotify;

use crate::area::{custom_file_path, Area};

/// Without inotify, how often the monitor looks at the file.
pub const POLL_MS: u64 = 500;

/// The watched custom status file of one run.
#[derive(Debug)]
pub struct CustomWatch {
    run_id: RunId,
    /// Reports each close of the file after a write (a helper done), when available.
    events: Option<OwnedFd>,
    /// The sequence number of the text last put into the record.
    seen: u64,
    /// A look is owed (an event came, or the file was not looked at yet).
    due: bool,
}

impl CustomWatch {
    /// Watches the custom status file of run `run_id` in the area at `area_path`.
    pub fn new(run_id: RunId, area_path: &CStr) -> CustomWatch {
        let path = custom_file_path(area_path);
        let events = path.as_deref().and_then(|path| {
            let path = CStr::from_bytes_with_nul(path).ok()?;
            let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                .ok()?;
            inotify::add_watch(&fd, path, inotify::WatchFlags::CLOSE_WRITE).ok()?;
            Some(fd)
        });
        if events.is_none() {
            crate::log!(
                warning: "cannot watch the custom status file; looking at it every {POLL_MS} ms instead"
            );
        }
        CustomWatch {
            run_id,
            events,
            seen: 0,
            due: true,
        }
    }

    /// The inotify descriptor to poll, if there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether the monitor must wake up at intervals to look (no inotify).
    pub fn polled(&self) -> bool {
        self.events.is_none()
    }

    /// Takes pending events; a look is owed if there were any.
    pub fn pump(&mut self) {
        let Some(fd) = &self.events else { return };
        let mut buf = [0u8; 512];
        while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {
            self.due = true;
        }
    }

    /// Whether an event asked for a look since the last one.
    pub fn due(&self) -> bool {
        self.due
    }

    /// Reads the file; if it holds a newer text of this run, puts its start into
    /// `custom`. Says whether `custom` changed.
    pub fn refresh(&mut self, area: &Area, custom: &mut CustomStatus) -> bool {
        self.due = false;
        let mut buf = [0u8; CUSTOM_FILE_LEN + 1];
        let len = area.read_custom_file(&mut buf);
        match read_custom(&buf[..len]) {
            Ok(text) if text.run_id == self.run_id && text.sequence != self.seen => {
                self.seen = text.sequence;
                let start = status_prefix(text.text);
                if custom.as_str() == start {
                    return false;
                }
                custom.clear();
                // The prefix is at most the record's capacity.
                let _ = custom.push_str(start);
                true
            }
            // A torn read is a helper at work: its close brings another event.
            _ => false,
        }
    }
}
