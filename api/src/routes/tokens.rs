//! `/v1/tokens`: issue and revoke bearer tokens (admin). Issuing and revoking are events.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use domain::{Role, TokenCommand, TokenId};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Action, Principal, issue_token};
use crate::problem::{ApiError, Problem};
use crate::routes::associations::Reason;
use crate::routes::support::{CommandAnswer, Done, named, parse_id, query_answer, run_command};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The principal's name, recorded as the actor of its events (an annotator's name is how
    /// rounds tell annotators apart).
    #[schema(value_type = domain::values::Name)]
    pub name: String,
    /// `admin`, `curator`, `annotator`, `operator` or `auditor`.
    #[schema(value_type = String)]
    pub role: Role,
}

/// Issue a token; the answer's `token` is shown this once and never stored (admin).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    params(("Idempotency-Key" = Option<String>, Header, description = "a replay returns the same secret")),
    responses((status = 201, description = "`token` (the secret), `id`, `name`, `role`", body = CommandAnswer),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(
        state,
        principal,
        request,
        body,
        Action::Administer,
        true,
        |bus, context, _expected, input: CreateToken| {
            let issued = issue_token(bus, context, &input.name, input.role)?;
            Ok(Done::new(issued.outcome)
                .with("id", issued.token_id)
                .with("token", issued.secret)
                .with("name", input.name.trim())
                .with("role", input.role))
        },
    )
    .await
}

/// Revoke a token: it answers 401 from now on (admin).
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens", request_body = Reason,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn revoke(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: TokenId = parse_id("token", &path)?;
    let runner = state.projections.clone();
    let answer = run_command(
        state,
        principal,
        request,
        body,
        Action::Administer,
        false,
        move |bus, context, expected, input: Reason| {
            let outcome = bus
                .execute::<domain::Token>(
                    &id.stream(),
                    expected,
                    context,
                    TokenCommand::Revoke { reason: input.reason },
                )
                .map_err(|e| named(e, "token", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await?;
    // A revocation takes effect before the answer: no request with the token passes after it.
    web::block(move || runner.catch_up())
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| ApiError::unavailable(format!("read models: {e}")))?;
    Ok(answer)
}

/// Every token's name, role and state; never a secret or its hash (admin, auditor).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(state: web::Data<AppState>, principal: Principal) -> Result<HttpResponse, ApiError> {
    if !(crate::auth::allows(principal.role, Action::Administer) || crate::auth::allows(principal.role, Action::Audit))
    {
        principal.require(Action::Administer)?;
    }
    let (tokens, position) = state.projections.read(|p| {
        let mut tokens: Vec<_> = p.tokens.by_hash.values().cloned().collect();
        tokens.sort_by_key(|t| t.token_id);
        (tokens, p.position)
    });
    Ok(query_answer(json!({ "tokens": tokens }), position, None))
}
