//! The embedded event store: one SQLite file, one table.
//!
//! - **One table**, `events`. The global position is the integer primary key (SQLite's rowid), so
//!   the next position is `max + 1` inside the write transaction: positions start at 1, have no
//!   gaps (a rolled-back append takes nothing), and increase in commit order even when several
//!   processes share the file, because each append holds SQLite's write lock
//!   (`BEGIN IMMEDIATE`) from reading the stream version to commit. `UNIQUE(stream, version)` is
//!   both the optimistic-concurrency guard and the index for stream reads; `UNIQUE(event_id)` is
//!   the idempotency index. No streams table: a stream's version is `MAX(version)` on that index.
//! - **Durable acknowledgements.** WAL with `synchronous=FULL`: `append` returns only after the
//!   commit is on disk. Concurrent appends share commits (group commit, see `AppendRequest`),
//!   because a disk syncs only a few hundred times a second.
//! - **Connections.** One writer connection behind a mutex (SQLite has one writer anyway) and a
//!   small pool of reader connections; in WAL mode readers see the last commit and never wait
//!   for the writer.
//! - **Format check.** The file carries `application_id` = "thit" and `user_version` = the format;
//!   another program's database or a newer format is refused with a clear error, untouched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use domain::{Actor, EventMetadata, Role};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use uuid::Uuid;

use super::chain::{self, RecordedAtText};
use super::prepared::{PreparedEvent, prepare};
use super::{AppendResult, Capabilities, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, StreamName};

/// `PRAGMA application_id`: ASCII "thit", so other programs' SQLite files are recognised.
const APPLICATION_ID: i32 = 0x7468_6974;
/// `PRAGMA user_version`: the layout of the `events` table. Bump it with a migration.
const FORMAT_VERSION: i32 = 1;
/// How long a connection waits for another one's lock (another process appending, a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `wait_for_position_after` looks for appends by other processes, which the in-process
/// notification cannot see.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Per reader connection: bytes of the file to memory-map, and page cache size (negative = KiB).
const READER_MMAP_BYTES: i64 = 256 << 20;
const READER_CACHE_KIB: i64 = -16 * 1024;
/// Reader connections kept open between reads.
const IDLE_READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    stream          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     TEXT    NOT NULL,
    actor_principal TEXT    NOT NULL,
    actor_role      TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT,
    payload         TEXT    NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    UNIQUE (stream, version)
);";

/// Every column, in the order `decode_row` reads them.
const COLUMNS: &str = "position, stream, version, event_id, event_type, schema_version, recorded_at, \
     actor_principal, actor_role, correlation_id, causation_id, payload, prev_hash, hash";

const INSERT: &str = "INSERT INTO events (stream, version, event_id, event_type, schema_version, \
     recorded_at, actor_principal, actor_role, correlation_id, causation_id, payload, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The SQLite event store. Cheap to share: wrap it in an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Appends waiting for the writer; see `AppendRequest`.
    queued: Mutex<Vec<Arc<AppendRequest>>>,
    idle_readers: Mutex<Vec<Connection>>,
    /// Counts appends by this process; waiters compare it to avoid missing a wake-up.
    appends: Mutex<u64>,
    appended: Condvar,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection leaves no open transaction behind (rusqlite's
    // `Transaction` rolls back on drop), so the connection is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Every guarantee: the integer primary key makes positions gap-free, and `UNIQUE(event_id)`
    /// finds an id wherever it is stored.
    pub const CAPABILITIES: Capabilities = Capabilities::ALL;

    /// Opens the store at `path`, creating the file and its schema if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let writer = Connection::open(&path)
            .map_err(|error| StoreError::Backend(format!("cannot open {}: {error}", path.display())))?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        check_or_create_schema(&writer, &path)?;
        let journal_mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(backend)?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: SQLite refused WAL mode (got {journal_mode}); is it on a network file system?",
                path.display()
            )));
        }
        writer.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        let store = SqliteStore {
            writer: Mutex::new(writer),
            queued: Mutex::new(Vec::new()),
            idle_readers: Mutex::new(Vec::new()),
            appends: Mutex::new(0),
            appended: Condvar::new(),
            path,
        };
        // Open one reader now, so a bad path fails here rather than on the first read.
        let reader = store.open_reader()?;
        lock(&store.idle_readers).push(reader);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(&self.path, flags).map_err(backend)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // Read-write flags only because WAL readers write the shared-memory index; no SQL writes.
        reader.pragma_update(None, "query_only", true).map_err(backend)?;
        // Reading the log is mostly long sequential scans: map the file instead of a read()
        // syscall per page, and keep more pages cached.
        reader.pragma_update(None, "mmap_size", READER_MMAP_BYTES).map_err(backend)?;
        reader.pragma_update(None, "cache_size", READER_CACHE_KIB).map_err(backend)?;
        Ok(reader)
    }

    fn with_reader<T>(&self, read: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = lock(&self.idle_readers).pop();
        let reader = match idle {
            Some(reader) => reader,
            None => self.open_reader()?,
        };
        let result = read(&reader);
        let mut idle = lock(&self.idle_readers);
        if idle.len() < IDLE_READERS {
            idle.push(reader);
        }
        result
    }

    fn notify_appended(&self) {
        *lock(&self.appends) += 1;
        self.appended.notify_all();
    }
}

