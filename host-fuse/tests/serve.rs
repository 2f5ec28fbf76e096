//! `nlxtp-serve`'s API end to end over real HTTP on loopback, against real areas (a vFAT
//! image and a container directory): tokens and grants (expired, reused, forged, wrong
//! VM, across a restart), cut-off, oversized, invalid and slow uploads, slow headers,
//! concurrent uploads, downloads in three formats, TLS. (A running guest, live output
//! and the web page in a browser: `harness/tests/e2e_serve.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nlxtp_host::serve::{GrantKey, Limits, Operation};

#[path = "common/serve.rs"]
mod server;

use server::{dechunk, job, send_body, Setup, TOKEN};

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers[9..12].parse().unwrap();
    let body = &raw[split + 4..];
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection (closed after it).
fn request(addr: SocketAddr, method: &str, path: &str, auth: bool, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let auth = if auth {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    send_body(&mut stream, body);
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "reading the answer: {e}");
    }
    parse(&raw)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, true, b"")
}

fn grant(addr: SocketAddr, vm: &str, operation: &str) -> String {
    let reply = request(
        addr,
        "POST",
        &format!("/api/v1/vms/{vm}/grants"),
        true,
        format!("{{\"operation\":\"{operation}\",\"ttl\":\"5m\"}}").as_bytes(),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["path"].as_str().unwrap().to_owned()
}

fn listing(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn list_status_upload_download_on_an_image_and_a_directory() {
    let setup = Setup::new();
    let server = setup.start(Limits::default());
    let addr = server.addr();

    let page = request(addr, "GET", "/", false, b"");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("EventSource"));

    for (path, auth) in [("/api/v1/vms", false), ("/api/v1/vms/vm1", false)] {
        let reply = request(addr, "GET", path, auth, b"");
        assert_eq!((reply.status, reply.code().as_str()), (401, "unauthorized"));
    }
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /api/v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-wrong-token\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw).code(), "token_invalid");

    let list = get(addr, "/api/v1/vms").json();
    let names: Vec<&str> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ct1", "vm1"]);
    assert_eq!(list["vms"][1]["status"]["backend"], "vfat-image");

    // Names are names, never paths.
    for path in [
        "/api/v1/vms/nope",
        "/api/v1/vms/..%2Fvm1",
        "/api/v1/vms/%2Fetc%2Fpasswd",
    ] {
        let reply = get(addr, path);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (404, "unknown_vm"),
            "{path}"
        );
    }
    assert_eq!(get(addr, "/api/v1/nothing").status, 404);

    for vm in ["vm1", "ct1"] {
        let reply = request(
            addr,
            "PUT",
            &format!("/api/v1/vms/{vm}/archive"),
            true,
            &job(vm),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["entries"], 3);
        let status = get(addr, &format!("/api/v1/vms/{vm}")).json();
        assert_eq!(status["status"]["upload_present"], true, "{status}");

        let tar = get(addr, &format!("/api/v1/vms/{vm}/archive?format=tar"));
        assert_eq!(tar.status, 200);
        assert!(tar.headers.contains("application/x-tar"), "{}", tar.headers);
        let names = listing(&tar.body);
        assert!(names.iter().any(|n| n == "data.txt"), "{names:?}");

        let gz = get(addr, &format!("/api/v1/vms/{vm}/archive?format=tar.gz"));
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz.body[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(listing(&plain), names);
        let zst = get(addr, &format!("/api/v1/vms/{vm}/archive?format=tar.zst"));
        assert_eq!(listing(&zstd::decode_all(&zst.body[..]).unwrap()), names);
    }
    let bad = get(addr, "/api/v1/vms/vm1/archive?format=zip");
    assert_eq!((bad.status, bad.code().as_str()), (400, "bad_query"));
}

