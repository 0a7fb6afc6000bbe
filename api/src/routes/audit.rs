//! `/v1/audit`: the global log with filters, one stream's history, chain verification and a live
//! Server-Sent-Events feed (auditor).

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{HttpResponse, http::header};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::support::{optional_position, position};
use crate::state::AppState;
use app::audit::event_json;
use store::{StoredEvent, StreamName, verify as verify_chains};

pub const MAX_LIMIT: usize = 1000;
/// A filtered read scans at most this many events per request, then says where it stopped.
const SCAN_BUDGET: usize = 20_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this global position (0: from the start).
    #[serde(default, deserialize_with = "position")]
    after: u64,
    /// At most this many events (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only this stream, e.g. `association-0190…`.
    stream: Option<String>,
    /// Only this event type, e.g. `AnnotationSubmitted`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events whose actor is this principal.
    actor: Option<String>,
    /// Only events recorded at or after this RFC 3339 time.
    #[serde(default, deserialize_with = "optional_time")]
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<DateTime<Utc>>,
    /// Only events recorded before this RFC 3339 time.
    #[serde(default, deserialize_with = "optional_time")]
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
}

/// An RFC 3339 time from the query string. An empty `since=` is refused with words that say
/// so: it is most often an unset variable in a client's URL, and reading it as "no bound" would
/// answer the whole log to a request that meant to filter it.
fn optional_time<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "a time filter is empty: give an RFC 3339 time (2026-01-31T12:00:00Z) or leave the parameter out",
        ));
    }
    DateTime::parse_from_rfc3339(text.trim())
        .map(|time| Some(time.with_timezone(&Utc)))
        .map_err(|e| serde::de::Error::custom(format!("'{text}' is not an RFC 3339 time ({e})")))
}

impl EventsQuery {
    fn matches(&self, event: &StoredEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| s == event.stream.as_str())
            && self.event_type.as_ref().is_none_or(|t| *t == event.event_type)
            && self.actor.as_ref().is_none_or(|a| *a == event.metadata.actor.principal)
            && self.since.is_none_or(|t| event.metadata.recorded_at >= t)
            && self.until.is_none_or(|t| event.metadata.recorded_at < t)
    }
}

fn store_error(error: store::StoreError) -> ApiError {
    ApiError::unavailable(format!("event store: {error}"))
}

