//! A data directory: the event store, the projections' checkpoint and the blob store.
//!
//! ```text
//! DIR/events.db          SQLite event store (WAL: events.db-wal, events.db-shm beside it)
//! DIR/projections.json   the read models' checkpoint (rebuildable: safe to delete)
//! DIR/blobs/             content-addressed images and weights
//! DIR/idempotency.db     `Idempotency-Key` records of the HTTP API
//! ```
//!
//! This module is the one place that knows the layout: the CLI, the server and the demo ask it.
//!
//! The events may live elsewhere ([`StoreLocation`]): `--store sqlite:DIR2` (another directory's
//! `events.db`) or `--store esdb://host:2113?tls=false` (an EventStoreDB/KurrentDB cluster). The
//! data directory then still holds the blobs, the checkpoint and the idempotency records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "esdb")]
use store::EsdbStore;
use store::{EventStore, SqliteStore, StoreError};

use crate::blobs::{BlobError, LocalBlobStore};

/// Where a data directory's events are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `DIR/events.db`.
    Sqlite(PathBuf),
    /// An EventStoreDB/KurrentDB connection string (`esdb://…`, `kurrentdb://…`, `+discover`).
    Esdb(String),
}

impl StoreLocation {
    /// `sqlite:DIR`, a bare `DIR`, or an EventStoreDB URL (checked here, connected later).
    pub fn parse(text: &str) -> Result<StoreLocation, String> {
        let scheme = text
            .split_once("://")
            .map(|(scheme, _)| scheme)
            .or_else(|| text.split_once(':').map(|(scheme, _)| scheme).filter(|s| s.len() > 1 && !s.contains('/')));
        match scheme {
            None => Ok(StoreLocation::Sqlite(PathBuf::from(text))),
            Some("sqlite") => {
                let dir = text.trim_start_matches("sqlite:").trim_start_matches("//");
                if dir.is_empty() {
                    return Err(format!("'{text}' names no directory: write sqlite:DIR"));
                }
                Ok(StoreLocation::Sqlite(PathBuf::from(dir)))
            }
            #[cfg(feature = "esdb")]
            Some(scheme) if store::esdb::esdb_scheme(scheme).is_some() => {
                store::esdb::parse_esdb_url(text).map_err(|e| format!("'{text}': {e}"))?;
                Ok(StoreLocation::Esdb(text.to_string()))
            }
            #[cfg(not(feature = "esdb"))]
            Some(scheme) if scheme.starts_with("esdb") || scheme.starts_with("kurrentdb") => {
                Err(format!("'{text}': this thitl was built without the EventStoreDB adapter (cargo feature `esdb`)"))
            }
            Some(other) => Err(format!(
                "'{text}': unknown store kind '{other}'; name a store as sqlite:DIR or esdb://HOST:PORT?tls=false"
            )),
        }
    }

    /// For messages (an EventStoreDB URL without its password).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(dir) => format!("sqlite:{}", dir.display()),
            #[cfg(feature = "esdb")]
            StoreLocation::Esdb(url) => {
                store::esdb::parse_esdb_url(url).map_or_else(|_| "esdb://(unreadable)".into(), |u| u.to_string())
            }
            #[cfg(not(feature = "esdb"))]
            StoreLocation::Esdb(_) => "esdb://(not built in)".into(),
        }
    }

    /// Opens the store; `create` allows a new, empty SQLite store.
    pub fn open(&self, create: bool) -> Result<Arc<dyn EventStore>, DataDirError> {
        match self {
            StoreLocation::Sqlite(dir) => {
                let path = DataDir::events_path(dir);
                if !create && !path.is_file() {
                    return Err(DataDirError::Missing { path: dir.display().to_string() });
                }
                if create {
                    std::fs::create_dir_all(dir)
                        .map_err(|error| DataDirError::Create { path: dir.display().to_string(), error })?;
                }
                let store = SqliteStore::open(path)
                    .map_err(|error| DataDirError::Store { path: dir.display().to_string(), error })?;
                Ok(Arc::new(store))
            }
            #[cfg(feature = "esdb")]
            StoreLocation::Esdb(url) => {
                let store =
                    EsdbStore::connect(url).map_err(|error| DataDirError::Store { path: self.describe(), error })?;
                Ok(Arc::new(store))
            }
            #[cfg(not(feature = "esdb"))]
            StoreLocation::Esdb(_) => Err(DataDirError::Store {
                path: self.describe(),
                error: StoreError::Backend("this thitl was built without the EventStoreDB adapter".into()),
            }),
        }
    }
}

