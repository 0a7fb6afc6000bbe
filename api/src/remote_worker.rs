//! `thitl worker --api URL --token TOKEN`: a GPU worker that reaches thitl only over HTTPS.
//!
//! ```text
//! loop until stopped:
//!   POST /v1/jobs/lease ──> a job (claimed for this worker) + the model versions it runs on
//!     model weights and adapters: GET /v1/blobs/{hash}, kept in the local cache (--data) by hash
//!     generation: sample ─> POST /v1/blobs (PNG) ─> POST …/images {index, blob} ─> … ─> complete
//!     fine-tune:  train ─> POST …/progress {step, loss} ─> POST /v1/blobs (adapter) ─> complete
//!     beside it, a heartbeat renews the lease every third of it
//!   no job ─> ask again in a few seconds
//! ```
//!
//! Key design decisions:
//! - **The same worker code as `thitl worker --data`**: the sampling and training loops are
//!   `app::workers`'; this module is a [`JobHost`] (and a [`BlobStore`]) over HTTP.
//! - **Lost connections are retried, not fatal**: every call is retried with exponential backoff
//!   (0.5 s doubling to 30 s) while the server is unreachable or answers 5xx/429, with the same
//!   `Idempotency-Key`, so a record the server stored before the answer was lost is not recorded
//!   twice. The heartbeat makes one attempt per beat: the lease has two more beats to go.
//! - **Nothing unverified is used**: a downloaded blob must hash to its name before it is cached
//!   or loaded; an uploaded one must come back under the hash it was sent for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use app::blobs::{BlobError, BlobReport, BlobStore, LocalBlobStore, PutOutcome, blob_hash};
use app::workers::{JobHost, JobRef, LeasedJob, ModelRecord, Models, Worker, WorkerError, work_job};
use domain::values::BlobHash;
use domain::{FineTuneId, GenerationId, ModelVersionId};

/// The longest wait between two tries of a call the server did not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long to wait before asking for a job again when there was none.
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// How many times a call is tried.
#[derive(Debug, Clone, Copy)]
enum Tries {
    /// Once: the caller tries again on its own schedule (the heartbeat).
    Once,
    /// Until it gets an answer, or the worker is told to stop.
    UntilStopped,
}

/// Why a call got no useful answer.
#[derive(Debug)]
enum CallError {
    /// The server answered 4xx: its problem's title and detail.
    Refused { status: u16, title: String, detail: String },
    /// No answer (or 5xx/429) within the tries allowed.
    Unreachable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { status, title, detail } => write!(f, "{status} {title}: {detail}"),
            CallError::Unreachable(why) => f.write_str(why),
        }
    }
}

