//! The blob store: images and weights, content-addressed by SHA-256. Events carry the hash,
//! never the bytes.
//!
//! [`BlobStore`] is the small trait handlers and workers use; [`LocalBlobStore`] keeps blobs in a
//! local directory (`DIR/blobs/` of a data directory) and [`MemoryBlobStore`] in memory (a
//! server built without a data directory, and tests).
//!
//! ```text
//! DIR/blobs/ab/ab12…ef   a blob, named by the SHA-256 of its bytes, under its first two hex digits
//! DIR/blobs/tmp/         writes in progress (a crash can leave a file here, never under a hash)
//! ```
//!
//! Key design decisions:
//! - **Write, sync, then rename.** A blob is written to `tmp/`, synced, and renamed to its hash
//!   (rename is atomic within one filesystem), so a crash leaves at most a stray temporary file,
//!   never a half-written blob under a hash. Storing the same bytes twice is a no-op.
//! - **Verify on read.** Every [`BlobStore::get`] rehashes the bytes and answers
//!   [`BlobError::Corrupt`] when they do not match their name; [`verify_blobs`] rehashes a whole
//!   store for `thitl audit verify`.
//! - **No `object_store` yet.** The design names the `object_store` crate for the local and S3
//!   backends. It is not light: it is async-only (tokio, `futures`, `bytes`, `url`, `humantime`,
//!   `walkdir`, …, and `reqwest`/`rustls` once its `aws` feature is on), while thitl calls its
//!   stores from blocking threads, like the event store. The local backend needs only `std`, so
//!   the trait stays synchronous and small; an S3-compatible adapter can implement it later by
//!   wrapping `object_store` with a runtime handle, without touching a handler.
//! - Blobs are read whole into memory: images are small, and so are the reference world's
//!   weights. A streaming read is the change to make if a blob ever outgrows memory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use domain::values::BlobHash;
use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes`: a blob's name.
pub fn blob_hash(bytes: &[u8]) -> BlobHash {
    hash_of(Sha256::digest(bytes).as_slice())
}

fn hash_of(digest: &[u8]) -> BlobHash {
    // 32 bytes in lowercase hex is always a valid BlobHash.
    BlobHash::parse(&hex::encode(digest)).unwrap_or_else(|_| unreachable!("SHA-256 hex is 64 lowercase digits"))
}

/// Whether `bytes` start with the PNG signature.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Whether `bytes` start like a JPEG (SOI followed by a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// The media type a blob is served with: `image/png`, `image/jpeg`, or bytes.
pub fn media_type(bytes: &[u8]) -> &'static str {
    if is_png(bytes) {
        "image/png"
    } else if is_jpeg(bytes) {
        "image/jpeg"
    } else {
        "application/octet-stream"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stored bytes do not hash to the blob's name: the file was changed or damaged.
    #[error("blob {hash} is corrupt: its bytes hash to {actual}")]
    Corrupt { hash: BlobHash, actual: BlobHash },
    #[error("blob store: {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: io::Error },
    /// A blob store reached over the network (a remote worker's) could not answer.
    #[error("blob store: {0}")]
    Remote(String),
}

impl BlobError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
        let path = path.display().to_string();
        move |source| BlobError::Io { action, path, source }
    }
}

/// What [`BlobStore::put`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub hash: BlobHash,
    pub size: u64,
    /// False when the store held these bytes already.
    pub created: bool,
}

/// A content-addressed store of blobs. Implementations are called from blocking threads.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under their SHA-256 (a no-op when they are stored already).
    fn put(&self, bytes: &[u8]) -> Result<PutOutcome, BlobError>;

    /// The bytes stored under `hash`, checked against it; `None` when there is no such blob.
    fn get(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, BlobError>;

    /// Whether a blob is stored under `hash` (its bytes are not checked).
    fn contains(&self, hash: &BlobHash) -> Result<bool, BlobError>;

    /// Rehashes every blob: what `thitl audit verify` reports.
    fn verify(&self) -> Result<BlobReport, BlobError>;
}

/// Something wrong in a blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobProblem {
    /// The bytes do not hash to the blob's name.
    Corrupt { hash: BlobHash, actual: BlobHash },
    /// A file whose name is not a SHA-256, or that sits under the wrong prefix directory.
    Stray { path: String },
    /// A blob that could not be read.
    Unreadable { path: String, error: String },
}

impl std::fmt::Display for BlobProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobProblem::Corrupt { hash, actual } => write!(f, "blob {hash} is corrupt: its bytes hash to {actual}"),
            BlobProblem::Stray { path } => {
                write!(f, "{path} is not a blob (its name is not the SHA-256 of a blob in its place)")
            }
            BlobProblem::Unreadable { path, error } => write!(f, "{path} cannot be read: {error}"),
        }
    }
}

/// The result of rehashing a blob store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobReport {
    /// Blobs whose bytes were hashed.
    pub checked: u64,
    pub bytes: u64,
    pub problems: Vec<BlobProblem>,
    /// Temporary files left by interrupted writes (harmless; safe to delete).
    pub leftover_temporaries: u64,
}

impl BlobReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for people, e.g. "12 blobs (3.1 MB) verified".
    pub fn summary(&self) -> String {
        let size = format!("{:.1} MB", self.bytes as f64 / 1e6);
        if self.is_ok() {
            format!("{} blobs ({size}) verified", self.checked)
        } else {
            format!("{} of {} blobs ({size}) FAILED verification", self.problems.len(), self.checked)
        }
    }
}

/// Rehashes every blob under `root` (a data directory's blobs, `data::DataDir::blobs_path`; none
/// there is an empty, valid store). Meant for `thitl audit verify`, next to the chains' check.
pub fn verify_blobs(root: &Path) -> Result<BlobReport, BlobError> {
    if !root.is_dir() {
        return Ok(BlobReport::default());
    }
    LocalBlobStore { root: root.to_path_buf(), sequence: AtomicU64::new(0) }.verify()
}

/// Blobs in a local directory (see the module doc for the layout).
#[derive(Debug)]
pub struct LocalBlobStore {
    root: PathBuf,
    sequence: AtomicU64,
}

const TEMPORARY_DIR: &str = "tmp";

impl LocalBlobStore {
    /// Opens (creating if needed) a blob directory, e.g. a data directory's (`data::DataDir::blobs_path`).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        fs::create_dir_all(root.join(TEMPORARY_DIR)).map_err(BlobError::io("create", root))?;
        Ok(LocalBlobStore { root: root.to_path_buf(), sequence: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a blob lives in.
    pub fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let name = hash.as_str();
        self.root.join(&name[..2]).join(name)
    }

    fn temporary_path(&self) -> PathBuf {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        self.root.join(TEMPORARY_DIR).join(format!("{}-{sequence}-{nanos}.part", std::process::id()))
    }
}

/// Hashes a file in chunks (weights can be large): (hash, size).
fn hash_file(path: &Path) -> io::Result<(BlobHash, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((hash_of(hasher.finalize().as_slice()), size));
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
}

impl BlobStore for LocalBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<PutOutcome, BlobError> {
        let hash = blob_hash(bytes);
        let size = bytes.len() as u64;
        let path = self.path_of(&hash);
        // Stored and intact already: nothing to write. (A corrupt copy is replaced below.)
        if path.is_file() && hash_file(&path).is_ok_and(|(actual, _)| actual == hash) {
            return Ok(PutOutcome { hash, size, created: false });
        }
        let directory = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&directory).map_err(BlobError::io("create", &directory))?;
        let temporary = self.temporary_path();
        let written = (|| {
            let mut file = File::options().write(true).create_new(true).open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&temporary);
            return Err(BlobError::Io { action: "write", path: temporary.display().to_string(), source });
        }
        if let Err(source) = fs::rename(&temporary, &path) {
            let _ = fs::remove_file(&temporary);
            return Err(BlobError::Io { action: "rename into", path: path.display().to_string(), source });
        }
        // Make the rename itself durable (best effort: not every platform can sync a directory).
        if let Ok(directory) = File::open(&directory) {
            let _ = directory.sync_all();
        }
        Ok(PutOutcome { hash, size, created: true })
    }

    fn get(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path_of(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobError::Io { action: "read", path: path.display().to_string(), source }),
        };
        let actual = blob_hash(&bytes);
        if &actual != hash {
            return Err(BlobError::Corrupt { hash: hash.clone(), actual });
        }
        Ok(Some(bytes))
    }

    fn contains(&self, hash: &BlobHash) -> Result<bool, BlobError> {
        Ok(self.path_of(hash).is_file())
    }

    fn verify(&self) -> Result<BlobReport, BlobError> {
        let mut report = BlobReport::default();
        let mut prefixes: Vec<_> = fs::read_dir(&self.root)
            .map_err(BlobError::io("list", &self.root))?
            .collect::<Result<_, _>>()
            .map_err(BlobError::io("list", &self.root))?;
        prefixes.sort_by_key(fs::DirEntry::file_name);
        for prefix in prefixes {
            let prefix_path = prefix.path();
            let prefix_name = prefix.file_name().to_string_lossy().into_owned();
            if !prefix_path.is_dir() {
                report.problems.push(BlobProblem::Stray { path: prefix_path.display().to_string() });
                continue;
            }
            let mut entries: Vec<_> = fs::read_dir(&prefix_path)
                .map_err(BlobError::io("list", &prefix_path))?
                .collect::<Result<_, _>>()
                .map_err(BlobError::io("list", &prefix_path))?;
            if prefix_name == TEMPORARY_DIR {
                report.leftover_temporaries += entries.len() as u64;
                continue;
            }
            entries.sort_by_key(fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let expected = match BlobHash::parse(&name) {
                    Ok(hash) if name[..2] == prefix_name && path.is_file() => hash,
                    _ => {
                        report.problems.push(BlobProblem::Stray { path: path.display().to_string() });
                        continue;
                    }
                };
                match hash_file(&path) {
                    Ok((actual, size)) => {
                        report.checked += 1;
                        report.bytes += size;
                        if actual != expected {
                            report.problems.push(BlobProblem::Corrupt { hash: expected, actual });
                        }
                    }
                    Err(error) => report
                        .problems
                        .push(BlobProblem::Unreadable { path: path.display().to_string(), error: error.to_string() }),
                }
            }
        }
        Ok(report)
    }
}

/// Blobs in memory, for a server built without a data directory.
#[derive(Debug, Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

impl BlobStore for MemoryBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<PutOutcome, BlobError> {
        let hash = blob_hash(bytes);
        let mut blobs = self.blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let created = blobs.insert(hash.to_string(), bytes.to_vec()).is_none();
        Ok(PutOutcome { hash, size: bytes.len() as u64, created })
    }

    fn get(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.blobs.lock().unwrap_or_else(PoisonError::into_inner).get(hash.as_str()).cloned())
    }

    fn contains(&self, hash: &BlobHash) -> Result<bool, BlobError> {
        Ok(self.blobs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(hash.as_str()))
    }

    fn verify(&self) -> Result<BlobReport, BlobError> {
        let blobs = self.blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = BlobReport::default();
        for (name, bytes) in blobs.iter() {
            report.checked += 1;
            report.bytes += bytes.len() as u64;
            let actual = blob_hash(bytes);
            if actual.as_str() != name {
                let hash = BlobHash::parse(name).unwrap_or_else(|_| actual.clone());
                report.problems.push(BlobProblem::Corrupt { hash, actual });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn blobs_are_named_by_their_sha256_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        assert_eq!(blob_hash(b"").as_str(), EMPTY_SHA256);
        let first = store.put(b"an image").unwrap();
        assert!(first.created);
        assert_eq!(first.size, 8);
        let again = store.put(b"an image").unwrap();
        assert_eq!((again.hash.clone(), again.created), (first.hash.clone(), false));
        assert_eq!(store.get(&first.hash).unwrap().as_deref(), Some(&b"an image"[..]));
        assert!(store.contains(&first.hash).unwrap());
        let path = store.path_of(&first.hash);
        assert!(path.starts_with(dir.path().join("blobs").join(&first.hash.as_str()[..2])));
        assert_eq!(store.get(&blob_hash(b"something else")).unwrap(), None);
        // Nothing is left in tmp/ after a write.
        assert_eq!(fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(), 0);
        let report = verify_blobs(&dir.path().join("blobs")).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.checked, report.bytes), (1, 8));
    }

    #[test]
    fn a_changed_blob_is_reported_on_read_and_by_verification_and_a_put_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        let stored = store.put(b"original bytes").unwrap();
        fs::write(store.path_of(&stored.hash), b"tampered bytes").unwrap();
        match store.get(&stored.hash) {
            Err(BlobError::Corrupt { hash, actual }) => {
                assert_eq!(hash, stored.hash);
                assert_eq!(actual, blob_hash(b"tampered bytes"));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let report = verify_blobs(&dir.path().join("blobs")).unwrap();
        assert_eq!(
            report.problems,
            vec![BlobProblem::Corrupt { hash: stored.hash.clone(), actual: blob_hash(b"tampered bytes") }]
        );
        assert!(report.summary().contains("FAILED"), "{}", report.summary());
        let repaired = store.put(b"original bytes").unwrap();
        assert!(repaired.created);
        assert_eq!(store.get(&stored.hash).unwrap().as_deref(), Some(&b"original bytes"[..]));
        assert!(verify_blobs(&dir.path().join("blobs")).unwrap().is_ok());
    }

    #[test]
    fn stray_files_and_interrupted_writes_are_reported_but_never_read_as_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        let stored = store.put(b"x").unwrap();
        // A crash between write and rename leaves a temporary file only.
        fs::write(dir.path().join("blobs/tmp/123-0-0.part"), b"half a bl").unwrap();
        // A blob copied under the wrong prefix, and a file with no hash for a name.
        let wrong_prefix = if stored.hash.as_str().starts_with("00") { "01" } else { "00" };
        fs::create_dir_all(dir.path().join("blobs").join(wrong_prefix)).unwrap();
        fs::write(dir.path().join("blobs").join(wrong_prefix).join(stored.hash.as_str()), b"x").unwrap();
        fs::write(dir.path().join("blobs").join("notes.txt"), b"hello").unwrap();
        let report = verify_blobs(&dir.path().join("blobs")).unwrap();
        assert_eq!(report.checked, 1);
        assert_eq!(report.leftover_temporaries, 1);
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(report.problems.iter().all(|p| matches!(p, BlobProblem::Stray { .. })), "{report:?}");
    }

    #[test]
    fn a_data_directory_without_blobs_verifies_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(verify_blobs(&dir.path().join("blobs")).unwrap(), BlobReport::default());
    }

    #[test]
    fn the_memory_store_behaves_like_the_local_one() {
        let store = MemoryBlobStore::default();
        let stored = store.put(b"\x89PNG\r\n\x1a\nrest").unwrap();
        assert!(stored.created && !store.put(b"\x89PNG\r\n\x1a\nrest").unwrap().created);
        let bytes = store.get(&stored.hash).unwrap().unwrap();
        assert!(is_png(&bytes));
        assert!(!is_png(b"GIF89a"));
        assert!(store.verify().unwrap().is_ok());
    }
}
