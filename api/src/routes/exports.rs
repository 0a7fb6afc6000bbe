//! `GET /v1/exports/{kind}`: annotations, images' metadata or evaluations as CSV, JSON Lines or
//! Parquet, streamed from the event log (see [`app::export`]).

use actix_web::HttpResponse;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Principal};
use crate::problem::ApiError;
use crate::state::AppState;
use app::export::{ExportCursor, ExportFormat, ExportKind};

/// What to export (an unknown name answers 404).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportKindName {
    Annotations,
    Images,
    Evaluations,
}

impl From<ExportKindName> for ExportKind {
    fn from(name: ExportKindName) -> ExportKind {
        match name {
            ExportKindName::Annotations => ExportKind::Annotations,
            ExportKindName::Images => ExportKind::Images,
            ExportKindName::Evaluations => ExportKind::Evaluations,
        }
    }
}

/// The file format: `csv` (header row), `jsonl` or its alias `ndjson` (one object per line),
/// `parquet` (typed columns: times as UTC timestamps in microseconds, rates as doubles, counts as
/// 64-bit integers, nullable columns optional).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormatName {
    Csv,
    Jsonl,
    Ndjson,
    Parquet,
}

impl From<ExportFormatName> for ExportFormat {
    fn from(name: ExportFormatName) -> ExportFormat {
        match name {
            ExportFormatName::Csv => ExportFormat::Csv,
            ExportFormatName::Jsonl | ExportFormatName::Ndjson => ExportFormat::JsonLines,
            ExportFormatName::Parquet => ExportFormat::Parquet,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default), `jsonl` (or `ndjson`) or `parquet`; another name answers 400.
    #[param(inline)]
    pub format: Option<ExportFormatName>,
}

/// A Parquet file's bytes (for the OpenAPI document: `type: string, format: binary`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ParquetBytes(#[allow(dead_code)] Vec<u8>);

/// Export `annotations`, `images` or `evaluations` (every role but annotators). The answer is
/// streamed; `Thitl-Position` says which position of the log it reflects (every event up to it,
/// none after), and every row names the position of the event it comes from. CSV has a header
/// row; JSON Lines has one object per line with the same keys; Parquet has the same columns,
/// typed.
#[utoipa::path(get, path = "/v1/exports/{kind}", tag = "exports",
    params(("kind" = inline(ExportKindName), Path, description = "annotations | images | evaluations"), ExportQuery),
    responses((status = 200, description = "the export, streamed, in the format asked for (default CSV)",
            content((String = "text/csv"), (String = "application/x-ndjson"), (inline(ParquetBytes) = "application/vnd.apache.parquet")),
            headers(("Thitl-Position" = u64, description = "the log position the export reflects: every event up to it, none after"),
                ("Content-Disposition" = String, description = "attachment; filename=\"thitl-{kind}-{position}.{csv|jsonl|parquet}\""))),
        (status = "4XX", description = "400 an unknown format or query parameter; 401; 403 annotators; 404 an unknown kind",
            body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "the event store cannot be read", body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<ExportKindName>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let kind = ExportKind::from(path.into_inner());
    let format = query.format.map_or(ExportFormat::Csv, ExportFormat::from);
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
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header(("Thitl-Position", position.to_string()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"thitl-{}-{position}.{}\"", kind.name(), format.extension()),
        ))
        .streaming(stream))
}
