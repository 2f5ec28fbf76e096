//! One scratch directory per fuzzing process, on tmpfs when there is one (inputs are
//! written and read many times). libFuzzer ends the process without running
//! destructors, so each start removes the directories of processes that have ended.

use std::path::{Path, PathBuf};

/// `nlxtp-fuzz-TARGET-PID` in /dev/shm (or the temporary directory), fresh.
pub fn dir(target: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let prefix = format!("nlxtp-fuzz-{target}-");
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(&prefix) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
