//! `nlxtp-serve` end to end with real guests: live output (Server-Sent Events, resumed
//! with Last-Event-ID) while a container's script runs, an upload during a run refused,
//! a booted VM's upload refused while it runs and its status read over HTTP, and the web
//! page in headless Chromium (Debian's `chromium`), driven through its DevTools protocol
//! on a pipe: the VM list renders, live output appears while the script runs, an upload
//! through the page's file input runs its script. The screenshot is kept in
//! `target/test-artefacts/nlxtp-serve-page.png`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nlxtp_harness::container::Container;
use nlxtp_harness::vm::{archive, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::fuse::parse_vm_arg;
use nlxtp_host::serve::{Limits, Running, ServeConfig, Server};
use serde_json::{json, Value};

const TOKEN: &str = "e2e-operator-token-0123456789";

fn start(vms: &[(&str, PathBuf)], state: &std::path::Path) -> Running {
    let server = Server::new(ServeConfig {
        vms: vms
            .iter()
            .map(|(name, target)| parse_vm_arg(&format!("{name}={}", target.display())).unwrap())
            .collect(),
        state_dir: state.to_path_buf(),
        operator_token: Some(TOKEN.into()),
        limits: Limits {
            follow_interval: Duration::from_millis(100),
            ..Limits::default()
        },
        public_url: None,
        rescan: None,
    })
    .unwrap();
    server
        .spawn(TcpListener::bind("127.0.0.1:0").unwrap(), None)
        .unwrap()
}

/// One request, `Connection: close`; returns the status and the body (not chunked:
/// these answers have a length).
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    (
        status,
        serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null),
    )
}

/// The events of a live-output stream until `end` (or the deadline): (event, id, data).
fn events(addr: SocketAddr, vm: &str, last_id: Option<&str>) -> Vec<(String, String, Value)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let resume = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        stream,
        "GET /api/v1/vms/{vm}/output HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n{resume}Connection: close\r\n\r\n"
    )
    .unwrap();
    // Chunked: SSE lines are read out of the chunk payloads; chunk-size lines are
    // recognised as bare hex numbers and skipped.
    let mut out = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    for line in BufReader::new(stream).lines() {
        assert!(Instant::now() < deadline, "no end event: {out:?}");
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = v.to_owned();
        } else if line.is_empty() && !event.is_empty() {
            let value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
            let done = event == "end";
            out.push((std::mem::take(&mut event), std::mem::take(&mut id), value));
            data.clear();
            if done {
                break;
            }
        }
    }
    out
}

fn text_of(events: &[(String, String, Value)]) -> String {
    events
        .iter()
        .filter(|(e, _, _)| e == "output")
        .map(|(_, _, d)| d["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn container_live_output_resumes_and_a_run_in_progress_refuses_uploads() {
    let container = Container::start(200).unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start(&[("ct", container.shared())], state.path());
    let addr = server.addr();
    let script = "for i in 1 2 3 4 5 6; do echo \"tick $i\"; echo \"err $i\" >&2; sleep 1; done\narchive_setstatus finished\n";
    let job = archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap();
    let (status, report) = request(addr, "PUT", "/api/v1/vms/ct/archive", &job);
    assert_eq!(status, 200, "{report}");

    // As on the CLI: refused once the guest runs it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(addr, "GET", "/api/v1/vms/ct", b"").1["status"]["record"]["state"] != "running" {
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, refused) = request(addr, "PUT", "/api/v1/vms/ct/archive", &job);
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("run_in_progress")),
        "{refused}"
    );

    let all = events(addr, "ct", None);
    let text = text_of(&all);
    for i in 1..=6 {
        assert!(text.contains(&format!("tick {i}\n")), "{text:?}");
        assert!(text.contains(&format!("err {i}\n")), "{text:?}");
    }
    let (_, _, end) = all.last().unwrap();
    assert_eq!(end["outcome"], "done", "{end}");
    assert_eq!(end["record"]["custom"], "finished");
    // Resumed from the third piece of output: exactly the rest.
    let outputs: Vec<_> = all.iter().filter(|(e, _, _)| e == "output").collect();
    assert!(outputs.len() >= 4, "{outputs:?}");
    let cut = &outputs[2].1;
    let rest = events(addr, "ct", Some(cut));
    let before: String = outputs[..3]
        .iter()
        .map(|(_, _, d)| d["text"].as_str().unwrap())
        .collect();
    let (out_at, err_at) = cut.split_once('.').unwrap();
    let (out_at, err_at): (usize, usize) = (out_at.parse().unwrap(), err_at.parse().unwrap());
    let stream_text = |events: &[&(String, String, Value)], which: &str| -> String {
        events
            .iter()
            .filter(|(e, _, d)| e == "output" && d["stream"] == which)
            .map(|(_, _, d)| d["text"].as_str().unwrap())
            .collect()
    };
    let whole_out = stream_text(&outputs, "stdout");
    let rest_refs: Vec<_> = rest.iter().collect();
    assert_eq!(stream_text(&rest_refs, "stdout"), whole_out[out_at..]);
    assert_eq!(
        stream_text(&rest_refs, "stderr"),
        stream_text(&outputs, "stderr")[err_at..]
    );
    assert!(before.len() < text.len());
}

