//! The nlxtp host library: shared-area backends (vFAT image, container directory), the
//! operations upload, status, wait and download, the FUSE view, and (feature `serve`)
//! the HTTP API.
//!
//! [`area`] is the shared-area abstraction and its vFAT image backend; the operations,
//! the CLI and the FUSE view build on it. [`vm`] boots throwaway VMs for `nlxtp run`
//! and the harness.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod area;
pub mod fuse;
pub mod ops;
#[cfg(feature = "serve")]
pub mod serve;
mod stable_hash;
pub mod vm;

pub use nlxtp_core as protocol;