fn check_or_create_schema(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    if read_format(connection, path)? == (0, 0) {
        create_schema(connection, path)?;
    }
    let (application_id, format) = read_format(connection, path)?;
    match (application_id, format) {
        (APPLICATION_ID, FORMAT_VERSION) => Ok(()),
        (APPLICATION_ID, format) if format > FORMAT_VERSION => Err(StoreError::UnsupportedFormat(format!(
            "{} is in event store format {format}, written by a newer thitl; this build reads format {FORMAT_VERSION}",
            path.display()
        ))),
        (APPLICATION_ID, format) => Err(StoreError::UnsupportedFormat(format!(
            "{} is in unknown event store format {format}; this build reads format {FORMAT_VERSION}",
            path.display()
        ))),
        _ => Err(not_an_event_store(path)),
    }
}

fn not_an_event_store(path: &Path) -> StoreError {
    StoreError::UnsupportedFormat(format!("{} is an SQLite database, but not a thitl event store", path.display()))
}

fn read_format(connection: &Connection, path: &Path) -> Result<(i32, i32), StoreError> {
    let read = || -> rusqlite::Result<(i32, i32)> {
        let application_id = connection.pragma_query_value(None, "application_id", |row| row.get(0))?;
        let format = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        Ok((application_id, format))
    };
    read().map_err(|error| match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => StoreError::UnsupportedFormat(format!(
            "{} is not an SQLite database (a thitl event store is one)",
            path.display()
        )),
        _ => StoreError::Backend(format!("cannot read {}: {error}", path.display())),
    })
}

/// Creates the schema in an empty database. Under the write lock, and re-checked there, so two
/// processes opening a new file at once create it once.
fn create_schema(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    connection.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    let created = (|| {
        let (application_id, format) = read_format(connection, path)?;
        if (application_id, format) != (0, 0) {
            return Ok(()); // Someone else created it meanwhile; the caller's next open checks it.
        }
        let tables: i64 =
            connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0)).map_err(backend)?;
        if tables != 0 {
            return Err(not_an_event_store(path));
        }
        connection.execute_batch(SCHEMA).map_err(backend)?;
        connection.pragma_update(None, "application_id", APPLICATION_ID).map_err(backend)?;
        connection.pragma_update(None, "user_version", FORMAT_VERSION).map_err(backend)?;
        Ok(())
    })();
    let finish = if created.is_ok() { "COMMIT" } else { "ROLLBACK" };
    connection.execute_batch(finish).map_err(backend)?;
    created
}

/// One append waiting for the writer connection.
///
/// Appends are committed in groups: whoever holds the writer lock commits every append queued so
/// far in one transaction (each in its own savepoint, so one append's failure is its own), with
/// one fsync, and fills in each result before releasing the lock. Durability is unchanged — an
/// append returns only after the commit that contains it — but with N concurrent appenders the
/// disk's fsync rate no longer caps throughput at one append per fsync.
struct AppendRequest {
    stream: StreamName,
    expected: ExpectedVersion,
    events: Vec<PreparedEvent>,
    result: OnceLock<Result<AppendResult, StoreError>>,
}

/// Commits `group` in one transaction and sets every request's result.
fn commit_group(connection: &mut Connection, group: &[Arc<AppendRequest>]) {
    let outcomes = append_group(connection, group);
    for (request, outcome) in group.iter().zip(outcomes) {
        // Each request is in exactly one group, so its result is unset here.
        let _ = request.result.set(outcome);
    }
}

