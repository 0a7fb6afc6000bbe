//! `thitl prompts draft`: the real binary against a local OpenAI-compatible chat endpoint, over
//! HTTPS (a throw-away certificate authority trusted through `SSL_CERT_FILE`), plain HTTP and an
//! HTTP proxy; and its one-line errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, mpsc};

use serde_json::{Value, json};

use crate::helpers::{stdout, thitl_bin};

const KEY: &str = "sk-test-5d1c0ffee";

/// `thitl prompts draft` with `args`, the test key, `env`, and none of the user's proxy or chat
/// settings.
fn draft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(thitl_bin());
    command.args(["prompts", "draft"]).args(args).env("THITL_LOG", "warn").env("NO_COLOR", "1");
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "THITL_CONFIG",
        "THITL_CHAT_BASE_URL",
        "THITL_CHAT_MODEL",
    ] {
        command.env_remove(name);
    }
    command.env("THITL_CHAT_API_KEY", KEY).envs(env.iter().copied()).output().expect("run thitl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A chat-completions answer holding `lines`, one prompt a line, as the model wrote them.
fn chat_answer(model: &str, lines: &[&str]) -> String {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": lines.join("\n")}}]})
    .to_string()
}

/// A throw-away certificate authority (its PEM, for `SSL_CERT_FILE`) and a server configuration
/// whose certificate it signed for 127.0.0.1.
fn throw_away_tls() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "thitl test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
    let server = server_params.signed_by(&server_key, &issuer).expect("server certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![server.der().clone()], key)
        .expect("server TLS configuration");
    (ca.pem(), Arc::new(config))
}

/// A local endpoint: answers `status` and `body` to each connection (HTTPS with `tls`), and
/// hands each request (head and body) back. Returns its `host:port`.
fn endpoint(
    tls: Option<Arc<rustls::ServerConfig>>,
    status: &'static str,
    body: String,
) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let request = match &tls {
                Some(config) => {
                    let Ok(connection) = rustls::ServerConnection::new(config.clone()) else { continue };
                    let mut stream = rustls::StreamOwned::new(connection, stream);
                    let request = exchange(&mut stream, &answer);
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                    request
                }
                None => exchange(&mut &stream, &answer),
            };
            // A client that gave up (an untrusted certificate) sent no request.
            if let Some(request) = request {
                let _ = sender.send(request);
            }
        }
    });
    (address, receiver)
}

/// Reads one request from `stream` and writes `answer`; the request, if one came.
fn exchange(stream: &mut (impl Read + Write), answer: &str) -> Option<String> {
    let mut reader = BufReader::new(&mut *stream);
    let mut request = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        request.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    request.push_str(&String::from_utf8_lossy(&body));
    drop(reader);
    stream.write_all(answer.as_bytes()).ok()?;
    Some(request)
}

/// The printed draft, checked against what the endpoint answered and was asked.
#[track_caller]
fn check_draft(output: &Output, request: &str, lines: &[&str]) {
    assert!(output.status.success(), "{}", stderr(output));
    let draft: Value = serde_json::from_str(&stdout(output)).expect("one JSON object");
    assert_eq!(draft["prompts"], json!(lines), "{draft}");
    assert_eq!(draft["generator"]["name"], "openai");
    assert_eq!(draft["generator"]["model"], "tiny-chat-v2", "the model that answered");
    assert_eq!(draft["generator"]["parameters"]["model"], "tiny-chat");
    assert_eq!(draft["generator"]["parameters"]["seed"], 9);
    assert_eq!(draft["generator"]["response_sha256"].as_str().map(str::len), Some(64));
    let (head, body) = request.split_once("\r\n\r\n").expect("a request head");
    assert!(head.starts_with("POST ") && head.contains("/v1/chat/completions HTTP/1.1"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("authorization: bearer {KEY}")), "{head}");
    let sent: Value = serde_json::from_str(body).expect("a JSON request");
    assert_eq!(sent["model"], "tiny-chat");
    let asked = sent["messages"][1]["content"].as_str().expect("the user's message");
    assert!(asked.contains("Write 3 different prompts") && asked.contains("woman"), "{asked}");
    assert!(asked.contains("hippopotamus, hippo"), "the concept and its synonym are named to avoid: {asked}");
    let printed = format!("{}{}", stdout(output), stderr(output));
    assert!(!printed.contains(KEY), "the key is never printed: {printed}");
}

const ARGS: &[&str] = &[
    "--group",
    "woman",
    "--concept",
    "hippopotamus",
    "--synonym",
    "hippo",
    "--count",
    "3",
    "--seed",
    "9",
    "--chat-model",
    "tiny-chat",
];