/// The server: its address, this worker's token, and the HTTP client.
pub struct Server {
    /// `https://thitl.example.org`, without a trailing slash.
    base: String,
    token: String,
    client: reqwest::blocking::Client,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// A client for `base` (http or https) with `token`; `stop` ends retry loops.
    pub fn new(base: &str, token: &str, stop: Arc<AtomicBool>) -> anyhow::Result<Server> {
        let base = base.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| anyhow::anyhow!("--api {base:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("--api {base:?}: the server's URL starts with https:// (or http:// on a trusted network)");
        }
        if token.trim().is_empty() {
            anyhow::bail!("--token is empty: give the worker token `thitl token create --role worker` printed");
        }
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Weights and adapters can be large: a generous whole-request limit.
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("thitl-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Server { base, token: token.trim().to_string(), client, stop })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `wait`, waking early when told to stop.
    fn pause(&self, wait: Duration) {
        let until = std::time::Instant::now() + wait;
        while !self.stopped() {
            let now = std::time::Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
    }

    /// One call, tried as `tries` says: the status and body of a 2xx or 404 answer.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        tries: Tries,
    ) -> Result<(u16, Vec<u8>), CallError> {
        // One key for every try of this call: a retried record is answered, not recorded again.
        let key = uuid::Uuid::now_v7().to_string();
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", &key);
            if let Some((content_type, bytes)) = &body {
                request = request.header(reqwest::header::CONTENT_TYPE, *content_type).body(bytes.clone());
            }
            let why = match request.send().and_then(|response| Ok((response.status().as_u16(), response.bytes()?))) {
                Ok((status, bytes)) if (200..300).contains(&status) || status == 404 => {
                    return Ok((status, bytes.to_vec()));
                }
                Ok((status, bytes)) if status == 429 || status >= 500 => {
                    format!("{method} {path} answered {status}: {}", String::from_utf8_lossy(&bytes))
                }
                Ok((status, bytes)) => {
                    let problem: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    return Err(CallError::Refused {
                        status,
                        title: problem["title"].as_str().unwrap_or_default().to_string(),
                        detail: problem["detail"]
                            .as_str()
                            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_string),
                    });
                }
                Err(error) => format!("{method} {path}: {error}"),
            };
            if matches!(tries, Tries::Once) || self.stopped() {
                return Err(CallError::Unreachable(why));
            }
            tracing::warn!(retry_in = ?backoff, "{why}; trying again");
            self.pause(backoff);
            if self.stopped() {
                return Err(CallError::Unreachable(format!("{why} (stopping)")));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A JSON POST; its answer.
    fn post(&self, path: &str, body: &Value, tries: Tries) -> Result<Value, CallError> {
        let (status, bytes) =
            self.call(reqwest::Method::POST, path, Some(("application/json", body.to_string().into_bytes())), tries)?;
        if status == 404 {
            let problem: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(CallError::Refused {
                status,
                title: "Not found".into(),
                detail: problem["detail"].as_str().unwrap_or("not found").to_string(),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Unreachable(format!("POST {path}: the answer is not JSON: {e}")))
    }
}

/// Blobs from the server, kept in a local cache by hash; uploads go to the server.
pub struct RemoteBlobs {
    server: Arc<Server>,
    cache: LocalBlobStore,
}

impl RemoteBlobs {
    fn unreachable(error: CallError) -> BlobError {
        BlobError::Remote(error.to_string())
    }
}

impl BlobStore for RemoteBlobs {
    fn put(&self, bytes: &[u8]) -> Result<PutOutcome, BlobError> {
        let hash = blob_hash(bytes);
        let (status, answer) = self
            .server
            .call(
                reqwest::Method::POST,
                "/v1/blobs",
                Some(("application/octet-stream", bytes.to_vec())),
                Tries::UntilStopped,
            )
            .map_err(Self::unreachable)?;
        let stored: Value = serde_json::from_slice(&answer).unwrap_or_default();
        if status == 404 || stored["sha256"].as_str() != Some(hash.as_str()) {
            return Err(BlobError::Remote(format!(
                "the server stored an upload of blob {hash} as {} (answer {status})",
                stored["sha256"]
            )));
        }
        self.cache.put(bytes)?;
        Ok(PutOutcome { hash, size: bytes.len() as u64, created: stored["created"].as_bool().unwrap_or(false) })
    }

    fn get(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, BlobError> {
        if let Some(bytes) = self.cache.get(hash)? {
            return Ok(Some(bytes));
        }
        let path = format!("/v1/blobs/{hash}");
        let (status, bytes) =
            self.server.call(reqwest::Method::GET, &path, None, Tries::UntilStopped).map_err(Self::unreachable)?;
        if status == 404 {
            return Ok(None);
        }
        let actual = blob_hash(&bytes);
        if &actual != hash {
            return Err(BlobError::Corrupt { hash: hash.clone(), actual });
        }
        tracing::info!(blob = %hash, bytes = bytes.len(), "fetched a blob into the local cache");
        self.cache.put(&bytes)?;
        Ok(Some(bytes))
    }

    fn contains(&self, hash: &BlobHash) -> Result<bool, BlobError> {
        Ok(self.cache.contains(hash)? || self.get(hash)?.is_some())
    }

    fn verify(&self) -> Result<BlobReport, BlobError> {
        self.cache.verify()
    }
}

/// The server's jobs, as a [`JobHost`] for `app::workers`.
pub struct RemoteJobs {
    server: Arc<Server>,
    blobs: Arc<RemoteBlobs>,
    /// Sent with every call: the holder is `{token name}/{name}`.
    name: String,
    lease_seconds: u32,
    /// The model versions the leased jobs named.
    models: Mutex<HashMap<ModelVersionId, ModelRecord>>,
}

impl RemoteJobs {
    fn job_path(job: JobRef, action: &str) -> String {
        match job {
            JobRef::Generation(id) => format!("/v1/jobs/generations/{id}/{action}"),
            JobRef::FineTune(id) => format!("/v1/jobs/fine-tunes/{id}/{action}"),
        }
    }

    /// A record on `job`; a 409 "Lease lost" means the job is another worker's now.
    fn record(&self, job: JobRef, action: &str, mut body: Value) -> Result<(), WorkerError> {
        body["name"] = json!(self.name);
        let path = Self::job_path(job, action);
        let lost = |title: &str| title == crate::problem::LEASE_LOST;
        match self.server.post(&path, &body, Tries::UntilStopped) {
            Ok(_) => Ok(()),
            Err(CallError::Refused { status: 409, title, detail }) if lost(&title) => {
                Err(WorkerError::TakenOver(detail))
            }
            // The server stopped while it ran the first try: its key stays taken. Asked again
            // under a new key, a record it had stored is refused as there already (an index's
            // image, a step's loss, a completed job): only this worker records on the job, so
            // that is this record, and it is done.
            Err(CallError::Refused { status: 409, title, .. }) if title == crate::problem::KEY_IN_USE => {
                tracing::warn!(%job, action, "the server stopped during this record; asking again under a new key");
                match self.server.post(&path, &body, Tries::UntilStopped) {
                    Ok(_) => Ok(()),
                    Err(CallError::Refused { status: 409, title, detail }) if lost(&title) => {
                        Err(WorkerError::TakenOver(detail))
                    }
                    Err(CallError::Refused { status: 409 | 422, detail, .. }) => {
                        tracing::info!(%job, action, %detail, "recorded by the first try");
                        Ok(())
                    }
                    Err(error) => Err(WorkerError::Unusable(format!("{job}: {action}: {error}"))),
                }
            }
            Err(error) => Err(WorkerError::Unusable(format!("{job}: {action}: {error}"))),
        }
    }

    /// Asks for a job; `None` when there is none.
    fn lease(&self) -> Result<Option<(LeasedJob, String)>, CallError> {
        let answer = self.server.post(
            "/v1/jobs/lease",
            &json!({"name": self.name, "lease_seconds": self.lease_seconds}),
            Tries::UntilStopped,
        )?;
        if answer["job"].is_null() {
            return Ok(None);
        }
        let holder = answer["worker"].as_str().unwrap_or_default().to_string();
        let leased: LeasedJob = serde_json::from_value(answer).map_err(|e| {
            CallError::Unreachable(format!("POST /v1/jobs/lease: an answer this worker cannot read: {e}"))
        })?;
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        for model in &leased.models {
            models.insert(model.id, model.clone());
        }
        Ok(Some((leased, holder)))
    }
}

impl JobHost for RemoteJobs {
    fn model(&self, id: ModelVersionId) -> Result<ModelRecord, WorkerError> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned().ok_or_else(|| {
            WorkerError::Unusable(format!("model version {id} is not among those the server named for this job"))
        })
    }

    fn blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, WorkerError> {
        Ok(self.blobs.get(hash)?)
    }

    fn renew(&self, job: JobRef, _worker: &Worker) -> Result<(), WorkerError> {
        let body = json!({"name": self.name, "lease_seconds": self.lease_seconds});
        match self.server.post(&Self::job_path(job, "renew"), &body, Tries::Once) {
            Ok(_) => Ok(()),
            // Held by another worker, ended, or gone: not this worker's any more.
            Err(CallError::Refused { status: 404 | 409, detail, .. }) => Err(WorkerError::TakenOver(detail)),
            Err(error) => Err(WorkerError::Unusable(format!("{job}: renew: {error}"))),
        }
    }

    fn record_image(&self, id: GenerationId, _worker: &Worker, index: u32, png: &[u8]) -> Result<(), WorkerError> {
        let blob = self.blobs.put(png)?.hash;
        self.record(JobRef::Generation(id), "images", json!({"index": index, "blob": blob}))
    }

    fn complete_generation(&self, id: GenerationId, _worker: &Worker) -> Result<(), WorkerError> {
        self.record(JobRef::Generation(id), "complete", json!({}))
    }

    fn record_progress(&self, id: FineTuneId, _worker: &Worker, step: u32, loss: f32) -> Result<(), WorkerError> {
        self.record(JobRef::FineTune(id), "progress", json!({"step": step, "loss": loss}))
    }

    fn complete_fine_tune(
        &self,
        id: FineTuneId,
        _worker: &Worker,
        adapter: &[u8],
        final_loss: f32,
    ) -> Result<BlobHash, WorkerError> {
        let hash = self.blobs.put(adapter)?.hash;
        self.record(JobRef::FineTune(id), "complete", json!({"adapter": hash, "final_loss": final_loss}))?;
        Ok(hash)
    }

    fn fail(&self, job: JobRef, _worker: &Worker, reason: &str) -> Result<(), WorkerError> {
        // A reason is a sentence of at most 1000 characters.
        let mut reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
        if reason.trim().is_empty() {
            reason = "the worker gave no reason".into();
        }
        self.record(job, "fail", json!({"reason": reason.trim()}))
    }
}

/// What `thitl worker --api` needs.
pub struct RemoteWorkerSettings {
    pub api: String,
    pub token: String,
    /// Told apart from other processes on the same token by this name.
    pub name: String,
    pub lease_seconds: u32,
    /// The local directory: the blob cache and unpacked model files.
    pub data: PathBuf,
    pub backend: gpu::Backend,
}

/// Runs jobs from the server until `stop` is set (the job in progress runs to its end).
pub fn run(settings: RemoteWorkerSettings, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let server = Arc::new(Server::new(&settings.api, &settings.token, stop.clone())?);
    std::fs::create_dir_all(&settings.data)?;
    let cache = LocalBlobStore::open(&settings.data.join("blobs"))?;
    let blobs = Arc::new(RemoteBlobs { server: server.clone(), cache });
    let host = RemoteJobs {
        server: server.clone(),
        blobs: blobs.clone(),
        name: settings.name,
        lease_seconds: settings.lease_seconds,
        models: Mutex::new(HashMap::new()),
    };
    let family = Arc::new(app::reference::ReferenceWorld::new(settings.backend.clone()));
    let models = app::sd::named_families(blobs, settings.backend, &settings.data)
        .into_iter()
        .fold(Models::new(family), |models, (name, family)| models.with_family(&name, family));
    tracing::info!(api = %server.base, name = %host.name, lease_seconds = host.lease_seconds, "worker started: it runs the server's generation and fine-tune jobs");
    while !stop.load(Ordering::SeqCst) {
        let (leased, holder) = match host.lease() {
            Ok(Some(leased)) => leased,
            Ok(None) => {
                server.pause(IDLE_WAIT);
                continue;
            }
            Err(error) => {
                if !stop.load(Ordering::SeqCst) {
                    tracing::error!(%error, "cannot lease a job");
                    server.pause(IDLE_WAIT);
                }
                continue;
            }
        };
        let worker = Worker { name: holder, lease_seconds: host.lease_seconds };
        tracing::info!(job = %leased.job.reference(), worker = %worker.name, until = %leased.lease_until, "leased");
        work_job(&host, &models, &leased.job, &worker);
    }
    tracing::info!("worker stopped");
    Ok(())
}
