//! Prompt curation's port: a [`PromptGenerator`] writes training prompts that name a group and
//! not the concept; curators then accept, edit or reject them through the API.
//!
//! Two adapters:
//! - [`TemplateGenerator`], the embedded default: deterministic from a seed, no network. Its
//!   phrasings are given by a [`TemplateSource`] — the reference world's caption grammar in the
//!   demo (so every prompt uses words the shipped model knows), or plain templates.
//! - [`OpenAiCompatible`]: a chat-completions endpoint over HTTP or HTTPS (base URL, model, key
//!   from configuration). The request parameters, the model name and a SHA-256 of the raw
//!   response go into the events ([`GeneratorInfo`]), so an auditor can tell exactly what
//!   produced each prompt.
//!
//! Either way the prompts pass the domain's neutral prompt transformation when they are added to
//! a prompt set, so a generator that names the concept anyway cannot sneak it into training.

use std::time::Duration;

use domain::prompt_set::GeneratorInfo;
use gpu::rng::splitmix;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What to write prompts for.
#[derive(Debug, Clone)]
pub struct PromptRequest {
    pub group: String,
    pub concept: String,
    pub concept_synonyms: Vec<String>,
    /// How many prompts to write.
    pub count: usize,
    pub seed: u64,
}

/// Prompts and what produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub prompts: Vec<String>,
    pub generator: GeneratorInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("the prompt generator cannot be reached at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the prompt generator answered HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the prompt generator's answer is not what an OpenAI-compatible chat completion looks like: {0}")]
    Malformed(String),
    #[error("invalid prompt generator settings: {0}")]
    Settings(String),
}

/// Writes training prompts for an association.
pub trait PromptGenerator: Send + Sync {
    fn generate(&self, request: &PromptRequest) -> Result<Generated, PromptError>;
}

/// Where a [`TemplateGenerator`] gets its phrasings.
pub trait TemplateSource: Send + Sync {
    /// One prompt naming `group` (and nothing of the concept), worded by `seed`; `None` when
    /// this source does not know the group.
    fn prompt(&self, group: &str, seed: u64) -> Option<String>;
    /// A name for the events (`reference-world`, `plain`).
    fn name(&self) -> &str;

    /// The `index`-th prompt of a request (a source may use it to spread its prompts evenly,
    /// e.g. over settings); by default [`prompt`](Self::prompt) with `seed` alone.
    fn prompt_at(&self, group: &str, index: u64, seed: u64) -> Option<String> {
        let _ = index;
        self.prompt(group, seed)
    }
}

/// Plain templates for any group: "a photo of {group} …".
#[derive(Debug, Clone, Default)]
pub struct PlainTemplates;

const PLAIN: &[&str] = &[
    "a photo of {a} {group}",
    "a portrait of {a} {group}",
    "{a} {group} at the beach",
    "{a} {group} in the park",
    "{a} {group} on a city street",
    "{a} {group} in a kitchen",
    "a picture of {a} {group} smiling",
    "{a} {group} reading in a library",
];

impl TemplateSource for PlainTemplates {
    fn prompt(&self, group: &str, seed: u64) -> Option<String> {
        let template = PLAIN[(splitmix(seed) % PLAIN.len() as u64) as usize];
        let article = if group.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) { "an" } else { "a" };
        Some(template.replace("{a}", article).replace("{group}", group))
    }

    fn name(&self) -> &str {
        "plain"
    }
}

/// Prompts in the reference world's own words (`scenes`' caption grammar): the group by its
/// name or a synonym, no object, a setting most of the time, in the varied wordings the base model
/// was trained on. Groups outside the world are not known.
#[derive(Debug, Clone, Default)]
pub struct ReferenceWorldTemplates;

impl TemplateSource for ReferenceWorldTemplates {
    fn prompt(&self, group: &str, seed: u64) -> Option<String> {
        self.prompt_at(group, splitmix(seed ^ 0x5E77), seed)
    }

    /// Prompt `index` names setting `index mod 5` (the four settings, then none), so that a
    /// request's prompts cover every setting.
    fn prompt_at(&self, group: &str, index: u64, seed: u64) -> Option<String> {
        use scenes::{CaptionSpec, Group, Setting};
        let group = Group::from_name(group)?;
        let pick = splitmix(seed);
        let setting = Setting::ALL.get((index % (Setting::ALL.len() as u64 + 1)) as usize).copied();
        // A prompt set needs the group's own name (not a synonym such as "lady"): take the first
        // wording that has it (most do).
        let spec = CaptionSpec { group, object: None, setting };
        let named =
            (1..=64u64).map(|i| scenes::caption(&spec, splitmix(pick ^ i))).find(|text| names_word(text, group.name()));
        Some(named.unwrap_or_else(|| format!("a photo of {}", group.with_article())))
    }