/// The global log, oldest first, with optional filters. `position` is where the answer stops:
/// pass it as `after` for the next page (with filters it may lie past the last event shown).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventsQuery),
    responses((status = 200, description = "`{\"events\": [...], \"position\": P, \"head\": H}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Audit)?;
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let store = state.store.clone();
    let (events, position, head) = web::block(move || {
        let head = store.head_position().map_err(store_error)?;
        let mut found = Vec::new();
        let mut position = query.after.min(head);
        let mut scanned = 0;
        while found.len() < limit && scanned < SCAN_BUDGET {
            let batch = store.read_all(position, 1000).map_err(store_error)?;
            if batch.is_empty() {
                break;
            }
            for event in batch {
                scanned += 1;
                position = event.position;
                if query.matches(&event) {
                    found.push(event_json(&event));
                    if found.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok::<_, ApiError>((found, position, head))
    })
    .await
    .map_err(ApiError::blocking)??;
    Ok(HttpResponse::Ok().json(json!({ "events": events, "position": position, "head": head })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// From this stream version (1-based, default 1).
    #[serde(default, deserialize_with = "optional_position")]
    from_version: Option<u64>,
    /// At most this many events (1 to 1000, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// One stream's history, in version order, with each event's chain link.
#[utoipa::path(get, path = "/v1/audit/streams/{stream}", tag = "audit", params(("stream" = String, Path), HistoryQuery),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn stream_history(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Audit)?;
    let name = StreamName::new(path.into_inner()).map_err(|e| ApiError::not_found(e.to_string()))?;
    let limit = query.limit.unwrap_or(MAX_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let from = query.from_version.unwrap_or(1);
    let store = state.store.clone();
    let (events, version, head) = web::block(move || {
        let head = store.head_position().map_err(store_error)?;
        let version = store.stream_version(&name).map_err(store_error)?;
        let events = store.read_stream(&name, from, limit).map_err(store_error)?;
        Ok::<_, ApiError>((events, version, head))
    })
    .await
    .map_err(ApiError::blocking)??;
    if version == 0 {
        return Err(ApiError::not_found("no events are recorded in this stream"));
    }
    Ok(HttpResponse::Ok().json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "version": version,
        "position": head,
    })))
}

/// Recomputes every hash chain (auditor).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "`{\"ok\": true, \"events\", \"streams\"}` or `{\"ok\": false, \"stream\", \"failure\"}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn verify(state: web::Data<AppState>, principal: Principal) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Audit)?;
    let store = state.store.clone();
    let result = web::block(move || verify_chains(store.as_ref())).await.map_err(ApiError::blocking)?;
    Ok(match result {
        Ok(report) => HttpResponse::Ok().json(
            json!({"ok": true, "events": report.events, "streams": report.streams, "summary": report.to_string()}),
        ),
        Err(failure) => HttpResponse::Ok().json(json!({
            "ok": false,
            "stream": failure.stream().map(|s| s.to_string()),
            "failure": failure.to_string(),
        })),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Start after this position (default: the log's end, i.e. only new events).
    #[serde(default, deserialize_with = "optional_position")]
    after: Option<u64>,
}

/// One Server-Sent Event of the audit feed, as its fields (the OpenAPI 3.2 reading of
/// `text/event-stream`: the schema describes each event; comments carry no event).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used: the feed writes the fields as text.
pub struct FeedEvent {
    /// Always `recorded`.
    #[schema(pattern = "^recorded$")]
    event: String,
    /// The event's global position: send it back as `Last-Event-ID` (or `?after=`) to resume.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// The event as `GET /v1/audit/events` shows it, as one line of JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// A live Server-Sent-Events feed: one `event: recorded` per event (`id:` is its position, so a
/// reconnecting client resumes with `Last-Event-ID`), and a comment every 15 s to keep it open.
#[utoipa::path(get, path = "/v1/audit/feed", tag = "audit", params(FeedQuery),
    responses((status = 200, description = "an endless `text/event-stream`, one event per recorded event", content_type = "text/event-stream", body = FeedEvent),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn feed(
    state: web::Data<AppState>,
    principal: Principal,
    request: actix_web::HttpRequest,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Audit)?;
    let last_event_id =
        request.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let store = state.store.clone();
    let start = match query.after.or(last_event_id) {
        Some(after) => after,
        None => {
            let store = store.clone();
            web::block(move || store.head_position()).await.map_err(ApiError::blocking)?.map_err(store_error)?
        }
    };
    let stream = futures_util::stream::unfold((store, start, true), |(store, position, first)| async move {
        if first {
            let hello = format!(": thitl audit feed from position {position}\n\n");
            return Some((Ok::<_, actix_web::Error>(Bytes::from(hello)), (store, position, false)));
        }
        let reader = store.clone();
        let read = web::block(move || {
            reader.wait_for_position_after(position, Duration::from_secs(15))?;
            reader.read_all(position, 100)
        })
        .await;
        match read {
            Ok(Ok(events)) if !events.is_empty() => {
                let mut text = String::new();
                let mut last = position;
                for event in &events {
                    last = event.position;
                    text.push_str(&format!("id: {}\nevent: recorded\ndata: {}\n\n", event.position, event_json(event)));
                }
                Some((Ok(Bytes::from(text)), (store, last, false)))
            }
            Ok(Ok(_)) => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (store, position, false))),
            // The store failed or the server is stopping: end the feed; the client reconnects.
            _ => None,
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(stream))
}