fn append_group(connection: &mut Connection, group: &[Arc<AppendRequest>]) -> Vec<Result<AppendResult, StoreError>> {
    let mut transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(error) => return vec![Err(backend(error)); group.len()],
    };
    let mut outcomes = Vec::with_capacity(group.len());
    if let [request] = group {
        // Alone: the transaction itself is the savepoint.
        outcomes.push(append_one(&transaction, request));
    } else {
        for request in group {
            let outcome = match transaction.savepoint() {
                Ok(savepoint) => {
                    let outcome = append_one(&savepoint, request);
                    // Dropping an unreleased savepoint rolls it back.
                    if outcome.is_ok() { savepoint.commit().map_err(backend).and(outcome) } else { outcome }
                }
                Err(error) => Err(backend(error)),
            };
            outcomes.push(outcome);
        }
    }
    if outcomes.iter().any(Result::is_ok)
        && let Err(error) = transaction.commit()
    {
        let error = backend(error);
        for outcome in &mut outcomes {
            if outcome.is_ok() {
                *outcome = Err(error.clone());
            }
        }
    }
    outcomes
}

fn to_sql_integer(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn find_by_id(connection: &Connection, event_id: &Uuid) -> Result<Option<StoredEvent>, StoreError> {
    let mut buffer = Uuid::encode_buffer();
    let id_text: &str = event_id.hyphenated().encode_lower(&mut buffer);
    let mut statement =
        connection.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE event_id = ?1")).map_err(backend)?;
    let mut rows = statement.query([id_text]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(row) => decode_row(row, None).map(Some),
        None => Ok(None),
    }
}

/// The idempotency rule (see the module doc of `store`): the batch is a replay when every event
/// is stored, identical, in this stream, at consecutive versions in batch order.
fn replay_result(
    connection: &Connection,
    stream: &StreamName,
    prepared: &[PreparedEvent],
    first: StoredEvent,
) -> Result<AppendResult, StoreError> {
    let mut result =
        AppendResult { first_position: first.position, last_position: first.position, stream_version: first.version };
    for (index, event) in prepared.iter().enumerate() {
        let event_id = event.metadata.event_id;
        let stored = if index == 0 { Some(first.clone()) } else { find_by_id(connection, &event_id)? };
        let Some(stored) = stored else {
            return Err(StoreError::PartialReplay { event_id });
        };
        if !event.is_same_as(stream, &stored) {
            return Err(StoreError::DuplicateEventId { event_id });
        }
        if stored.version != first.version + index as u64 {
            return Err(StoreError::PartialReplay { event_id });
        }
        result.last_position = stored.position;
        result.stream_version = stored.version;
    }
    Ok(result)
}

/// The stream's version and its last hash (the next event's `prev_hash`).
fn stream_head(connection: &Connection, stream: &StreamName) -> Result<(u64, [u8; 32]), StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT version, hash FROM events WHERE stream = ?1 ORDER BY version DESC LIMIT 1")
        .map_err(backend)?;
    let head = statement
        .query_row([stream.as_str()], |row| {
            let version: i64 = row.get(0)?;
            let hash = row.get_ref(1)?.as_blob().map(<[u8]>::to_vec).map_err(rusqlite::Error::from)?;
            Ok((version, hash))
        })
        .optional()
        .map_err(backend)?;
    match head {
        None => Ok((0, chain::GENESIS_PREV_HASH)),
        Some((version, hash)) => {
            let corrupt =
                || StoreError::Corrupt(format!("stream {stream} version {version}: unreadable version or hash"));
            let version = u64::try_from(version).map_err(|_| corrupt())?;
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| corrupt())?;
            Ok((version, hash))
        }
    }
}

/// Why an insert failed: an event id that already exists means a partial replay or a conflicting
/// duplicate; anything else is the backend's.
fn explain_insert_failure(
    connection: &Connection,
    stream: &StreamName,
    event: &PreparedEvent,
    error: rusqlite::Error,
) -> StoreError {
    match find_by_id(connection, &event.metadata.event_id) {
        Ok(Some(stored)) if event.is_same_as(stream, &stored) => {
            StoreError::PartialReplay { event_id: event.metadata.event_id }
        }
        Ok(Some(_)) => StoreError::DuplicateEventId { event_id: event.metadata.event_id },
        _ => backend(error),
    }
}

