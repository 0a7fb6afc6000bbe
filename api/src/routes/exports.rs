//! `GET /v1/exports/{kind}`: annotations, images' metadata or evaluations as CSV or JSON Lines,
//! streamed from the event log (see [`app::export`]).

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Action, Principal};
use crate::problem::ApiError;
use crate::state::AppState;
use app::export::{ExportCursor, ExportFormat, ExportKind};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl`.
    pub format: Option<String>,
}

/// Export `annotations`, `images` or `evaluations` (every role but annotators). The answer is
/// streamed; `Thitl-Position` says which position of the log it reflects (every event up to it,
/// none after), and every row names the position of the event it comes from. CSV has a header
/// row; JSON Lines has one object per line with the same keys.
#[utoipa::path(get, path = "/v1/exports/{kind}", tag = "exports", params(("kind" = String, Path, description = "annotations | images | evaluations"), ExportQuery),
    responses((status = 200, description = "CSV or JSON Lines, streamed", content_type = "text/csv"),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let kind = ExportKind::parse(&path).ok_or_else(|| {
        ApiError::not_found(format!("no export is called '{path}': use annotations, images or evaluations"))
    })?;
    let format = match query.format.as_deref() {
        None => ExportFormat::Csv,
        Some(name) => ExportFormat::parse(name)
            .ok_or_else(|| ApiError::bad_request(format!("format '{name}' is not one of csv, jsonl")))?,
    };
    let store = state.store.clone();
    let cursor = web::block(move || ExportCursor::new(kind, format, store))
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
    let position = cursor.position();
    let stream = futures_util::stream::unfold(Some(cursor), |cursor| async move {
        let mut cursor = cursor?;
        let pulled = web::block(move || {
            let chunk = cursor.next_chunk();
            (chunk, cursor)
        })
        .await;
        match pulled {
            Ok((Ok(Some(chunk)), cursor)) => Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), Some(cursor))),
            Ok((Ok(None), _)) => None,
            // Mid-stream the status is sent already: abort, so the client sees a truncated body
            // rather than a short export that looks complete.
            Ok((Err(error), _)) => Some((Err(actix_web::error::ErrorServiceUnavailable(error.to_string())), None)),
            Err(error) => Some((Err(actix_web::error::ErrorServiceUnavailable(error.to_string())), None)),
        }
    });
    let extension = if format == ExportFormat::Csv { "csv" } else { "jsonl" };
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header(("Thitl-Position", position.to_string()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"thitl-{}-{position}.{extension}\"", kind.name()),
        ))
        .streaming(stream))
}
