//! The worker routes: what a GPU machine that reaches thitl only over HTTPS needs to run the
//! generation and fine-tune jobs (`thitl worker --api URL --token TOKEN`).
//!
//! ```text
//! POST /v1/jobs/lease ──> the oldest runnable job, claimed for the caller (GenerationStarted /
//!                         FineTuneStarted), with the model versions it runs on; or none
//! POST /v1/blobs ──> POST /v1/jobs/generations/{id}/images   (upload first, then record by hash)
//! POST /v1/jobs/fine-tunes/{id}/progress                     (losses)
//! POST /v1/blobs ──> POST /v1/jobs/fine-tunes/{id}/complete  (the adapter)
//! POST /v1/jobs/{generations|fine-tunes}/{id}/renew | complete | fail
//! ```
//!
//! Key design decisions:
//! - **The same lease semantics and events as the in-process workers**: every route is one
//!   domain command of the job's aggregate, so a remote worker's history reads like a local
//!   one's (one holder, expiry, takeover; a late holder's records refused with 409 "Lease lost").
//! - **A worker is named by its token**: the lease holder is the token's name (or
//!   `{token name}/{name}` when the body names one, so one token can serve several processes);
//!   no token can record as another's worker. The server's clock times every lease.
//! - **Retries are safe**: with an `Idempotency-Key`, a retried record answers what the first
//!   answered; blobs are stored under their hash, complete or not at all.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use domain::fine_tune::FineTuneCommand;
use domain::generation::GenerationCommand;
use domain::values::{BlobHash, Name, Sentence};
use domain::*;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::support::{CommandAnswer, Done, head_position, parse_id, run_command, wait_for};
use crate::state::AppState;
use app::workers::{WorkerError, lease_next_job};

fn lease_seconds(requested: Option<u32>) -> Result<u32, ApiError> {
    let seconds = requested.unwrap_or(app::workers::DEFAULT_LEASE_SECONDS);
    if !(1..=domain::lease::MAX_LEASE_SECONDS).contains(&seconds) {
        return Err(ApiError::unprocessable(format!(
            "lease_seconds is {seconds}: a lease lasts 1 to {} seconds",
            domain::lease::MAX_LEASE_SECONDS
        )));
    }
    Ok(seconds)
}

