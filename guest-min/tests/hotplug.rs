//! `nlxtp-guest hotplug`'s command line. (The watcher itself needs a VM: it takes block
//! devices and reads kernel uevents; its uevent parser is tested in `uevent.rs`.)

use std::process::Command;

const GUEST: &str = env!("CARGO_BIN_EXE_nlxtp-guest");

#[test]
fn help_teaches_the_hotplug_role() {
    let out = Command::new(GUEST).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "nlxtp-guest hotplug",
        "--mount-dir",
        "NLXTP-HOT",
        "/run/nlxtp/hot",
        "release mark",
    ] {
        assert!(help.contains(word), "--help lacks {word:?}:\n{help}");
    }
}

#[test]
fn bad_options_are_refused_before_anything_is_watched() {
    for args in [
        &["--label", "NLXTP"][..],
        &["--label", "nlxtp"],
        &["--label", "TWELVE-BYTES"],
        &["--label", ""],
        &["--label"],
        &["--mount-dir", "relative/dir"],
        &["--mount-dir", &"/x".repeat(100)],
        &["--heartbeat-ms", "0"],
        &["--heartbeat-ms", "soon"],
        &["--output-cap", "-1"],
        &["--watch"],
    ] {
        let out = Command::new(GUEST)
            .arg("hotplug")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("hotplug option"), "{args:?}: {err}");
    }
}