#[test]
fn grants_allow_one_operation_on_one_vm_until_they_expire_also_across_a_restart() {
    let setup = Setup::new();
    let server = setup.start(Limits::default());
    let addr = server.addr();
    let before = std::fs::read(&setup.image).unwrap();

    // Nothing without a grant or token, and refusals change nothing.
    let reply = request(addr, "PUT", "/api/v1/vms/vm1/archive", false, &job("x"));
    assert_eq!((reply.status, reply.code().as_str()), (401, "unauthorized"));
    let key = setup.key();
    let expired = key.issue("vm1", Operation::Upload, 1).1;
    let forged = {
        let (_, token) = key.issue("vm1", Operation::Upload, u64::MAX / 2);
        let (head, mac) = token.rsplit_once('.').unwrap();
        let flipped = if mac.starts_with('0') { "1" } else { "0" };
        format!("{head}.{flipped}{}", &mac[1..])
    };
    let other_key = GrantKey::from_bytes([9; 32])
        .issue("vm1", Operation::Upload, u64::MAX / 2)
        .1;
    let for_ct1 = key.issue("ct1", Operation::Upload, u64::MAX / 2).1;
    let download_only = key.issue("vm1", Operation::Download, u64::MAX / 2).1;
    for (token, code) in [
        (expired.as_str(), "grant_expired"),
        (forged.as_str(), "grant_invalid"),
        (other_key.as_str(), "grant_invalid"),
        (for_ct1.as_str(), "grant_invalid"),
        (download_only.as_str(), "grant_invalid"),
        ("garbage", "grant_invalid"),
    ] {
        let reply = request(
            addr,
            "PUT",
            &format!("/api/v1/vms/vm1/archive?grant={token}"),
            false,
            &job("x"),
        );
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, code),
            "{token}"
        );
    }
    assert_eq!(
        std::fs::read(&setup.image).unwrap(),
        before,
        "refusals changed the image"
    );
    // A grant is not the operator token.
    let grant_as_token = request(
        addr,
        "GET",
        &format!("/api/v1/vms?access_token={for_ct1}"),
        false,
        b"",
    );
    assert_eq!(grant_as_token.status, 401);

    // Once, and once only.
    let upload = grant(addr, "vm1", "upload");
    assert!(
        upload.starts_with("/api/v1/vms/vm1/archive?grant=upload."),
        "{upload}"
    );
    let first = request(addr, "PUT", &upload, false, &job("one"));
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = request(addr, "PUT", &upload, false, &job("two"));
    assert_eq!((again.status, again.code().as_str()), (403, "grant_used"));
    let download = grant(addr, "vm1", "download");
    let tar = request(addr, "GET", &format!("{download}&format=tar"), false, b"");
    assert_eq!(tar.status, 200);
    assert!(listing(&tar.body).contains(&"data.txt".to_owned()));
    // A download grant does not upload, even with its path.
    let wrong = request(addr, "PUT", &download, false, &job("x"));
    assert_eq!(wrong.code(), "grant_invalid");
    let unused = grant(addr, "ct1", "upload");

    // Across a restart: spent grants stay spent, others still work.
    drop(server);
    let server = setup.start(Limits::default());
    let addr = server.addr();
    for path in [&upload, &format!("{download}&format=tar")] {
        let method = if path.contains("upload") {
            "PUT"
        } else {
            "GET"
        };
        let reply = request(addr, method, path, false, &job("three"));
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, "grant_used"),
            "{path}"
        );
    }
    let reply = request(addr, "PUT", &unused, false, &job("ct"));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // Grant requests are checked.
    for body in [
        r#"{"operation":"delete"}"#,
        r#"{"operation":"upload","ttl":"forever"}"#,
        r#"{"operation":"upload","ttl":99999999}"#,
        "not json",
    ] {
        let reply = request(
            addr,
            "POST",
            "/api/v1/vms/vm1/grants",
            true,
            body.as_bytes(),
        );
        assert_eq!(reply.status, 400, "{body}");
    }
    let reply = request(
        addr,
        "POST",
        "/api/v1/vms/vm1/grants",
        false,
        br#"{"operation":"upload"}"#,
    );
    assert_eq!(reply.status, 401);
}

fn image_unchanged(setup: &Setup, before: &[u8]) {
    assert!(
        std::fs::read(&setup.image).unwrap() == before,
        "the image changed"
    );
}

