//! A data directory: the event store, the projections' checkpoint and the blob store.
//!
//! ```text
//! DIR/events.db          SQLite event store (WAL: events.db-wal, events.db-shm beside it)
//! DIR/projections.json   the read models' checkpoint (rebuildable: safe to delete)
//! DIR/blobs/             content-addressed images and weights
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{EventStore, SqliteStore, StoreError};

pub struct DataDir {
    pub root: PathBuf,
    pub store: Arc<dyn EventStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("{path} has no event store (events.db); pass the --data directory that `thitl serve` or `thitl demo` wrote")]
    Missing { path: String },
    #[error("cannot open the event store in {path}: {source}")]
    Store { path: String, source: StoreError },
}

impl DataDir {
    pub fn events_path(root: &Path) -> PathBuf {
        root.join("events.db")
    }

    /// Opens `root`, creating it and an empty store if needed.
    pub fn open_or_create(root: &Path) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(root.join("blobs"))
            .map_err(|source| DataDirError::Create { path: root.display().to_string(), source })?;
        Self::open_store(root)
    }

    /// Opens an existing data directory; an error if it holds no store (a mistyped path must
    /// not silently create an empty one, e.g. for `audit verify`).
    pub fn open_existing(root: &Path) -> Result<Self, DataDirError> {
        if !Self::events_path(root).is_file() {
            return Err(DataDirError::Missing { path: root.display().to_string() });
        }
        Self::open_store(root)
    }

    fn open_store(root: &Path) -> Result<Self, DataDirError> {
        let store = SqliteStore::open(Self::events_path(root))
            .map_err(|source| DataDirError::Store { path: root.display().to_string(), source })?;
        Ok(DataDir { root: root.to_path_buf(), store: Arc::new(store) })
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.root.join("projections.json")
    }
}
