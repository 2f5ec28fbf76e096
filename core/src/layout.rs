//! Names everyone agrees on: files in the shared area, the guest's mount point, and the
//! environment the start script runs with.
//!
//! Paths are relative to the root of the shared area and use `/` as separator. Every name
//! the protocol owns lives under [`PROTOCOL_DIR`], except the start script, whose name and
//! place come from the original implementation (ToMaTo "executable archives") so its
//! archives keep working. All protocol names are valid 8.3 names, so a guest's vFAT driver
//! stores them without long-file-name entries.

/// The start script, at the root of the shared area. The host writes it last in an upload,
/// so its presence means the upload is complete.
pub const START_SCRIPT: &str = "auto_exec.sh";

/// The directory that holds every file the protocol owns.
pub const PROTOCOL_DIR: &str = "nlxtp";

/// The upload manifest, written by the host before [`START_SCRIPT`]: one frame carrying
/// the run id (see [`crate::record::Manifest`]).
pub const MANIFEST_FILE: &str = "nlxtp/manifest.bin";

/// The status file: two fixed slots, written only by the guest's monitor
/// (see [`crate::slots`]).
pub const STATUS_FILE: &str = "nlxtp/status.bin";

/// The custom status file: the script's whole custom status text (up to 64 KiB) in two
/// fixed slots, written by the status helper (see [`crate::custom`]).
pub const CUSTOM_FILE: &str = "nlxtp/custom.bin";

/// Captured standard output of the start script.
pub const STDOUT_FILE: &str = "nlxtp/stdout.txt";

/// Captured standard error of the start script.
pub const STDERR_FILE: &str = "nlxtp/stderr.txt";

/// The live-output ring: a preallocated, checksummed window on the newest output that a
/// host can follow while the guest runs (see [`crate::live`]).
pub const LIVE_FILE: &str = "nlxtp/live.bin";

/// Every file in [`PROTOCOL_DIR`] that describes one run. An upload replaces all of them;
/// copies inside an uploaded archive (a re-uploaded download, say) are not taken over.
pub const RUN_FILES: [&str; 6] = [
    MANIFEST_FILE,
    STATUS_FILE,
    STDOUT_FILE,
    STDERR_FILE,
    LIVE_FILE,
    CUSTOM_FILE,
];

/// FAT volume label of a shared disk made by the host; the guest finds its disk by it.
pub const DEFAULT_VOLUME_LABEL: &str = "NLXTP";

/// Where a guest mounts the shared area (the original implementation's path).
pub const GUEST_MOUNT_POINT: &str = "/mnt/nlXTP";

/// FAT volume label of a *hot* shared disk: one the host attaches to a running VM with a
/// single job on it. The guest's hot-plug watcher takes only disks with this label, so
/// the boot-time disk ([`DEFAULT_VOLUME_LABEL`]) never counts as a hot one.
pub const HOT_VOLUME_LABEL: &str = "NLXTP-HOT";

/// Where the guest mounts a hot disk: a directory of its own below this one per disk
/// (named after the device and the kernel's disk sequence number).
pub const GUEST_HOT_MOUNT_DIR: &str = "/run/nlxtp/hot";

/// The release mark: when a hot disk's run has ended, the guest unmounts the volume and
/// then writes [`RELEASE_MARK`] at this byte offset of the volume's boot sector. The
/// bytes lie in the boot code area, behind the boot code a formatter writes (fatfs's
/// ends at byte 219) and before where a partition table would be (446): no FAT driver
/// reads them. The host reads them from the raw image; a mark says "the guest no longer
/// has this volume mounted, detach it now". It is a hint from an untrusted guest: the
/// host still reads everything on the disk as hostile.
pub const RELEASE_MARK_OFFSET: usize = 400;

/// The bytes of the release mark (see [`RELEASE_MARK_OFFSET`]). A freshly formatted
/// volume has zeros there, so every upload clears it.
pub const RELEASE_MARK: [u8; 16] = *b"NLXTP-RELEASED\0\0";

/// True when the boot sector `sector` carries the release mark.
pub fn has_release_mark(sector: &[u8]) -> bool {
    sector.get(RELEASE_MARK_OFFSET..RELEASE_MARK_OFFSET + RELEASE_MARK.len())
        == Some(&RELEASE_MARK[..])
}

/// Environment variables a start script gets.
pub mod env {
    /// The shared area's path in the guest (original implementation).
    pub const ARCHIVE_DIR: &str = "archive_dir";
    /// The same path, under the original implementation's second name.
    pub const NLXTP_DIR: &str = "nlxtp_dir";
    /// The protocol version the guest speaks (original implementation's name).
    pub const ARCHIVE_VERSION: &str = "archive_version";
    /// The run id of the upload being executed, as 32 lower-case hex digits.
    pub const RUN_ID: &str = "NLXTP_RUN_ID";
    /// The absolute path of the custom status file, where the status helper writes.
    pub const CUSTOM_FILE: &str = "NLXTP_CUSTOM_FILE";
}

/// The status files of the original implementation, which a host can still read
/// (as legacy: no checksum, no exit code, liveness by guest clock).
pub mod legacy {
    /// The directory that held the status files.
    pub const EXEC_STATUS_DIR: &str = "exec_status";
    /// Standard output and standard error, together.
    pub const OUT: &str = "exec_status/out";
    /// Guest Unix time in decimal, rewritten every 60 s while the script ran.
    pub const RUNNING: &str = "exec_status/running";
    /// Empty file, present once the script had finished.
    pub const DONE: &str = "exec_status/done";
    /// The custom status text.
    pub const CUSTOM: &str = "exec_status/custom";
}
