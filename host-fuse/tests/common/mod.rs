//! Helpers for the vFAT tests: real dosfstools and mtools, images in temp dirs.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{StatusWriter, STATUS_FILE_LEN};
use nlxtp_core::{RunId, RunState, StatusRecord};

/// Runs a tool, panicking with its output if it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = duct::cmd(program, args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .unwrap_or_else(|e| {
            panic!("{program} did not start ({e}): install dosfstools, mtools, qemu-utils")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn sized(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path
}

/// How an image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// `mkfs.vfat -F bits`.
    Mkfs(u8),
    /// `mformat` (mtools), FAT12 floppy, FAT16 by size, or FAT32 with `-F`.
    Mformat(u8),
}

pub const ALL_MAKERS: [Maker; 6] = [
    Maker::Mkfs(12),
    Maker::Mkfs(16),
    Maker::Mkfs(32),
    Maker::Mformat(12),
    Maker::Mformat(16),
    Maker::Mformat(32),
];

/// Makes an image with label NLXTP: FAT12 2 MiB (mformat: a 1.44 MB floppy),
/// FAT16 16 MiB, FAT32 40 MiB.
pub fn make_image(dir: &Path, maker: Maker) -> PathBuf {
    match maker {
        Maker::Mkfs(bits) => {
            let size = match bits {
                12 => 2 << 20,
                16 => 16 << 20,
                _ => 40 << 20,
            };
            let img = sized(dir, &format!("mkfs{bits}.img"), size);
            run(
                "mkfs.vfat",
                &["-F", &bits.to_string(), "-n", "NLXTP", s(&img)],
            );
            img
        }
        Maker::Mformat(12) => {
            let img = sized(dir, "mformat12.img", 1440 * 1024);
            run(
                "mformat",
                &["-i", s(&img), "-f", "1440", "-v", "NLXTP", "::"],
            );
            img
        }
        Maker::Mformat(bits) => {
            let img = sized(
                dir,
                &format!("mformat{bits}.img"),
                if bits == 16 { 16 << 20 } else { 40 << 20 },
            );
            let mut args = vec!["-i", s(&img), "-v", "NLXTP"];
            if bits == 32 {
                args.push("-F");
            }
            args.push("::");
            run("mformat", &args);
            img
        }
    }
}

pub fn mmd(img: &Path, dir: &str) {
    run("mmd", &["-i", s(img), &format!("::/{dir}")]);
}

/// Puts `bytes` at `dest` (a path inside the image) with mcopy.
pub fn mcopy(img: &Path, dest: &str, bytes: &[u8]) {
    let src = img.with_extension("src");
    std::fs::write(&src, bytes).unwrap();
    run(
        "mcopy",
        &["-o", "-i", s(img), s(&src), &format!("::/{dest}")],
    );
    std::fs::remove_file(src).unwrap();
}

pub fn mdel(img: &Path, path: &str) {
    run("mdel", &["-i", s(img), &format!("::/{path}")]);
}

