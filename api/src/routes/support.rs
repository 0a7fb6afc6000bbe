//! What every command and query endpoint shares: reading a JSON body with clear errors,
//! `If-Match`, `Idempotency-Key`, running a command off the async workers, and `?wait_for=POS`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::auth::{Action, Principal};
use crate::problem::ApiError;
use crate::state::AppState;
use app::commands::{CommandBus, CommandContext, Outcome};
use app::idempotency::Begin;

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Reads a JSON body: malformed JSON is 400; unknown fields, missing fields and wrong types are
/// 422, with serde's words for what and where. An empty body reads as `{}`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    // Every body is an object: serde would also read a struct from an array of its fields.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return Err(ApiError::unprocessable(
            "the JSON body does not fit this endpoint: invalid type: it must be an object ({…}) with its fields",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::unprocessable(format!("the JSON body does not fit this endpoint: {error}")),
            // serde reports some shape errors (an enum given `{}`) as syntax errors: only a body
            // that is not JSON at all is malformed; well-formed JSON of the wrong shape is 422.
            Category::Syntax | Category::Eof | Category::Io
                if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() =>
            {
                ApiError::unprocessable(format!("the JSON body does not fit this endpoint: {error}"))
            }
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request(format!("the body is not valid JSON: {error}"))
            }
        }
    })
}

/// Parses an id from the path; an id that is not a UUID names nothing, so 404.
pub fn parse_id<T: std::str::FromStr>(entity: &str, text: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("no {entity} has id '{text}' (ids are UUIDs)")))
}

/// `If-Match: 3` or `If-Match: "3"`: the stream version the client last saw.
pub fn if_match(request: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim().trim_start_matches("W/").trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a stream version (a whole number, as in the 'version' of an earlier answer), not {:?}",
            value.to_str().unwrap_or("(not text)")
        ))
    })
}

fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().unwrap_or("").trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters (a UUID is a good choice)"
        )));
    }
    Ok(Some(key.to_string()))
}

/// What a command endpoint answers: where the events landed, plus what the endpoint adds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandAnswer {
    /// The stream the command wrote to, e.g. `association-0190…`.
    pub stream: String,
    /// The stream's version after the command: send it as `If-Match` to change the entity again.
    pub version: u64,
    /// The global position of the last event written (or of the log's end if none was):
    /// send it as `?wait_for=` to read your own write.
    pub position: u64,
}

/// A command's result inside the blocking task.
pub struct Done {
    pub outcome: Outcome,
    /// Fields added to the answer (`id`, `items`, …).
    pub extra: Map<String, Value>,
}

impl Done {
    pub fn new(outcome: Outcome) -> Self {
        Done { outcome, extra: Map::new() }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(key.to_string(), serde_json::to_value(value).unwrap_or(Value::Null));
        self
    }
}

/// Runs one command endpoint: role check, `If-Match`, `Idempotency-Key`, body, then `execute`
/// on a blocking thread. On any error nothing is appended and the key is released.
pub async fn run_command<B, F>(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
    action: Action,
    created: bool,
    execute: F,
) -> Result<HttpResponse, ApiError>
where
    B: DeserializeOwned + Send + 'static,
    F: FnOnce(&CommandBus, &CommandContext, Option<u64>, B) -> Result<Done, ApiError> + Send + 'static,
{
    run_command_async(state, principal, request, body, action, created, async move |bus, context, expected, input| {
        web::block(move || execute(&bus, &context, expected, input)).await.map_err(ApiError::blocking)?
    })
    .await
}