fn worker_error(error: WorkerError) -> ApiError {
    match error {
        WorkerError::Command(error) => error.into(),
        other => ApiError::unprocessable(other.to_string()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseJob {
    /// Tells apart several workers sharing one token: the holder becomes `{token name}/{name}`.
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    /// How long the claim holds without renewal (default 60; renew every third of it).
    #[schema(minimum = 1, maximum = 86400)]
    pub lease_seconds: Option<u32>,
}

/// Take the oldest runnable job (worker): a generation or fine-tune job that is requested, or
/// running under an expired lease (or the caller's own). The answer's `job` holds what the
/// worker needs — `{"generation": {id, model_version, items, sampler, recorded}}` or
/// `{"fine_tune": {id, base_model, config, examples, prior_preservation, progress_every}}` —
/// with `lease_until` and `models` (the job's model version and its ancestors: weights,
/// adapter and parent as blob hashes to fetch from `/v1/blobs/{hash}`); `job` is null when
/// there is nothing to do.
#[utoipa::path(post, path = "/v1/jobs/lease", tag = "workers", request_body = LeaseJob,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "`job`: the leased job, or null; `lease_until`; `models`", body = CommandAnswer),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn lease(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Work)?;
    // The list comes from the read models: let them see every job requested before this call.
    wait_for(&state, Some(head_position(&state).await?)).await?;
    let (generations, fine_tunes) = state.projections.read(|p| p.catalog.pending_jobs());
    let caller = principal.clone();
    run_command(state, principal, request, body, Action::Work, false, move |bus, context, _, input: LeaseJob| {
        let worker = app::workers::Worker {
            name: named_holder(&caller.name, input.name.as_deref())?,
            lease_seconds: lease_seconds(input.lease_seconds)?,
        };
        let leased = lease_next_job(bus, &worker, context, &generations, &fine_tunes).map_err(worker_error)?;
        Ok(match leased {
            Some((leased, outcome)) => Done::new(outcome)
                .with("job", &leased.job)
                .with("lease_until", leased.lease_until)
                .with("models", &leased.models)
                .with("worker", &worker.name),
            // Nothing recorded: the answer names no stream.
            None => Done::new(app::commands::Outcome {
                stream: String::new(),
                stream_version: 0,
                position: None,
                event_ids: Vec::new(),
            })
            .with("job", serde_json::Value::Null)
            .with("worker", &worker.name),
        })
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewLease {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    #[schema(minimum = 1, maximum = 86400)]
    pub lease_seconds: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordJobImage {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    /// The item's index in the job.
    pub index: u32,
    /// SHA-256 of the PNG, uploaded first with `POST /v1/blobs`.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub blob: BlobHash,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordJobProgress {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    pub step: u32,
    /// The training loss at `step` (a finite number).
    pub loss: f32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerOnly {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteFineTuneJob {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    /// SHA-256 of the adapter (PEFT-named safetensors), uploaded first with `POST /v1/blobs`.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub adapter: BlobHash,
    pub final_loss: f32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailJob {
    #[schema(value_type = Option<Name>)]
    pub name: Option<String>,
    /// Why the job cannot run, in a sentence.
    #[schema(value_type = Sentence)]
    pub reason: String,
}

/// Refused unless `hash` is in the blob store: a record names only what was uploaded.
fn require_blob(state: &AppState, hash: &BlobHash, what: &str) -> Result<(), ApiError> {
    match state.blobs.contains(hash) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::unprocessable(format!(
            "the {what} {hash} is not in the blob store: upload it with POST /v1/blobs first"
        ))),
        Err(error) => Err(ApiError::unavailable(format!("blob store: {error}"))),
    }
}

/// The two kinds of job a worker records on, by the path they are named in.
trait JobKind: Aggregate + 'static {
    /// `generation` or `fine-tune`, for errors.
    const ENTITY_NAME: &'static str;
    /// The job's stream, from the id in the path (404 for one that is not an id).
    fn stream_of(id: &str) -> Result<(String, String), ApiError>;
}

impl JobKind for Generation {
    const ENTITY_NAME: &'static str = "generation";
    fn stream_of(id: &str) -> Result<(String, String), ApiError> {
        let id: GenerationId = parse_id(Self::ENTITY_NAME, id)?;
        Ok((id.stream(), id.to_string()))
    }
}

impl JobKind for FineTune {
    const ENTITY_NAME: &'static str = "fine-tune";
    fn stream_of(id: &str) -> Result<(String, String), ApiError> {
        let id: FineTuneId = parse_id(Self::ENTITY_NAME, id)?;
        Ok((id.stream(), id.to_string()))
    }
}

/// One worker command on job `id` of kind `A`: `command` makes it from the body and the
/// caller's token name.
async fn job_command<A: JobKind, B: serde::de::DeserializeOwned + Send + 'static>(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
    id: String,
    created: bool,
    command: impl FnOnce(&AppState, String, B) -> Result<A::Command, ApiError> + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let (stream, id) = A::stream_of(&id)?;
    let (caller, data) = (principal.clone(), state.clone());
    run_command(state, principal, request, body, Action::Work, created, move |bus, context, expected, input: B| {
        let command = command(&data, caller.name.clone(), input)?;
        let outcome = bus
            .execute::<A>(&stream, expected, context, command)
            .map_err(|e| crate::routes::support::named(e, A::ENTITY_NAME, id))?;
        Ok(Done::new(outcome))
    })
    .await
}

/// Who a worker request speaks for: the token's name, or `{token name}/{name}`.
fn named_holder(token_name: &str, name: Option<&str>) -> Result<String, ApiError> {
    match name {
        None => Ok(token_name.to_string()),
        Some(name) => Ok(format!("{token_name}/{}", Name::parse("name", name).map_err(ApiError::from)?.as_str())),
    }
}

const JOB_ERRORS: &str = "404 no such job; 409 \"Lease lost\" when another worker holds the job (or it ended); \
                          422 a body that does not fit";

/// Keep holding a generation job (worker, its holder): the lease runs `lease_seconds` from now.
#[utoipa::path(post, path = "/v1/jobs/generations/{id}/renew", tag = "workers", request_body = RenewLease,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn renew_generation(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<Generation, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        false,
        |_, token, input: RenewLease| {
            Ok(GenerationCommand::Renew {
                worker: named_holder(&token, input.name.as_deref())?,
                now: Utc::now(),
                lease_seconds: lease_seconds(input.lease_seconds)?,
            })
        },
    )
    .await
}

/// Record the image of one item (worker, the job's holder), uploaded first as a blob.
#[utoipa::path(post, path = "/v1/jobs/generations/{id}/images", tag = "workers", request_body = RecordJobImage,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn record_image(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<Generation, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        true,
        |state, token, input: RecordJobImage| {
            require_blob(state, &input.blob, "image")?;
            Ok(GenerationCommand::RecordImage {
                worker: named_holder(&token, input.name.as_deref())?,
                index: input.index,
                image_id: ImageId(uuid::Uuid::now_v7()),
                blob: input.blob,
            })
        },
    )
    .await
}

/// Complete a generation job whose every image is recorded (worker, its holder).
#[utoipa::path(post, path = "/v1/jobs/generations/{id}/complete", tag = "workers", request_body = WorkerOnly,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn complete_generation(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<Generation, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        false,
        |_, token, input: WorkerOnly| {
            Ok(GenerationCommand::Complete { worker: named_holder(&token, input.name.as_deref())? })
        },
    )
    .await
}

