//! The typed status record and upload manifest, and their frames.
//!
//! The only way to get a [`StatusRecord`] or a [`Manifest`] from bytes is their `decode`,
//! which checks the frame (see [`crate::wire`]) and then requires the postcard payload to
//! be a valid value that uses every payload byte.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::{decode_frame, encode_frame, CorruptKind, DecodeError, EncodeError, Magic};

/// Size of one status slot; the status file holds two (see [`crate::slots`]).
pub const STATUS_SLOT_LEN: usize = 4096;

/// Size of the manifest file: one slot.
pub const MANIFEST_LEN: usize = 512;

/// The most bytes of custom status text a record holds (UTF-8). A longer text is kept
/// whole in the custom status file, and its start here (see [`crate::custom`]).
pub const CUSTOM_STATUS_MAX: usize = 3584;

/// The custom status text a start script sets.
pub type CustomStatus = heapless::String<CUSTOM_STATUS_MAX>;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// Parses 32 hex digits (either case); dashes are ignored, so a UUID works.
            pub fn from_hex(text: &str) -> Option<Self> {
                let mut out = [0u8; 16];
                let mut digits = text.bytes().filter(|&b| b != b'-');
                for byte in out.iter_mut() {
                    let hi = hex_value(digits.next()?)?;
                    let lo = hex_value(digits.next()?)?;
                    *byte = hi << 4 | lo;
                }
                digits.next().is_none().then_some($name(out))
            }
        }

        impl fmt::Display for $name {
            /// 32 lower-case hex digits.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    };
}

id_type!(
    /// Names one upload. The host draws a fresh random one for every upload and writes it
    /// into the manifest; every status record carries the run id it belongs to.
    RunId
);
id_type!(
    /// Names one boot of the guest (Linux: `/proc/sys/kernel/random/boot_id`), so that the
    /// host can tell a record written before a reboot from one written after it.
    BootId
);

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Why a run ended without the script's own exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The guest booted again while the run was in progress (the VM died or was reset);
    /// written by the daemon at the next boot. The run is not started again.
    GuestRestarted,
    /// The monitor could not go on (it was killed, or lost its output files) and a later
    /// daemon start found the run unfinished.
    MonitorDied,
    /// The guest's system stopped the run: a shutdown or reboot, or a stop of the service
    /// (`systemctl stop`, `service ... stop`); in a container also a new upload that
    /// replaced the running one. The monitor got this signal, wrote this record, and only
    /// then stopped the script. On the wire: detail 256 + the signal.
    StoppedBySystem(i32),
    /// The host took a hot-plugged disk away while the run was in progress (the guest
    /// did not release it in time, or the host was told to force it); written by the
    /// host into the detached image. What the script did after that is not on the disk.
    Detached,
    /// A reason a newer guest wrote.
    Unknown(i32),
}

/// Details from here up to `STOPPED_BY_SYSTEM + 255` are [`AbortReason::StoppedBySystem`]
/// with the signal in the low byte.
const STOPPED_BY_SYSTEM: i32 = 0x100;

impl AbortReason {
    fn code(self) -> i32 {
        match self {
            AbortReason::GuestRestarted => 1,
            AbortReason::MonitorDied => 2,
            AbortReason::Detached => 3,
            // A signal number is below 256 on every system; anything else keeps the range.
            AbortReason::StoppedBySystem(signal) => STOPPED_BY_SYSTEM + (signal & 0xff),
            AbortReason::Unknown(code) => code,
        }
    }

    fn from_code(code: i32) -> Self {
        match code {
            1 => AbortReason::GuestRestarted,
            2 => AbortReason::MonitorDied,
            3 => AbortReason::Detached,
            STOPPED_BY_SYSTEM..0x200 => AbortReason::StoppedBySystem(code - STOPPED_BY_SYSTEM),
            other => AbortReason::Unknown(other),
        }
    }
}

/// Where a run is. On the wire a state is `(kind: u16, terminal: bool, detail: i32)`, so
/// a reader meets a kind it does not know as [`RunState::Unknown`] and still knows
/// whether the run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "WireState", into = "WireState")]
pub enum RunState {
    /// The guest has seen the upload; the script has not started yet.
    #[default]
    Pending,
    /// The script is running.
    Running,
    /// The script exited with this code.
    Exited(i32),
    /// The script was killed by this signal.
    Signaled(i32),
    /// The monitor killed the script (with this signal) because the manifest's timeout
    /// ran out.
    TimedOut(i32),
    /// The run ended without the script's exit being seen.
    Aborted(AbortReason),
    /// The script could not be started; the detail is the guest's `errno`.
    StartFailed(i32),
    /// A state this build does not know.
    Unknown {
        /// The wire kind.
        kind: u16,
        /// Whether the writer says the run has ended.
        terminal: bool,
        /// The kind's detail value.
        detail: i32,
    },
}