/// [`run_command`] for an `execute` that awaits the command bus itself
/// ([`CommandBus::execute_async`]) rather than holding a blocking thread: the hot paths.
pub async fn run_command_async<B, F>(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
    action: Action,
    created: bool,
    execute: F,
) -> Result<HttpResponse, ApiError>
where
    B: DeserializeOwned + Send + 'static,
    F: AsyncFnOnce(CommandBus, CommandContext, Option<u64>, B) -> Result<Done, ApiError>,
{
    principal.require(action)?;
    let expected = if_match(&request)?;
    let key = idempotency_key(&request)?;
    let scope = principal.token_id.to_string();
    if let Some(key) = &key {
        let mut hasher = Sha256::new();
        for part in [
            request.method().as_str().as_bytes(),
            request.path().as_bytes(),
            &expected.unwrap_or(u64::MAX).to_be_bytes(),
            &body,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let fingerprint = hex::encode(hasher.finalize());
        let (store, scope, key) = (state.idempotency.clone(), scope.clone(), key.clone());
        let begin = web::block(move || store.begin(&scope, &key, &fingerprint))
            .await
            .map_err(ApiError::blocking)?
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        match begin {
            Begin::Fresh => {}
            Begin::Replay { status, body } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok(HttpResponse::build(status)
                    .content_type("application/json")
                    .insert_header(("Idempotent-Replayed", "true"))
                    .body(body));
            }
            Begin::Mismatch => {
                return Err(ApiError::unprocessable(
                    "this Idempotency-Key was already used for a different request (another body, path or If-Match); \
                     use a new key for a new request",
                ));
            }
            Begin::InProgress => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    crate::problem::KEY_IN_USE,
                    "the first request with this Idempotency-Key has not finished, or the server stopped while running it; \
                     look for its events in the audit log before retrying with a new key",
                ));
            }
        }
    }
    let result = answer_command(&state, principal, expected, body, execute)
        .await
        .map(|(status, text)| (if created && status == StatusCode::OK { StatusCode::CREATED } else { status }, text));
    if let Some(key) = key {
        let store = state.idempotency.clone();
        let stored = match &result {
            Ok((status, text)) => {
                let (status, text) = (status.as_u16(), text.clone());
                web::block(move || store.complete(&scope, &key, status, &text)).await
            }
            Err(_) => web::block(move || store.release(&scope, &key)).await,
        };
        if let Err(error) =
            stored.map_err(ApiError::blocking).and_then(|r| r.map_err(|e| ApiError::unavailable(e.to_string())))
        {
            tracing::error!(%error, "idempotency key not recorded");
        }
    }
    let (status, text) = result?;
    Ok(HttpResponse::build(status).content_type("application/json").body(text))
}

async fn answer_command<B, F>(
    state: &web::Data<AppState>,
    principal: Principal,
    expected: Option<u64>,
    body: Bytes,
    execute: F,
) -> Result<(StatusCode, String), ApiError>
where
    B: DeserializeOwned + Send + 'static,
    F: AsyncFnOnce(CommandBus, CommandContext, Option<u64>, B) -> Result<Done, ApiError>,
{
    let input: B = parse_json(&body)?;
    let done = execute(state.bus.clone(), principal.context(), expected, input).await?;
    let position = match done.outcome.position {
        Some(position) => position,
        None => head_position(state).await?,
    };
    state.metrics.record_appended(done.outcome.event_ids.len());
    let mut answer = Map::new();
    answer.insert("stream".into(), json!(done.outcome.stream));
    answer.insert("version".into(), json!(done.outcome.stream_version));
    answer.insert("position".into(), json!(position));
    answer.extend(done.extra);
    Ok((StatusCode::OK, Value::Object(answer).to_string()))
}

/// The log's end, read off the async workers.
pub async fn head_position(state: &web::Data<AppState>) -> Result<u64, ApiError> {
    let store = state.store.clone();
    web::block(move || store.head_position().map_err(|e| ApiError::unavailable(format!("event store: {e}"))))
        .await
        .map_err(ApiError::blocking)?
}

/// A global position or stream version from a query string: a whole number the log can hold
/// (0 to 2^63 - 1, the OpenAPI `int64` the document declares); anything larger is a 400.
pub fn position<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if i64::try_from(value).is_err() {
        return Err(serde::de::Error::custom(format!("{value} is larger than any position ({})", i64::MAX)));
    }
    Ok(value)
}