pub struct DataDir {
    pub root: PathBuf,
    pub store: Arc<dyn EventStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {error}")]
    Create { path: String, error: std::io::Error },
    #[error(
        "{path} has no event store (events.db); pass the --data directory that `thitl serve` or `thitl demo` wrote"
    )]
    Missing { path: String },
    #[error("cannot open the event store in {path}: {error}")]
    Store { path: String, error: StoreError },
}

impl DataDir {
    pub fn events_path(root: &Path) -> PathBuf {
        root.join("events.db")
    }

    /// Where a data directory at `root` keeps its blobs.
    pub fn blobs_path(root: &Path) -> PathBuf {
        root.join("blobs")
    }

    /// This directory's blob store.
    pub fn blobs(&self) -> Result<LocalBlobStore, BlobError> {
        LocalBlobStore::open(&Self::blobs_path(&self.root))
    }

    /// Where imported pipelines are unpacked from their blobs to be loaded (a cache: every file
    /// is checked against its blob's hash and can be deleted).
    pub fn models_cache_path(root: &Path) -> PathBuf {
        root.join("models")
    }

    /// The `Idempotency-Key` records' SQLite file.
    pub fn idempotency_path(&self) -> PathBuf {
        self.root.join("idempotency.db")
    }

    /// Opens `root`, creating it and an empty store if needed.
    pub fn open_or_create(root: &Path) -> Result<Self, DataDirError> {
        Self::open_or_create_with(root, None)
    }

    /// [`open_or_create`](Self::open_or_create) with the events at `store` (default: in `root`).
    pub fn open_or_create_with(root: &Path, store: Option<&StoreLocation>) -> Result<Self, DataDirError> {
        std::fs::create_dir_all(Self::blobs_path(root))
            .map_err(|error| DataDirError::Create { path: root.display().to_string(), error })?;
        match store {
            None => Self::open_store(root),
            Some(location) => Ok(DataDir { root: root.to_path_buf(), store: location.open(true)? }),
        }
    }

    /// [`open_existing`](Self::open_existing) with the events at `store` (default: in `root`,
    /// which must then hold them).
    pub fn open_existing_with(root: &Path, store: Option<&StoreLocation>) -> Result<Self, DataDirError> {
        match store {
            None => Self::open_existing(root),
            Some(location) => Ok(DataDir { root: root.to_path_buf(), store: location.open(false)? }),
        }
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
            .map_err(|error| DataDirError::Store { path: root.display().to_string(), error })?;
        Ok(DataDir { root: root.to_path_buf(), store: Arc::new(store) })
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.root.join("projections.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "esdb")]
    fn store_locations_parse_or_say_what_is_wrong() {
        assert_eq!(StoreLocation::parse("sqlite:/srv/thitl"), Ok(StoreLocation::Sqlite("/srv/thitl".into())));
        assert_eq!(StoreLocation::parse("sqlite:///srv/thitl"), Ok(StoreLocation::Sqlite("/srv/thitl".into())));
        assert_eq!(StoreLocation::parse("thitl-data"), Ok(StoreLocation::Sqlite("thitl-data".into())));
        assert_eq!(
            StoreLocation::parse("C:/data"),
            Ok(StoreLocation::Sqlite("C:/data".into())),
            "a one-letter scheme is a path"
        );
        let url = "esdb://node1:2113,node2:2113?tls=false";
        assert_eq!(StoreLocation::parse(url), Ok(StoreLocation::Esdb(url.into())));
        assert!(StoreLocation::parse("kurrentdb+discover://cluster.internal:2113").is_ok());
        let unknown = StoreLocation::parse("postgres://db/thitl").unwrap_err();
        assert!(unknown.contains("unknown store kind 'postgres'") && unknown.contains("esdb://"), "{unknown}");
        assert!(StoreLocation::parse("sqlite:").unwrap_err().contains("names no directory"));
        assert!(StoreLocation::parse("esdb://").is_err(), "an EventStoreDB URL without a host");
        // Passwords stay out of messages.
        let secret = StoreLocation::parse("esdb://admin:changeit@node1:2113?tls=false").unwrap();
        assert!(!secret.describe().contains("changeit"), "{}", secret.describe());
    }

    #[test]
    fn a_missing_sqlite_store_is_not_created_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("nowhere"));
        assert!(matches!(location.open(false), Err(DataDirError::Missing { .. })));
        assert!(!dir.path().join("nowhere").exists());
        let store = location.open(true).unwrap();
        assert_eq!(store.head_position().unwrap(), 0);
        assert!(location.open(false).is_ok());
    }
}
