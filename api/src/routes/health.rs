use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::routes::problem::ApiError;
use crate::startup::AppState;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The store answers and the read models have caught up with it.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let head = web::block(move || store.head_position())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
    let position = state.projections.position();
    if position < head {
        return Err(ApiError::unavailable(format!("projections at position {position}, store at {head}: catching up")));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "position": position})))
}
