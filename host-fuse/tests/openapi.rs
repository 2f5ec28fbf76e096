//! `docs/openapi.json` against a real server: it is what `GET /api/v1/openapi.json`
//! serves; every path and method it lists is a route of the server (a real request
//! answers neither the router's `not_found` nor its `method_not_allowed`, with a status
//! and content type the description declares), its security schemes are the ones the
//! server takes, and the server has no route, method or error code it does not list.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nlxtp_host::serve::Limits;
use serde_json::Value;

#[path = "common/serve.rs"]
mod server;

use server::{dechunk, job, send_body, Setup, TOKEN};

/// The router's paths. axum cannot list a router's routes, so they are kept here; the
/// test checks this list against the `.route("...")` calls in `src/serve/api.rs` (where
/// every route is registered), so a route added there and not here fails it.
const ROUTES: &[&str] = &[
    "/",
    "/api/v1/openapi.json",
    "/api/v1/vms",
    "/api/v1/vms/{vm}",
    "/api/v1/vms/{vm}/grants",
    "/api/v1/vms/{vm}/archive",
    "/api/v1/vms/{vm}/output",
];

/// The methods tried on every route: the server has a method on a path when it does not
/// answer it with 405 `method_not_allowed`. (axum answers `HEAD` for every `GET`.)
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "options"];

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn repo_file(path: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join("..").join(path)
}

/// An HTTP answer; `body` is empty for an event stream (only its head is read).
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        if self.content_type != "application/json" {
            return String::new();
        }
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One request on a fresh connection. Of an event stream only the head is read, then
/// the connection is dropped.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[String], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        method.to_ascii_uppercase(),
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    send_body(&mut stream, body);
    let mut raw = Vec::new();
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("reading the answer's head");
        assert!(n > 0, "no answer head: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let content_type = header("content-type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    if content_type == "text/event-stream" {
        return Reply {
            status,
            content_type,
            body: Vec::new(),
        };
    }
    let mut body = raw[split + 4..].to_vec();
    stream.read_to_end(&mut body).unwrap();
    if header("transfer-encoding").as_deref() == Some("chunked") {
        body = dechunk(&body);
    }
    Reply {
        status,
        content_type,
        body,
    }
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// What `value` refers to with `$ref` (in this document), else `value`.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            spec.pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} does not resolve"))
        }
        None => value,
    }
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The paths of the `.route("...")` calls in `source`.
fn routed_paths(source: &str) -> BTreeSet<String> {
    source
        .split(".route(")
        .skip(1)
        .map(|rest| {
            let rest = rest.trim_start().strip_prefix('"').expect("a literal path");
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The error codes the serve module's sources give with a status
/// (`StatusCode::X, "code"`).
fn error_codes_in_sources() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let mut dirs = vec![Path::new(MANIFEST_DIR).join("src/serve")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for rest in source.split("StatusCode::").skip(1) {
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
                let Some(rest) = rest.trim_start().strip_prefix(',') else {
                    continue;
                };
                if let Some(rest) = rest.trim_start().strip_prefix('"') {
                    codes.insert(rest[..rest.find('"').unwrap()].to_owned());
                }
            }
        }
    }
    codes
}

/// The query of a request that sets every flag parameter (schema `Flag`) of `operation`.
fn all_flags(spec: &Value, operation: &Value) -> Option<String> {
    let flags: Vec<String> = operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(spec, p))
        .filter(|p| p["in"] == "query" && p["schema"]["$ref"] == "#/components/schemas/Flag")
        .map(|p| format!("{}=true", p["name"].as_str().unwrap()))
        .collect();
    (!flags.is_empty()).then(|| flags.join("&"))
}

/// A body for `operation`: the example of its JSON body, a small tar for an archive.
fn body_for(operation: &Value) -> (Vec<u8>, Option<&'static str>) {
    let content = &operation["requestBody"]["content"];
    if let Some(json) = content.get("application/json") {
        let example = json.get("example").expect("an example of the JSON body");
        (
            serde_json::to_vec(example).unwrap(),
            Some("application/json"),
        )
    } else if content.get("application/octet-stream").is_some() {
        (job("openapi"), Some("application/octet-stream"))
    } else {
        assert!(content.is_null(), "a body the test cannot make: {content}");
        (Vec::new(), None)
    }
}

/// Checks that `reply` to `method path` is an answer of the endpoint (not the router's
/// fallbacks), with a status and a content type `operation` declares.
fn check_declared(spec: &Value, operation: &Value, method: &str, path: &str, reply: &Reply) {
    let what = format!("{method} {path}");
    let code = reply.code();
    assert!(
        !matches!(code.as_str(), "not_found" | "method_not_allowed"),
        "{what}: the server has no such endpoint ({} {code})",
        reply.status
    );
    let response = operation["responses"]
        .get(reply.status.to_string())
        .unwrap_or_else(|| panic!("{what}: status {} is not declared ({code})", reply.status));
    let response = resolve(spec, response);
    if let Some(content) = response.get("content") {
        assert!(
            content.get(&reply.content_type).is_some(),
            "{what}: content type {:?} is not declared for {}",
            reply.content_type,
            reply.status
        );
    }
}

