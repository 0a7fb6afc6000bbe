//! Tokens and the role policy: who may do what, and how a token is issued and recognised.
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

use domain::{Actor, Role, TokenCommand, TokenId};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::commands::{CommandBus, CommandContext, CommandError, Outcome};

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
    /// Lease generation and fine-tune jobs, renew them, record their images, losses and
    /// adapters, complete or fail them; upload the blobs they make.
    Work,
    /// Store a blob (`POST /v1/blobs`): what operators upload, and workers' images and adapters.
    UploadBlob,
    /// Fetch a blob's bytes by its hash. Every role: a hash names content only, and annotators
    /// learn hashes only from their own tasks, so the bytes reveal no model, arm or prompt.
    FetchBlob,
}

/// The role policy. `admin` may do everything; `auditor` reads everything and changes nothing.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => true,
        Role::Curator => matches!(action, Read | Curate | Operate | UploadBlob | FetchBlob),
        Role::Operator => matches!(action, Read | Operate | UploadBlob | FetchBlob),
        Role::Annotator => matches!(action, Annotate | FetchBlob),
        Role::Auditor => matches!(action, Read | Audit | FetchBlob),
        // Reads nothing but the jobs it leases (each answer names the model versions and blobs
        // the job needs) and blobs by hash.
        Role::Worker => matches!(action, Work | UploadBlob | FetchBlob),
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

    /// Refused unless this principal's role allows `action`.
    pub fn require(&self, action: Action) -> Result<(), Forbidden> {
        if allows(self.role, action) { Ok(()) } else { Err(Forbidden { role: self.role, action }) }
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
        CommandError::Store(store::StoreError::Backend(format!("no random numbers from the operating system: {e}")))
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

/// A principal's role does not allow an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {role} role may not do this ({action:?}); ask an admin for a token with a role that may")]
pub struct Forbidden {
    pub role: Role,
    pub action: Action,
}

/// Why a bearer token does not name a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("this token is not known: check it was copied whole, or create one with `thitl token create`")]
    Unknown,
    #[error("token '{0}' has been revoked; ask an admin for a new one")]
    Revoked(String),
}

/// The principal a token's read-model entry names, if the token is known and not revoked.
pub fn principal(view: Option<projections::TokenView>) -> Result<Principal, Unauthenticated> {
    match view {
        None => Err(Unauthenticated::Unknown),
        Some(view) if view.revoked => Err(Unauthenticated::Revoked(view.name)),
        Some(view) => Ok(Principal { token_id: view.token_id, name: view.name, role: view.role }),
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