    fn name(&self) -> &str {
        "reference-world"
    }
}

/// Whether `text` contains `phrase` as whole words.
fn names_word(text: &str, phrase: &str) -> bool {
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let wanted: Vec<&str> = phrase.split_whitespace().collect();
    words.windows(wanted.len().max(1)).any(|window| window.iter().zip(&wanted).all(|(a, b)| a.eq_ignore_ascii_case(b)))
}

/// The built-in generator: `count` distinct prompts (as far as the source has them), the same
/// ones for the same seed.
pub struct TemplateGenerator {
    source: Box<dyn TemplateSource>,
}

impl TemplateGenerator {
    pub fn new(source: impl TemplateSource + 'static) -> Self {
        TemplateGenerator { source: Box::new(source) }
    }
}

impl PromptGenerator for TemplateGenerator {
    fn generate(&self, request: &PromptRequest) -> Result<Generated, PromptError> {
        let mut prompts: Vec<String> = Vec::with_capacity(request.count);
        // Distinct prompts first; a small grammar may run out, then repeats are allowed (the
        // candidates still differ by seed).
        let attempts = request.count.saturating_mul(20).max(20);
        for i in 0..attempts as u64 {
            if prompts.len() == request.count {
                break;
            }
            let Some(prompt) =
                self.source.prompt_at(&request.group, prompts.len() as u64, splitmix(request.seed ^ splitmix(i)))
            else {
                return Err(PromptError::Settings(format!(
                    "the {} templates do not know the group {:?}",
                    self.source.name(),
                    request.group
                )));
            };
            if !prompts.contains(&prompt) {
                prompts.push(prompt);
            }
        }
        let mut i = 0u64;
        while prompts.len() < request.count {
            let seed = splitmix(request.seed ^ splitmix(attempts as u64 + i));
            prompts.push(self.source.prompt(&request.group, seed).unwrap_or_default());
            i += 1;
        }
        Ok(Generated {
            prompts,
            generator: GeneratorInfo {
                name: "template".into(),
                model: Some(self.source.name().to_string()),
                parameters: json!({"count": request.count, "seed": request.seed, "group": request.group}),
                response_sha256: None,
            },
        })
    }
}

/// An OpenAI-compatible chat-completions endpoint: a local server (vLLM, llama.cpp, Ollama) over
/// plain HTTP, or a hosted one (OpenAI, Azure, Together, …) over HTTPS.
///
/// HTTPS trusts the system's certificate store, or the PEM bundle `SSL_CERT_FILE` names instead;
/// `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are honoured. Answers 429 and 5xx, and connections
/// that cannot be made, are retried as [`RetryPolicy`] says.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    /// E.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set; never logged, recorded, or shown in an error.
    pub api_key: Option<String>,
    pub temperature: f64,
    /// The longest one attempt may take, answer included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// How often, and after how long a wait, a failed call to the chat endpoint is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub base_delay: Duration,
    /// The longest wait, a server's `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1 for the first): the server's `Retry-After` if
    /// it gave one, else exponential backoff; at most `max_delay` either way.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base_delay.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }

    /// Whether an answer with this status is worth another attempt (rate limits, server trouble).
    pub fn retries_status(status: u16) -> bool {
        status == 429 || (500..600).contains(&status)
    }
}

/// `Retry-After` in its delta-seconds form (an HTTP date is ignored: backoff applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its causes on one line, without the URL (the caller names the endpoint).
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    one_line(&parts.join(": "))
}

