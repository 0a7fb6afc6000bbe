//! Who may call the API: every issued token by the SHA-256 of its secret.
//!
//! The secret itself is never recorded, so this read model can be published to auditors as is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::{DomainEvent, Recorded, Role, TokenEvent, TokenId};
use serde::{Deserialize, Serialize};

use crate::Projection;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub token_id: TokenId,
    /// The principal's name: recorded as the actor of every event the token causes.
    pub name: String,
    pub role: Role,
    pub revoked: bool,
    pub issued_at: DateTime<Utc>,
    pub issued_by: String,
}

/// Issued tokens, looked up by the SHA-256 (hex) of their secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenRegistry {
    pub by_hash: BTreeMap<String, TokenView>,
    pub hash_of: BTreeMap<TokenId, String>,
}

impl TokenRegistry {
    /// The token whose secret hashes to `secret_sha256`, if any (revoked ones included).
    pub fn find(&self, secret_sha256: &str) -> Option<&TokenView> {
        self.by_hash.get(secret_sha256)
    }

    pub fn get(&self, token_id: TokenId) -> Option<&TokenView> {
        self.hash_of.get(&token_id).and_then(|hash| self.by_hash.get(hash))
    }
}

impl Projection for TokenRegistry {
    const NAME: &'static str = "token_registry";

    fn apply(&mut self, event: &Recorded) {
        let DomainEvent::Token(token_event) = &event.event else { return };
        match token_event {
            TokenEvent::TokenIssued { token_id, name, role, secret_sha256 } => {
                self.hash_of.insert(*token_id, secret_sha256.clone());
                self.by_hash.insert(
                    secret_sha256.clone(),
                    TokenView {
                        token_id: *token_id,
                        name: name.clone(),
                        role: *role,
                        revoked: false,
                        issued_at: event.metadata.recorded_at,
                        issued_by: event.metadata.actor.principal.clone(),
                    },
                );
            }
            TokenEvent::TokenRevoked { token_id, .. } => {
                if let Some(view) = self.hash_of.get(token_id).and_then(|hash| self.by_hash.get_mut(hash)) {
                    view.revoked = true;
                }
            }
        }
    }
}
