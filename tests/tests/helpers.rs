//! Running the `thitl` binary and talking to it, as a user would.

use std::io::{BufRead, BufReader};
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

/// The tests' HTTP client: no proxy (every server is on this machine), no redirects followed, a
/// new connection per request (as a test sees a server most plainly), two minutes at most (a
/// guard against a hung server on a loaded machine, not a deadline).
pub fn http() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client")
    })
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
        Self::start_at(data, "127.0.0.1:0", args, env)
    }

    /// Like [`start_with_args`](Self::start_with_args), listening on `bind`.
    pub fn start_at(data: &Path, bind: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(thitl_bin())
            .args(["serve", "--data", data.to_str().unwrap(), "--bind", bind])
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
        let mut request = http().get(format!("http://{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_else(|e| panic!("GET {path}: {e}")))
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
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = http().request(method.clone(), format!("http://{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
                request = request.header("Content-Type", "application/json");
            }
            request = request.body(body.to_vec());
        }
        let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let bytes = response.bytes().unwrap_or_else(|e| panic!("{method} {path}: {e}")).to_vec();
        Response { status, headers, body: String::from_utf8_lossy(&bytes).into_owned(), bytes }
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
