//! Access tokens. Issuing and revoking one is an event; only the SHA-256 of the secret is kept,
//! so the log never holds a usable credential.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, EventPayload};
use crate::error::DomainError;
use crate::ids::TokenId;
use crate::metadata::Role;
use crate::values::{Name, Sentence};

#[derive(Debug, Clone)]
pub enum TokenCommand {
    Issue { token_id: TokenId, name: String, role: Role, secret_sha256: String },
    Revoke { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokenEvent {
    TokenIssued { token_id: TokenId, name: String, role: Role, secret_sha256: String },
    TokenRevoked { token_id: TokenId, reason: String },
}

impl EventPayload for TokenEvent {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Token {
    pub id: Option<TokenId>,
    pub name: String,
    pub role: Option<Role>,
    pub revoked: bool,
}

impl Aggregate for Token {
    type Command = TokenCommand;
    type Event = TokenEvent;
    const ENTITY: &'static str = "token";

    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn decide(&self, command: TokenCommand) -> Result<Vec<TokenEvent>, DomainError> {
        match command {
            TokenCommand::Issue { token_id, name, role, secret_sha256 } => {
                if self.exists() {
                    return Err(DomainError::AlreadyExists { entity: "token", id: token_id.to_string() });
                }
                if role == Role::System {
                    return Err(DomainError::invalid("role", "is reserved for thitl itself"));
                }
                let name = Name::parse("name", &name)?;
                let valid_hash = secret_sha256.len() == 64 && secret_sha256.bytes().all(|b| b.is_ascii_hexdigit());
                if !valid_hash {
                    return Err(DomainError::invalid("secret_sha256", "must be a SHA-256 in hex"));
                }
                Ok(vec![TokenEvent::TokenIssued { token_id, name: name.into(), role, secret_sha256 }])
            }
            TokenCommand::Revoke { reason } => {
                let token_id = self.id.ok_or(DomainError::NotFound { entity: "token", id: "(not issued)".into() })?;
                if self.revoked {
                    return Err(DomainError::WrongState {
                        entity: "token",
                        state: "revoked".into(),
                        action: "revoking",
                    });
                }
                let reason = Sentence::parse("reason", &reason)?;
                Ok(vec![TokenEvent::TokenRevoked { token_id, reason: reason.into() }])
            }
        }
    }

    fn evolve(&mut self, event: &TokenEvent) {
        match event {
            TokenEvent::TokenIssued { token_id, name, role, .. } => {
                self.id = Some(*token_id);
                self.name = name.clone();
                self.role = Some(*role);
            }
            TokenEvent::TokenRevoked { .. } => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApplyAll, then_error};
    use uuid::Uuid;

    fn issue(role: Role) -> TokenCommand {
        TokenCommand::Issue {
            token_id: TokenId(Uuid::from_u128(1)),
            name: "ann".into(),
            role,
            secret_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn tokens_are_issued_for_people_and_revoked_once() {
        then_error(Token::default().decide(issue(Role::System)), |e| {
            matches!(e, DomainError::Invalid { field: "role", .. })
        });
        let (token, _) = Token::default().then(issue(Role::Annotator));
        then_error(token.decide(issue(Role::Annotator)), |e| matches!(e, DomainError::AlreadyExists { .. }));
        let (token, _) = token.then(TokenCommand::Revoke { reason: "left the team".into() });
        assert!(token.revoked);
        then_error(token.decide(TokenCommand::Revoke { reason: "again".into() }), |e| {
            matches!(e, DomainError::WrongState { .. })
        });
        let bad = TokenCommand::Issue {
            token_id: TokenId(Uuid::from_u128(2)),
            name: "x".into(),
            role: Role::Auditor,
            secret_sha256: "zz".into(),
        };
        then_error(Token::default().decide(bad), |e| matches!(e, DomainError::Invalid { field: "secret_sha256", .. }));
    }
}