pub fn mtype(img: &Path, path: &str) -> Vec<u8> {
    let out = img.with_extension("out");
    run(
        "mcopy",
        &["-n", "-i", s(img), &format!("::/{path}"), s(&out)],
    );
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// `mdir -b` of a directory: its entries' names in directory order.
pub fn mdir_names(img: &Path, dir: &str) -> Vec<String> {
    run("mdir", &["-b", "-i", s(img), &format!("::/{dir}")])
        .lines()
        .filter_map(|l| {
            l.trim()
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(str::to_owned)
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The volume label, as mlabel shows it.
pub fn mlabel(img: &Path) -> String {
    run("mlabel", &["-s", "-i", s(img), "::"]).trim().to_owned()
}

/// Asserts `fsck.vfat -n` finds nothing to fix.
pub fn assert_fsck_clean(img: &Path) {
    let out = duct::cmd!("fsck.vfat", "-n", img)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .expect("fsck.vfat runs (install dosfstools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck.vfat -n {}: {}\n{text}",
        img.display(),
        out.status
    );
}

/// A status file with `rec` (given sequence number `seq`, its slot) and nothing else.
pub fn status_file(seq: u64, rec: &StatusRecord) -> Vec<u8> {
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut writer = StatusWriter::new();
    let mut rec = rec.clone();
    let mut slot = [0u8; STATUS_SLOT_LEN];
    for _ in 1..seq {
        writer.encode(&mut rec.clone(), &mut slot).unwrap();
    }
    let at = writer.encode(&mut rec, &mut slot).unwrap();
    file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    file
}

pub fn record(run: u8, state: RunState, custom: &str) -> StatusRecord {
    let mut rec = StatusRecord {
        run_id: RunId([run; 16]),
        state,
        heartbeat_interval_ms: 1000,
        ..Default::default()
    };
    rec.custom.push_str(custom).unwrap();
    rec
}

/// A few fields of a FAT boot sector, for tests that break images on purpose.
#[derive(Debug)]
pub struct Layout {
    pub fat_offset: u64,
    pub fat_bits: u8,
    pub root_offset: u64,
    pub data_offset: u64,
    pub cluster_size: u64,
    pub root_cluster: u32,
}

impl Layout {
    pub fn read(img: &Path) -> Self {
        let b = std::fs::read(img).unwrap();
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let bps = u16_at(11);
        let spc = u64::from(b[13]);
        let reserved = u16_at(14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(17);
        let spf16 = u16_at(22);
        let spf = if spf16 == 0 {
            u64::from(u32::from_le_bytes(b[36..40].try_into().unwrap()))
        } else {
            spf16
        };
        let total = if u16_at(19) != 0 {
            u16_at(19)
        } else {
            u64::from(u32::from_le_bytes(b[32..36].try_into().unwrap()))
        };
        let root_offset = (reserved + fats * spf) * bps;
        let data_offset = root_offset + root_entries * 32;
        let clusters = (total * bps - data_offset) / (spc * bps);
        let fat_bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        Layout {
            fat_offset: reserved * bps,
            fat_bits,
            root_offset,
            data_offset,
            cluster_size: spc * bps,
            root_cluster: if spf16 == 0 {
                u32::from_le_bytes(b[44..48].try_into().unwrap())
            } else {
                0
            },
        }
    }

    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_size
    }

    /// Sets a FAT16 or FAT32 entry in the first FAT.
    pub fn set_fat(&self, img: &Path, cluster: u32, value: u32) {
        match self.fat_bits {
            16 => patch(
                img,
                self.fat_offset + 2 * u64::from(cluster),
                &(value as u16).to_le_bytes(),
            ),
            32 => patch(
                img,
                self.fat_offset + 4 * u64::from(cluster),
                &value.to_le_bytes(),
            ),
            bits => panic!("set_fat does not do FAT{bits}"),
        }
    }

    pub fn fat(&self, img: &Path, cluster: u32) -> u32 {
        let b = std::fs::read(img).unwrap();
        match self.fat_bits {
            16 => {
                let at = (self.fat_offset + 2 * u64::from(cluster)) as usize;
                u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
            }
            _ => {
                let at = (self.fat_offset + 4 * u64::from(cluster)) as usize;
                u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) & 0x0FFF_FFFF
            }
        }
    }
}

/// Finds the 32-byte short directory entry with this 11-byte name: its offset.
pub fn find_entry(img: &Path, short: &[u8; 11]) -> u64 {
    let b = std::fs::read(img).unwrap();
    b.chunks_exact(32)
        .position(|e| &e[..11] == short && e[11] != 0x0F)
        .map(|i| i as u64 * 32)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(short)))
}

pub fn entry_first_cluster(img: &Path, entry: u64) -> u32 {
    let b = std::fs::read(img).unwrap();
    let e = &b[entry as usize..entry as usize + 32];
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

/// Overwrites bytes of a file in place (as a guest writing its disk does).
pub fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Runs `f`, asserting it takes less than `limit`.
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < limit, "{what} took {took:?}, more than {limit:?}");
    out
}
