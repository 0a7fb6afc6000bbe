//! `/v1/images/{id}` (an image's metadata) and `/v1/blobs` (content-addressed bytes).
//!
//! Who sees what: an image's metadata names the prompt and the model that made it, so it is a
//! [`Action::Read`] query, which annotators may not make. Annotators get only blob hashes, in
//! their tasks (`/v1/rounds/{id}/next`), and fetch the bytes with [`Action::FetchBlob`]: a hash
//! names content and nothing else, so the bytes reveal no label. (Workers must therefore not
//! write the prompt or the model into a PNG's text chunks.)
//!
//! A key design decision: the image metadata comes from `app::images::LiveImageCatalog`, the
//! `projections::ImageCatalog` fold kept up with the store, which catches up on each query, so an
//! answer always reflects the log's head at the time it was asked (read-your-writes with no wait).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use domain::ImageId;
use domain::values::BlobHash;
use projections::ImageRecord;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::support::{WaitFor, parse_id};
use crate::state::AppState;
use app::blobs::{BlobError, media_type};

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
        let position = catalog.catch_up(store.as_ref()).map_err(|e| ApiError::unavailable(e.to_string()))?;
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

/// The bytes of a blob (`image/png` for a PNG, `image/jpeg` for a JPEG): every role, annotators included, since a hash
/// names content only. Blobs never change, so the answer may be cached for a year; the `ETag` is
/// the hash, and `If-None-Match` with it answers 304.
#[utoipa::path(get, path = "/v1/blobs/{sha256}", tag = "images", params(("sha256" = String, Path, description = "64 lowercase hex digits")),
    responses((status = 200, description = "the bytes: `image/png` for a PNG, `image/jpeg` for a JPEG, else `application/octet-stream`", 
        content((BlobBytes = "image/png"), (BlobBytes = "image/jpeg"), (BlobBytes = "application/octet-stream"))),
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
    let content_type = media_type(&bytes);
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

/// Store bytes (an image, weights, an adapter) under their SHA-256 (operator, curator, worker). The body is the raw bytes,
/// at most the server's body limit; storing the same bytes again changes nothing, so a retry is
/// always safe.
#[utoipa::path(post, path = "/v1/blobs", tag = "images",
    request_body(content = BlobBytes, content_type = "application/octet-stream", description = "the bytes"),
    responses((status = 201, description = "stored", body = StoredBlob), (status = 200, description = "already stored", body = StoredBlob),
        (status = "4XX", description = "400 a body shorter than its Content-Length (a cut-off upload: nothing is stored); 413 over the body limit; 422 an empty body", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name, bytes = body.len()))]
pub async fn upload(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::UploadBlob)?;
    if body.is_empty() {
        return Err(ApiError::unprocessable("the body is empty: send the blob's bytes"));
    }
    // A connection closed mid-way can end a body early: store only what the sender announced.
    let announced = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(announced) = announced
        && announced != body.len() as u64
    {
        return Err(ApiError::bad_request(format!(
            "the upload was cut off: {} of the {announced} bytes announced arrived; nothing was stored",
            body.len()
        )));
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