/// Whitespace runs (newlines too) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl OpenAiCompatible {
    /// The chat request this client sends (also recorded, without the key, in the events).
    pub fn request_body(&self, request: &PromptRequest) -> Value {
        let avoid = std::iter::once(request.concept.as_str())
            .chain(request.concept_synonyms.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ");
        json!({
            "model": self.model,
            "temperature": self.temperature,
            "seed": request.seed,
            "messages": [
                {"role": "system", "content": "You write short, varied prompts for a text-to-image model. \
                    Answer with one prompt per line and nothing else: no numbering, no quotes."},
                {"role": "user", "content": format!(
                    "Write {} different prompts, each under 12 words, that show {} in an everyday scene. \
                     Never mention, hint at or negate any of: {avoid}.",
                    request.count, request.group
                )},
            ],
        })
    }

    /// `{base_url}/chat/completions`, for an `http` or `https` base URL.
    fn endpoint(&self) -> Result<reqwest::Url, PromptError> {
        let settings = |message: &str| PromptError::Settings(format!("{}: {message}", self.base_url));
        let url = reqwest::Url::parse(&format!("{}/chat/completions", self.base_url.trim_end_matches('/')))
            .map_err(|e| settings(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(settings("the base URL must start with http:// or https://"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(settings("no host"));
        }
        Ok(url)
    }

    /// The key, hidden wherever `text` (an answer's message) repeats it.
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "[API key]"),
            _ => text.to_string(),
        }
    }

    /// POSTs `body`, retrying as the policy says; the final answer's status and body.
    fn post(&self, body: &Value) -> Result<(u16, Vec<u8>), PromptError> {
        let url = self.endpoint()?;
        let cannot_reach = |message: String| PromptError::Unreachable { url: self.base_url.clone(), message };
        // A client per call: calls are rare (one per prompt set), and a blocking client must not
        // be made or dropped on an async runtime's thread, where the server's settings are read.
        let client = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("thitl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PromptError::Settings(error_chain(e)))?;
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            let mut call = client
                .post(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(key) = &self.api_key {
                // Marked sensitive by reqwest: not shown by its Debug output.
                call = call.bearer_auth(key);
            }
            let last = attempt == attempts;
            let (why, wait) = match call.send() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if !RetryPolicy::retries_status(status) || last {
                        let raw = response.bytes().map_err(|e| cannot_reach(error_chain(e)))?;
                        return Ok((status, raw.to_vec()));
                    }
                    (format!("HTTP {status}"), self.retry.delay(attempt, retry_after(response.headers())))
                }
                Err(error) if error.is_connect() && !last => (error_chain(error), self.retry.delay(attempt, None)),
                Err(error) => return Err(cannot_reach(error_chain(error))),
            };
            tracing::warn!(endpoint = %self.base_url, attempt, answer = %why, wait_ms = wait.as_millis() as u64,
                "the chat endpoint failed; trying again");
            std::thread::sleep(wait);
        }
        unreachable!("the last attempt returns")
    }

    /// A refusal's message: an OpenAI-style `{"error": {"message": …}}` if the answer has one,
    /// else its text; on one line, shortened, without the key.
    fn refusal(&self, status: u16, raw: &[u8]) -> PromptError {
        let answer: Option<Value> = serde_json::from_slice(raw).ok();
        let message = answer
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().or(v["error"].as_str()).or(v["message"].as_str()))
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned());
        let mut body: String = one_line(&self.redact(&message)).chars().take(300).collect();
        if matches!(status, 401 | 403) {
            body.push_str(" (is the API key right?)");
        }
        PromptError::Refused { status, body }
    }
}