#[test]
fn prompts_draft_reaches_an_https_endpoint_trusted_through_ssl_cert_file() {
    let lines = ["a woman reading in a park", "a woman riding a bicycle", "a woman cooking dinner"];
    let (ca_pem, config) = throw_away_tls();
    let (address, requests) = endpoint(Some(config), "200 OK", chat_answer("tiny-chat-v2", &lines));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write the CA");
    let url = format!("https://{address}/v1");
    let args = [ARGS, &["--chat-base-url", &url]].concat();
    let output = draft(&args, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    check_draft(&output, &requests.try_recv().expect("the endpoint was asked"), &lines);

    // Another authority's certificate is not trusted: a clear error, nothing asked.
    let (other_pem, _) = throw_away_tls();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_pem).expect("write the other CA");
    let refused = draft(&args, &[("SSL_CERT_FILE", other.to_str().unwrap())]);
    assert_one_line_error(&refused, "certificate");
    assert!(requests.try_recv().is_err(), "no request went through");
}

#[test]
fn prompts_draft_speaks_plain_http_directly_and_through_a_proxy() {
    let lines = ["a woman at the beach", "a woman in a kitchen", "a woman on a city street"];
    let (address, requests) = endpoint(None, "200 OK", chat_answer("tiny-chat-v2", &lines));
    let url = format!("http://{address}/v1");
    let output = draft(&[ARGS, &["--chat-base-url", &url]].concat(), &[]);
    check_draft(&output, &requests.try_recv().expect("the endpoint was asked"), &lines);

    // HTTP_PROXY from the environment: the request goes to the proxy, naming the endpoint.
    let far = "http://chat.example.invalid/v1";
    let proxied = draft(&[ARGS, &["--chat-base-url", far]].concat(), &[("HTTP_PROXY", &format!("http://{address}"))]);
    let request = requests.try_recv().expect("the proxy was asked");
    assert!(request.starts_with("POST http://chat.example.invalid/v1/chat/completions HTTP/1.1"), "{request}");
    check_draft(&proxied, &request, &lines);
}

/// Exit status not 0, nothing on standard output, and one line on standard error: `error: …`,
/// naming `what`, without the key.
#[track_caller]
fn assert_one_line_error(output: &Output, what: &str) {
    let text = stderr(output);
    assert!(!output.status.success(), "{text}");
    assert_eq!(stdout(output), "", "{text}");
    // Retries may be warned about first; the error is the one last line.
    let errors: Vec<&str> = text.lines().filter(|line| line.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    assert_eq!(text.lines().last(), Some(errors[0]), "{text}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(what), "{text}");
    assert!(!text.contains(KEY), "the key is never printed: {text}");
}

#[test]
fn prompts_draft_failures_are_one_line_errors() {
    // A refused key, its message echoing the key as OpenAI's does.
    let refusal =
        json!({"error": {"message": format!("Incorrect API key provided: {KEY}."), "code": "invalid_api_key"}});
    let (address, _) = endpoint(None, "401 Unauthorized", refusal.to_string());
    let refused = draft(&[ARGS, &["--chat-base-url", &format!("http://{address}/v1")]].concat(), &[]);
    assert_one_line_error(&refused, "HTTP 401: Incorrect API key provided");

    // An answer that is not a chat completion.
    let (address, _) = endpoint(None, "200 OK", "<html>a captive portal</html>".into());
    let malformed = draft(&[ARGS, &["--chat-base-url", &format!("http://{address}/v1")]].concat(), &[]);
    assert_one_line_error(&malformed, "not what an OpenAI-compatible chat completion looks like");

    // Nothing listens on a port that was just free (tried again, warned about, then refused).
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let unreachable = draft(&[ARGS, &["--chat-base-url", &url]].concat(), &[]);
    assert_one_line_error(&unreachable, &format!("cannot be reached at {url}"));

    // A URL that is no HTTP endpoint, and an endpoint without a model.
    let ftp = draft(&[ARGS, &["--chat-base-url", "ftp://127.0.0.1/v1"]].concat(), &[]);
    assert_one_line_error(&ftp, "http:// or https://");
    let no_model = draft(&["--group", "woman", "--concept", "hippopotamus", "--chat-base-url", &url], &[]);
    assert_one_line_error(&no_model, "go together");
}

#[test]
fn prompts_draft_without_an_endpoint_prints_what_the_templates_write() {
    use app::prompts::{PromptGenerator, PromptRequest, ReferenceWorldTemplates, TemplateGenerator};
    let output = draft(&["--group", "wheelchair user", "--concept", "vegetable", "--count", "6", "--seed", "4"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "nothing on standard error when nothing is wrong");
    let draft: Value = serde_json::from_str(&stdout(&output)).expect("one JSON object");
    // What a campaign's prompt set gets from the built-in generator for the same request.
    let expected = TemplateGenerator::new(ReferenceWorldTemplates)
        .generate(&PromptRequest {
            group: "wheelchair user".into(),
            concept: "vegetable".into(),
            concept_synonyms: vec![],
            count: 6,
            seed: 4,
        })
        .expect("templates");
    assert_eq!(draft["prompts"], json!(expected.prompts));
    assert_eq!(draft["generator"]["name"], "template");
    assert_eq!(draft["generator"]["model"], "reference-world");
    let unknown = self::draft(&["--group", "astronaut", "--concept", "vegetable"], &[]);
    assert_one_line_error(&unknown, "astronaut");
}
