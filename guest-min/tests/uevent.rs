//! The uevent parser of the hot-plug watcher, compiled as it is from the guest's source
//! (it uses only `core`), fed real kernel messages and hostile ones.

#[path = "../src/uevent.rs"]
mod uevent;

use uevent::{
    parse_kernel_message, parse_sysfs_uevent, Action, BlockEvent, DevType, DEVNAME_MAX, FIELDS_MAX,
    MESSAGE_MAX,
};

/// What Linux 6.1 sends when QEMU's `device_add virtio-blk-pci` gives the guest `vdb`.
const ADD_VDB: &[u8] = b"add@/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb\0\
ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb\0SUBSYSTEM=block\0\
MAJOR=253\0MINOR=16\0DEVNAME=vdb\0DEVTYPE=disk\0DISKSEQ=3\0SEQNUM=1830\0";

fn message(header: &str, fields: &[&str]) -> Vec<u8> {
    let mut bytes = header.as_bytes().to_vec();
    bytes.push(0);
    for field in fields {
        bytes.extend_from_slice(field.as_bytes());
        bytes.push(0);
    }
    bytes
}

fn block(action: &str, fields: &[&str]) -> Vec<u8> {
    let mut all = vec![format!("ACTION={action}"), "SUBSYSTEM=block".to_owned()];
    all.extend(fields.iter().map(|f| f.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    message(&format!("{action}@/devices/virtual/block/x"), &all)
}

#[test]
fn a_hot_added_disk() {
    assert_eq!(
        parse_kernel_message(ADD_VDB),
        Some(BlockEvent {
            action: Action::Add,
            devtype: DevType::Disk,
            devname: "vdb",
            diskseq: Some(3),
        })
    );
}

#[test]
fn its_removal_and_partitions() {
    let remove = block("remove", &["DEVNAME=vdb", "DEVTYPE=disk", "DISKSEQ=3"]);
    assert_eq!(
        parse_kernel_message(&remove).map(|e| (e.action, e.devname, e.diskseq)),
        Some((Action::Remove, "vdb", Some(3)))
    );
    // A partition without DISKSEQ (older kernels send none for partitions).
    let part = block(
        "add",
        &[
            "DEVNAME=vdb1",
            "DEVTYPE=partition",
            "PARTN=1",
            "PARTNAME=NLXTP",
        ],
    );
    assert_eq!(
        parse_kernel_message(&part).map(|e| (e.devtype, e.devname, e.diskseq)),
        Some((DevType::Partition, "vdb1", None))
    );
    let change = block("change", &["DEVNAME=vdb", "DEVTYPE=disk"]);
    assert_eq!(
        parse_kernel_message(&change).map(|e| e.action),
        Some(Action::Other)
    );
    // No trailing NUL after the last property: still whole.
    let mut bare = block("add", &["DEVTYPE=disk", "DEVNAME=sda"]);
    bare.pop();
    assert_eq!(parse_kernel_message(&bare).map(|e| e.devname), Some("sda"));
}

#[test]
fn not_block_devices_or_not_from_the_kernel() {
    let net = message(
        "add@/devices/virtual/net/lo",
        &["ACTION=add", "SUBSYSTEM=net", "DEVTYPE=disk", "DEVNAME=vdb"],
    );
    assert_eq!(parse_kernel_message(&net), None);
    // udev's re-broadcast on its own group: a binary header, never '@' before a NUL.
    let mut udev = b"libudev\0\xfe\xed\xca\xfe".to_vec();
    udev.extend_from_slice(&ADD_VDB[ADD_VDB.iter().position(|&b| b == 0).unwrap()..]);
    assert_eq!(parse_kernel_message(&udev), None);
    let scsi_host = block("add", &["DEVTYPE=scsi_host", "DEVNAME=host0"]);
    assert_eq!(parse_kernel_message(&scsi_host), None);
    assert_eq!(parse_kernel_message(b""), None);
    assert_eq!(parse_kernel_message(b"add@/x"), None);
    assert_eq!(parse_kernel_message(b"\0\0\0"), None);
}

#[test]
fn contradictions_and_duplicates_are_refused() {
    let header_disagrees = message(
        "add@/devices/x",
        &[
            "ACTION=remove",
            "SUBSYSTEM=block",
            "DEVTYPE=disk",
            "DEVNAME=vdb",
        ],
    );
    assert_eq!(parse_kernel_message(&header_disagrees), None);
    for twice in [
        ["DEVNAME=vdb", "DEVNAME=vdc"],
        ["DISKSEQ=3", "DISKSEQ=3"],
        ["DEVTYPE=disk", "DEVTYPE=disk"],
        ["SUBSYSTEM=block", "SUBSYSTEM=block"],
        ["ACTION=add", "ACTION=add"],
    ] {
        let mut fields = vec!["DEVTYPE=disk", "DEVNAME=vdb"];
        fields.extend(twice);
        let msg = block("add", &fields);
        assert_eq!(parse_kernel_message(&msg), None, "{twice:?}");
    }
    let no_action = message(
        "add@/x",
        &["SUBSYSTEM=block", "DEVTYPE=disk", "DEVNAME=vdb"],
    );
    assert_eq!(parse_kernel_message(&no_action), None);
}

#[test]
fn device_names_are_one_safe_path_component() {
    let long = "v".repeat(DEVNAME_MAX + 1);
    let longest = "v".repeat(DEVNAME_MAX);
    for bad in [
        "",
        "..",
        ".",
        ".hidden",
        "../etc",
        "a/b",
        "cciss/c0d0",
        "vd b",
        "vdb\n",
        "vd\u{e9}",
        "vdb;rm",
        long.as_str(),
    ] {
        let name = format!("DEVNAME={bad}");
        let msg = block("add", &["DEVTYPE=disk", &name]);
        assert_eq!(parse_kernel_message(&msg), None, "{bad:?}");
    }
    for good in [
        "vdb",
        "sda1",
        "nvme0n1p12",
        "dm-0",
        "md_d0",
        "x.y",
        longest.as_str(),
    ] {
        let name = format!("DEVNAME={good}");
        let msg = block("add", &["DEVTYPE=disk", &name]);
        assert_eq!(parse_kernel_message(&msg).map(|e| e.devname), Some(good));
    }
}

#[test]
fn disk_sequence_numbers_are_plain_decimals() {
    for (text, want) in [
        ("0", Some(Some(0))),
        ("18446744073709551615", Some(Some(u64::MAX))),
        ("18446744073709551616", None),
        ("99999999999999999999", None),
        ("000000000000000000001", None),
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1 ", None),
        ("0x10", None),
    ] {
        let seq = format!("DISKSEQ={text}");
        let msg = block("add", &["DEVTYPE=disk", "DEVNAME=vdb", &seq]);
        assert_eq!(
            parse_kernel_message(&msg).map(|e| e.diskseq),
            want,
            "{text:?}"
        );
    }
}

#[test]
fn bounds_on_size_and_field_count() {
    let mut many: Vec<String> = vec!["DEVTYPE=disk".into(), "DEVNAME=vdb".into()];
    // ACTION and SUBSYSTEM plus these: exactly the limit passes, one more fails.
    many.extend((0..FIELDS_MAX - 4).map(|i| format!("X{i}=1")));
    let fields: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(parse_kernel_message(&block("add", &fields)).is_some());
    many.push("ONE_TOO_MANY=1".into());
    let fields: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(parse_kernel_message(&block("add", &fields)), None);
    // Empty fields and fields without '=' do not count against a message or break it.
    let noisy = block(
        "add",
        &["", "", "garbage", "DEVTYPE=disk", "", "DEVNAME=vdb"],
    );
    assert!(parse_kernel_message(&noisy).is_some());

    let mut huge = ADD_VDB.to_vec();
    huge.resize(MESSAGE_MAX + 1, 0);
    assert_eq!(parse_kernel_message(&huge), None);
    huge.truncate(MESSAGE_MAX);
    assert!(parse_kernel_message(&huge).is_some());
}

#[test]
fn every_truncation_and_byte_flip_is_harmless() {
    for len in 0..=ADD_VDB.len() {
        let event = parse_kernel_message(&ADD_VDB[..len]);
        // A cut message is refused or yields what its remaining properties say.
        if let Some(e) = event {
            assert_eq!((e.action, e.devtype), (Action::Add, DevType::Disk));
            assert!(e.devname.len() <= 3 && "vdb".starts_with(e.devname));
        }
    }
    let mut flipped = ADD_VDB.to_vec();
    for at in 0..flipped.len() {
        for bit in 0..8 {
            flipped[at] ^= 1 << bit;
            if let Some(e) = parse_kernel_message(&flipped) {
                assert!(e.devname.len() <= DEVNAME_MAX);
                assert!(!e.devname.contains('/') && !e.devname.starts_with('.'));
            }
            flipped[at] ^= 1 << bit;
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    // A fixed-seed generator: the same inputs on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"\0=@\nADEIKMNOQRSTVYabdeikmnorstv0123456789/._-";
    let mut buf = Vec::new();
    for _ in 0..20_000 {
        buf.clear();
        let len = (next() % 300) as usize;
        for _ in 0..len {
            let r = next();
            buf.push(if r % 4 == 0 {
                r as u8
            } else {
                alphabet[(r as usize >> 8) % alphabet.len()]
            });
        }
        if let Some(e) = parse_kernel_message(&buf).or(parse_sysfs_uevent(&buf)) {
            assert!(!e.devname.is_empty() && e.devname.len() <= DEVNAME_MAX);
        }
    }
}

#[test]
fn a_sysfs_uevent_file() {
    let disk = b"MAJOR=253\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\nDISKSEQ=7\n";
    assert_eq!(
        parse_sysfs_uevent(disk),
        Some(BlockEvent {
            action: Action::Add,
            devtype: DevType::Disk,
            devname: "vdb",
            diskseq: Some(7),
        })
    );
    let part = b"MAJOR=253\nMINOR=17\nDEVNAME=vdb1\nDEVTYPE=partition\nPARTN=1\n";
    assert_eq!(
        parse_sysfs_uevent(part).map(|e| (e.devtype, e.diskseq)),
        Some((DevType::Partition, None))
    );
    assert_eq!(
        parse_sysfs_uevent(b"MAJOR=7\nMINOR=0\nDEVNAME=loop0\n"),
        None
    );
    assert_eq!(
        parse_sysfs_uevent(b"DEVNAME=vdb\nDEVTYPE=disk\nDEVNAME=vdc\n"),
        None
    );
}
