//! Helpers for the adversarial tests: hand-made tar streams (the `tar` crate refuses to
//! write most of what a hostile archive holds), snapshots of host trees, a planted
//! secret, and a deadline that fails a test instead of letting it hang.
#![allow(dead_code)] // each adversarial test binary uses a different part

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A tar block.
pub const BLOCK: usize = 512;

/// Type flags of tar members.
pub mod kind {
    pub const FILE: u8 = b'0';
    pub const HARD_LINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR_DEVICE: u8 = b'3';
    pub const BLOCK_DEVICE: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const CONTIGUOUS: u8 = b'7';
    pub const PAX: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
    pub const GNU_LONG_NAME: u8 = b'L';
    pub const GNU_LONG_LINK: u8 = b'K';
    pub const GNU_SPARSE: u8 = b'S';
    pub const GNU_VOLUME: u8 = b'V';
}

/// One tar header block, GNU flavour, with every field given.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub name: &'a [u8],
    pub kind: u8,
    pub mode: u32,
    pub size: u64,
    pub link: &'a [u8],
    pub device: (u32, u32),
}

impl<'a> Header<'a> {
    pub fn new(name: &'a [u8], kind: u8, size: u64) -> Self {
        Header {
            name,
            kind,
            mode: if kind == kind::DIR { 0o755 } else { 0o644 },
            size,
            link: b"",
            device: (0, 0),
        }
    }

    /// The 512 bytes. Names longer than 100 bytes are cut (use a GNU long name before).
    pub fn block(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        let name = &self.name[..self.name.len().min(100)];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], 0);
        octal(&mut b[116..124], 0);
        if self.size < 0o77777777777 {
            octal(&mut b[124..136], self.size);
        } else {
            // GNU base-256 for sizes of 8 GiB and more.
            b[124] = 0x80;
            b[128..136].copy_from_slice(&self.size.to_be_bytes());
        }
        octal(&mut b[136..148], 1_700_000_000);
        b[156] = self.kind;
        let link = &self.link[..self.link.len().min(100)];
        b[157..157 + link.len()].copy_from_slice(link);
        b[257..265].copy_from_slice(b"ustar  \0");
        b[265..269].copy_from_slice(b"root");
        b[297..301].copy_from_slice(b"root");
        octal(&mut b[329..337], u64::from(self.device.0));
        octal(&mut b[337..345], u64::from(self.device.1));
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let text = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(text.as_bytes());
        b
    }
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    assert!(
        text.len() <= width,
        "{value} does not fit {width} octal digits"
    );
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

/// A tar stream built member by member, hostile members included.
#[derive(Debug, Default, Clone)]
pub struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    /// A header and `data`, padded to whole blocks. `data` may be shorter than the size
    /// the header declares (a truncated member).
    pub fn member(mut self, header: &Header<'_>, data: &[u8]) -> Self {
        if header.name.len() > 100 && header.kind != kind::GNU_LONG_NAME {
            self = self.long_name(header.name);
        }
        self.bytes.extend_from_slice(&header.block());
        self.bytes.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.bytes.extend(std::iter::repeat_n(0, pad));
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_mode(name, data, 0o644)
    }

    pub fn file_mode(self, name: &str, data: &[u8], mode: u32) -> Self {
        let mut h = Header::new(name.as_bytes(), kind::FILE, data.len() as u64);
        h.mode = mode;
        self.member(&h, data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.member(&Header::new(name.as_bytes(), kind::DIR, 0), b"")
    }

    pub fn dir_mode(self, name: &str, mode: u32) -> Self {
        let mut h = Header::new(name.as_bytes(), kind::DIR, 0);
        h.mode = mode;
        self.member(&h, b"")
    }

    pub fn link(self, name: &str, kind: u8, target: &str) -> Self {
        let mut h = Header::new(name.as_bytes(), kind, 0);
        h.link = target.as_bytes();
        self.member(&h, b"")
    }

    pub fn special(self, name: &str, kind: u8) -> Self {
        let mut h = Header::new(name.as_bytes(), kind, 0);
        h.device = (1, 3);
        self.member(&h, b"")
    }

    /// A GNU long-name member: the next member's name is `name`.
    pub fn long_name(self, name: &[u8]) -> Self {
        let mut data = name.to_vec();
        data.push(0);
        self.member(
            &Header::new(b"././@LongLink", kind::GNU_LONG_NAME, data.len() as u64),
            &data,
        )
    }

    /// A PAX extended header with these records for the next member.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "LEN key=value\n", LEN counting itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.member(
            &Header::new(b"./PaxHeaders/x", kind::PAX, data.len() as u64),
            &data,
        )
    }

    /// Raw bytes appended as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The stream with its two zero end blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 2 * BLOCK]);
        self.bytes
    }

    /// The stream without end blocks (a truncated archive).
    pub fn unfinished(self) -> Vec<u8> {
        self.bytes
    }
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zstd of `data`.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 19).unwrap()
}

/// A piece of a decompressed stream, for [`bomb`].
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// This many MiB of zeros.
    ZerosMib(usize),
}

