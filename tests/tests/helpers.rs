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

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A data directory holding one quick scripted campaign, made once and copied for each test.
pub fn campaign_copy() -> tempfile::TempDir {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = thitl(&["demo", "--quick", "--json", "--data", dir.path().to_str().unwrap()]);
        assert!(output.status.success(), "demo failed: {}", String::from_utf8_lossy(&output.stderr));
        dir
    });
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(template.path()).expect("read template") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
        }
    }
    copy
}

/// A running `thitl serve`, stopped with SIGINT when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        let mut child = Command::new(thitl_bin())
            .args(["serve", "--data", data.to_str().unwrap(), "--bind", "127.0.0.1:0"])
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
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
                break rest[..end].to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe; keep the lines.
        std::thread::spawn(move || for _ in lines {});
        Server { child, address }
    }

    /// GET `path`; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.address).unwrap();
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
