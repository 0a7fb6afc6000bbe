//! Prompt curation's port: a [`PromptGenerator`] writes training prompts that name a group and
//! not the concept; curators then accept, edit or reject them through the API.
//!
//! Two adapters:
//! - [`TemplateGenerator`], the embedded default: deterministic from a seed, no network. Its
//!   phrasings are given by a [`TemplateSource`] — the reference world's caption grammar in the
//!   demo (so every prompt uses words the shipped model knows), or plain templates.
//! - [`OpenAiCompatible`]: a chat-completions endpoint (base URL, model, key from configuration).
//!   The request parameters, the model name and a SHA-256 of the raw response go into the events
//!   ([`GeneratorInfo`]), so an auditor can tell exactly what produced each prompt.
//!
//! Either way the prompts pass the domain's neutral prompt transformation when they are added to
//! a prompt set, so a generator that names the concept anyway cannot sneak it into training.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
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

/// An OpenAI-compatible chat-completions endpoint (a local server such as vLLM, llama.cpp or
/// Ollama, or a hosted one behind a TLS-terminating proxy: this client speaks plain HTTP/1.1).
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    /// E.g. `http://127.0.0.1:8000/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set; never recorded in events.
    pub api_key: Option<String>,
    pub temperature: f64,
    pub timeout: Duration,
}

struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(base_url: &str) -> Result<Endpoint, PromptError> {
    let rest = match base_url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(PromptError::Settings(format!(
                "{base_url}: this build speaks plain HTTP only; reach an HTTPS endpoint through a local \
                 TLS-terminating proxy, or run the model server locally"
            )));
        }
        _ => return Err(PromptError::Settings(format!("{base_url}: the base URL must start with http://"))),
    };
    let (authority, path) = rest.split_once('/').map_or((rest, String::new()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host.to_string(),
            port.parse().map_err(|_| PromptError::Settings(format!("{base_url}: bad port {port:?}")))?,
        ),
        None => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err(PromptError::Settings(format!("{base_url}: no host")));
    }
    Ok(Endpoint { host, port, path: format!("{}/chat/completions", path.trim_end_matches('/')) })
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

    fn post(&self, body: &[u8]) -> Result<(u16, Vec<u8>), PromptError> {
        let endpoint = parse_url(&self.base_url)?;
        let unreachable = |message: String| PromptError::Unreachable { url: self.base_url.clone(), message };
        let address = (endpoint.host.as_str(), endpoint.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let mut stream = TcpStream::connect_timeout(&address, self.timeout).map_err(|e| unreachable(e.to_string()))?;
        stream.set_read_timeout(Some(self.timeout)).map_err(|e| unreachable(e.to_string()))?;
        stream.set_write_timeout(Some(self.timeout)).map_err(|e| unreachable(e.to_string()))?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            endpoint.path,
            endpoint.host,
            endpoint.port,
            body.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(body))
            .map_err(|e| unreachable(e.to_string()))?;
        crate::http_client::read_response(BufReader::new(stream)).map_err(|e| unreachable(e.to_string()))
    }
}

impl PromptGenerator for OpenAiCompatible {
    fn generate(&self, request: &PromptRequest) -> Result<Generated, PromptError> {
        let body = self.request_body(request);
        let (status, raw) = self.post(body.to_string().as_bytes())?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&raw);
            return Err(PromptError::Refused { status, body: text.chars().take(500).collect() });
        }
        let answer: Value = serde_json::from_slice(&raw).map_err(|e| PromptError::Malformed(e.to_string()))?;
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
    use std::io::{BufRead, Read};
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

    /// A one-shot HTTP server: answers `response` to the first request and hands the request back.
    fn serve_once(response: String) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
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
            (&stream).write_all(response.as_bytes()).unwrap();
            sender.send(head).unwrap();
        });
        (url, receiver)
    }

    fn client(base_url: String) -> OpenAiCompatible {
        OpenAiCompatible {
            base_url,
            model: "local-model".into(),
            api_key: Some("sk-test".into()),
            temperature: 0.9,
            timeout: Duration::from_secs(5),
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
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        let (url, sent) = serve_once(response);
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
        assert!(request_text.contains("Authorization: Bearer sk-test"));
        assert!(request_text.contains("hippopotamus, hippo"), "the concept and its synonyms are named to avoid");
    }

    #[test]
    fn endpoint_failures_are_clear_errors() {
        let (url, _) = serve_once("HTTP/1.1 401 Unauthorized\r\nContent-Length: 15\r\n\r\ninvalid api key".into());
        let error = client(url).generate(&request()).unwrap_err();
        assert!(matches!(&error, PromptError::Refused { status: 401, body } if body == "invalid api key"), "{error}");
        let (url, _) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".into());
        assert!(matches!(client(url).generate(&request()), Err(PromptError::Malformed(_))));
        assert!(matches!(
            client("https://api.example.com/v1".into()).generate(&request()),
            Err(PromptError::Settings(_))
        ));
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let unreachable = client(format!("http://127.0.0.1:{port}/v1")).generate(&request()).unwrap_err();
        assert!(matches!(unreachable, PromptError::Unreachable { .. }), "{unreachable}");
    }
}
