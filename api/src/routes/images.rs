//! `/v1/images/{id}` (an image's metadata) and `/v1/blobs` (content-addressed bytes).
//!
//! Who sees what: an image's metadata names the prompt and the model that made it, so it is a
//! [`Action::Read`] query, which annotators may not make. Annotators get only blob hashes, in
//! their tasks (`/v1/rounds/{id}/next`), and fetch the bytes with [`Action::FetchBlob`]: a hash
//! names content and nothing else, so the bytes reveal no label. (Workers must therefore not
//! write the prompt or the model into a PNG's text chunks.)
//!
//! A key design decision: the image metadata comes from [`ImageCatalog`], a small fold of
//! `ImageGenerated` and `RoundOpened` events that follows the store from its own position and
//! catches up on each query, so an answer always reflects the log's head at the time it was
//! asked (read-your-writes with no wait). It is the one read model kept here rather than in
//! `projections`; it is a pure fold ([`ImageCatalog::apply`]) and can move there unchanged.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use domain::generation::{GenerationEvent, GenerationPurpose};
use domain::round::{ItemContent, RoundEvent};
use domain::values::BlobHash;
use domain::{AssociationId, DomainEvent, GenerationId, ImageId, ModelVersionId, PromptId, RoundId};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Action, Principal};
use crate::blobs::{BlobError, is_png};
use crate::routes::problem::{ApiError, Problem};
use crate::routes::support::{WaitFor, parse_id};
use crate::startup::AppState;
use crate::store::{EventStore, StoredEvent};

/// What is known about one image, from the events that recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ImageRecord {
    #[schema(value_type = String, format = "uuid")]
    pub image_id: ImageId,
    /// SHA-256 of its bytes: fetch them from `/v1/blobs/{blob}`.
    #[schema(value_type = String)]
    pub blob: BlobHash,
    /// The generation job that made it (none for an image a curator put in a round by hand).
    #[schema(value_type = Option<String>, format = "uuid")]
    pub generation_id: Option<GenerationId>,
    /// Its index within that job.
    pub index: Option<u32>,
    #[schema(value_type = Option<String>)]
    pub purpose: Option<GenerationPurpose>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub model_version: Option<ModelVersionId>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub association_id: Option<AssociationId>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub prompt_id: Option<PromptId>,
    /// The annotation rounds it was put in, in order.
    #[schema(value_type = Vec<String>)]
    pub rounds: Vec<RoundId>,
}

#[derive(Debug, Default)]
struct CatalogState {
    position: u64,
    images: HashMap<ImageId, ImageRecord>,
}

/// Images by id, folded from the event log (see the module doc).
#[derive(Debug, Default)]
pub struct ImageCatalog {
    state: Mutex<CatalogState>,
}

const CATALOG_BATCH: usize = 10_000;

