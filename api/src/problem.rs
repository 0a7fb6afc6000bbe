//! RFC 7807 problem details: every error answer says what went wrong in words a person can act on.
//!
//! Handlers return [`ApiError`]; whatever else fails before a handler runs (an unknown route, a
//! wrong method, a path that does not parse, an oversized body) is rewritten into the same
//! `application/problem+json` shape by [`problem_json_everywhere`], so no client ever sees a
//! plain-text error.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use domain::{DomainError, ErrorKind};
use serde::Serialize;

use app::commands::CommandError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The title of a 409 refusing a worker's record because it no longer holds the job's lease.
pub const LEASE_LOST: &str = "Lease lost";

/// The title of a 409 refusing a request whose `Idempotency-Key` belongs to a request that has not
/// finished (or was cut off by a server stop).
pub const KEY_IN_USE: &str = "Idempotency key in use";

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, title, detail: detail.into() }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable content", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", detail)
    }

    /// A blocking task that could not run (the thread pool is gone: the server is stopping).
    pub fn blocking(error: actix_web::error::BlockingError) -> Self {
        Self::unavailable(format!("the server is shutting down: {error}"))
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let detail = error.to_string();
        if matches!(error, DomainError::NotLeaseHolder { .. }) {
            // A worker tells this refusal apart: the job is no longer its to work.
            return ApiError::new(StatusCode::CONFLICT, LEASE_LOST, detail);
        }
        match error.kind() {
            ErrorKind::Invalid => ApiError::unprocessable(detail),
            ErrorKind::NotFound => ApiError::not_found(detail),
            ErrorKind::Conflict => ApiError::conflict(detail),
            ErrorKind::Forbidden => ApiError::forbidden(detail),
        }
    }
}

impl From<app::jobs::JobError> for ApiError {
    fn from(error: app::jobs::JobError) -> Self {
        match error {
            app::jobs::JobError::Command(error) => error.into(),
            unknown => ApiError::unprocessable(unknown.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Domain(error) => error.into(),
            CommandError::Conflict { .. } => ApiError::conflict(error.to_string()),
            CommandError::Store(store::StoreError::InvalidStreamName(name)) => {
                ApiError::not_found(format!("no entity is stored under '{name}'"))
            }
            CommandError::Store(error) => ApiError::unavailable(format!("event store: {error}")),
            CommandError::Decode(error) => ApiError::unavailable(format!("stored history cannot be read: {error}")),
        }
    }
}

fn problem_body(status: StatusCode, title: &str, detail: &str) -> Problem {
    let slug = title.to_lowercase().replace(' ', "-");
    Problem {
        kind: format!("https://thitl.dev/problems/{slug}"),
        title: title.to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.content_type(PROBLEM_JSON);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"thitl\""));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        response.json(problem_body(self.status, self.title, &self.detail))
    }
}

/// 405 for a method a route does not take, with `Allow` listing the methods it does (RFC 9110).
pub fn method_not_allowed(allow: &str) -> HttpResponse {
    let detail = format!("this route takes {allow} only: see /openapi.json or /docs");
    HttpResponse::MethodNotAllowed()
        .content_type(PROBLEM_JSON)
        .insert_header((header::ALLOW, allow.to_string()))
        .json(problem_body(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", &detail))
}

/// Rewrites any error answer that is not problem+json yet (actix's own: 404 for an unknown
/// route, 405, 413, a path or query that does not parse) into problem+json, keeping its status
/// and, where actix said why, its reason.
pub fn problem_json_everywhere<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem || !(response.status().is_client_error() || response.status().is_server_error()) {
        return Ok(ErrorHandlerResponse::Response(response.map_into_left_body()));
    }
    let status = response.status();
    let reason = response.response().error().map(|e| e.to_string()).filter(|s| !s.is_empty());
    let (title, detail) = match status {
        StatusCode::NOT_FOUND => ("Not found", "no such route: see /openapi.json or /docs for the API".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("Method not allowed", "this route does not take that method: see /docs".to_string())
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            "Payload too large",
            "the request body is larger than the server accepts (THITL_BODY_LIMIT); send a smaller one".to_string(),
        ),
        s if s.is_server_error() => {
            ("Internal error", "the server failed to answer; the request changed nothing".to_string())
        }
        _ => ("Bad request", reason.clone().unwrap_or_else(|| "the request could not be read".to_string())),
    };
    let detail = match (status, reason) {
        (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _) | (_, None) => detail,
        (s, Some(reason)) if s == StatusCode::BAD_REQUEST => reason,
        (_, Some(reason)) => format!("{detail} ({reason})"),
    };
    let body = serde_json::to_string(&problem_body(status, title, &detail)).unwrap_or_default();
    let (request, mut old) = response.into_parts();
    old.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    old.headers_mut().remove(header::CONTENT_LENGTH);
    let new = old.set_body(body).map_into_boxed_body();
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(request, new).map_into_right_body()))
}
