//! The nlxtp host library: shared-area backends (vFAT image, container directory), the
//! operations upload, status, wait and download, and the FUSE view.
//!
//! Only the protocol re-export exists so far; the backends come with issue 4.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use nlxtp_core as protocol;