/// One append inside the group's transaction (or savepoint). The idempotency rule is in the
/// module doc of `store`.
fn append_one(transaction: &Connection, request: &AppendRequest) -> Result<AppendResult, StoreError> {
    let (stream, expected, prepared) = (&request.stream, request.expected, &request.events[..]);
    // A replay is recognised by its first id, before the version check: a client retrying after
    // a lost response still expects the version it saw before its first attempt.
    if let Some(first) = find_by_id(transaction, &prepared[0].metadata.event_id)? {
        return replay_result(transaction, stream, prepared, first);
    }
    let (actual, mut prev_hash) = stream_head(transaction, stream)?;
    if !expected.matches(actual) {
        return Err(StoreError::WrongExpectedVersion { stream: stream.clone(), expected, actual });
    }
    let mut result = AppendResult { first_position: 0, last_position: 0, stream_version: actual };
    {
        let mut insert = transaction.prepare_cached(INSERT).map_err(backend)?;
        for (index, event) in prepared.iter().enumerate() {
            let version = actual + 1 + index as u64;
            let hash = chain::event_hash(&prev_hash, &event.fields(stream, version));
            let metadata = &event.metadata;
            let (mut event_id, mut correlation_id, mut causation_id) =
                (Uuid::encode_buffer(), Uuid::encode_buffer(), Uuid::encode_buffer());
            let recorded_at = RecordedAtText::new(&metadata.recorded_at);
            let inserted = insert.execute(params![
                stream.as_str(),
                to_sql_integer(version),
                &*metadata.event_id.hyphenated().encode_lower(&mut event_id),
                event.event_type,
                event.schema_version,
                recorded_at.as_str(),
                metadata.actor.principal,
                metadata.actor.role.as_str(),
                &*metadata.correlation_id.hyphenated().encode_lower(&mut correlation_id),
                metadata.causation_id.as_ref().map(|id| &*id.hyphenated().encode_lower(&mut causation_id)),
                event.payload,
                &prev_hash[..],
                &hash[..],
            ]);
            if let Err(error) = inserted {
                return Err(explain_insert_failure(transaction, stream, event, error));
            }
            let position = u64::try_from(transaction.last_insert_rowid())
                .map_err(|_| StoreError::Corrupt("negative position".into()))?;
            if index == 0 {
                result.first_position = position;
            }
            result.last_position = position;
            result.stream_version = version;
            prev_hash = hash;
        }
    }
    Ok(result)
}

/// Decodes one row of `COLUMNS`. `known_stream` skips re-validating the name when the query
/// selected by stream. Anything unreadable is `Corrupt`, naming the position.
fn decode_row(row: &Row<'_>, known_stream: Option<&StreamName>) -> Result<StoredEvent, StoreError> {
    let position = row.get_ref(0).and_then(|value| Ok(value.as_i64()?)).map_err(backend)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("position {position}: unreadable {what}"));
    let text = |index: usize, what: &str| -> Result<&str, StoreError> {
        row.get_ref(index).ok().and_then(|value| value.as_str().ok()).ok_or_else(|| corrupt(what))
    };
    let integer = |index: usize, what: &str| -> Result<i64, StoreError> {
        row.get_ref(index).ok().and_then(|value| value.as_i64().ok()).ok_or_else(|| corrupt(what))
    };
    let uuid = |index: usize, what: &str| -> Result<Uuid, StoreError> {
        Uuid::try_parse(text(index, what)?).map_err(|_| corrupt(what))
    };
    let hash = |index: usize, what: &str| -> Result<[u8; 32], StoreError> {
        row.get_ref(index)
            .ok()
            .and_then(|value| value.as_blob().ok())
            .and_then(|blob| <[u8; 32]>::try_from(blob).ok())
            .ok_or_else(|| corrupt(what))
    };

    let stream_text = text(1, "stream")?;
    let stream = match known_stream {
        Some(stream) if stream.as_str() == stream_text => stream.clone(),
        _ => StreamName::new(stream_text).map_err(|_| corrupt("stream name"))?,
    };
    let causation_id = match row.get_ref(10).map_err(backend)? {
        rusqlite::types::ValueRef::Null => None,
        _ => Some(uuid(10, "causation id")?),
    };
    let recorded_at = chain::parse_recorded_at(text(6, "recorded_at")?).ok_or_else(|| corrupt("recorded_at"))?;
    Ok(StoredEvent {
        position: u64::try_from(position).map_err(|_| corrupt("position"))?,
        stream,
        version: u64::try_from(integer(2, "version")?).map_err(|_| corrupt("version"))?,
        event_type: text(4, "event type")?.to_owned(),
        schema_version: u32::try_from(integer(5, "schema version")?).map_err(|_| corrupt("schema version"))?,
        metadata: EventMetadata {
            event_id: uuid(3, "event id")?,
            recorded_at,
            actor: Actor {
                principal: text(7, "actor principal")?.to_owned(),
                role: Role::parse(text(8, "actor role")?).ok_or_else(|| corrupt("actor role"))?,
            },
            correlation_id: uuid(9, "correlation id")?,
            causation_id,
        },
        payload: text(11, "payload")?.to_owned(),
        prev_hash: hash(12, "prev_hash")?,
        hash: hash(13, "hash")?,
    })
}

