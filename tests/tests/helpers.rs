//! Running the `thitl` binary and talking to it, as a user would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `thitl` binary that `cargo test --workspace` built next to this test.
pub fn thitl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/thitl
    let bin = exe.parent().and_then(Path::parent).map(|dir| dir.join("thitl")).expect("target directory");
    assert!(
        bin.is_file(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the thitl binary), \
         or `cargo build -p thitl-api` first",
        bin.display()
    );
    bin
}

pub fn thitl(args: &[&str]) -> Output {
    Command::new(thitl_bin()).args(args).env("THITL_LOG", "warn").output().expect("run thitl")
}

/// `thitl token create` on `data`: the printed secret.
pub fn create_token(data: &Path, role: &str, name: &str) -> String {
    let output = thitl(&["token", "create", "--data", data.to_str().unwrap(), "--role", role, "--name", name]);
    assert!(output.status.success(), "token create failed: {}", String::from_utf8_lossy(&output.stderr));
    stdout(&output).trim().to_string()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The quick demo, run once per test binary: its data directory and what it printed (`--json`).
fn quick_demo() -> &'static (tempfile::TempDir, serde_json::Value) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, serde_json::Value)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = thitl(&["demo", "--quick", "--json", "--data", dir.path().to_str().unwrap()]);
        assert!(output.status.success(), "demo failed: {}", String::from_utf8_lossy(&output.stderr));
        let report = serde_json::from_str(&stdout(&output)).expect("demo --json prints one JSON object");
        (dir, report)
    })
}

/// What `thitl demo --quick --json` printed for the shared campaign.
pub fn quick_demo_report() -> &'static serde_json::Value {
    &quick_demo().1
}

/// A data directory holding one quick demo campaign (events, read models and blobs), made once
/// and copied for each test.
pub fn campaign_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(quick_demo().0.path(), copy.path());
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read template") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A running `thitl serve`, stopped with SIGINT when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables (`THITL_BODY_LIMIT`, ...).
    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with_args(data, &[], env)
    }

    /// Like [`start_with`](Self::start_with), with extra `thitl serve` arguments (`--no-jobs`).
    pub fn start_with_args(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(thitl_bin())
            .args(["serve", "--data", data.to_str().unwrap(), "--bind", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("THITL_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start thitl serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            assert!(Instant::now() < deadline, "thitl serve did not log its address");
            let line = lines.next().expect("thitl serve exited early").expect("read stderr");
            if let Some(start) = line.find("http://") {
                let rest = &line[start + "http://".len()..];
                let end =
                    rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
                break rest[..end].to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe; keep the lines.
        std::thread::spawn(move || for _ in lines {});
        Server { child, address }
    }

    /// GET `path`; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_as(path, None)
    }

    /// GET `path` with a bearer token; returns (status, body).
    pub fn get_as(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\n{authorization}Connection: close\r\n\r\n", self.address)
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, dechunk(&body))
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit status.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().expect("kill -INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "thitl serve did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes a chunked HTTP body (actix answers JSON with Content-Length, but be safe).
fn dechunk(body: &str) -> String {
    let looks_chunked = body.lines().next().is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit()));
    if !looks_chunked || body.trim_start().starts_with('{') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 {
            break;
        }
        out.push_str(&after[..size.min(after.len())]);
        rest = after.get(size + 2..).unwrap_or("");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The REST API, in-process: `spawn_app()` builds thitl's `Application` on 127.0.0.1:0 with its
// own data directory and talks to it over real HTTP.

pub const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// A running API server with a fresh data directory and an admin token.
pub struct TestApp {
    pub address: String,
    pub dir: tempfile::TempDir,
    /// An admin's bearer token (issued before the server started).
    pub admin: String,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy for binary bodies: see `bytes`).
    pub body: String,
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Asserts the status, and that an error answer is problem+json with a detail.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Response {
        assert_eq!(self.status, status, "expected {status}, got {}: {}", self.status, self.body);
        if status >= 400 {
            assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.body);
            let problem = self.json();
            assert_eq!(problem["status"], status, "{}", self.body);
            assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", self.body);
        }
        self
    }
}

pub fn spawn_app() -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("tempdir"))
}

/// A server over an existing data directory (e.g. a `campaign_copy()`), with a new admin token.
pub fn spawn_app_in(dir: tempfile::TempDir) -> TestApp {
    use app::commands::{CommandBus, CommandContext};
    let data = app::data::DataDir::open_or_create(dir.path()).expect("data dir");
    let bus = CommandBus::new(data.store.clone());
    let context = CommandContext::new(domain::Actor::new("test-setup", domain::Role::Admin));
    let admin = app::auth::issue_token(&bus, &context, "root", domain::Role::Admin).expect("admin token").secret;
    let storage = thitl::startup::Storage {
        store: data.store.clone(),
        checkpoint: Some(data.checkpoint_path()),
        idempotency: Some(data.idempotency_path()),
    };
    let settings = thitl::configuration::Settings {
        bind: "127.0.0.1:0".into(),
        body_limit_bytes: SMALL_BODY_LIMIT,
        workers: Some(2),
        wait_for_max_seconds: 10,
        ..thitl::configuration::Settings::default()
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match thitl::startup::Application::build_with(storage, settings) {
                Ok(app) => {
                    let _ = sender.send(Ok(app.port()));
                    let _ = app.run_until_stopped().await;
                }
                Err(error) => {
                    let _ = sender.send(Err(error.to_string()));
                }
            }
        })
    });
    let port = receiver.recv_timeout(Duration::from_secs(60)).expect("server start").expect("server build");
    TestApp { address: format!("127.0.0.1:{port}"), dir, admin }
}

impl TestApp {
    /// Any request; `headers` are extra headers such as `("If-Match", "3")`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.address);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
                head.push_str("Content-Type: application/json\r\n");
            }
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        if let Some(body) = body {
            // The server may answer (413) and close before reading a large body.
            let _ = stream.write_all(body);
        }
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        parse_response(&raw)
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        self.request("GET", path, Some(token), &[], None)
    }

    pub fn post(&self, path: &str, token: &str, body: serde_json::Value) -> Response {
        self.request("POST", path, Some(token), &[], Some(body.to_string().as_bytes()))
    }

    /// POSTs raw bytes to `/v1/blobs`.
    pub fn upload(&self, token: &str, bytes: &[u8]) -> Response {
        self.request("POST", "/v1/blobs", Some(token), &[("Content-Type", "application/octet-stream")], Some(bytes))
    }

    /// A new token for `role` named `name`, issued by the admin over HTTP.
    pub fn token(&self, role: &str, name: &str) -> String {
        let response = self.post("/v1/tokens", &self.admin, serde_json::json!({"name": name, "role": role}));
        response.expect(201);
        response.json()["token"].as_str().expect("token").to_string()
    }

    /// The event store's last position, read as an auditor would.
    pub fn head(&self) -> u64 {
        let response = self.get("/v1/audit/events?limit=1", &self.admin);
        response.expect(200);
        response.json()["head"].as_u64().expect("head")
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    if status == 100 {
        return parse_response(&body);
    }
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&String::from_utf8_lossy(&body)).into_bytes();
    }
    Response { status, headers, body: String::from_utf8_lossy(&body).into_owned(), bytes: body }
}