#[test]
fn cut_off_oversized_invalid_and_concurrent_uploads_change_nothing() {
    let setup = Setup::new();
    let limits = Limits {
        max_upload_bytes: 1 << 20,
        body_idle_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let server = setup.start(limits);
    let addr = server.addr();
    let first = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, &job("old"));
    assert_eq!(first.status, 200);
    let before = std::fs::read(&setup.image).unwrap();

    // Cut off: half the declared body, then the connection closes.
    let body = job("new");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /api/v1/vms/vm1/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    drop(stream);

    // Too large, declared and not declared (chunked).
    let big = vec![0u8; (1 << 20) + 1];
    let reply = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, &big);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (413, "upload_too_large")
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "PUT /api/v1/vms/vm1/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // A whole valid archive first, then more than the limit: the archive is read and
    // checked while the rest still comes, yet nothing is written before the body ends.
    let valid = job("new");
    let chunk = vec![0u8; 64 * 1024];
    for chunk in std::iter::once(&valid).chain(std::iter::repeat_n(&chunk, 17)) {
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break; // the server answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert_eq!(parse(&raw).status, 413);
    assert!(std::fs::read(&setup.image).unwrap() == before);

    // Not an archive; an archive without the start script.
    let reply = request(
        addr,
        "PUT",
        "/api/v1/vms/vm1/archive",
        true,
        b"not a tar at all",
    );
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (422, "archive_refused")
    );
    image_unchanged(&setup, &before);

    // Two at once: the first holds the VM while its body comes; the second gets 409.
    let body = job("winner");
    let start_slow = || {
        let mut slow = TcpStream::connect(addr).unwrap();
        write!(
            slow,
            "PUT /api/v1/vms/vm1/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        slow.write_all(&body[..100]).unwrap();
        slow
    };
    let mut slow = start_slow();
    // Until the server has taken the first one, an invalid body gets 422 and changes
    // nothing; once it holds the VM, 409. A probe holds the VM for a moment itself: when
    // the first upload came in that moment, it was the one refused (it has its answer
    // already), and it is sent again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, b"not a tar");
        match (probe.status, probe.code().as_str()) {
            (409, "upload_in_progress") => break,
            (422, "archive_refused") => {}
            other => panic!("while the first upload starts: {other:?}"),
        }
        slow.set_nonblocking(true).unwrap();
        let answered = !matches!(
            slow.peek(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        slow.set_nonblocking(false).unwrap();
        if answered {
            slow = start_slow();
        }
        assert!(
            Instant::now() < deadline,
            "the first upload never held the VM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let loser = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, &job("loser"));
    assert_eq!(
        (loser.status, loser.code().as_str()),
        (409, "upload_in_progress")
    );
    // Another VM is not held.
    let other = request(addr, "PUT", "/api/v1/vms/ct1/archive", true, &job("ct"));
    assert_eq!(other.status, 200);
    image_unchanged(&setup, &before);
    slow.write_all(&body[100..]).unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw).status, 200);
    let tar = get(addr, "/api/v1/vms/vm1/archive?format=tar");
    let mut archive = tar::Archive::new(&tar.body[..]);
    let data = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap() == Path::new("data.txt"))
        .map(|mut e| {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            s
        });
    assert_eq!(data.as_deref(), Some("winner"));
}

#[test]
fn slow_headers_and_stalled_bodies_are_cut_off() {
    let setup = Setup::new();
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        body_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = setup.start(limits);
    let addr = server.addr();
    let before = std::fs::read(&setup.image).unwrap();

    // Headers that never end: the connection is closed.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/vms HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));

    // A body that stalls: 408, nothing changed, the VM free again.
    let body = job("stalled");
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "PUT /api/v1/vms/vm1/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let reply = parse(&raw);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (408, "upload_timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    image_unchanged(&setup, &before);
    let reply = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, &job("after"));
    assert_eq!(reply.status, 200);
}

#[test]
fn tls_with_a_given_certificate() {
    let setup = Setup::new();
    let cert = setup.dir.path().join("cert.pem");
    let key = setup.dir.path().join("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let running = setup
        .server(Limits::default())
        .spawn(listener, Some((cert.clone(), key)))
        .unwrap();
    let url = format!("https://127.0.0.1:{}/api/v1/vms", running.addr().port());
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl (Debian package curl)")
    };
    let out = curl(&["--cacert", cert.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["vms"].as_array().unwrap().len(), 2);
    // Plain HTTP to the TLS port gets nothing; a client that does not trust the
    // certificate refuses it.
    let plain = request_raw(
        running.addr(),
        b"GET /api/v1/vms HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(!plain.contains("200 OK"));
    assert!(!curl(&[]).status.success());
}

fn request_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// The next `list` event of a `?watch=true` stream, as JSON (chunked transfer framing
/// and comments skipped).
fn next_list_event(reader: &mut std::io::BufReader<TcpStream>) -> serde_json::Value {
    use std::io::BufRead;
    let mut event = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if event == "list" {
                return serde_json::from_str(data).unwrap();
            }
        }
    }
}

/// `GET /api/v1/vms?watch=true`: the list at once, then again when it changes (an upload
/// shows in a next event); without the token, 401; a bad value, 400.
#[test]
fn the_list_is_pushed_as_it_changes() {
    let setup = Setup::new();
    let server = setup.start(Limits::default());
    let addr = server.addr();
    assert_eq!(
        request(addr, "GET", "/api/v1/vms?watch=true", false, b"").status,
        401
    );
    assert_eq!(
        request(addr, "GET", "/api/v1/vms?watch=maybe", true, b"").status,
        400
    );

    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/vms?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let first = next_list_event(&mut reader);
    let uploaded = |list: &serde_json::Value, vm: &str| {
        list["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .map(|v| v["status"]["upload_present"].clone())
            .unwrap_or_else(|| panic!("{vm} not in {list}"))
    };
    assert_eq!(uploaded(&first, "vm1"), false, "{first}");

    let reply = request(addr, "PUT", "/api/v1/vms/vm1/archive", true, &job("pushed"));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = next_list_event(&mut reader);
        if uploaded(&list, "vm1") == true {
            break;
        }
        assert!(Instant::now() < deadline, "the upload never showed: {list}");
    }
}
