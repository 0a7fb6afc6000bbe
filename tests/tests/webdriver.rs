//! A minimal W3C WebDriver client over chromedriver and Debian's headless chromium: enough to
//! open a page, type, press keys, read text, run a little script and take screenshots.
//!
//! The protocol is JSON over HTTP, spoken here with the tests' HTTP client. A WebDriver crate
//! (fantoccini, thirtyfour) would bring an async runtime to these synchronous tests and eight or
//! more new crates (the `webdriver` protocol types, cookie handling, ICU text segmentation) for the
//! seven commands used here.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ENTER: &str = "\u{E007}";

const HOW_TO_GET_ONE: &str = "the browser tests drive Debian's chromium through chromedriver: \
    install both (`apt-get install chromium chromium-driver`), or set THITL_CHROMEDRIVER and THITL_CHROMIUM to their paths";

pub struct Browser {
    driver: Child,
    http: reqwest::blocking::Client,
    address: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless chromium session.
    pub fn start() -> Browser {
        let chromedriver = std::env::var("THITL_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("THITL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(std::path::Path::new(&chromium).exists(), "no chromium at {chromium}: {HOW_TO_GET_ONE}");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver} ({e}): {HOW_TO_GET_ONE}"));
        let address = format!("127.0.0.1:{port}");
        // chromedriver is local (no proxy); a command waits at most a minute.
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let mut browser = Browser { driver, http, address, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !browser.call("GET", "/status", None).map(|v| v["value"]["ready"] == true).unwrap_or(false) {
            assert!(Instant::now() < deadline, "chromedriver did not become ready: {HOW_TO_GET_ONE}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000", "--force-device-scale-factor=1"],
        }}}});
        let created = browser
            .call("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| panic!("no browser session: {e}. {HOW_TO_GET_ONE}"));
        browser.session = created["value"]["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let verb = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self.http.request(verb, format!("http://{}{path}", self.address));
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_string());
        }
        let response = request.send().map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let body = response.text().map_err(|e| format!("{method} {path}: {e}"))?;
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("{method} {path}: {status}: {}", value["value"]["message"]));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).unwrap_or_else(|e| panic!("{e}"))["value"].clone()
    }

    pub fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; answers its value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Waits until `condition` (a script returning a boolean) holds.
    #[track_caller]
    pub fn wait_until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.run(condition, json!([])) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "waited 20 s for {what}; the page says: {}", self.text("body"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The visible text of the first element matching `selector` ("" if none).
    pub fn text(&self, selector: &str) -> String {
        self.run("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", json!([selector]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Types `text` into the element matching `selector` as keystrokes.
    pub fn type_into(&self, selector: &str, text: &str) {
        let found = self.session_call("POST", "/element", Some(json!({"using": "css selector", "value": selector})));
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element id")
            .to_string();
        self.session_call("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    /// Presses `keys` one after another on the keyboard (WebDriver key codes for special keys).
    pub fn press(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| [json!({"type": "keyDown", "value": k}), json!({"type": "keyUp", "value": k})])
            .collect();
        self.session_call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
        self.session_call("DELETE", "/actions", None);
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let text = self.session_call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(text.as_str().expect("base64 PNG")).expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
