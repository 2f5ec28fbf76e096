//! The server of the HTTP tests: an image VM `vm1` and a directory VM `ct1` in a
//! temporary directory, the operator token, and a small job archive.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use nlxtp_host::area::vfat::create_image;
use nlxtp_host::fuse::parse_vm_arg;
use nlxtp_host::serve::{GrantKey, Limits, Running, ServeConfig, Server};

/// The operator token of the test servers.
pub const TOKEN: &str = "test-operator-token-0123456789";

/// A tar with an `auto_exec.sh` and one more file.
pub fn job(marker: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("auto_exec.sh", format!("#!/bin/sh\necho {marker}\n"), 0o755),
        ("data.txt", marker.to_owned(), 0o644),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, data.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image VM `vm1` and a directory VM `ct1`, and the server's state directory, in
/// one temporary directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub ctdir: PathBuf,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vm1.img");
        create_image(&image, 16 << 20, None, None).unwrap();
        let ctdir = dir.path().join("ct1");
        std::fs::create_dir(&ctdir).unwrap();
        Setup { dir, image, ctdir }
    }

    pub fn server(&self, limits: Limits) -> Server {
        Server::new(ServeConfig {
            vms: vec![
                parse_vm_arg(&format!("vm1={}", self.image.display())).unwrap(),
                parse_vm_arg(&format!("ct1={}", self.ctdir.display())).unwrap(),
            ],
            state_dir: self.dir.path().join("state"),
            operator_token: Some(TOKEN.into()),
            limits,
            public_url: None,
            rescan: None,
        })
        .unwrap()
    }

    pub fn start(&self, limits: Limits) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        self.server(limits).spawn(listener, None).unwrap()
    }

    pub fn key(&self) -> GrantKey {
        GrantKey::load_or_create(&self.dir.path().join("state")).unwrap()
    }
}

/// Decodes a chunked body.
pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Sends a request's `body` after its head. A server may answer before the body is sent
/// (a refusal, 413 from the declared length) and close: the answer is still in the
/// receive queue, so a broken pipe or a reset here is not a failure.
pub fn send_body(stream: &mut TcpStream, body: &[u8]) {
    if let Err(e) = stream.write_all(body) {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "sending the body: {e}"
        );
    }
}