impl RunState {
    /// Whether the run has ended: nothing will change in the record any more.
    pub fn is_terminal(&self) -> bool {
        match self {
            RunState::Pending | RunState::Running => false,
            RunState::Unknown { terminal, .. } => *terminal,
            _ => true,
        }
    }

    /// The exit code a caller waiting for the run should use, when the script exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RunState::Exited(code) => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunState::Pending => f.write_str("pending"),
            RunState::Running => f.write_str("running"),
            RunState::Exited(code) => write!(f, "exited with code {code}"),
            RunState::Signaled(sig) => write!(f, "killed by signal {sig}"),
            RunState::TimedOut(sig) => write!(f, "timed out (killed by signal {sig})"),
            RunState::Aborted(AbortReason::GuestRestarted) => {
                f.write_str("aborted: the guest restarted while the script ran")
            }
            RunState::Aborted(AbortReason::MonitorDied) => f.write_str("aborted: the monitor died"),
            RunState::Aborted(AbortReason::Detached) => {
                f.write_str("aborted: the host detached the disk while the script ran")
            }
            RunState::Aborted(AbortReason::StoppedBySystem(sig)) => {
                write!(f, "aborted: stopped by the system (signal {sig})")
            }
            RunState::Aborted(AbortReason::Unknown(code)) => write!(f, "aborted (reason {code})"),
            RunState::StartFailed(errno) => write!(f, "could not start the script (errno {errno})"),
            RunState::Unknown {
                kind,
                terminal,
                detail,
            } => {
                let ended = if *terminal { "ended" } else { "not ended" };
                write!(f, "unknown state {kind} ({ended}, detail {detail})")
            }
        }
    }
}

/// The wire shape of [`RunState`]: fixed, so unknown kinds decode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireState {
    kind: u16,
    terminal: bool,
    detail: i32,
}

mod kind {
    pub const PENDING: u16 = 0;
    pub const RUNNING: u16 = 1;
    pub const EXITED: u16 = 2;
    pub const SIGNALED: u16 = 3;
    pub const TIMED_OUT: u16 = 4;
    pub const ABORTED: u16 = 5;
    pub const START_FAILED: u16 = 6;
}

impl From<RunState> for WireState {
    fn from(state: RunState) -> Self {
        let (kind, detail) = match state {
            RunState::Pending => (kind::PENDING, 0),
            RunState::Running => (kind::RUNNING, 0),
            RunState::Exited(code) => (kind::EXITED, code),
            RunState::Signaled(sig) => (kind::SIGNALED, sig),
            RunState::TimedOut(sig) => (kind::TIMED_OUT, sig),
            RunState::Aborted(reason) => (kind::ABORTED, reason.code()),
            RunState::StartFailed(errno) => (kind::START_FAILED, errno),
            RunState::Unknown {
                kind,
                terminal,
                detail,
            } => {
                return WireState {
                    kind,
                    terminal,
                    detail,
                }
            }
        };
        WireState {
            kind,
            terminal: state.is_terminal(),
            detail,
        }
    }
}

/// A known kind whose terminal flag contradicts it.
#[derive(Debug)]
struct InconsistentState;

impl fmt::Display for InconsistentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("run state kind and terminal flag disagree")
    }
}

impl TryFrom<WireState> for RunState {
    type Error = InconsistentState;

    fn try_from(wire: WireState) -> Result<Self, Self::Error> {
        let state = match wire.kind {
            kind::PENDING if wire.detail == 0 => RunState::Pending,
            kind::RUNNING if wire.detail == 0 => RunState::Running,
            kind::PENDING | kind::RUNNING => return Err(InconsistentState),
            kind::EXITED => RunState::Exited(wire.detail),
            kind::SIGNALED => RunState::Signaled(wire.detail),
            kind::TIMED_OUT => RunState::TimedOut(wire.detail),
            kind::ABORTED => RunState::Aborted(AbortReason::from_code(wire.detail)),
            kind::START_FAILED => RunState::StartFailed(wire.detail),
            kind => {
                return Ok(RunState::Unknown {
                    kind,
                    terminal: wire.terminal,
                    detail: wire.detail,
                })
            }
        };
        if state.is_terminal() == wire.terminal {
            Ok(state)
        } else {
            Err(InconsistentState)
        }
    }
}

/// What the monitor captured of one output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Bytes written to the capture file.
    pub bytes: u64,
    /// Whether the script wrote more than the cap and the rest was dropped.
    pub truncated: bool,
}

