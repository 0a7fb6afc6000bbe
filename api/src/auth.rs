//! Bearer tokens and roles.
//!
//! A token is a random secret (`thitl_` + 64 hex digits, 256 bits from the operating system's
//! generator). It is shown once, when issued; the event log keeps only its SHA-256 (the `Token`
//! aggregate's `TokenIssued` event), so neither the log nor a backup holds a usable credential.
//! A request names its token in `Authorization: Bearer <secret>`; the server hashes the secret
//! and looks the hash up in the token read model.
//!
//! A key design decision: what a role may do is one table ([`Role`] × [`Action`], in
//! [`allows`]), and every handler names the one action it performs, so the table-driven test
//! over routes × roles checks the whole policy.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use domain::{Actor, Role, TokenCommand, TokenId};
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::commands::{CommandBus, CommandContext, CommandError, Outcome};
use crate::routes::problem::ApiError;
use crate::startup::AppState;

/// What a request does, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read associations, taxonomy, rounds' progress, model versions, jobs, campaigns.
    Read,
    /// Register and change associations, the taxonomy, prompt sets, rounds, campaigns; promote models.
    Curate,
    /// Request generation and fine-tune jobs; register base models.
    Operate,
    /// Ask for one's next task and submit or withdraw one's own annotations.
    Annotate,
    /// Read the event log, stream histories, verify chains, follow the live feed.
    Audit,
    /// Issue and revoke tokens.
    Administer,
    /// Fetch a blob's bytes by its hash. Every role: a hash names content only, and annotators
    /// learn hashes only from their own tasks, so the bytes reveal no model, arm or prompt.
    FetchBlob,
}

/// The role policy. `admin` may do everything; `auditor` reads everything and changes nothing.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => true,
        Role::Curator => matches!(action, Read | Curate | Operate | FetchBlob),
        Role::Operator => matches!(action, Read | Operate | FetchBlob),
        Role::Annotator => matches!(action, Annotate | FetchBlob),
        Role::Auditor => matches!(action, Read | Audit | FetchBlob),
        // The system role is thitl itself; no token can carry it (the Token aggregate refuses).
        Role::System => false,
    }
}

/// The caller, once its bearer token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: TokenId,
    /// The token's name; the actor recorded in every event this caller causes.
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor::new(self.name.clone(), self.role)
    }

    pub fn context(&self) -> CommandContext {
        CommandContext::new(self.actor())
    }

    /// 403 unless this principal's role allows `action`.
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if allows(self.role, action) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "the {} role may not do this ({action:?}); ask an admin for a token with a role that may",
                    self.role
                ),
            ))
        }
    }
}

/// A fresh secret: `thitl_` followed by 64 hex digits (256 random bits).
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("thitl_{}", hex::encode(bytes)))
}

/// The SHA-256 of a secret, in hex: what the log and the read model keep.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// An issued token: the secret is here and nowhere else.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token_id: TokenId,
    pub secret: String,
    pub outcome: Outcome,
}

/// Issues a token (a `TokenIssued` event in stream `token-<id>`), returning its secret once.
pub fn issue_token(
    bus: &CommandBus,
    context: &CommandContext,
    name: &str,
    role: Role,
) -> Result<IssuedToken, CommandError> {
    let secret = generate_secret().map_err(|e| {
        CommandError::Store(crate::store::StoreError::Backend(format!(
            "no random numbers from the operating system: {e}"
        )))
    })?;
    let token_id = TokenId(Uuid::now_v7());
    let outcome = bus.execute::<domain::Token>(
        &token_id.stream(),
        Some(0),
        context,
        TokenCommand::Issue { token_id, name: name.to_string(), role, secret_sha256: hash_secret(&secret) },
    )?;
    Ok(IssuedToken { token_id, secret, outcome })
}

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
    match view {
        None => Err(unauthorized(
            "this token is not known: check it was copied whole, or create one with `thitl token create`",
        )),
        Some(view) if view.revoked => {
            Err(unauthorized(format!("token '{}' has been revoked; ask an admin for a new one", view.name)))
        }
        Some(view) => Ok(Principal { token_id: view.token_id, name: view.name, role: view.role }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_only_their_hash_is_kept() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "thitl_".len() + 64);
        let hash = hash_secret(&a);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a[6..]));
    }

    #[test]
    fn admin_does_everything_auditor_changes_nothing_annotator_only_annotates() {
        use Action::*;
        let all = [Read, Curate, Operate, Annotate, Audit, Administer, FetchBlob];
        assert!(all.iter().all(|a| allows(Role::Admin, *a)));
        assert_eq!(
            all.iter().filter(|a| allows(Role::Auditor, **a)).copied().collect::<Vec<_>>(),
            [Read, Audit, FetchBlob]
        );
        // Annotators never read metadata (Read): image metadata names the model and the prompt.
        assert_eq!(
            all.iter().filter(|a| allows(Role::Annotator, **a)).copied().collect::<Vec<_>>(),
            [Annotate, FetchBlob]
        );
        assert!(all.iter().all(|a| !allows(Role::System, *a)));
    }
}