/// A decompression bomb: the pieces as concatenated compressed members (gzip) or
/// frames (zstd), each MiB of zeros one member compressed once and repeated; so a bomb
/// of gigabytes costs kilobytes to build and to store.
pub fn bomb(pieces: &[Piece<'_>], zstd_frames: bool) -> Vec<u8> {
    let pack = |data: &[u8]| if zstd_frames { zstd(data) } else { gzip(data) };
    let chunk = pack(&vec![0u8; 1 << 20]);
    let mut out = Vec::new();
    for piece in pieces {
        match *piece {
            Piece::Bytes(bytes) => out.extend_from_slice(&pack(bytes)),
            Piece::ZerosMib(n) => {
                for _ in 0..n {
                    out.extend_from_slice(&chunk);
                }
            }
        }
    }
    out
}

/// A plain tar stream of `count` empty files `f0`, `f1`, ..., made as it is read, so a
/// million members cost nothing until read. `produced` counts the headers read.
pub struct ManyMembers {
    pub count: u64,
    pub produced: u64,
    /// The header of a file with an empty name, and its checksum sum.
    template: [u8; BLOCK],
    template_sum: u32,
    block: [u8; BLOCK],
    at: usize,
    end_left: usize,
}

impl ManyMembers {
    pub fn new(count: u64) -> Self {
        let mut template = Header::new(b"", kind::FILE, 0).block();
        template[148..156].copy_from_slice(b"        ");
        let template_sum = template.iter().map(|&x| u32::from(x)).sum();
        ManyMembers {
            count,
            produced: 0,
            template,
            template_sum,
            block: [0; BLOCK],
            at: BLOCK,
            end_left: 2 * BLOCK,
        }
    }

    /// The next header: the template with a name and its checksum patched in (a debug
    /// build formatting every field of a million headers would take most of a minute).
    fn next_header(&mut self) {
        let mut digits = [0u8; 24];
        let mut n = self.produced;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.block = self.template;
        self.block[0] = b'f';
        for i in 0..len {
            self.block[1 + i] = digits[len - 1 - i];
        }
        let sum = self.template_sum
            + u32::from(b'f')
            + digits[..len].iter().map(|&d| u32::from(d)).sum::<u32>();
        let mut field = [b' '; 8];
        let mut s = sum;
        for i in (0..6).rev() {
            field[i] = b'0' + (s % 8) as u8;
            s /= 8;
        }
        field[6] = 0;
        self.block[148..156].copy_from_slice(&field);
    }
}

impl Read for ManyMembers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            if self.at == BLOCK {
                if self.produced == self.count {
                    let n = (buf.len() - done).min(self.end_left);
                    buf[done..done + n].fill(0);
                    self.end_left -= n;
                    return Ok(done + n);
                }
                self.next_header();
                self.produced += 1;
                self.at = 0;
            }
            let n = (buf.len() - done).min(BLOCK - self.at);
            buf[done..done + n].copy_from_slice(&self.block[self.at..self.at + n]);
            self.at += n;
            done += n;
        }
        Ok(done)
    }
}

/// What a host path is, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { mode: u32, bytes: Vec<u8> },
    Dir { mode: u32 },
    Symlink(PathBuf),
    Other { mode: u32 },
}

/// Every path under `root` (not following symbolic links), with content.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let mode = meta.mode() & 0o7777;
            let node = if ft.is_symlink() {
                Node::Symlink(fs::read_link(&path).unwrap())
            } else if ft.is_dir() {
                todo.push(path.clone());
                Node::Dir { mode }
            } else if ft.is_file() {
                Node::File {
                    mode,
                    bytes: fs::read(&path).unwrap_or_default(),
                }
            } else {
                let _ = ft.is_fifo();
                Node::Other { mode }
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), node);
        }
    }
    out
}

/// A unique secret, different in every test process and call.
pub fn secret(tag: &str) -> String {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).unwrap();
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("NLXTP-SECRET-{tag}-{hex}")
}

/// Whether `needle` (ASCII) occurs in `haystack`. Through `str::contains`, which the
/// standard library brings compiled with optimisations: a debug-build byte loop over
/// every image of every case would dominate the tests' time.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let needle = std::str::from_utf8(needle).expect("an ASCII needle");
    assert!(needle.is_ascii());
    // Invalid UTF-8 turns into U+FFFD; ASCII bytes stay where they are.
    String::from_utf8_lossy(haystack).contains(needle)
}

/// A scratch directory, on tmpfs when there is one (uploads fsync a lot).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit`
/// (the thread is left behind; the test process ends soon after anyway).
pub fn deadline<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, started.elapsed()),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not end within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// `fsck.vfat -n`: Ok, or its complaint.
pub fn fsck(img: &Path) -> Result<(), String> {
    let out = std::process::Command::new("fsck.vfat")
        .arg("-n")
        .arg(img)
        .output()
        .expect("fsck.vfat runs (install dosfstools)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fsck.vfat -n {}: {}\n{}{}",
            img.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Resident memory of this process, in KiB (VmHWM: the peak).
pub fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
