use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::problem::ApiError;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The store answers and the read models have caught up with it.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Object), (status = 503, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let head = web::block(move || store.head_position())
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
    let position = state.projections.position();
    if position < head {
        return Err(ApiError::unavailable(format!("projections at position {position}, store at {head}: catching up")));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "position": position})))
}

/// Prometheus metrics: request counts and latencies by route, events appended, projection lag.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let head = web::block(move || store.head_position())
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
    let text = state.metrics.render(head, state.projections.position());
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text))
}