/// [`position`], optional.
pub fn optional_position<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    position(deserializer).map(Some)
}

/// `?wait_for=POS`: read-your-writes for queries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitFor {
    /// Answer only once the read models reflect this global position (waits at most 10 s);
    /// a position beyond the end of the log is a 422.
    #[serde(default, deserialize_with = "optional_position")]
    pub wait_for: Option<u64>,
}

/// Waits (off the async workers) until the read models reflect `wait_for`; returns their position.
pub async fn wait_for(state: &web::Data<AppState>, wait_for: Option<u64>) -> Result<u64, ApiError> {
    let Some(target) = wait_for else { return Ok(state.projections.position()) };
    if state.projections.position() >= target {
        return Ok(state.projections.position());
    }
    let (store, runner, max) = (state.store.clone(), state.projections.clone(), state.settings.wait_for_max());
    web::block(move || {
        let head = store.head_position().map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
        if target > head {
            return Err(ApiError::unprocessable(format!(
                "wait_for={target} is beyond the end of the log (position {head}); use a position a command answered with"
            )));
        }
        if runner.wait_for(target, max) {
            Ok(runner.position())
        } else {
            Err(ApiError::unavailable(format!(
                "the read models have not reached position {target} within {} s; retry shortly",
                max.as_secs()
            )))
        }
    })
    .await
    .map_err(ApiError::blocking)?
}

/// A query's answer: `value`'s fields plus the `position` it reflects, with an ETag when the
/// entity has a stream version.
/// One entity's view from the read models, answered with the position it reflects and its stream
/// version (also as the `ETag`, for `If-Match`); 404 naming `entity` and `id` when it is not there.
pub fn entity_answer<T: Serialize>(
    state: &AppState,
    entity: &str,
    id: impl std::fmt::Display,
    stream: &str,
    pick: impl FnOnce(&projections::Projections) -> Option<T>,
) -> Result<HttpResponse, ApiError> {
    let found = state.projections.read(|p| {
        let version = p.entities.entities.get(stream).map(|e| e.version);
        pick(p).map(|view| (serde_json::to_value(view).unwrap_or_default(), p.position, version))
    });
    let (view, position, version) =
        found.ok_or_else(|| ApiError::not_found(format!("{entity} {id} does not exist")))?;
    Ok(query_answer(view, position, version))
}

pub fn query_answer(mut value: Value, position: u64, version: Option<u64>) -> HttpResponse {
    if let Value::Object(map) = &mut value {
        map.insert("position".into(), json!(position));
        if let Some(version) = version {
            map.insert("version".into(), json!(version));
        }
    }
    let mut response = HttpResponse::Ok();
    if let Some(version) = version
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
    {
        response.insert_header((header::ETAG, etag));
    }
    response.json(value)
}

/// Loads an aggregate on a blocking thread: its state, stream version and the log position the
/// answer reflects (the head read before the stream, so everything up to it is included).
pub async fn load<A: domain::Aggregate + Send + 'static>(
    state: &web::Data<AppState>,
    stream: String,
) -> Result<(A, u64, u64), ApiError> {
    let bus = state.bus.clone();
    web::block(move || {
        let head = bus.store().head_position().map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
        let (aggregate, version) = bus.load::<A>(&stream)?;
        Ok::<_, ApiError>((aggregate, version, head))
    })
    .await
    .map_err(ApiError::blocking)?
}

/// Replaces the domain's placeholder id ("(not opened)") in a not-found error with the id asked for.
pub fn named(error: app::commands::CommandError, entity: &str, id: impl std::fmt::Display) -> ApiError {
    match error {
        app::commands::CommandError::Domain(domain::DomainError::NotFound { id: placeholder, .. })
            if placeholder.starts_with('(') =>
        {
            ApiError::not_found(format!("{entity} {id} does not exist"))
        }
        other => other.into(),
    }
}
