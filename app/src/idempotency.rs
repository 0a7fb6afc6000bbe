//! `Idempotency-Key`: a client that retries a POST (after a timeout, a lost connection) with the
//! same key gets the first answer, and nothing is appended twice.
//!
//! Keys live in a small SQLite file beside the event store (`DIR/idempotency.db`), scoped per
//! principal (token id). A key is written *in progress* before the command runs and *completed*
//! with the response after, in separate transactions. A crash between the two leaves the key in
//! progress for good: a replay then answers 409 rather than running the command again, because
//! the server cannot know whether the first attempt's events were appended. A command that
//! fails (validation, a conflict) appends nothing, so its key is released and may be reused.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct IdempotencyError(String);

impl From<rusqlite::Error> for IdempotencyError {
    fn from(error: rusqlite::Error) -> Self {
        IdempotencyError(error.to_string())
    }
}

/// What to do with a request that carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First time: run the command, then [`IdempotencyStore::complete`] or [`IdempotencyStore::release`].
    Fresh,
    /// Answered before: send this again.
    Replay { status: u16, body: String },
    /// The key was used for a different request (another body, path or If-Match).
    Mismatch,
    /// The first request with this key has not finished (or the server stopped while running it).
    InProgress,
}

pub struct IdempotencyStore {
    connection: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal   TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('in_progress', 'completed')),
    status      INTEGER,
    body        TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (principal, key)
);";

impl IdempotencyStore {
    pub fn open(path: &Path) -> Result<Self, IdempotencyError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        Self::with(connection)
    }

    /// A store that forgets on exit (tests, or a server without a data directory).
    pub fn in_memory() -> Result<Self, IdempotencyError> {
        Self::with(Connection::open_in_memory()?)
    }

    fn with(connection: Connection) -> Result<Self, IdempotencyError> {
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(IdempotencyStore { connection: Mutex::new(connection) })
    }

    /// Claims `key` for `principal` unless it is known; says what to do.
    pub fn begin(&self, principal: &str, key: &str, fingerprint: &str) -> Result<Begin, IdempotencyError> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let existing: Option<(String, String, Option<u16>, Option<String>)> = connection
            .query_row(
                "SELECT fingerprint, state, status, body FROM idempotency_keys WHERE principal = ?1 AND key = ?2",
                params![principal, key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        Ok(match existing {
            Some((stored, _, _, _)) if stored != fingerprint => Begin::Mismatch,
            Some((_, state, Some(status), Some(body))) if state == "completed" => Begin::Replay { status, body },
            Some(_) => Begin::InProgress,
            None => {
                connection.execute(
                    "INSERT INTO idempotency_keys (principal, key, fingerprint, state, created_at) VALUES (?1, ?2, ?3, 'in_progress', ?4)",
                    params![principal, key, fingerprint, chrono::Utc::now().to_rfc3339()],
                )?;
                Begin::Fresh
            }
        })
    }

    /// Records the answer to send on every replay.
    pub fn complete(&self, principal: &str, key: &str, status: u16, body: &str) -> Result<(), IdempotencyError> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection.execute(
            "UPDATE idempotency_keys SET state = 'completed', status = ?3, body = ?4 WHERE principal = ?1 AND key = ?2",
            params![principal, key, status, body],
        )?;
        Ok(())
    }

    /// Forgets a key whose command failed without appending anything.
    pub fn release(&self, principal: &str, key: &str) -> Result<(), IdempotencyError> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection.execute(
            "DELETE FROM idempotency_keys WHERE principal = ?1 AND key = ?2 AND state = 'in_progress'",
            params![principal, key],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_once_then_replays_and_refuses_other_bodies() {
        let store = IdempotencyStore::in_memory().unwrap();
        assert_eq!(store.begin("ann", "k1", "f1").unwrap(), Begin::Fresh);
        assert_eq!(store.begin("ann", "k1", "f1").unwrap(), Begin::InProgress);
        store.complete("ann", "k1", 201, "{}").unwrap();
        assert_eq!(store.begin("ann", "k1", "f1").unwrap(), Begin::Replay { status: 201, body: "{}".into() });
        assert_eq!(store.begin("ann", "k1", "f2").unwrap(), Begin::Mismatch);
        // Keys are per principal.
        assert_eq!(store.begin("bob", "k1", "f2").unwrap(), Begin::Fresh);
        store.release("bob", "k1").unwrap();
        assert_eq!(store.begin("bob", "k1", "f3").unwrap(), Begin::Fresh);
    }

    #[test]
    fn a_key_left_in_progress_by_a_crash_is_never_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idempotency.db");
        assert_eq!(IdempotencyStore::open(&path).unwrap().begin("ann", "k", "f").unwrap(), Begin::Fresh);
        // The process dies here; a new one opens the same file.
        assert_eq!(IdempotencyStore::open(&path).unwrap().begin("ann", "k", "f").unwrap(), Begin::InProgress);
    }
}