#[test]
fn a_booted_vm_refuses_uploads_over_http_while_it_runs() {
    let mut setup = GuestSetup::new(32).unwrap();
    let script = "archive_setstatus started; sleep 4; echo out\n";
    let job = archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start(&[("vm", setup.disk().to_path_buf())], state.path());
    let addr = server.addr();
    let (status, report) = request(addr, "PUT", "/api/v1/vms/vm/archive", &job);
    assert_eq!(status, 200, "{report}");
    let mut vm = setup.boot(false).unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();
    let before = std::fs::read(setup.disk()).unwrap().len();
    let (status, refused) = request(addr, "PUT", "/api/v1/vms/vm/archive", &job);
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("vm_running")),
        "{refused}"
    );
    assert_eq!(std::fs::read(setup.disk()).unwrap().len(), before);
    // Status over HTTP while it runs, then the run's end as live output.
    let (_, vm_status) = request(addr, "GET", "/api/v1/vms/vm", b"");
    assert_eq!(vm_status["status"]["vm_running"], true, "{vm_status}");
    let all = events(addr, "vm", None);
    assert_eq!(all.last().unwrap().2["outcome"], "done", "{all:?}");
    assert!(text_of(&all).contains("out\n"));
    // Download while the VM still runs: its run is done, so allowed.
    let (status, _) = request(addr, "GET", "/api/v1/vms/vm/archive?format=tar", b"");
    assert_eq!(status, 200);
    vm.stop();
}

/// Chromium driven through the DevTools protocol on a pipe (fds 3 and 4).
struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let command = format!(
            "exec chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
             --disable-extensions --disable-background-networking --remote-debugging-pipe \
             --user-data-dir={} about:blank 3<&0 4>&1 1>/dev/null",
            profile.path().display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian package chromium; scripts/setup installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match stdout.read_until(0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    message.pop();
                    if let Ok(value) = serde_json::from_slice(&message) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            stdin,
            rx,
            next: 0,
            session: None,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let session = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = Some(session["sessionId"].as_str().unwrap().to_owned());
        browser
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.stdin.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let reply = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        reply["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    fn wait_for(&mut self, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "the page never showed {expression}; its text:\n{}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | u32::from(value(c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

#[test]
fn the_web_page_in_chromium_lists_follows_and_uploads() {
    let container = Container::start(200).unwrap();
    let image_dir = tempfile::tempdir().unwrap();
    let image = image_dir.path().join("web1.img");
    nlxtp_host::area::vfat::create_image(&image, 16 << 20, None, None).unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = start(&[("ct", container.shared()), ("web1", image)], state.path());
    let addr = server.addr();

    let mut browser = Browser::start();
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    );
    browser.call(
        "Page.navigate",
        json!({ "url": format!("http://{addr}/#token={TOKEN}") }),
    );
    // The list renders, both VMs with their state.
    browser.wait_for(
        "document.querySelectorAll('#vms tbody tr').length === 2 && !!document.querySelector('tr[data-vm=\"web1\"] .state')",
        Duration::from_secs(20),
    );
    assert_eq!(
        browser.eval("document.querySelector('tr[data-vm=\"web1\"] .state').textContent"),
        "no upload"
    );

    // Open the container, choose an archive in the page's file input: its script runs,
    // its output appears while it runs.
    browser.eval("document.querySelector('tr[data-vm=\"ct\"] button.open').click(), true");
    browser.wait_for(
        "document.getElementById('panel').style.display === 'block'",
        Duration::from_secs(10),
    );
    let script = "archive_setstatus 'from the browser'\nfor i in $(seq 1 8); do echo \"page tick $i\"; sleep 0.5; done\n";
    let job = archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap();
    let job_path = state.path().join("job.tar");
    std::fs::write(&job_path, job).unwrap();
    let document = browser.call("DOM.getDocument", json!({}));
    let input = browser.call(
        "DOM.querySelector",
        json!({ "nodeId": document["root"]["nodeId"], "selector": "#file" }),
    );
    browser.call(
        "DOM.setFileInputFiles",
        json!({ "nodeId": input["nodeId"], "files": [job_path] }),
    );
    browser.wait_for(
        "document.getElementById('upload-result').textContent.startsWith('uploaded run')",
        Duration::from_secs(20),
    );
    browser.wait_for(
        "document.getElementById('output').textContent.includes('page tick 2')",
        Duration::from_secs(20),
    );
    let (_, status) = request(addr, "GET", "/api/v1/vms/ct", b"");
    assert_eq!(
        status["status"]["record"]["state"], "running",
        "output shown while it runs: {status}"
    );
    browser.wait_for(
        "document.querySelector('tr[data-vm=\"ct\"] .custom').textContent === 'from the browser'",
        Duration::from_secs(10),
    );
    browser.wait_for(
        "document.getElementById('output-state').textContent.includes('ended')",
        Duration::from_secs(30),
    );
    let output = browser.eval("document.getElementById('output').textContent");
    let expected: String = (1..=8).map(|i| format!("page tick {i}\n")).collect();
    assert_eq!(output.as_str(), Some(expected.as_str()));
    browser.wait_for(
        "document.querySelector('tr[data-vm=\"ct\"] .state').textContent === 'exited (0)'",
        Duration::from_secs(10),
    );

    let shot = browser.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[1..4], b"PNG");
    let dir = nlxtp_harness::repo_root().join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nlxtp-serve-page.png"), png).unwrap();
}