/// End a generation job as failed, with why (worker, its holder).
#[utoipa::path(post, path = "/v1/jobs/generations/{id}/fail", tag = "workers", request_body = FailJob,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn fail_generation(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<Generation, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        false,
        |_, token, input: FailJob| {
            Ok(GenerationCommand::Fail { worker: named_holder(&token, input.name.as_deref())?, reason: input.reason })
        },
    )
    .await
}

/// Keep holding a fine-tune job (worker, its holder): the lease runs `lease_seconds` from now.
#[utoipa::path(post, path = "/v1/jobs/fine-tunes/{id}/renew", tag = "workers", request_body = RenewLease,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn renew_fine_tune(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<FineTune, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        false,
        |_, token, input: RenewLease| {
            Ok(FineTuneCommand::Renew {
                worker: named_holder(&token, input.name.as_deref())?,
                now: Utc::now(),
                lease_seconds: lease_seconds(input.lease_seconds)?,
            })
        },
    )
    .await
}

/// Record the training loss at a step (worker, the job's holder).
#[utoipa::path(post, path = "/v1/jobs/fine-tunes/{id}/progress", tag = "workers", request_body = RecordJobProgress,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn record_progress(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<FineTune, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        true,
        |_, token, input: RecordJobProgress| {
            Ok(FineTuneCommand::RecordProgress {
                worker: named_holder(&token, input.name.as_deref())?,
                step: input.step,
                loss: input.loss,
            })
        },
    )
    .await
}

/// Complete a fine-tune job with its adapter, uploaded first as a blob (worker, its holder).
#[utoipa::path(post, path = "/v1/jobs/fine-tunes/{id}/complete", tag = "workers", request_body = CompleteFineTuneJob,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn complete_fine_tune(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<FineTune, _>(
        state,
        principal,
        request,
        body,
        path.into_inner(),
        false,
        |state, token, input: CompleteFineTuneJob| {
            require_blob(state, &input.adapter, "adapter")?;
            Ok(FineTuneCommand::Complete {
                worker: named_holder(&token, input.name.as_deref())?,
                adapter: input.adapter,
                final_loss: input.final_loss,
            })
        },
    )
    .await
}

/// End a fine-tune job as failed, with why (worker, its holder).
#[utoipa::path(post, path = "/v1/jobs/fine-tunes/{id}/fail", tag = "workers", request_body = FailJob,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", description = JOB_ERRORS, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn fail_fine_tune(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    job_command::<FineTune, _>(state, principal, request, body, path.into_inner(), false, |_, token, input: FailJob| {
        Ok(FineTuneCommand::Fail { worker: named_holder(&token, input.name.as_deref())?, reason: input.reason })
    })
    .await
}
