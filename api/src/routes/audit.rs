use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::audit::event_json;
use crate::routes::problem::ApiError;
use crate::startup::AppState;
use crate::store::verify as verify_chains;

pub const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /v1/audit/events?after=POS&limit=N`: the global log, oldest first.
pub async fn events(state: web::Data<AppState>, query: web::Query<EventsQuery>) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let store = state.store.clone();
    let after = query.after;
    let (events, head) = web::block(move || Ok::<_, crate::store::StoreError>((store.read_all(after, limit)?, store.head_position()?)))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("event store: {e}")))?;
    let position = events.last().map_or(after.min(head), |e| e.position);
    Ok(HttpResponse::Ok().json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "position": position,
        "head": head,
    })))
}

/// `GET /v1/audit/verify`: recomputes every hash chain.
pub async fn verify(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let result = web::block(move || verify_chains(store.as_ref())).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(match result {
        Ok(report) => HttpResponse::Ok().json(json!({"ok": true, "events": report.events, "streams": report.streams, "summary": report.to_string()})),
        Err(failure) => HttpResponse::Ok().json(json!({
            "ok": false,
            "stream": failure.stream().map(|s| s.to_string()),
            "failure": failure.to_string(),
        })),
    })
}