impl ImageCatalog {
    /// Folds one event (only `ImageGenerated` and `RoundOpened` matter).
    fn apply(images: &mut HashMap<ImageId, ImageRecord>, event: DomainEvent) {
        match event {
            DomainEvent::Generation(GenerationEvent::ImageGenerated {
                generation_id,
                index,
                image_id,
                blob,
                model_version,
                purpose,
                item,
            }) => {
                let rounds = images.remove(&image_id).map(|old| old.rounds).unwrap_or_default();
                images.insert(
                    image_id,
                    ImageRecord {
                        image_id,
                        blob,
                        generation_id: Some(generation_id),
                        index: Some(index),
                        purpose: Some(purpose),
                        prompt: item.prompt,
                        negative_prompt: item.negative_prompt,
                        seed: item.seed,
                        model_version: Some(model_version),
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        rounds,
                    },
                );
            }
            DomainEvent::Round(RoundEvent::RoundOpened { round_id, items, .. }) => {
                for item in items {
                    let refs = match item.content {
                        ItemContent::Image(image) => vec![image],
                        ItemContent::Pair { left, right } => vec![left, right],
                    };
                    for (side, image) in refs.into_iter().enumerate() {
                        let record = images.entry(image.image_id).or_insert_with(|| ImageRecord {
                            image_id: image.image_id,
                            blob: image.blob,
                            generation_id: None,
                            index: None,
                            purpose: None,
                            prompt: item.label.prompt.clone(),
                            negative_prompt: None,
                            seed: item.label.seed,
                            model_version: item.label.models.get(side).copied(),
                            association_id: item.label.association_id,
                            prompt_id: item.label.prompt_id,
                            rounds: vec![],
                        });
                        if record.rounds.last() != Some(&round_id) {
                            record.rounds.push(round_id);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn fold(images: &mut HashMap<ImageId, ImageRecord>, stored: &StoredEvent) -> Result<(), ApiError> {
        if !matches!(stored.event_type.as_str(), "ImageGenerated" | "RoundOpened") {
            return Ok(());
        }
        let event =
            DomainEvent::decode_str(stored.stream.as_str(), &stored.event_type, stored.schema_version, &stored.payload)
                .map_err(|e| {
                    ApiError::unavailable(format!("stored history cannot be read at position {}: {e}", stored.position))
                })?;
        Self::apply(images, event);
        Ok(())
    }

    /// Folds whatever the store recorded since the last call; the position now reflected.
    pub fn catch_up(&self, store: &dyn EventStore) -> Result<u64, ApiError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let batch = store
                .read_all(state.position, CATALOG_BATCH)
                .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
            let done = batch.len() < CATALOG_BATCH;
            for stored in &batch {
                Self::fold(&mut state.images, stored)?;
                state.position = stored.position;
            }
            if done {
                return Ok(state.position);
            }
        }
    }

    pub fn get(&self, image_id: ImageId) -> Option<ImageRecord> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).images.get(&image_id).cloned()
    }
}

/// One image's metadata: the job and index that made it, prompt, seed, model version, blob hash
/// and the rounds it is in (every role but annotator: it names the model and the prompt).
#[utoipa::path(get, path = "/v1/images/{id}", tag = "images", params(("id" = String, Path), WaitFor),
    responses((status = 200, description = "the image's metadata and the `position` it reflects", body = ImageRecord),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn image(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: ImageId = parse_id("image", &path)?;
    let (store, catalog) = (state.store.clone(), state.images.clone());
    let (record, position) = web::block(move || {
        let position = catalog.catch_up(store.as_ref())?;
        Ok::<_, ApiError>((catalog.get(id), position))
    })
    .await
    .map_err(ApiError::blocking)??;
    // The catalog caught up with the head, so any position a command answered with is reached.
    if let Some(target) = query.wait_for
        && target > position
    {
        return Err(ApiError::unprocessable(format!(
            "wait_for={target} is beyond the end of the log (position {position}); use a position a command answered with"
        )));
    }
    let record = record.ok_or_else(|| {
        ApiError::not_found(format!("image {id} does not exist (no generation or round recorded it)"))
    })?;
    let mut body = serde_json::to_value(record).unwrap_or_default();
    body["position"] = json!(position);
    Ok(HttpResponse::Ok().json(body))
}

fn parse_hash(text: &str) -> Result<BlobHash, ApiError> {
    BlobHash::parse(text).map_err(|_| {
        ApiError::unprocessable(format!(
            "'{text}' is not a blob hash: a blob is named by its SHA-256, 64 lowercase hexadecimal digits"
        ))
    })
}

fn blob_error(error: BlobError) -> ApiError {
    match error {
        corrupt @ BlobError::Corrupt { .. } => {
            tracing::error!(error = %corrupt, "a stored blob does not match its hash");
            ApiError::unavailable(format!("{corrupt}; run `thitl audit verify` and restore it from a backup"))
        }
        other => ApiError::unavailable(other.to_string()),
    }
}

/// Whether an `If-None-Match` header names this ETag (or `*`).
fn matches_etag(request: &HttpRequest, etag: &str) -> bool {
    request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*"))
}

/// The bytes of a blob (`image/png` for a PNG): every role, annotators included, since a hash
/// names content only. Blobs never change, so the answer may be cached for a year; the `ETag` is
/// the hash, and `If-None-Match` with it answers 304.
#[utoipa::path(get, path = "/v1/blobs/{sha256}", tag = "images", params(("sha256" = String, Path, description = "64 lowercase hex digits")),
    responses((status = 200, description = "the bytes: `image/png` for a PNG, else `application/octet-stream`", 
        content((BlobBytes = "image/png"), (BlobBytes = "application/octet-stream"))),
        (status = 304, description = "the client's copy (If-None-Match) is current"),
        (status = "4XX", description = "404 no such blob; 422 not a SHA-256", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the stored bytes do not match the hash (corrupt) or cannot be read", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn blob(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::FetchBlob)?;
    let hash = parse_hash(&path)?;
    let etag = format!("\"{hash}\"");
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    let blobs = state.blobs.clone();
    if matches_etag(&request, &etag) {
        let lookup = hash.clone();
        if web::block(move || blobs.contains(&lookup)).await.map_err(ApiError::blocking)?.map_err(blob_error)? {
            return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).insert_header(cache).finish());
        }
        return Err(ApiError::not_found(format!("no blob is stored under {hash}")));
    }
    let lookup = hash.clone();
    let bytes = web::block(move || blobs.get(&lookup))
        .await
        .map_err(ApiError::blocking)?
        .map_err(blob_error)?
        .ok_or_else(|| ApiError::not_found(format!("no blob is stored under {hash}")))?;
    let content_type = if is_png(&bytes) { "image/png" } else { "application/octet-stream" };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::ETAG, etag))
        .insert_header(cache)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(bytes))
}

/// A blob's raw bytes (for the OpenAPI document: `type: string, format: binary`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BlobBytes(#[allow(dead_code)] Vec<u8>);

/// What storing a blob answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredBlob {
    /// The SHA-256 of the bytes: the blob's name, to put in events and rounds.
    pub sha256: String,
    pub size: u64,
    /// False when the store held these bytes already (201 when new, 200 when not).
    pub created: bool,
}

/// Store bytes (an image, weights) under their SHA-256 (operator). The body is the raw bytes,
/// at most the server's body limit; storing the same bytes again changes nothing, so a retry is
/// always safe.
#[utoipa::path(post, path = "/v1/blobs", tag = "images",
    request_body(content = BlobBytes, content_type = "application/octet-stream", description = "the bytes"),
    responses((status = 201, description = "stored", body = StoredBlob), (status = 200, description = "already stored", body = StoredBlob),
        (status = "4XX", description = "413 over the body limit; 422 an empty body", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name, bytes = body.len()))]
pub async fn upload(state: web::Data<AppState>, principal: Principal, body: Bytes) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Operate)?;
    if body.is_empty() {
        return Err(ApiError::unprocessable("the body is empty: send the blob's bytes"));
    }
    let blobs = state.blobs.clone();
    let stored = web::block(move || blobs.put(&body)).await.map_err(ApiError::blocking)?.map_err(blob_error)?;
    let status = if stored.created { StatusCode::CREATED } else { StatusCode::OK };
    let etag = format!("\"{}\"", stored.hash);
    Ok(HttpResponse::build(status).insert_header((header::ETAG, etag)).json(StoredBlob {
        sha256: stored.hash.to_string(),
        size: stored.size,
        created: stored.created,
    }))
}
