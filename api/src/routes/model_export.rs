//! `GET /v1/model-versions/{id}/export`: a fine-tuned version of an imported Stable Diffusion
//! pipeline in the formats other tools load (see `app::sd::export`), as one safetensors file.

use actix_web::{HttpResponse, web};
use domain::ModelVersionId;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Action, Principal};
use crate::problem::ApiError;
use crate::routes::support::parse_id;
use crate::state::AppState;
use app::sd::export::{ExportError, ExportFormat};

/// The export's format.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdapterFormatName {
    Peft,
    Kohya,
    Merged,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdapterExportQuery {
    /// `peft` (default: `pytorch_lora_weights.safetensors`, for diffusers' `load_lora_weights`),
    /// `kohya` (`lora_kohya.safetensors`, for ComfyUI/A1111) or `merged` (the base UNet's weights
    /// with the adapter added, f32: `unet/diffusion_pytorch_model.safetensors`, beside the base
    /// model's `unet/config.json`).
    #[param(inline)]
    pub format: Option<AdapterFormatName>,
}

/// A safetensors file's bytes (for the OpenAPI document: `type: string, format: binary`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct SafetensorsBytes(#[allow(dead_code)] Vec<u8>);

/// A fine-tuned version of an imported Stable Diffusion pipeline (a campaign's T-HITL or
/// traditional version) as a safetensors file other tools load. Every role but annotators.
#[utoipa::path(get, path = "/v1/model-versions/{id}/export", tag = "model versions",
    params(("id" = String, Path), AdapterExportQuery),
    responses((status = 200, description = "the file",
            content((inline(SafetensorsBytes) = "application/octet-stream")),
            headers(("Content-Disposition" = String, description = "attachment; filename=\"{file name}\""))),
        (status = "4XX", description = "400 an unknown format or a malformed id; 401; 403 annotators; 404 no such version; 422 a base version, or a fine-tune of the reference world's model",
            body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "the event store or a blob cannot be read", body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export_version(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<AdapterExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: ModelVersionId = parse_id("model version", &path)?;
    let format = match query.format.unwrap_or(AdapterFormatName::Peft) {
        AdapterFormatName::Peft => ExportFormat::Peft,
        AdapterFormatName::Kohya => ExportFormat::Kohya,
        AdapterFormatName::Merged => ExportFormat::Merged,
    };
    let (bus, blobs) = (state.bus.clone(), state.blobs.clone());
    let files = web::block(move || app::sd::export::export_version(&bus, blobs.as_ref(), id, format))
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| match e {
            ExportError::NotFound(id) => ApiError::not_found(format!("no model version has id {id}")),
            ExportError::Invalid(message) => ApiError::unprocessable(message),
            ExportError::Command(e) => e.into(),
            ExportError::Blob(message) => ApiError::unavailable(message),
        })?;
    let file = files
        .into_iter()
        .find(|f| f.path.ends_with(".safetensors"))
        .ok_or_else(|| ApiError::unavailable("the export holds no safetensors file"))?;
    let name = file.path.rsplit('/').next().unwrap_or("export.safetensors").to_string();
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{name}\"")))
        .body(file.bytes))
}
