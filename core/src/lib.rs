//! The nlxtp shared-area protocol.
//!
//! A host and a guest that share nothing but storage (a vFAT disk image for a VM, a
//! directory for a container) agree on this crate's names and byte layouts:
//!
//! - [`layout`]: the file names in the shared area, and the environment a start script gets.
//! - [`wire`]: the frame every protocol file uses (`magic | version | length | sequence |
//!   payload | crc32c`, plus a tail copy of the sequence) and its decode errors.
//! - [`record`]: the typed status record and the upload manifest carried in frames.
//! - [`slots`]: the tear-proof two-slot status file: which slot to write, which to believe.
//! - [`custom`]: the two-slot custom status file holding a script's whole text (64 KiB),
//!   of which the status record carries the start.
//! - [`liveness`]: a pure state machine that turns a series of observed records into
//!   "done", "running", "monitor lost" or "no status yet", without clock synchronisation.
//!
//! The crate is `no_std`, allocates nothing, does no I/O and reads no clock: the guest
//! binary and the host share it, and it builds for bare-metal targets. Everything it
//! decodes is treated as hostile: every length is bounded before use and no decode panics.
//! `docs/wire-format.md` in the repository is the normative description.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod custom;
pub mod layout;
pub mod live;
pub mod liveness;
pub mod record;
pub mod slots;
pub mod wire;

pub use custom::{CustomText, CustomWriter};
pub use liveness::{Liveness, LivenessPolicy, Seen, Verdict};
pub use record::{
    AbortReason, BootId, CustomStatus, Manifest, OutputInfo, RunId, RunState, StatusRecord,
};
pub use slots::{StatusReader, StatusWriter};
pub use wire::{CorruptKind, DecodeError, EncodeError};