/// The status of one run, as the guest's monitor last wrote it.
///
/// Field order is wire order; `sequence` travels in the frame header, not the payload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Grows by one with every write of the status file, across boots.
    #[serde(skip)]
    pub sequence: u64,
    /// The upload this record belongs to.
    pub run_id: RunId,
    /// The guest boot that wrote this record.
    pub boot_id: BootId,
    /// Where the run is.
    pub state: RunState,
    /// Grows by one at every heartbeat while the monitor runs.
    pub heartbeat: u64,
    /// The monitor's promise: it writes a record at least this often (milliseconds) until
    /// the state is terminal. Hosts derive their "monitor lost" timeout from it.
    pub heartbeat_interval_ms: u32,
    /// Captured standard output.
    pub stdout: OutputInfo,
    /// Captured standard error.
    pub stderr: OutputInfo,
    /// Guest Unix time (seconds) when the script started; informative only.
    pub started_unix: Option<u64>,
    /// Guest Unix time (seconds) of this write; informative only.
    pub updated_unix: u64,
    /// Guest Unix time (seconds) when the run ended; informative only.
    pub finished_unix: Option<u64>,
    /// The text the script set (`archive_setstatus TEXT`), or its first
    /// [`CUSTOM_STATUS_MAX`] bytes: the whole text is in the custom status file
    /// ([`crate::custom::custom_text`]).
    pub custom: CustomStatus,
}

impl StatusRecord {
    /// Writes this record as one whole status slot (`STATUS_SLOT_LEN` bytes).
    ///
    /// ```
    /// use nlxtp_core::record::{StatusRecord, STATUS_SLOT_LEN};
    /// use nlxtp_core::RunState;
    /// let mut rec = StatusRecord { sequence: 4, state: RunState::Exited(3), ..Default::default() };
    /// rec.custom.push_str("half way").unwrap();
    /// let mut slot = [0u8; STATUS_SLOT_LEN];
    /// rec.encode(&mut slot).unwrap();
    /// assert_eq!(StatusRecord::decode(&slot), Ok(rec));
    /// ```
    ///
    /// # Errors
    /// [`EncodeError::SlotSize`] if `slot` is not `STATUS_SLOT_LEN` bytes long. A record
    /// always fits: the custom text is bounded by its type.
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), EncodeError> {
        if slot.len() != STATUS_SLOT_LEN {
            return Err(EncodeError::SlotSize);
        }
        encode_frame(Magic::STATUS, self.sequence, slot, |area| {
            postcard_into(self, area)
        })
    }

    /// Reads a record from one status slot.
    ///
    /// # Errors
    /// See [`DecodeError`]; a slot of the wrong size is `Corrupt(SlotSize)`.
    pub fn decode(slot: &[u8]) -> Result<Self, DecodeError> {
        if slot.len() != STATUS_SLOT_LEN {
            return Err(DecodeError::Corrupt(CorruptKind::SlotSize));
        }
        let frame = decode_frame(Magic::STATUS, slot)?;
        let mut record: StatusRecord = postcard_exact(frame.payload)?;
        record.sequence = frame.sequence;
        Ok(record)
    }
}

/// What the host tells the guest about one upload. Written by the host into
/// [`crate::layout::MANIFEST_FILE`] before the start script; read by the guest daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The fresh id of this upload.
    pub run_id: RunId,
    /// Host Unix time (seconds) of the upload; informative only.
    pub created_unix: u64,
    /// Kill the script after this many seconds (none: no limit).
    pub timeout_secs: Option<u32>,
    /// Ask the monitor for this heartbeat interval (none: the guest's default).
    pub heartbeat_interval_ms: Option<u32>,
    /// Cap on each captured output stream, in bytes (none: the guest's default).
    pub output_cap_bytes: Option<u64>,
}

/// The manifest frame's sequence number; a manifest is written once.
const MANIFEST_SEQUENCE: u64 = 1;

impl Manifest {
    /// Writes the whole manifest file (`MANIFEST_LEN` bytes).
    ///
    /// # Errors
    /// [`EncodeError::SlotSize`] if `file` is not `MANIFEST_LEN` bytes long.
    pub fn encode(&self, file: &mut [u8]) -> Result<(), EncodeError> {
        if file.len() != MANIFEST_LEN {
            return Err(EncodeError::SlotSize);
        }
        encode_frame(Magic::MANIFEST, MANIFEST_SEQUENCE, file, |area| {
            postcard_into(self, area)
        })
    }

    /// Reads the manifest file. An empty file is `NotThereYet`, a short one `Torn`.
    ///
    /// # Errors
    /// See [`DecodeError`].
    pub fn decode(file: &[u8]) -> Result<Self, DecodeError> {
        match file.len() {
            0 => return Err(DecodeError::NotThereYet),
            len if len < MANIFEST_LEN => return Err(DecodeError::Torn),
            MANIFEST_LEN => {}
            _ => return Err(DecodeError::Corrupt(CorruptKind::FileSize)),
        }
        postcard_exact(decode_frame(Magic::MANIFEST, file)?.payload)
    }
}

pub(crate) fn postcard_into<T: Serialize>(
    value: &T,
    area: &mut [u8],
) -> Result<usize, EncodeError> {
    postcard::to_slice(value, area)
        .map(|used| used.len())
        .map_err(|_| EncodeError::TooLarge)
}

pub(crate) fn postcard_exact<'de, T: Deserialize<'de>>(
    payload: &'de [u8],
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(payload)
        .map_err(|_| DecodeError::Corrupt(CorruptKind::Payload))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::Corrupt(CorruptKind::TrailingBytes))
    }
}