fn query_events(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    limit: usize,
    known_stream: Option<&StreamName>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut statement = connection.prepare_cached(sql).map_err(backend)?;
    let mut rows = statement.query(params).map_err(backend)?;
    // Usually a few rows (a catch-up read, a live subscription): grow as they come rather than
    // reserve `limit` up front (a large allocation per call is far from free).
    let mut events = Vec::with_capacity(limit.min(16));
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(decode_row(row, known_stream)?);
    }
    Ok(events)
}

impl EventStore for SqliteStore {
    fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        let request = Arc::new(AppendRequest {
            stream: stream.clone(),
            expected,
            events: prepare(events)?,
            result: OnceLock::new(),
        });
        lock(&self.queued).push(Arc::clone(&request));
        let mut writer = lock(&self.writer);
        // Requests leave the queue only under the writer lock, with their results set before it
        // is released: so if ours has no result yet, it is still queued and we commit the group.
        let led = request.result.get().is_none();
        if led {
            let group = std::mem::take(&mut *lock(&self.queued));
            commit_group(&mut writer, &group);
        }
        drop(writer);
        if led {
            self.notify_appended();
        }
        match request.result.get() {
            Some(result) => result.clone(),
            // Only if a leader panicked after taking our request from the queue.
            None => Err(StoreError::Backend(
                "the append was lost by a failed group commit; nothing of it was committed".into(),
            )),
        }
    }

    fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.with_reader(|reader| {
            query_events(
                reader,
                &format!("SELECT {COLUMNS} FROM events WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3"),
                params![stream.as_str(), to_sql_integer(from_version), to_sql_integer(limit as u64)],
                limit,
                Some(stream),
            )
        })
    }

    fn stream_version(&self, stream: &StreamName) -> Result<u64, StoreError> {
        self.with_reader(|reader| Ok(stream_head(reader, stream)?.0))
    }

    fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.with_reader(|reader| {
            query_events(
                reader,
                &format!("SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"),
                params![to_sql_integer(after_position), to_sql_integer(limit as u64)],
                limit,
                None,
            )
        })
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        self.with_reader(|reader| {
            let head: i64 = reader
                .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")
                .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
                .map_err(backend)?;
            u64::try_from(head).map_err(|_| StoreError::Corrupt(format!("negative head position {head}")))
        })
    }

    fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let appends_before = *lock(&self.appends);
            let head = self.head_position()?;
            let now = Instant::now();
            if head > position || now >= deadline {
                return Ok(head);
            }
            let appends = lock(&self.appends);
            if *appends != appends_before {
                continue; // An append committed after the head was read: look again.
            }
            let wait = POLL_INTERVAL.min(deadline - now);
            drop(self.appended.wait_timeout(appends, wait).unwrap_or_else(PoisonError::into_inner));
        }
    }

    fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError> {
        self.with_reader(|reader| {
            let mut statement = reader
                .prepare_cached("SELECT stream, MAX(version) FROM events GROUP BY stream ORDER BY stream")
                .map_err(backend)?;
            let mut rows = statement.query([]).map_err(backend)?;
            let mut streams = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let name: String = row.get(0).map_err(backend)?;
                let version: i64 = row.get(1).map_err(backend)?;
                let corrupt = || StoreError::Corrupt(format!("stream {name:?}: unreadable name or version"));
                let version = u64::try_from(version).map_err(|_| corrupt())?;
                let stream = StreamName::new(name.clone()).map_err(|_| corrupt())?;
                streams.push((stream, version));
            }
            Ok(streams)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }
}
