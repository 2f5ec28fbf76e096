//! First light: boot the minimal guest on a fresh shared disk with one upload.

use std::time::Duration;

use nlxtp_core::record::MANIFEST_LEN;
use nlxtp_core::{Manifest, RunId, RunState, StatusReader};
use nlxtp_harness::qemu::{Vm, VmConfig};
use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{read_status, Patience, SharedArea, UploadFile};

#[test]
fn boot_runs_the_upload_and_powers_off() {
    let dir = std::env::temp_dir().join(format!("nlxtp-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("shared.img");
    create_image(&disk, 16 << 20, None, None).unwrap();
    let area = VfatImage::new(&disk);
    let mut manifest = [0u8; MANIFEST_LEN];
    Manifest {
        run_id: RunId([7; 16]),
        ..Default::default()
    }
    .encode(&mut manifest)
    .unwrap();
    area.replace(vec![
        UploadFile::bytes("nlxtp/manifest.bin", manifest.to_vec()).unwrap(),
        UploadFile::bytes(
            "auto_exec.sh",
            "echo hello from $(uname -r)\narchive_setstatus booted\n",
        )
        .unwrap(),
    ])
    .unwrap();
    let (kernel, initramfs) = nlxtp_harness::initramfs::guest_initramfs(&dir).unwrap();
    let config = VmConfig {
        kernel,
        initramfs,
        disk: disk.clone(),
        stay: false,
        heartbeat_ms: 500,
        memory_mib: 256,
        serial_log: dir.join("serial.log"),
        qmp: None,
    };
    let mut vm = Vm::boot(&config).unwrap();
    vm.wait_serial("nlxtp-init: booted", Duration::from_secs(60))
        .unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    eprintln!("{}", vm.serial());
    let rec = read_status(&area, &mut StatusReader::new(), Patience::default())
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!(rec.custom.as_str(), "booted");
}