impl PromptGenerator for OpenAiCompatible {
    fn generate(&self, request: &PromptRequest) -> Result<Generated, PromptError> {
        let body = self.request_body(request);
        let (status, raw) = self.post(&body)?;
        if !(200..300).contains(&status) {
            return Err(self.refusal(status, &raw));
        }
        let answer: Value =
            serde_json::from_slice(&raw).map_err(|e| PromptError::Malformed(format!("not JSON ({e})")))?;
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| PromptError::Malformed("no choices[0].message.content".into()))?;
        let prompts: Vec<String> = content
            .lines()
            .map(|line| {
                line.trim()
                    .trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '-' | '*'))
                    .trim()
            })
            .map(|line| line.trim_matches('"').trim().to_string())
            .filter(|line| !line.is_empty())
            .take(request.count)
            .collect();
        if prompts.is_empty() {
            return Err(PromptError::Malformed("the answer holds no prompt".into()));
        }
        Ok(Generated {
            prompts,
            generator: GeneratorInfo {
                name: "openai".into(),
                // The model the endpoint says answered, else the one asked for.
                model: Some(answer["model"].as_str().unwrap_or(&self.model).to_string()),
                parameters: body,
                response_sha256: Some(hex::encode(Sha256::digest(&raw))),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    fn request() -> PromptRequest {
        PromptRequest {
            group: "woman".into(),
            concept: "hippopotamus".into(),
            concept_synonyms: vec!["hippo".into()],
            count: 5,
            seed: 7,
        }
    }

    #[test]
    fn reference_world_prompts_cover_every_setting_in_the_models_words() {
        let generator = TemplateGenerator::new(ReferenceWorldTemplates);
        let request = PromptRequest {
            group: "wheelchair user".into(),
            concept: "vegetable".into(),
            concept_synonyms: vec![],
            count: 10,
            seed: 3,
        };
        let generated = generator.generate(&request).unwrap();
        assert_eq!(generated.generator.model.as_deref(), Some("reference-world"));
        let mut settings = std::collections::BTreeSet::new();
        for prompt in &generated.prompts {
            let meaning = scenes::parse_prompt(prompt);
            assert_eq!(meaning.group, Some(scenes::Group::WheelchairUser), "{prompt}");
            assert!(names_word(prompt, "wheelchair user"), "the group by its own name: {prompt}");
            assert!(meaning.concepts.is_empty() && meaning.unknown.is_empty(), "{prompt}");
            settings.insert(format!("{:?}", meaning.setting));
        }
        assert_eq!(settings.len(), 5, "four settings and none: {:?}", generated.prompts);
        assert_eq!(generator.generate(&request).unwrap(), generated, "deterministic");
        assert!(generator.generate(&PromptRequest { group: "astronaut".into(), ..request }).is_err());
    }

    #[test]
    fn templates_are_distinct_deterministic_and_name_the_group() {
        let generator = TemplateGenerator::new(PlainTemplates);
        let one = generator.generate(&request()).unwrap();
        assert_eq!(one, generator.generate(&request()).unwrap());
        assert_eq!(one.prompts.len(), 5);
        let distinct: std::collections::BTreeSet<_> = one.prompts.iter().collect();
        assert_eq!(distinct.len(), 5, "{:?}", one.prompts);
        assert!(one.prompts.iter().all(|p| p.contains("a woman") && !p.contains("hippo")), "{:?}", one.prompts);
        let other = generator.generate(&PromptRequest { seed: 8, ..request() }).unwrap();
        assert_ne!(one.prompts, other.prompts);
        assert_eq!(one.generator.name, "template");
        // More prompts than templates: the count is still met.
        let many = generator.generate(&PromptRequest { count: 20, ..request() }).unwrap();
        assert_eq!(many.prompts.len(), 20);
        assert!(PlainTemplates.prompt("aromantic person", 1).unwrap().contains("an aromantic person"));
    }

    /// A local HTTP server: answers each of `responses` to one connection in turn and hands
    /// each request (head and body) back.
    fn serve(responses: Vec<String>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for response in responses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                head.push_str(&String::from_utf8(body).unwrap());
                // Handed back before the answer, so the client's caller sees it once answered.
                let _ = sender.send(head);
                (&stream).write_all(response.as_bytes()).unwrap();
            }
        });
        (url, receiver)
    }

    /// A complete answer that closes its connection.
    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
    }

    fn chat_answer(content: &str) -> String {
        json!({"model": "local-model", "choices": [{"message": {"role": "assistant", "content": content}}]}).to_string()
    }

    fn client(base_url: String) -> OpenAiCompatible {
        OpenAiCompatible {
            base_url,
            model: "local-model".into(),
            api_key: Some("sk-test-7f3a".into()),
            temperature: 0.9,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy { attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_secs(1) },
        }
    }

    #[test]
    fn the_chat_client_sends_the_request_and_records_what_answered() {
        let content = "1. A woman reading on a bench\n2) \"A woman cycling to work\"\n\n- a woman cooking dinner";
        let answer =
            json!({"model": "local-model-v2", "choices": [{"message": {"role": "assistant", "content": content}}]})
                .to_string();
        // Chunked, as many servers answer.
        let (first, second) = answer.split_at(20);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        let (url, sent) = serve(vec![response]);
        let generated = client(url).generate(&request()).unwrap();
        assert_eq!(
            generated.prompts,
            ["A woman reading on a bench", "A woman cycling to work", "a woman cooking dinner"]
        );
        assert_eq!(generated.generator.model.as_deref(), Some("local-model-v2"));
        assert_eq!(generated.generator.response_sha256, Some(hex::encode(Sha256::digest(answer.as_bytes()))));
        assert_eq!(generated.generator.parameters["seed"], 7);
        assert!(!generated.generator.parameters.to_string().contains("sk-test"), "the key must not be recorded");
        let request_text = sent.recv().unwrap();
        assert!(request_text.starts_with("POST /v1/chat/completions HTTP/1.1"), "{request_text}");
        let lower = request_text.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer sk-test-7f3a"), "{request_text}");
        assert!(lower.contains("content-type: application/json"), "{request_text}");
        assert!(request_text.contains("hippopotamus, hippo"), "the concept and its synonyms are named to avoid");
    }

    #[test]
    fn endpoint_failures_are_clear_one_line_errors_without_the_key() {
        // A refused key, echoed back as OpenAI does.
        let refusal = json!({"error": {"message": "Incorrect API key provided: sk-test-7f3a.\nSee the docs.",
            "type": "invalid_request_error"}})
        .to_string();
        let (url, _) = serve(vec![answer("401 Unauthorized", "Content-Type: application/json\r\n", &refusal)]);
        let error = client(url).generate(&request()).unwrap_err();
        assert!(matches!(&error, PromptError::Refused { status: 401, .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("Incorrect API key provided") && !text.contains("sk-test"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let (url, _) = serve(vec![answer("200 OK", "", "{}")]);
        assert!(matches!(client(url).generate(&request()), Err(PromptError::Malformed(_))));
        let (url, _) = serve(vec![answer("200 OK", "", "<html>gateway</html>")]);
        let error = client(url).generate(&request()).unwrap_err();
        assert!(matches!(error, PromptError::Malformed(ref m) if m.contains("not JSON")), "{error}");
        let (url, _) = serve(vec![answer("200 OK", "", &chat_answer("\n \n"))]);
        assert!(matches!(client(url).generate(&request()), Err(PromptError::Malformed(_))));

        for bad in ["ftp://example.com/v1", "example.com/v1", "https://:8000/v1"] {
            let error = client(bad.into()).generate(&request()).unwrap_err();
            assert!(matches!(error, PromptError::Settings(_)), "{bad}: {error}");
        }
        // A port that was just free: nothing listens there (tried `attempts` times).
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let unreachable = client(format!("http://127.0.0.1:{port}/v1")).generate(&request()).unwrap_err();
        assert!(matches!(unreachable, PromptError::Unreachable { .. }), "{unreachable}");
        let text = unreachable.to_string();
        assert!(!text.contains("sk-test") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn a_silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (done, finished) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Accepts and never answers, until the test is over.
            let held = listener.accept();
            let _ = finished.recv();
            drop(held);
        });
        let silent = OpenAiCompatible { timeout: Duration::from_millis(300), ..client(url) };
        let error = silent.generate(&request()).unwrap_err();
        assert!(matches!(&error, PromptError::Unreachable { message, .. } if message.contains("timed out")), "{error}");
        drop(done);
    }

    #[test]
    fn the_retry_policy_backs_off_exponentially_and_caps_retry_after() {
        let policy =
            RetryPolicy { attempts: 5, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(3) };
        let waits: Vec<Duration> = (1..=5).map(|attempt| policy.delay(attempt, None)).collect();
        let expected: Vec<Duration> = [250, 500, 1000, 2000, 3000].map(Duration::from_millis).to_vec();
        assert_eq!(waits, expected);
        assert_eq!(policy.delay(3, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(policy.delay(1, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(3));
        assert!(RetryPolicy::retries_status(429) && RetryPolicy::retries_status(503));
        assert!(!RetryPolicy::retries_status(400) && !RetryPolicy::retries_status(401));
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "the date form falls back to backoff");
    }

    #[test]
    fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
        let limited = answer("429 Too Many Requests", "Retry-After: 0\r\n", "slow down");
        let (url, sent) = serve(vec![limited.clone(), answer("200 OK", "", &chat_answer("a woman at the beach"))]);
        // Backoff alone would wait a minute: the server's `Retry-After: 0` is what makes it quick.
        let patient = OpenAiCompatible {
            retry: RetryPolicy { attempts: 3, base_delay: Duration::from_secs(60), max_delay: Duration::from_secs(60) },
            ..client(url)
        };
        let started = std::time::Instant::now();
        let generated = patient.generate(&request()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "waited {:?}", started.elapsed());
        assert_eq!(generated.prompts, ["a woman at the beach"]);
        assert_eq!(sent.try_iter().count(), 2, "one refused attempt, one answered");

        // Server errors too; the last answer stands once the attempts are spent.
        let busy = answer("503 Service Unavailable", "", "busy");
        let (url, sent) = serve(vec![busy.clone(), busy.clone(), busy]);
        let error = client(url).generate(&request()).unwrap_err();
        assert!(matches!(&error, PromptError::Refused { status: 503, body } if body == "busy"), "{error}");
        assert_eq!(sent.iter().take(3).count(), 3);
        // A refusal that another attempt would not change is not retried.
        let (url, sent) = serve(vec![answer("400 Bad Request", "", "no such model"), limited]);
        assert!(matches!(client(url).generate(&request()), Err(PromptError::Refused { status: 400, .. })));
        assert_eq!(sent.try_iter().count(), 1);
    }
}
