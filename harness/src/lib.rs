//! The nlxtp end-to-end harness: minimal guest images, QEMU and container boots, and the
//! demo. Not written yet (issue 6).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use nlxtp_host as host;
