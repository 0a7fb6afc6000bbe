//! The bearer-token extractor: `Authorization: Bearer <secret>` → the [`Principal`] whose role
//! the handler checks. Tokens and the role policy themselves are `app::auth`.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

pub use app::auth::{Action, allows, hash_secret, issue_token};

/// The caller of a request, once its bearer token is checked: an [`app::auth::Principal`] that
/// actix can extract (the policy's type lives in `app`, the extraction here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub app::auth::Principal);

impl std::ops::Deref for Principal {
    type Target = app::auth::Principal;
    fn deref(&self) -> &app::auth::Principal {
        &self.0
    }
}

use crate::problem::ApiError;
use crate::state::AppState;

fn unauthorized(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
}

/// The secret in an `Authorization: Bearer <secret>` header.
fn bearer_secret(header: Option<&str>) -> Result<String, ApiError> {
    let header = header.ok_or_else(|| {
        unauthorized("this endpoint needs a bearer token: send 'Authorization: Bearer <token>' (create one with `thitl token create`)")
    })?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| unauthorized("the Authorization header must read 'Bearer <token>'"))
}

fn principal(view: Option<projections::TokenView>) -> Result<Principal, ApiError> {
    app::auth::principal(view).map(Principal).map_err(|e| unauthorized(e.to_string()))
}

impl From<app::auth::Forbidden> for ApiError {
    fn from(forbidden: app::auth::Forbidden) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", forbidden.to_string())
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Principal, ApiError>>;

    /// Looks the secret's hash up in the token read model. A miss catches the read model up
    /// once (off the async workers), so a token issued a moment ago by `thitl token create` in
    /// another process works at once.
    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header =
            request.headers().get(actix_web::http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("").to_string());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::unavailable("the server has no application state"))?;
            let hash = hash_secret(&bearer_secret(header.as_deref())?);
            if let Some(view) = state.projections.read(|p| p.tokens.find(&hash).cloned()) {
                return principal(Some(view));
            }
            let runner = state.projections.clone();
            let view = web::block(move || runner.catch_up().map(|_| runner.read(|p| p.tokens.find(&hash).cloned())))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?
                .map_err(|e| ApiError::unavailable(format!("read models: {e}")))?;
            principal(view)
        })
    }
}