#[test]
fn the_description_lists_exactly_the_servers_endpoints() {
    let setup = Setup::new();
    let server = setup.start(Limits::default());
    let addr = server.addr();

    // Served without a token, and it is the file in docs/.
    let served = request(addr, "get", "/api/v1/openapi.json", &[], b"");
    assert_eq!(served.status, 200);
    assert_eq!(served.content_type, "application/json");
    let file = std::fs::read(repo_file("docs/openapi.json")).unwrap();
    assert!(
        served.body == file,
        "the served description is not docs/openapi.json"
    );
    let spec = served.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(spec["servers"][0]["url"], "http://127.0.0.1:8420");
    let mut all_refs = Vec::new();
    refs(&spec, &mut all_refs);
    for reference in all_refs {
        resolve(&spec, &serde_json::json!({ "$ref": reference }));
    }

    // The routes: the list here, the router's source and the description agree.
    let routes: BTreeSet<String> = ROUTES.iter().map(|r| (*r).to_owned()).collect();
    let api = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("src/serve/api.rs")).unwrap();
    assert_eq!(
        routed_paths(&api),
        routes,
        "ROUTES is not the router's list"
    );
    let described: BTreeSet<String> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(described, routes, "the description's paths");

    // Every error code the server gives is in the description and in docs/http-api.md.
    let doc_codes: BTreeSet<String> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let human = std::fs::read_to_string(repo_file("docs/http-api.md")).unwrap();
    for code in error_codes_in_sources() {
        assert!(doc_codes.contains(&code), "{code} is not in ErrorCode");
        assert!(
            human.contains(&format!("`{code}`")),
            "{code} is not in docs/http-api.md"
        );
    }

    for vm in ["vm1", "ct1"] {
        for route in ROUTES {
            let path = route.replace("{vm}", vm);
            for method in METHODS {
                let Some(operation) = spec["paths"][route].get(*method) else {
                    // Not described: the server must not have it either.
                    let reply = request(addr, method, &path, &[bearer()], b"");
                    assert_eq!(
                        (reply.status, reply.code().as_str()),
                        (405, "method_not_allowed"),
                        "{method} {path} is not in the description, but the server takes it"
                    );
                    continue;
                };
                let (body, content_type) = body_for(operation);
                let mut headers = vec![bearer()];
                headers.extend(content_type.map(|t| format!("Content-Type: {t}")));
                let reply = request(addr, method, &path, &headers, &body);
                check_declared(&spec, operation, method, &path, &reply);
                assert!(
                    (200..300).contains(&reply.status),
                    "{method} {path}: {} {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
                // Again with every flag set (`watch=true`: the event stream): the flags
                // are the server's (no `bad_query`); the answer may be a refusal (a
                // files-only upload of a job), one the description declares.
                if let Some(query) = all_flags(&spec, operation) {
                    let path = format!("{path}?{query}");
                    let reply = request(addr, method, &path, &headers, &body);
                    check_declared(&spec, operation, method, &path, &reply);
                    assert_ne!(reply.code(), "bad_query", "{method} {path}");
                }

                // Security as described: none needed, or the token is.
                let security = operation.get("security").unwrap_or(&spec["security"]);
                let schemes: Vec<&str> = security
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
                    .collect();
                let anonymous = request(addr, method, &path, &[], b"");
                if schemes.is_empty() {
                    assert_eq!(anonymous.status, 200, "{method} {path} without a token");
                    continue;
                }
                assert_eq!(
                    (anonymous.status, anonymous.code().as_str()),
                    (401, "unauthorized"),
                    "{method} {path} without a token"
                );
                check_declared(&spec, operation, method, &path, &anonymous);
                if vm != "vm1" {
                    continue;
                }
                for scheme in schemes {
                    let query = match scheme {
                        "bearerToken" => continue,
                        "accessToken" => format!("access_token={TOKEN}"),
                        "grant" => {
                            let operation = if *method == "get" {
                                "download"
                            } else {
                                "upload"
                            };
                            let reply = request(
                                addr,
                                "post",
                                &format!("/api/v1/vms/{vm}/grants"),
                                &[bearer(), "Content-Type: application/json".into()],
                                format!("{{\"operation\":\"{operation}\"}}").as_bytes(),
                            );
                            assert_eq!(reply.status, 201);
                            format!("grant={}", reply.json()["grant"].as_str().unwrap())
                        }
                        other => panic!("a security scheme the test does not know: {other}"),
                    };
                    let path = format!("{path}?{query}");
                    let headers: Vec<String> = content_type
                        .map(|t| format!("Content-Type: {t}"))
                        .into_iter()
                        .collect();
                    let reply = request(addr, method, &path, &headers, &body);
                    check_declared(&spec, operation, method, &path, &reply);
                    assert!(
                        (200..300).contains(&reply.status),
                        "{method} {path} with {scheme}: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
            }
        }
    }

    // A path the server does not have: the router's own 404.
    let reply = request(addr, "get", "/api/v1/nothing", &[bearer()], b"");
    assert_eq!((reply.status, reply.code().as_str()), (404, "not_found"));
}
