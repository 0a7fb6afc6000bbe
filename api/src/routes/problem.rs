//! RFC 7807 problem details: every error answer says what went wrong in words a person can act on.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
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
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, title: "Bad request", detail: detail.into() }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, title: "Unavailable", detail: detail.into() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let slug = self.title.to_lowercase().replace(' ', "-");
        HttpResponse::build(self.status).content_type("application/problem+json").json(Problem {
            kind: format!("https://thitl.dev/problems/{slug}"),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        })
    }
}
