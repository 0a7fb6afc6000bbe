//! The EventStoreDB / KurrentDB adapter: [`EsdbStore`], over the `eventstore` 4.0 gRPC client.
//!
//! ```text
//! thitl                                  EventStoreDB / KurrentDB
//! stream `association-…`, version v  ──  stream `{namespace}association-…`, revision v − 1
//! ExpectedVersion Any / NoStream     ──  ExpectedRevision Any / NoStream (Exact(0) → NoStream)
//! ExpectedVersion Exact(n), n ≥ 1    ──  ExpectedRevision Exact(n − 1)
//! metadata.event_id                  ──  the event's id
//! event_type                         ──  the event's type
//! payload (JSON text)                ──  the event's data, content type application/json
//! schema version, metadata, hashes   ──  the event's custom metadata (JSON, below)
//! global position                    ──  the event's commit position in `$all`
//! ```
//!
//! Connection strings: `esdb://HOST:PORT[,HOST:PORT…][?tls=false&…]`, `esdb+discover://DNS-NAME`,
//! and the same with `kurrentdb://` / `kurrentdb+discover://` (also `kurrent://`, `kdb://`), which
//! are handed to the client as `esdb://`. Credentials go before the host
//! (`esdb://admin:changeit@host:2113`). TLS is on unless the URL says `tls=false`, which a node
//! started with `--insecure` needs; a connection failure says so. Unknown parameters are refused
//! (the client would silently ignore a misspelt `tsl=false`), and so is a `nodePreference` other
//! than `leader` (the default): the adapter reads back what it appends, which a follower may not
//! have yet. See [`parse_esdb_url`].
//!
//! Key design decisions:
//!
//! - **A private runtime.** The trait is synchronous and is called from plain threads, from
//!   `spawn_blocking` threads and from threads that have a tokio context, where `block_on` would
//!   panic. So [`EsdbStore::connect`] starts its own small multi-thread tokio runtime, every
//!   operation is spawned on it, and the calling thread waits for the answer on a std channel
//!   (with an upper bound, so a wedged client cannot hang a caller forever). Dropping the store
//!   shuts the runtime down in the background, which is allowed inside async code too.
//! - **The hash chain is kept exactly as the SQLite adapter keeps it**, so `chain::verify` (and
//!   `thitl audit verify`, `thitl store copy`) work on either store: an append reads the stream's
//!   last events (one backwards read), hashes the new events after the last one, and appends with
//!   the expected revision of that last event, so a concurrent writer makes the append fail
//!   instead of forking the chain. The caller's own expectation is checked against the version
//!   read (and a conflict returns [`StoreError::WrongExpectedVersion`] without appending); with
//!   `Any` a conflicting append is retried a few times. The stream name hashed is the thitl name,
//!   without the namespace, so a namespaced copy verifies the same.
//! - **What is hashed is what is stored.** The payload text is `serde_json::to_string` of the
//!   payload, as in SQLite (`store::prepared`), handed to the client's `EventData::json` as a
//!   `RawValue`, so the stored bytes are that text and nothing serialises the payload again —
//!   and every append reads its events back and compares payload, id and hash before it reports
//!   success. Reads return the stored bytes as they are.
//! - **Custom metadata** is one JSON object per event: `{"thitl":1, "schema_version", "event_id",
//!   "recorded_at" (chain's RFC 3339 text, 6 digits), "actor":{"principal","role"},
//!   "$correlationId", "$causationId" (absent when none), "prev_hash", "hash" (hex)}`. The
//!   correlation and causation ids use EventStoreDB's own names, so its `$by_correlation_id`
//!   projection works on thitl's events. An event whose custom metadata is not this object is
//!   [`StoreError::Corrupt`].
//! - **Positions are commit positions in `$all`.** Each event of an append is committed by its
//!   own prepare record (EventStoreDB writes appends as self-committed prepares), so its commit
//!   position equals its prepare position and is unique and strictly increasing in `$all` order;
//!   positions have gaps (they are byte offsets in the log), so [`EsdbStore::CAPABILITIES`] does
//!   not declare [`Capabilities::gap_free_positions`]. A stream read must return the same number:
//!   servers report the position of self-committed events on stream reads; one that reports
//!   none gets a clear error rather than a made-up position.
//! - **System events are invisible**: `read_all`, `head_position`, `list_streams` and
//!   `wait_for_position_after` skip every event whose stream or type starts with `$` (stream
//!   metadata, statistics, projections' links), and appends refuse event types starting with `$`.
//! - **Namespaces.** [`EsdbStore::connect_namespaced`] stores thitl stream `s` as `{prefix}s` and
//!   sees only its own streams in `$all`, stripping the prefix; [`EsdbStore::connect_new_namespace`]
//!   also starts reading `$all` at the log's end at connect time (nothing of a new namespace can
//!   lie before it), which is what the live contract suite uses for one empty store per case on a
//!   shared node. A store without a namespace owns the whole node: any non-system event in
//!   `$all` that is not a thitl event (another application's, a user projection's output, or a
//!   namespaced test store's) is reported as `Corrupt` or listed as a stream.
//!
//! ## Idempotency by event id, and where EventStoreDB cannot give the contract's semantics
//!
//! A batch whose ids are already stored in the same stream, identical and in order, returns the
//! original [`AppendResult`] whatever the expected version says, as in SQLite; an id stored with
//! other content is [`StoreError::DuplicateEventId`], a batch that mixes stored and new ids (or
//! replays them in another order) is [`StoreError::PartialReplay`]. EventStoreDB has no index
//! by event id, so the adapter looks for the batch's ids only where a replay can be:
//!
//! - among the stream's last 32 events (read anyway for the chain), which covers a client's retry
//!   after a lost response unless 32 other events were appended to that stream meanwhile;
//! - after the version a retried `Exact(v)` / `NoStream` append expected (the retry's events
//!   follow `v`), and before a later event of the batch found in the tail (its first event is
//!   `index` versions earlier): one more read of `batch.len()` events each;
//! - the whole stream, once, when EventStoreDB refuses an append although no other writer moved
//!   the stream (its own check found one of the ids).
//!
//! What is **not** detected, unlike SQLite:
//!
//! - an id stored in **another stream**: the batch is appended, and the id then exists in two
//!   streams. So [`EsdbStore::CAPABILITIES`] does not declare
//!   [`Capabilities::detects_event_id_reuse_across_streams`], and the contract cases that reuse
//!   an id of another stream (`failing_batch_appends_nothing`,
//!   `same_event_id_with_different_content_is_rejected`) check only that such an append is
//!   atomic: refused with nothing stored, or stored whole;
//! - an id stored in the same stream further back than the windows above, appended again with
//!   `Any` or with the stream's current version: stored a second time.
//!
//! Closing these would need an index by id that EventStoreDB cannot update atomically with the
//! append (it has no multi-stream transactions), or a scan of `$all` per append.
//!
//! ## Costs
//!
//! - `append`: one backwards read of at most 32 events, one append, one read of the appended
//!   events (positions, and the check above); more reads only for the replay cases above or on
//!   a conflict. The SQLite adapter's group commit has no equivalent here.
//! - `read_stream`, `stream_version`: one stream read.
//! - `read_all`: a forward read of `$all` in pages, skipping system events and, with a namespace,
//!   every other namespace's events client-side (the client has no server-side filter for reads),
//!   so a namespace on a busy shared node reads everyone's events. An `after_position` that is not
//!   an event's position (the runner reads `after = position − 1`) is answered by finding the
//!   first event after it from the end of the log backwards.
//! - `head_position`: a backwards read of `$all` to the last visible event (pages of growing size).
//! - `list_streams`: one forward read of the whole of `$all` (from the namespace's start), as the
//!   stream versions are only known from the events; `verify` and `store copy` read it all anyway.
//! - `wait_for_position_after`: one head read, then a catch-up subscription to `$all` from the
//!   position, filtered on the server (no system streams, or the namespace's prefix), until the
//!   first visible event after it or the timeout; on an error it resubscribes after a short pause
//!   (a new client if the connection is gone), and falls back to polling the head if a
//!   subscription cannot be made at all.
//!
//! ## The client's pitfalls, and what is done about them
//!
//! - **rustls crypto provider.** `eventstore` 4.0 installs aws-lc-rs as the process-wide rustls
//!   provider inside each client's connection task, guarded by a `std::sync::Once`, with
//!   `install_default().expect(…)`: a second client in one process is fine (the `Once`), but if
//!   anything else installed a provider first, that task panics, the `Once` is poisoned, and every
//!   client of the process fails (the panic does not cross the tokio task, so the process lives
//!   but nothing connects). Installing a provider ourselves would cause exactly that panic, so the
//!   adapter does not; [`EsdbStore::connect`] instead refuses with a clear error when a provider is
//!   installed and no client has been started in this process yet (connects go one at a time
//!   until one has, so that overlapping first connects do not take each other's installation for
//!   a foreign one; `tests/esdb_rustls_provider.rs` checks the refusal). An application that also uses
//!   rustls elsewhere must connect to EventStoreDB first (or let its TLS code use the installed
//!   default). Both `ring` (through `reqwest`) and `aws-lc-rs` are compiled in, so rustls cannot
//!   pick a provider from its features alone.
//! - **The client's connection task dies on a failed connection** (it stops at the first
//!   connection error), after which every call answers "connection closed"; the adapter then
//!   creates a new client and retries the call once (an append retried this way is recognised by
//!   EventStoreDB's own idempotency check, as it names the same expected revision and ids).
//! - **It also panics on TLS setup problems** (unreadable platform certificates, a bad
//!   `tlsCAFile`), even with `tls=false`; such a panic surfaces as a `Backend` error that says so.
//! - Reads have no deadline in the client: every read waits at most 30 s for its next message.
//! - A subscription whose server side ends without an error makes the 4.0 client loop without
//!   yielding; EventStoreDB ends subscriptions with an error status, and callers never wait past
//!   their own bound, but a runtime worker would stay busy. Not seen in practice; noted here.
//!
//! Other requirements: the user in the URL must be allowed to read `$all` (an admin or ops user
//! on a secure node); thitl's streams must not be deleted, truncated or given `$maxCount` /
//! `$maxAge` metadata (the chain would report the missing events).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use domain::{Actor, EventMetadata};
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, ExpectedRevision, Position,
    ReadAllOptions, ReadStream, ReadStreamOptions, RecordedEvent, ResolvedEvent, StreamPosition, SubscribeToAllOptions,
    SubscriptionEvent, SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::chain;
use super::prepared::{self, PreparedEvent};
use super::{AppendResult, Capabilities, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, StreamName};

/// How many of a stream's last events an append reads (its head, and the usual replay window).
const TAIL: usize = 32;
/// Appends with `ExpectedVersion::Any` that lose to concurrent writers are tried this many times.
const APPEND_ATTEMPTS: u32 = 12;
/// Events per forward page of `$all`.
const ALL_PAGE: usize = 1024;
/// The longest a read waits for its next message before it counts as failed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a caller waits for one operation (a last resort; reads are bounded per message).
const CALL_LIMIT: Duration = Duration::from_secs(600);
/// The longest `connect` waits for the node.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// Between two subscription attempts, and between two head polls when subscribing fails.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Timeouts longer than this are treated as this (an `Instant` cannot go arbitrarily far).
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The layout of the custom metadata written here; readers refuse others.
const METADATA_FORMAT: u32 = 1;
/// The longest namespace prefix.
const MAX_NAMESPACE_LEN: usize = 100;

/// Set once this process has started an `eventstore` client, whose connection task installs the
/// client's rustls provider (see the module doc).
static CLIENT_STARTED: AtomicBool = AtomicBool::new(false);
/// Held by a `connect` until a client has started: connects that overlap would otherwise take
/// the first one's provider for a foreign one.
static FIRST_CLIENT: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Connection strings

/// A parsed EventStoreDB / KurrentDB connection string (see [`parse_esdb_url`]). Its `Debug` and
/// `Display` never show the password.
#[derive(Clone)]
pub struct EsdbUrl {
    /// DNS discovery (`esdb+discover://`): the one host is the cluster's DNS name.
    pub discover: bool,
    /// Every host with its port (2113 when the URL names none).
    pub hosts: Vec<(String, u16)>,
    /// Whether the connection uses TLS (true unless the URL says `tls=false`).
    pub tls: bool,
    /// The user name, if the URL has credentials.
    pub user: Option<String>,
    /// The URL as given, with the password replaced by `***`.
    redacted: String,
    /// What the client was handed (it holds the password).
    settings: ClientSettings,
}

impl EsdbUrl {
    /// `host:port[,host:port…]`, for messages.
    pub fn hosts_text(&self) -> String {
        self.hosts.iter().map(|(host, port)| format!("{host}:{port}")).collect::<Vec<_>>().join(",")
    }

    /// The client settings (they hold the password: never print them).
    pub fn client_settings(&self) -> &ClientSettings {
        &self.settings
    }
}

impl fmt::Display for EsdbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for EsdbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbUrl")
            .field("url", &self.redacted)
            .field("discover", &self.discover)
            .field("hosts", &self.hosts)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hosts}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Whether `scheme` names an EventStoreDB/KurrentDB store, and if so whether it asks for DNS
/// discovery (`+discover`); case-insensitive.
pub fn esdb_scheme(scheme: &str) -> Option<bool> {
    match scheme.to_ascii_lowercase().as_str() {
        "esdb" | "kurrentdb" | "kurrent" | "kdb" => Some(false),
        "esdb+discover" | "kurrentdb+discover" | "kurrent+discover" | "kdb+discover" => Some(true),
        _ => None,
    }
}

/// Parses an EventStoreDB / KurrentDB connection string, checking it the way the client will,
/// without connecting:
///
/// - `esdb://[user:password@]host[:port][,host[:port]…][?param=value&…]` (port 2113 by default),
/// - `esdb+discover://[user:password@]dns-name[:port][?…]` (cluster discovery through DNS),
/// - `kurrentdb://`, `kurrent://`, `kdb://` and their `+discover` forms, handed to the client as
///   `esdb://` / `esdb+discover://`.
///
/// Parameters are the client's (`tls`, `tlsVerifyCert`, `tlsCAFile`, `nodePreference`,
/// `maxDiscoverAttempts`, `discoveryInterval`, `gossipTimeout`, `keepAliveInterval`,
/// `keepAliveTimeout`, `defaultDeadline`, `connectionName`, `userCertFile`, `userKeyFile`, case
/// insensitive); anything else, a path, a fragment, an empty host, a bad port or a
/// `nodePreference` other than `leader` is refused with a message that says what to write.
pub fn parse_esdb_url(url: &str) -> Result<EsdbUrl, String> {
    const EXAMPLE: &str = "esdb://HOST:2113?tls=false";
    let url = url.trim();
    let redacted = redact(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "'{redacted}' is not an EventStoreDB URL: write {EXAMPLE} (or esdb+discover://, kurrentdb://, kurrentdb+discover://)"
        ));
    };
    let Some(discover) = esdb_scheme(scheme) else {
        return Err(format!(
            "'{redacted}': unknown scheme '{}://'; an EventStoreDB/KurrentDB store is esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover://",
            scheme.to_ascii_lowercase()
        ));
    };
    if rest.contains('#') {
        return Err(format!("'{redacted}': a fragment ('#…') is not part of an EventStoreDB URL"));
    }
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err(format!("'{redacted}': an EventStoreDB URL has no path; write {EXAMPLE}"));
    }
    let (userinfo, hosts_text) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let user = userinfo.map(|userinfo| userinfo.split_once(':').map_or(userinfo, |(user, _)| user).to_string());
    if user.as_deref() == Some("") {
        return Err(format!("'{redacted}': the user name before '@' is empty"));
    }
    if hosts_text.is_empty() {
        return Err(format!("'{redacted}' names no host: write {EXAMPLE}"));
    }
    let hosts = hosts_text
        .split(',')
        .map(parse_host)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|problem| format!("'{redacted}': {problem}"))?;
    if discover && hosts.len() != 1 {
        return Err(format!(
            "'{redacted}': DNS discovery ({scheme}://) takes one name, the cluster's DNS name; list nodes with esdb://HOST1:PORT,HOST2:PORT instead"
        ));
    }

    let mut tls = true;
    let mut params = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("'{redacted}': parameter '{pair}' has no value (write {pair}=…)"));
        };
        let boolean = |value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("'{redacted}': {key} must be true or false, not '{value}'")),
        };
        match key.to_ascii_lowercase().as_str() {
            "tls" => tls = boolean(value)?,
            "tlsverifycert" => {
                boolean(value)?;
            }
            "nodepreference" if value.eq_ignore_ascii_case("leader") => {}
            "nodepreference" => {
                return Err(format!(
                    "'{redacted}': nodePreference={value}: thitl reads back what it appends, which only the leader is sure to have; drop the parameter (leader is the default)"
                ));
            }
            "maxdiscoverattempts"
            | "discoveryinterval"
            | "gossiptimeout"
            | "keepaliveinterval"
            | "keepalivetimeout"
            | "defaultdeadline"
            | "connectionname"
            | "tlscafile"
            | "usercertfile"
            | "userkeyfile" => {}
            _ => {
                return Err(format!(
                    "'{redacted}': unknown parameter '{key}'; the client knows tls, tlsVerifyCert, tlsCAFile, nodePreference, maxDiscoverAttempts, discoveryInterval, gossipTimeout, keepAliveInterval, keepAliveTimeout, defaultDeadline, connectionName, userCertFile, userKeyFile"
                ));
            }
        }
        params.push(pair);
    }
    // Every port written out: the client reads `a,b:2` as a:2113,b:2113.
    let hosts_with_ports = hosts.iter().map(|(host, port)| format!("{host}:{port}")).collect::<Vec<_>>().join(",");
    let client_string = format!(
        "{}://{}{}{}{}",
        if discover { "esdb+discover" } else { "esdb" },
        userinfo.map(|userinfo| format!("{userinfo}@")).unwrap_or_default(),
        hosts_with_ports,
        if params.is_empty() { "" } else { "?" },
        params.join("&"),
    );
    let settings: ClientSettings = client_string.parse().map_err(|error: eventstore::ClientSettingsParseError| {
        format!("'{redacted}': the EventStoreDB client refuses it: {}", error.message())
    })?;
    Ok(EsdbUrl { discover, hosts, tls, user, redacted, settings })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host(text: &str) -> Result<(String, u16), String> {
    if text.is_empty() {
        return Err("an empty host (two commas in a row, or a comma at an end)".into());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (address, after) =
            rest.split_once(']').ok_or_else(|| format!("host '{text}': an IPv6 address needs its closing ']'"))?;
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err(format!("host '{text}' is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| format!("host '{text}': expected ':PORT' after ']'"))?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if host.is_empty() {
            return Err(format!("'{text}' has a port but no host"));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(format!("host '{host}' has characters a host name cannot have"));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => 2113,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("port '{port}' of host '{host}' is not a number from 1 to 65535"))?,
    };
    Ok((host, port))
}

// ---------------------------------------------------------------------------------------------
// Versions, revisions and errors

/// The expected revision that means `expected` (thitl versions are 1-based counts, revisions
/// 0-based event numbers): `Exact(0)` is `NoStream`, `Exact(n)` is `Exact(n - 1)`.
pub fn expected_revision(expected: ExpectedVersion) -> ExpectedRevision {
    match expected {
        ExpectedVersion::Any => ExpectedRevision::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => ExpectedRevision::NoStream,
        ExpectedVersion::Exact(version) => ExpectedRevision::Exact(version - 1),
    }
}

/// The thitl expectation an expected revision means; `StreamExists` has none.
pub fn expected_version(revision: ExpectedRevision) -> Option<ExpectedVersion> {
    match revision {
        ExpectedRevision::Any => Some(ExpectedVersion::Any),
        ExpectedRevision::NoStream => Some(ExpectedVersion::NoStream),
        ExpectedRevision::Exact(revision) => revision.checked_add(1).map(ExpectedVersion::Exact),
        ExpectedRevision::StreamExists => None,
    }
}

/// A stream's version (its number of events) from its current revision.
pub fn stream_version_of(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(revision) => revision.saturating_add(1),
    }
}

/// The stream version a wrong-expected-version error reports, if `error` is one.
fn conflict_version(error: &eventstore::Error) -> Option<u64> {
    match error {
        eventstore::Error::WrongExpectedVersion { current, .. } => Some(stream_version_of(*current)),
        _ => None,
    }
}

/// A wrong-expected-version error of the client as thitl's, for an append that expected
/// `expected`; `None` for any other error.
pub fn conflict_error(stream: &StreamName, expected: ExpectedVersion, error: &eventstore::Error) -> Option<StoreError> {
    conflict_version(error).map(|actual| StoreError::WrongExpectedVersion { stream: stream.clone(), expected, actual })
}

/// The client's connection task has stopped: a new client is needed.
fn is_connection_lost(error: &eventstore::Error) -> bool {
    matches!(error, eventstore::Error::ConnectionClosed | eventstore::Error::GrpcConnectionError(_))
}

/// What to try when a node cannot be reached, given whether the URL uses TLS.
fn tls_hint(url: &EsdbUrl) -> &'static str {
    if url.tls {
        "is the node running and reachable? The URL uses TLS (the default): a node started with --insecure needs ?tls=false in the URL, and a node with a self-signed certificate needs tlsCAFile=… (or tlsVerifyCert=false)"
    } else {
        "is the node running and reachable? The URL says tls=false: a node that runs with TLS (EventStoreDB's default) needs the URL without tls=false"
    }
}

/// A client error as a `StoreError::Backend` that names the node, what was being done, and
/// what to try.
fn describe_error(url: &EsdbUrl, doing: &str, error: &eventstore::Error) -> StoreError {
    let hosts = url.hosts_text();
    StoreError::Backend(match error {
        eventstore::Error::AccessDenied => format!(
            "EventStoreDB at {hosts} denied access while {doing}: the URL's user must be allowed to read and write thitl's streams and to read $all (e.g. esdb://admin:PASSWORD@{hosts})"
        ),
        eventstore::Error::ConnectionClosed => format!(
            "cannot reach EventStoreDB at {hosts} while {doing}: the client's connection stopped (it also stops when its TLS setup panics: unreadable platform certificates, another rustls crypto provider; see the log); {}",
            tls_hint(url)
        ),
        eventstore::Error::GrpcConnectionError(_)
        | eventstore::Error::ServerError(_)
        | eventstore::Error::DeadlineExceeded
        | eventstore::Error::NotLeaderException(_) => {
            format!("cannot reach EventStoreDB at {hosts} while {doing}: {error}; {}", tls_hint(url))
        }
        other => format!("EventStoreDB at {hosts} failed while {doing}: {other}"),
    })
}

// ---------------------------------------------------------------------------------------------
// Events: what is written, and how it is read back

/// [`prepared::prepare`], also refusing event types that EventStoreDB reserves for system events.
fn prepare(events: &[NewEvent]) -> Result<Vec<PreparedEvent>, StoreError> {
    if let Some(event) = events.iter().find(|event| event.event_type.starts_with('$')) {
        return Err(StoreError::InvalidEvent(format!(
            "event {}: event type {:?} starts with '$', which EventStoreDB reserves for system events",
            event.metadata.event_id, event.event_type
        )));
    }
    prepared::prepare(events)
}

/// The custom metadata of a thitl event in EventStoreDB (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EsdbMetadata {
    /// The layout of this object ([`METADATA_FORMAT`]).
    thitl: u32,
    schema_version: u32,
    event_id: Uuid,
    /// `chain::format_recorded_at`: RFC 3339, 6 fractional digits, `Z`.
    recorded_at: String,
    actor: Actor,
    #[serde(rename = "$correlationId")]
    correlation_id: Uuid,
    #[serde(rename = "$causationId", default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    prev_hash: String,
    hash: String,
}

/// The custom-metadata bytes of an event of schema `schema_version` with `metadata` and hashes.
fn encode_metadata(
    schema_version: u32,
    metadata: &EventMetadata,
    prev_hash: &[u8; 32],
    hash: &[u8; 32],
) -> Result<Vec<u8>, StoreError> {
    let record = EsdbMetadata {
        thitl: METADATA_FORMAT,
        schema_version,
        event_id: metadata.event_id,
        recorded_at: chain::format_recorded_at(&metadata.recorded_at),
        actor: metadata.actor.clone(),
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        prev_hash: hex::encode(prev_hash),
        hash: hex::encode(hash),
    };
    serde_json::to_vec(&record)
        .map_err(|error| StoreError::InvalidEvent(format!("event {}: metadata: {error}", metadata.event_id)))
}

/// The events of a batch as the client sends them, hashed after `prev_hash` from version
/// `version + 1` on; also returns each event's hash.
fn encode_batch(
    stream: &StreamName,
    version: u64,
    prev_hash: [u8; 32],
    batch: &[PreparedEvent],
) -> Result<(Vec<EventData>, Vec<[u8; 32]>), StoreError> {
    let mut prev_hash = prev_hash;
    let mut data = Vec::with_capacity(batch.len());
    let mut hashes = Vec::with_capacity(batch.len());
    for (index, event) in batch.iter().enumerate() {
        let hash = chain::event_hash(&prev_hash, &event.fields(stream, version + 1 + index as u64));
        let metadata = encode_metadata(event.schema_version, &event.metadata, &prev_hash, &hash)?;
        // The payload text exactly as hashed (not serialised again).
        let payload = serde_json::value::RawValue::from_string(event.payload.clone()).map_err(|error| {
            StoreError::InvalidEvent(format!("event {}: payload: {error}", event.metadata.event_id))
        })?;
        let event_data = EventData::json(&event.event_type, &payload)
            .map_err(|error| StoreError::InvalidEvent(format!("event {}: payload: {error}", event.metadata.event_id)))?
            .id(event.metadata.event_id)
            .metadata(Bytes::from(metadata));
        data.push(event_data);
        hashes.push(hash);
        prev_hash = hash;
    }
    Ok((data, hashes))
}

/// Whether an event of `$all` is a system event: its stream or its type starts with `$`.
pub fn is_system_event(stream_id: &str, event_type: &str) -> bool {
    stream_id.starts_with('$') || event_type.starts_with('$')
}

/// The thitl stream name of an event of `$all` for a store with `namespace` (the prefix
/// stripped), or `None` for system events and other namespaces' events.
fn visible_stream<'a>(namespace: &str, stream_id: &'a str, event_type: &str) -> Option<&'a str> {
    if is_system_event(stream_id, event_type) {
        return None;
    }
    stream_id.strip_prefix(namespace).filter(|name| !name.is_empty())
}

/// An event's position in `$all` (its commit position), if the server reported one. `0` and
/// `u64::MAX` (what servers send for "unknown") are not positions.
fn event_position(resolved: &ResolvedEvent) -> Option<u64> {
    let known = |position: u64| (position != 0 && position != u64::MAX).then_some(position);
    let recorded = resolved.event.as_ref()?;
    known(recorded.position.commit)
        .or_else(|| resolved.commit_position.and_then(known))
        .or_else(|| known(recorded.position.prepare))
}

/// Rebuilds the `StoredEvent` that `recorded` holds, as thitl stream `stream` at `position`.
fn decode_recorded(recorded: &RecordedEvent, stream: StreamName, position: u64) -> Result<StoredEvent, StoreError> {
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "EventStoreDB stream {} revision {} (position {position}): {what}",
            recorded.stream_id, recorded.revision
        ))
    };
    let version = recorded.revision.checked_add(1).ok_or_else(|| corrupt("revision out of range".into()))?;
    let payload =
        String::from_utf8(recorded.data.to_vec()).map_err(|_| corrupt("its data is not UTF-8 JSON text".into()))?;
    let metadata: EsdbMetadata = serde_json::from_slice(&recorded.custom_metadata)
        .map_err(|error| corrupt(format!("its metadata is not a thitl event's ({error})")))?;
    if metadata.thitl != METADATA_FORMAT {
        return Err(StoreError::UnsupportedFormat(format!(
            "EventStoreDB stream {} revision {} is in thitl event format {}; this build reads format {METADATA_FORMAT}",
            recorded.stream_id, recorded.revision, metadata.thitl
        )));
    }
    if metadata.event_id != recorded.id {
        return Err(corrupt(format!(
            "its metadata names event id {}, EventStoreDB has {}",
            metadata.event_id, recorded.id
        )));
    }
    let recorded_at = chain::parse_recorded_at(&metadata.recorded_at)
        .ok_or_else(|| corrupt(format!("unreadable recorded_at {:?}", metadata.recorded_at)))?;
    let hash = |text: &str, what: &str| -> Result<[u8; 32], StoreError> {
        hex::decode(text)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| corrupt(format!("unreadable {what}")))
    };
    Ok(StoredEvent {
        position,
        stream,
        version,
        event_type: recorded.event_type.clone(),
        schema_version: metadata.schema_version,
        metadata: EventMetadata {
            event_id: metadata.event_id,
            recorded_at,
            actor: metadata.actor,
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
        },
        payload,
        prev_hash: hash(&metadata.prev_hash, "prev_hash")?,
        hash: hash(&metadata.hash, "hash")?,
    })
}

/// An event read from thitl stream `stream`.
fn decode_stream_event(resolved: &ResolvedEvent, stream: &StreamName) -> Result<StoredEvent, StoreError> {
    let recorded = resolved.event.as_ref().ok_or_else(|| {
        StoreError::Corrupt(format!("stream {stream}: a link event where a thitl event was expected"))
    })?;
    let position = event_position(resolved).ok_or_else(|| {
        StoreError::Backend(format!(
            "EventStoreDB did not report the $all position of stream {stream} version {} on a stream read; thitl needs a server that does (an older EventStoreDB?)",
            recorded.revision.saturating_add(1)
        ))
    })?;
    decode_recorded(recorded, stream.clone(), position)
}

// ---------------------------------------------------------------------------------------------
// The idempotency rule

/// What an append does, given what is known of the batch's ids in the stream.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Answer without appending (a replay's original result, or an error).
    Done(Result<AppendResult, StoreError>),
    /// Append the batch after version `actual`.
    Append,
}

/// The idempotency rule of the `store` module doc, on the stream's events that carry the batch's
/// ids (`known`, by id) and the stream's version `actual`. As in SQLite: a batch whose first id
/// is stored is a replay or an error, whatever the expectation; otherwise the expectation is
/// checked, then any stored id makes the batch a partial replay or a duplicate.
fn decide(
    stream: &StreamName,
    expected: ExpectedVersion,
    actual: u64,
    batch: &[PreparedEvent],
    known: &HashMap<Uuid, StoredEvent>,
) -> Decision {
    let Some(first) = batch.first() else { return Decision::Done(Err(StoreError::EmptyAppend)) };
    if let Some(first_stored) = known.get(&first.metadata.event_id) {
        let mut result = AppendResult {
            first_position: first_stored.position,
            last_position: first_stored.position,
            stream_version: first_stored.version,
        };
        for (index, event) in batch.iter().enumerate() {
            let event_id = event.metadata.event_id;
            let Some(stored) = known.get(&event_id) else {
                return Decision::Done(Err(StoreError::PartialReplay { event_id }));
            };
            if !event.is_same_as(stream, stored) {
                return Decision::Done(Err(StoreError::DuplicateEventId { event_id }));
            }
            if stored.version != first_stored.version + index as u64 {
                return Decision::Done(Err(StoreError::PartialReplay { event_id }));
            }
            result.last_position = stored.position;
            result.stream_version = stored.version;
        }
        return Decision::Done(Ok(result));
    }
    if !expected.matches(actual) {
        return Decision::Done(Err(StoreError::WrongExpectedVersion { stream: stream.clone(), expected, actual }));
    }
    for event in batch {
        let event_id = event.metadata.event_id;
        if let Some(stored) = known.get(&event_id) {
            return Decision::Done(Err(if event.is_same_as(stream, stored) {
                StoreError::PartialReplay { event_id }
            } else {
                StoreError::DuplicateEventId { event_id }
            }));
        }
    }
    Decision::Append
}

/// Where else (first versions of ranges of `batch.len()` events) the batch's events may be
/// stored, beyond the tail already read (versions `lowest_read..=actual`): after the version a
/// retried exact append expected, and `index` versions before a later event of the batch found.
fn replay_windows(
    expected: ExpectedVersion,
    actual: u64,
    lowest_read: u64,
    batch: &[PreparedEvent],
    known: &HashMap<Uuid, StoredEvent>,
) -> Vec<u64> {
    let Some(first) = batch.first() else { return Vec::new() };
    if known.contains_key(&first.metadata.event_id) {
        return Vec::new();
    }
    let mut starts = Vec::new();
    match expected {
        ExpectedVersion::NoStream if actual > 0 => starts.push(1),
        ExpectedVersion::Exact(version) if version < actual => starts.push(version + 1),
        _ => {}
    }
    let found = batch
        .iter()
        .enumerate()
        .find_map(|(index, event)| known.get(&event.metadata.event_id).map(|stored| (index as u64, stored.version)));
    if let Some((index, version)) = found
        && let Some(start) = version.checked_sub(index).filter(|&start| start >= 1)
    {
        starts.push(start);
    }
    starts.retain(|&start| start < lowest_read);
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// Adds the events of `events` that carry one of `ids` to `known`.
fn remember(known: &mut HashMap<Uuid, StoredEvent>, ids: &HashSet<Uuid>, events: Vec<StoredEvent>) {
    for event in events {
        if ids.contains(&event.metadata.event_id) {
            known.entry(event.metadata.event_id).or_insert(event);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reads through the client

/// The next message of a read, waiting at most [`IDLE_TIMEOUT`].
async fn next_read(stream: &mut ReadStream) -> Result<Option<ResolvedEvent>, eventstore::Error> {
    match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
        Ok(result) => result,
        Err(_) => Err(eventstore::Error::DeadlineExceeded),
    }
}

/// Up to `count` events of the EventStoreDB stream `name`, forwards from revision `from`, or
/// backwards from its end when `from` is `None`; `None` when the stream does not exist (or was
/// deleted).
async fn read_esdb_stream(
    client: Client,
    name: String,
    from: Option<u64>,
    count: usize,
) -> Result<Option<Vec<ResolvedEvent>>, eventstore::Error> {
    let options = match from {
        Some(revision) => ReadStreamOptions::default().position(StreamPosition::Position(revision)).forwards(),
        None => ReadStreamOptions::default().position(StreamPosition::End).backwards(),
    }
    .max_count(count);
    let mut stream = match tokio::time::timeout(IDLE_TIMEOUT, client.read_stream(name.as_str(), &options)).await {
        Err(_) => return Err(eventstore::Error::DeadlineExceeded),
        Ok(Err(eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted)) => return Ok(None),
        Ok(result) => result?,
    };
    let mut events = Vec::with_capacity(count.min(64));
    loop {
        match next_read(&mut stream).await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return Ok(Some(events)),
            Err(eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
}

/// Up to `count` events of `$all` from `start` (inclusive), forwards or backwards.
async fn read_all_page(
    client: Client,
    start: StreamPosition<Position>,
    backwards: bool,
    count: usize,
) -> Result<Vec<ResolvedEvent>, eventstore::Error> {
    let options = ReadAllOptions::default().position(start).max_count(count);
    let options = if backwards { options.backwards() } else { options.forwards() };
    let mut stream = match tokio::time::timeout(IDLE_TIMEOUT, client.read_all(&options)).await {
        Err(_) => return Err(eventstore::Error::DeadlineExceeded),
        Ok(result) => result?,
    };
    let mut events = Vec::with_capacity(count.min(64));
    while let Some(event) = next_read(&mut stream).await? {
        events.push(event);
    }
    Ok(events)
}

/// The position of the last event of `$all` (system events included), if any.
async fn last_log_position(client: Client) -> Result<Option<Position>, eventstore::Error> {
    let page = read_all_page(client, StreamPosition::End, true, 1).await?;
    Ok(page.first().and_then(|resolved| resolved.event.as_ref()).map(|recorded| recorded.position))
}

// ---------------------------------------------------------------------------------------------
// The store

/// What the store's tasks share.
struct Inner {
    url: EsdbUrl,
    /// Prefix of every stream name in EventStoreDB; empty for a store that owns the node.
    namespace: String,
    /// For a new namespace: the last event of `$all` when it was created; nothing of the
    /// namespace lies at or before it, so reads of `$all` start there.
    floor: Option<Position>,
    /// Replaced when its connection task has stopped (see the module doc).
    client: RwLock<Client>,
}

/// The EventStoreDB / KurrentDB event store; see the module doc. Cheap to share: wrap it in an
/// `Arc`. Blocking calls, safe from any thread (it runs its own tokio runtime).
pub struct EsdbStore {
    inner: Arc<Inner>,
    handle: Handle,
    _runtime: OwnedRuntime,
}

/// The store's runtime, shut down in the background when dropped: `Runtime::drop` blocks, which
/// panics inside async code, and a store (or a failed `connect`) may be dropped there.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for EsdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbStore")
            .field("url", &self.inner.url.redacted)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// Runs `future` on the runtime behind `handle` and waits for it on this thread, at most `limit`.
fn run_on<T: Send + 'static>(
    handle: &Handle,
    limit: Duration,
    doing: &str,
    future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (sender, receiver) = mpsc::sync_channel(1);
    let task = handle.spawn(async move {
        let _ = sender.send(future.await);
    });
    match receiver.recv_timeout(limit) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            task.abort();
            Err(StoreError::Backend(format!("EventStoreDB: {doing} did not finish within {} s", limit.as_secs())))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Backend(format!(
            "EventStoreDB: {doing} stopped without an answer (the client panicked; see the log)"
        ))),
    }
}

fn check_namespace(namespace: &str) -> Result<(), StoreError> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_LEN
        && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "invalid EventStoreDB namespace {namespace:?}: use 1 to {MAX_NAMESPACE_LEN} characters from A-Z, a-z, 0-9, '_', '.', ':', '-'"
        )))
    }
}

impl EsdbStore {
    /// Neither gap-free positions (commit positions are byte offsets in the log) nor detection of
    /// an event id stored in another stream (no index by id; see the module doc).
    pub const CAPABILITIES: Capabilities = Capabilities::NONE;

    /// Connects to the node(s) of `url` (see [`parse_esdb_url`]) and checks that `$all` can be
    /// read; the store owns every non-system stream of the node.
    pub fn connect(url: &str) -> Result<EsdbStore, StoreError> {
        EsdbStore::open(url, String::new(), false)
    }

    /// Like [`connect`](Self::connect), but thitl stream `s` is EventStoreDB stream
    /// `{namespace}s`, and only streams with that prefix are seen (the prefix stripped).
    pub fn connect_namespaced(url: &str, namespace: &str) -> Result<EsdbStore, StoreError> {
        check_namespace(namespace)?;
        EsdbStore::open(url, namespace.to_string(), false)
    }

    /// Like [`connect_namespaced`](Self::connect_namespaced) for a namespace that has no events
    /// yet (a fresh random prefix): `$all` is read from its end at connect time on, so the
    /// store's reads do not scan the node's older events. Events of the namespace written
    /// before this call are not seen.
    pub fn connect_new_namespace(url: &str, namespace: &str) -> Result<EsdbStore, StoreError> {
        check_namespace(namespace)?;
        EsdbStore::open(url, namespace.to_string(), true)
    }

    /// The connection string, password hidden.
    pub fn url(&self) -> &EsdbUrl {
        &self.inner.url
    }

    /// The stream-name prefix (empty without a namespace).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn open(url: &str, namespace: String, new_namespace: bool) -> Result<EsdbStore, StoreError> {
        let url = parse_esdb_url(url).map_err(StoreError::Backend)?;
        let first_client = (!CLIENT_STARTED.load(Ordering::SeqCst))
            .then(|| FIRST_CLIENT.lock().unwrap_or_else(PoisonError::into_inner));
        if !CLIENT_STARTED.load(Ordering::SeqCst) && rustls::crypto::CryptoProvider::get_default().is_some() {
            return Err(StoreError::Backend(
                "cannot start the EventStoreDB client: a rustls crypto provider is already installed in this process, and the eventstore 4.0 client panics when it installs its own \
                 at its first connection; connect to EventStoreDB before anything else installs one"
                    .into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thitl-esdb")
            .enable_all()
            .build()
            .map_err(|error| StoreError::Backend(format!("cannot start the EventStoreDB client's runtime: {error}")))?;
        let handle = runtime.handle().clone();
        let runtime = OwnedRuntime(Some(runtime));
        let (settings, probe_url) = (url.settings.clone(), url.clone());
        let connected = run_on(&handle, CONNECT_LIMIT, &format!("connecting to {}", url.hosts_text()), async move {
            let client = Client::with_runtime_handle(Handle::current(), settings)
                .map_err(|error| describe_error(&probe_url, "starting the client", &error))?;
            let last = last_log_position(client.clone())
                .await
                .map_err(|error| describe_error(&probe_url, "reading the end of $all", &error))?;
            Ok((client, last))
        });
        // The probe went through the connection task, which installs the client's provider
        // before it connects (whether or not the connection then succeeded).
        if rustls::crypto::CryptoProvider::get_default().is_some() {
            CLIENT_STARTED.store(true, Ordering::SeqCst);
        }
        drop(first_client);
        let (client, last) = connected?;
        let inner =
            Inner { url, namespace, floor: if new_namespace { last } else { None }, client: RwLock::new(client) };
        Ok(EsdbStore { inner: Arc::new(inner), handle, _runtime: runtime })
    }

    fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        doing: &str,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        run_on(&self.handle, limit, doing, future)
    }
}

impl Inner {
    fn esdb_name(&self, stream: &StreamName) -> String {
        format!("{}{stream}", self.namespace)
    }

    fn floor_commit(&self) -> u64 {
        self.floor.map_or(0, |position| position.commit)
    }

    fn client(&self) -> Client {
        self.client.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A new client, the old one's connection task having stopped. Runs on the store's runtime.
    fn replace_client(&self) {
        match Client::with_runtime_handle(Handle::current(), self.url.settings.clone()) {
            Ok(client) => *self.client.write().unwrap_or_else(PoisonError::into_inner) = client,
            Err(error) => {
                tracing::warn!("cannot restart the EventStoreDB client for {}: {error}", self.url.hosts_text())
            }
        }
    }

    fn fail(&self, doing: &str, error: eventstore::Error) -> StoreError {
        describe_error(&self.url, doing, &error)
    }

    /// Runs `op` with the client; once more with a new client if the connection was lost.
    async fn call_raw<T, F, Fut>(&self, op: F) -> Result<T, eventstore::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, eventstore::Error>>,
    {
        match op(self.client()).await {
            Err(error) if is_connection_lost(&error) => {
                self.replace_client();
                op(self.client()).await
            }
            other => other,
        }
    }

    async fn call<T, F, Fut>(&self, doing: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, eventstore::Error>>,
    {
        self.call_raw(op).await.map_err(|error| self.fail(doing, error))
    }

    /// Events of `stream` forwards from revision `from`, or its last ones (newest first) when
    /// `from` is `None`; empty for a missing stream.
    async fn read_stream_events(
        &self,
        stream: &StreamName,
        from: Option<u64>,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let name = self.esdb_name(stream);
        let events = self
            .call(&format!("reading stream {stream}"), |client| read_esdb_stream(client, name.clone(), from, count))
            .await?;
        events.unwrap_or_default().iter().map(|resolved| decode_stream_event(resolved, stream)).collect()
    }

    /// The thitl event an event of `$all` is, or `None` for system events and other namespaces.
    fn decode_all_event(&self, resolved: &ResolvedEvent) -> Result<Option<StoredEvent>, StoreError> {
        let Some(recorded) = resolved.event.as_ref() else { return Ok(None) };
        let Some(name) = visible_stream(&self.namespace, &recorded.stream_id, &recorded.event_type) else {
            return Ok(None);
        };
        let position = event_position(resolved).ok_or_else(|| {
            StoreError::Backend(format!("EventStoreDB read $all without a position for stream {}", recorded.stream_id))
        })?;
        let stream = StreamName::new(name).map_err(|_| {
            StoreError::Corrupt(format!(
                "EventStoreDB stream {:?} (position {position}) is not a valid thitl stream name",
                recorded.stream_id
            ))
        })?;
        decode_recorded(recorded, stream, position).map(Some)
    }

    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedVersion,
        batch: Vec<PreparedEvent>,
    ) -> Result<AppendResult, StoreError> {
        let name = self.esdb_name(&stream);
        let ids: HashSet<Uuid> = batch.iter().map(|event| event.metadata.event_id).collect();
        let mut scan_whole_stream = false;
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                // Writers that collided should not collide again in step.
                let jitter = (Uuid::now_v7().as_u128() as u64) % (5 << attempt.min(4));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let tail = self.read_stream_events(&stream, None, TAIL).await?;
            let actual = tail.first().map_or(0, |event| event.version);
            let prev_hash = tail.first().map_or(chain::GENESIS_PREV_HASH, |event| event.hash);
            let lowest_read = tail.last().map_or(actual + 1, |event| event.version);
            let mut known = HashMap::new();
            remember(&mut known, &ids, tail);
            if scan_whole_stream {
                remember(&mut known, &ids, self.read_stream_events(&stream, Some(0), usize::MAX).await?);
            } else {
                for start in replay_windows(expected, actual, lowest_read, &batch, &known) {
                    remember(&mut known, &ids, self.read_stream_events(&stream, Some(start - 1), batch.len()).await?);
                }
            }
            if let Decision::Done(result) = decide(&stream, expected, actual, &batch, &known) {
                return result;
            }
            let (data, hashes) = encode_batch(&stream, actual, prev_hash, &batch)?;
            let options =
                AppendToStreamOptions::default().expected_revision(expected_revision(ExpectedVersion::Exact(actual)));
            let written = self
                .call_raw(|client| {
                    let (name, options, data) = (name.clone(), options.clone(), data.clone());
                    async move { client.append_to_stream(name.as_str(), &options, data).await }
                })
                .await;
            match written {
                Ok(write) => {
                    return self.confirm_append(&stream, actual, &batch, &hashes, write.next_expected_version).await;
                }
                Err(eventstore::Error::ResourceDeleted) => {
                    return Err(StoreError::Backend(format!(
                        "stream {stream} ({name}) was deleted in EventStoreDB, which refuses appends to it; thitl streams are never deleted"
                    )));
                }
                Err(error) => match conflict_version(&error) {
                    // EventStoreDB says the stream is where it was read, yet refused: its own
                    // idempotency check found one of the ids further back. Look at all of it,
                    // once.
                    Some(current) if current == actual && !scan_whole_stream => scan_whole_stream = true,
                    Some(current) if current == actual => {
                        return Err(StoreError::Backend(format!(
                            "EventStoreDB refuses to append to {stream} at version {actual} although no other writer moved the stream, and none of the batch's event ids is in it: {error}"
                        )));
                    }
                    // Another writer appended first.
                    Some(_) if expected != ExpectedVersion::Any => {
                        return Err(conflict_error(&stream, expected, &error)
                            .unwrap_or(StoreError::Backend(format!("appending to {stream}: {error}"))));
                    }
                    Some(_) => {}
                    None => return Err(self.fail(&format!("appending to {stream}"), error)),
                },
            }
        }
        Err(StoreError::Backend(format!(
            "gave up appending to {stream} after {APPEND_ATTEMPTS} attempts: other writers kept appending to it first"
        )))
    }

    /// Reads back an append that EventStoreDB accepted (its last event at revision
    /// `last_revision`): the positions, and a check that what is stored is what was hashed.
    async fn confirm_append(
        &self,
        stream: &StreamName,
        actual: u64,
        batch: &[PreparedEvent],
        hashes: &[[u8; 32]],
        last_revision: u64,
    ) -> Result<AppendResult, StoreError> {
        let count = batch.len() as u64;
        let first_revision = last_revision.checked_add(1).and_then(|next| next.checked_sub(count));
        if first_revision != Some(actual) {
            return Err(StoreError::Backend(format!(
                "EventStoreDB stored the append to {stream} ending at version {} where versions {}..={} were expected: was the stream deleted or truncated in EventStoreDB? thitl streams must keep every event",
                last_revision.saturating_add(1),
                actual + 1,
                actual + count
            )));
        }
        let stored = self.read_stream_events(stream, Some(actual), batch.len()).await?;
        let matches = stored.len() == batch.len()
            && stored.iter().zip(batch).zip(hashes).all(|((stored, event), hash)| {
                stored.metadata.event_id == event.metadata.event_id
                    && stored.payload == event.payload
                    && stored.hash == *hash
            });
        match (matches, stored.first(), stored.last()) {
            (true, Some(first), Some(last)) => Ok(AppendResult {
                first_position: first.position,
                last_position: last.position,
                stream_version: last.version,
            }),
            _ => Err(StoreError::Backend(format!(
                "EventStoreDB accepted the append to {stream} (versions {}..={}), but reading it back does not give the events appended (ids, payload text or hashes differ)",
                actual + 1,
                actual + count
            ))),
        }
    }

    /// The position of the first event of `$all` after commit position `after`, searching from
    /// the end backwards (for an `after` that is not itself an event's position).
    async fn first_position_after(&self, after: u64) -> Result<Option<Position>, StoreError> {
        let stop = after.max(self.floor_commit());
        let mut start = StreamPosition::End;
        let mut candidate: Option<Position> = None;
        let mut page_size = 64;
        loop {
            let page =
                self.call("reading $all backwards", |client| read_all_page(client, start, true, page_size)).await?;
            for recorded in page.iter().filter_map(|resolved| resolved.event.as_ref()) {
                if candidate.is_some_and(|candidate| recorded.position >= candidate) {
                    continue;
                }
                if recorded.position.commit <= stop {
                    return Ok(candidate);
                }
                candidate = Some(recorded.position);
            }
            match candidate {
                Some(position) if page.len() >= page_size => start = StreamPosition::Position(position),
                _ => return Ok(candidate),
            }
            page_size = (page_size * 2).min(ALL_PAGE);
        }
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let floor = self.floor_commit();
        let after = after.max(floor);
        let page_size = limit.saturating_add(1).clamp(16, ALL_PAGE);
        // Whether `start` is known to be an event's position.
        let (mut start, mut located) = match self.floor {
            Some(position) if after <= floor => (StreamPosition::Position(position), true),
            None if after == 0 => (StreamPosition::Start, true),
            _ => (StreamPosition::Position(Position { commit: after, prepare: after }), false),
        };
        // Pages after the first start at the last event of the previous one, which is skipped.
        let mut resume: Option<Position> = None;
        let mut events = Vec::new();
        loop {
            let page = match self.call_raw(|client| read_all_page(client, start, false, page_size)).await {
                Ok(page) => page,
                Err(error)
                    if !located && !is_connection_lost(&error) && !matches!(error, eventstore::Error::AccessDenied) =>
                {
                    // Not an event's position (e.g. the runner's `position - 1`).
                    located = true;
                    match self.first_position_after(after).await? {
                        Some(position) => {
                            start = StreamPosition::Position(position);
                            continue;
                        }
                        None => return Ok(events),
                    }
                }
                Err(error) => return Err(self.fail("reading $all", error)),
            };
            located = true;
            let mut last = None;
            for resolved in &page {
                let Some(recorded) = resolved.event.as_ref() else { continue };
                last = Some(recorded.position);
                if resume.is_some_and(|resume| recorded.position <= resume) || recorded.position.commit <= after {
                    continue;
                }
                if let Some(event) = self.decode_all_event(resolved)? {
                    events.push(event);
                    if events.len() == limit {
                        return Ok(events);
                    }
                }
            }
            match last {
                Some(position) if page.len() >= page_size => {
                    resume = Some(position);
                    start = StreamPosition::Position(position);
                }
                _ => return Ok(events),
            }
        }
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let floor = self.floor_commit();
        let mut start = StreamPosition::End;
        let mut below: Option<Position> = None;
        let mut page_size = 32;
        loop {
            let page =
                self.call("reading the end of $all", |client| read_all_page(client, start, true, page_size)).await?;
            for resolved in &page {
                let Some(recorded) = resolved.event.as_ref() else { continue };
                if below.is_some_and(|below| recorded.position >= below) {
                    continue;
                }
                below = Some(recorded.position);
                if self.floor.is_some() && recorded.position.commit <= floor {
                    return Ok(0);
                }
                if visible_stream(&self.namespace, &recorded.stream_id, &recorded.event_type).is_some() {
                    return event_position(resolved).ok_or_else(|| {
                        StoreError::Backend(format!(
                            "EventStoreDB read $all without a position for stream {}",
                            recorded.stream_id
                        ))
                    });
                }
            }
            match below {
                Some(position) if page.len() >= page_size => start = StreamPosition::Position(position),
                _ => return Ok(0),
            }
            page_size = (page_size * 2).min(ALL_PAGE);
        }
    }

    async fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError> {
        let mut start = self.floor.map_or(StreamPosition::Start, StreamPosition::Position);
        let mut resume: Option<Position> = None;
        let mut versions: BTreeMap<StreamName, u64> = BTreeMap::new();
        loop {
            let page = self.call("reading $all", |client| read_all_page(client, start, false, ALL_PAGE)).await?;
            let mut last = None;
            for recorded in page.iter().filter_map(|resolved| resolved.event.as_ref()) {
                last = Some(recorded.position);
                if resume.is_some_and(|resume| recorded.position <= resume)
                    || self.floor.is_some_and(|floor| recorded.position <= floor)
                {
                    continue;
                }
                let Some(name) = visible_stream(&self.namespace, &recorded.stream_id, &recorded.event_type) else {
                    continue;
                };
                let stream = StreamName::new(name).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "EventStoreDB stream {:?} is not a valid thitl stream name",
                        recorded.stream_id
                    ))
                })?;
                let version = recorded.revision.saturating_add(1);
                let entry = versions.entry(stream).or_insert(version);
                *entry = (*entry).max(version);
            }
            match last {
                Some(position) if page.len() >= ALL_PAGE => {
                    resume = Some(position);
                    start = StreamPosition::Position(position);
                }
                _ => return Ok(versions.into_iter().collect()),
            }
        }
    }

    /// Waits until a visible event after `position` exists or `timeout` passes; returns its
    /// position, or the head at the timeout.
    async fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout.min(LONGEST_WAIT);
        let head = self.head().await?;
        if head > position {
            return Ok(head);
        }
        let start = match self.floor {
            Some(floor) if position <= floor.commit => StreamPosition::Position(floor),
            None if position == 0 => StreamPosition::Start,
            _ => StreamPosition::Position(Position { commit: position, prepare: position }),
        };
        let filter = if self.namespace.is_empty() {
            SubscriptionFilter::on_stream_name().exclude_system_events()
        } else {
            SubscriptionFilter::on_stream_name().add_prefix(&self.namespace)
        };
        let options = SubscribeToAllOptions::default().position(start).filter(filter);
        let mut failures = 0u32;
        'subscribe: while failures < 3 {
            let mut subscription = self.client().subscribe_to_all(&options).await;
            loop {
                match tokio::time::timeout_at(deadline, subscription.next_subscription_event()).await {
                    Err(_) => return self.head().await,
                    Ok(Ok(SubscriptionEvent::EventAppeared(resolved))) => {
                        let Some(recorded) = resolved.event.as_ref() else { continue };
                        let visible =
                            visible_stream(&self.namespace, &recorded.stream_id, &recorded.event_type).is_some();
                        match event_position(&resolved) {
                            Some(found) if visible && found > position => return Ok(found),
                            _ => {}
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(eventstore::Error::AccessDenied)) => {
                        return Err(self.fail("subscribing to $all", eventstore::Error::AccessDenied));
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(
                            "EventStoreDB subscription to $all at {} dropped ({error}); subscribing again",
                            self.url.hosts_text()
                        );
                        if is_connection_lost(&error) {
                            self.replace_client();
                        }
                        failures += 1;
                        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RETRY_PAUSE)).await;
                        continue 'subscribe;
                    }
                }
            }
        }
        // Subscribing keeps failing: poll the head until the deadline.
        loop {
            let head = self.head().await?;
            if head > position || tokio::time::Instant::now() >= deadline {
                return Ok(head);
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RETRY_PAUSE)).await;
        }
    }
}

impl EventStore for EsdbStore {
    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        let batch = prepare(events)?;
        let (inner, stream) = (Arc::clone(&self.inner), stream.clone());
        self.run(CALL_LIMIT, "an append", async move { inner.append(stream, expected, batch).await })
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
        let (inner, stream) = (Arc::clone(&self.inner), stream.clone());
        let revision = from_version.max(1) - 1;
        self.run(
            CALL_LIMIT,
            "a stream read",
            async move { inner.read_stream_events(&stream, Some(revision), limit).await },
        )
    }

    fn stream_version(&self, stream: &StreamName) -> Result<u64, StoreError> {
        let (inner, stream) = (Arc::clone(&self.inner), stream.clone());
        self.run(CALL_LIMIT, "reading a stream's version", async move {
            let name = inner.esdb_name(&stream);
            let last = inner
                .call(&format!("reading stream {stream}"), |client| read_esdb_stream(client, name.clone(), None, 1))
                .await?;
            Ok(last
                .unwrap_or_default()
                .first()
                .and_then(|resolved| resolved.event.as_ref())
                .map_or(0, |recorded| recorded.revision.saturating_add(1)))
        })
    }

    fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(CALL_LIMIT, "a read of $all", async move { inner.read_all(after_position, limit).await })
    }

    fn head_position(&self) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(CALL_LIMIT, "reading the head of $all", async move { inner.head().await })
    }

    fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        let limit = timeout.min(LONGEST_WAIT) + CALL_LIMIT;
        self.run(limit, "a wait for new events", async move { inner.wait_for_position_after(position, timeout).await })
    }

    fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(CALL_LIMIT, "listing streams", async move { inner.list_streams().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use domain::Role;
    use serde_json::json;

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    fn new_event(label: &str, payload: serde_json::Value) -> NewEvent {
        NewEvent {
            event_type: format!("Test{label}"),
            schema_version: 3,
            payload,
            metadata: EventMetadata {
                event_id: Uuid::now_v7(),
                // Nanoseconds, which the store truncates.
                recorded_at: Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap()
                    + chrono::Duration::nanoseconds(123_456_789),
                actor: Actor::new("alice", Role::Annotator),
                correlation_id: Uuid::now_v7(),
                causation_id: Some(Uuid::now_v7()),
            },
        }
    }

    /// The `RecordedEvent` EventStoreDB would hand back for `event` (custom metadata left empty).
    fn recorded(
        namespace: &str,
        stream: &StreamName,
        revision: u64,
        position: u64,
        event: &PreparedEvent,
    ) -> RecordedEvent {
        RecordedEvent {
            stream_id: format!("{namespace}{stream}"),
            id: event.metadata.event_id,
            revision,
            event_type: event.event_type.clone(),
            data: Bytes::from(event.payload.clone()),
            metadata: HashMap::new(),
            custom_metadata: Bytes::new(),
            is_json: true,
            position: Position { commit: position, prepare: position },
            created: Utc::now(),
        }
    }

    #[test]
    fn urls_accepted_and_what_they_mean() {
        let url = parse_esdb_url("esdb://localhost:2113?tls=false").unwrap();
        assert_eq!((url.discover, url.tls, url.user.as_deref()), (false, false, None));
        assert_eq!(url.hosts, vec![("localhost".to_string(), 2113)]);
        assert!(!url.client_settings().is_secure_mode_enabled());

        let url = parse_esdb_url("  esdb://db.example.com  ").unwrap();
        assert_eq!((url.hosts.clone(), url.tls), (vec![("db.example.com".to_string(), 2113)], true));
        assert!(url.client_settings().is_secure_mode_enabled());

        let url = parse_esdb_url(
            "esdb://admin:s3cret@node1:2111,node2:2112,node3?tls=true&tlsVerifyCert=false&maxDiscoverAttempts=5",
        )
        .unwrap();
        assert_eq!(
            url.hosts,
            vec![("node1".to_string(), 2111), ("node2".to_string(), 2112), ("node3".to_string(), 2113)]
        );
        assert_eq!(url.user.as_deref(), Some("admin"));
        assert_eq!(url.hosts_text(), "node1:2111,node2:2112,node3:2113");
        // The client parsed the same hosts, and the password never shows.
        let client_hosts: Vec<(String, u16)> = url
            .client_settings()
            .hosts()
            .iter()
            .map(|endpoint| (endpoint.host.clone(), endpoint.port as u16))
            .collect();
        assert_eq!(client_hosts, url.hosts);
        assert!(!url.client_settings().is_tls_certificate_verification_enabled());
        assert_eq!(url.client_settings().max_discover_attempts(), 5);
        assert!(url.client_settings().default_authenticated_user().is_some());
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        assert!(url.to_string().starts_with("esdb://admin:***@node1:2111"));

        // The client reads `a,b:2222` as a:2113,b:2113; every port is written out for it.
        let url = parse_esdb_url("esdb://a,b:2222").unwrap();
        let client_hosts: Vec<(String, u16)> = url
            .client_settings()
            .hosts()
            .iter()
            .map(|endpoint| (endpoint.host.clone(), endpoint.port as u16))
            .collect();
        assert_eq!(client_hosts, vec![("a".to_string(), 2113), ("b".to_string(), 2222)]);
        assert_eq!(url.hosts, client_hosts);

        let url = parse_esdb_url("esdb+discover://cluster.example.com:2113").unwrap();
        assert!(url.discover && url.client_settings().is_dns_discovery_enabled());
        assert_eq!(url.client_settings().node_preference(), eventstore::NodePreference::Leader);

        // KurrentDB's schemes are handed to the client as esdb://.
        let url = parse_esdb_url("kurrentdb://127.0.0.1:2113?tls=false").unwrap();
        assert_eq!((url.discover, url.tls), (false, false));
        assert_eq!(url.hosts, vec![("127.0.0.1".to_string(), 2113)]);
        let url = parse_esdb_url("KurrentDB+Discover://cluster.local?nodePreference=Leader").unwrap();
        assert!(url.discover && url.client_settings().is_dns_discovery_enabled());
        let url = parse_esdb_url("esdb://[::1]:2115/?TLS=false").unwrap();
        assert_eq!((url.hosts.clone(), url.tls), (vec![("[::1]".to_string(), 2115)], false));
        assert_eq!(url.client_settings().hosts()[0].port, 2115);
    }

    #[test]
    fn urls_refused_with_a_message_that_says_why() {
        for (url, expected) in [
            ("", "not an EventStoreDB URL"),
            ("localhost:2113", "not an EventStoreDB URL"),
            ("sqlite:data", "not an EventStoreDB URL"),
            ("http://localhost:2113", "unknown scheme 'http://'"),
            ("postgres://localhost", "unknown scheme 'postgres://'"),
            ("esdb://", "names no host"),
            ("esdb://?tls=false", "names no host"),
            ("esdb://admin:pw@", "names no host"),
            ("esdb://:2113", "has a port but no host"),
            ("esdb://localhost:abc", "port 'abc' of host 'localhost' is not a number"),
            ("esdb://localhost:0", "port '0'"),
            ("esdb://localhost:70000", "port '70000'"),
            ("esdb://a:1,,b:2", "an empty host"),
            ("esdb://a:1,", "an empty host"),
            ("esdb://bad host:1", "characters a host name cannot have"),
            ("esdb://[::1:2113", "closing ']'"),
            ("esdb+discover://a:1,b:2", "takes one name"),
            ("esdb://localhost/streams", "has no path"),
            ("esdb://localhost#frag", "fragment"),
            ("esdb://localhost?tls=maybe", "tls must be true or false, not 'maybe'"),
            ("esdb://localhost?tls=False", "tls must be true or false"),
            ("esdb://localhost?tsl=false", "unknown parameter 'tsl'"),
            ("esdb://localhost?tls", "has no value"),
            ("esdb://localhost?nodePreference=follower", "nodePreference=follower"),
            ("esdb://:pw@localhost", "user name before '@' is empty"),
            ("esdb://localhost?maxDiscoverAttempts=many", "the EventStoreDB client refuses it"),
        ] {
            let error = parse_esdb_url(url).expect_err(url);
            assert!(error.contains(expected), "{url:?}: {error}");
        }
        // A refused URL's message hides the password too.
        let error = parse_esdb_url("esdb://admin:s3cret@host?tsl=false").unwrap_err();
        assert!(error.contains("admin:***@host") && !error.contains("s3cret"), "{error}");
    }

    #[test]
    fn expected_versions_and_revisions_map_both_ways() {
        assert_eq!(expected_revision(ExpectedVersion::Any), ExpectedRevision::Any);
        assert_eq!(expected_revision(ExpectedVersion::NoStream), ExpectedRevision::NoStream);
        assert_eq!(expected_revision(ExpectedVersion::Exact(0)), ExpectedRevision::NoStream);
        assert_eq!(expected_revision(ExpectedVersion::Exact(1)), ExpectedRevision::Exact(0));
        assert_eq!(expected_revision(ExpectedVersion::Exact(42)), ExpectedRevision::Exact(41));
        assert_eq!(expected_version(ExpectedRevision::Any), Some(ExpectedVersion::Any));
        assert_eq!(expected_version(ExpectedRevision::NoStream), Some(ExpectedVersion::NoStream));
        assert_eq!(expected_version(ExpectedRevision::Exact(0)), Some(ExpectedVersion::Exact(1)));
        assert_eq!(expected_version(ExpectedRevision::Exact(41)), Some(ExpectedVersion::Exact(42)));
        assert_eq!(expected_version(ExpectedRevision::Exact(u64::MAX)), None);
        assert_eq!(expected_version(ExpectedRevision::StreamExists), None);
        // Round trips; `Exact(0)` comes back as its equivalent `NoStream`.
        for expected in
            [ExpectedVersion::Any, ExpectedVersion::NoStream, ExpectedVersion::Exact(1), ExpectedVersion::Exact(7)]
        {
            assert_eq!(expected_version(expected_revision(expected)), Some(expected));
        }
        assert_eq!(expected_version(expected_revision(ExpectedVersion::Exact(0))), Some(ExpectedVersion::NoStream));
        assert_eq!(stream_version_of(CurrentRevision::NoStream), 0);
        assert_eq!(stream_version_of(CurrentRevision::Current(0)), 1);
        assert_eq!(stream_version_of(CurrentRevision::Current(9)), 10);
    }

    #[test]
    fn wrong_expected_version_errors_convert_with_the_current_version() {
        let name = stream("campaign-1");
        let error = eventstore::Error::WrongExpectedVersion {
            expected: ExpectedRevision::Exact(1),
            current: CurrentRevision::Current(4),
        };
        assert_eq!(
            conflict_error(&name, ExpectedVersion::Exact(2), &error),
            Some(StoreError::WrongExpectedVersion {
                stream: name.clone(),
                expected: ExpectedVersion::Exact(2),
                actual: 5
            })
        );
        let error = eventstore::Error::WrongExpectedVersion {
            expected: ExpectedRevision::Exact(3),
            current: CurrentRevision::NoStream,
        };
        assert_eq!(
            conflict_error(&name, ExpectedVersion::Exact(4), &error),
            Some(StoreError::WrongExpectedVersion {
                stream: name.clone(),
                expected: ExpectedVersion::Exact(4),
                actual: 0
            })
        );
        assert_eq!(conflict_error(&name, ExpectedVersion::Any, &eventstore::Error::ConnectionClosed), None);
        assert_eq!(conflict_version(&eventstore::Error::AccessDenied), None);
    }

    #[test]
    fn client_errors_name_the_node_and_what_to_try() {
        let insecure = parse_esdb_url("esdb://db1:2113?tls=false").unwrap();
        let secure = parse_esdb_url("esdb://admin:pw@db1:2113").unwrap();
        let unreachable =
            eventstore::Error::GrpcConnectionError(eventstore::GrpcConnectionError::MaxDiscoveryAttemptReached(3));
        let StoreError::Backend(message) = describe_error(&secure, "appending to s", &unreachable) else {
            panic!("not a backend error")
        };
        assert!(
            message.contains("db1:2113") && message.contains("appending to s") && message.contains("?tls=false"),
            "{message}"
        );
        let StoreError::Backend(message) = describe_error(&insecure, "reading", &eventstore::Error::ConnectionClosed)
        else {
            panic!("not a backend error")
        };
        assert!(message.contains("says tls=false") && message.contains("panics"), "{message}");
        let StoreError::Backend(message) = describe_error(&secure, "reading $all", &eventstore::Error::AccessDenied)
        else {
            panic!("not a backend error")
        };
        assert!(message.contains("denied access") && message.contains("$all") && !message.contains("pw@"), "{message}");
        assert!(is_connection_lost(&eventstore::Error::ConnectionClosed) && is_connection_lost(&unreachable));
        assert!(!is_connection_lost(&eventstore::Error::AccessDenied));
    }

    #[test]
    fn system_events_and_other_namespaces_are_invisible() {
        assert!(is_system_event("$stats-127.0.0.1:2113", "$statsCollected"));
        assert!(is_system_event("$$campaign-1", "$metadata"));
        assert!(is_system_event("$ce-campaign", "$>"));
        assert!(is_system_event("campaign-1", "$>"), "a link in a user stream");
        assert!(!is_system_event("campaign-1", "CampaignCreated"));
        assert_eq!(visible_stream("", "campaign-1", "CampaignCreated"), Some("campaign-1"));
        assert_eq!(visible_stream("", "$users", "$User"), None);
        assert_eq!(visible_stream("t1-", "t1-campaign-1", "CampaignCreated"), Some("campaign-1"));
        assert_eq!(visible_stream("t1-", "t2-campaign-1", "CampaignCreated"), None);
        assert_eq!(visible_stream("t1-", "campaign-1", "CampaignCreated"), None);
        assert_eq!(visible_stream("t1-", "t1-", "CampaignCreated"), None, "the prefix alone names no thitl stream");
        assert_eq!(visible_stream("t1-", "$$t1-campaign-1", "$metadata"), None);
    }

    #[test]
    fn positions_come_from_the_commit_position_and_unknown_ones_are_refused() {
        let event = |commit, prepare, resolved_commit| ResolvedEvent {
            event: Some(RecordedEvent {
                stream_id: "s".into(),
                id: Uuid::nil(),
                revision: 0,
                event_type: "T".into(),
                data: Bytes::new(),
                metadata: HashMap::new(),
                custom_metadata: Bytes::new(),
                is_json: true,
                position: Position { commit, prepare },
                created: Utc::now(),
            }),
            link: None,
            commit_position: resolved_commit,
        };
        assert_eq!(event_position(&event(1234, 1234, Some(1234))), Some(1234));
        assert_eq!(event_position(&event(1234, 1200, None)), Some(1234));
        assert_eq!(event_position(&event(u64::MAX, u64::MAX, Some(99))), Some(99));
        assert_eq!(event_position(&event(u64::MAX, u64::MAX, None)), None);
        assert_eq!(event_position(&event(0, 0, None)), None);
        assert_eq!(event_position(&ResolvedEvent { event: None, link: None, commit_position: Some(5) }), None);
        let missing = decode_stream_event(&event(u64::MAX, u64::MAX, None), &stream("s")).unwrap_err();
        assert!(
            matches!(&missing, StoreError::Backend(message) if message.contains("did not report the $all position")),
            "{missing:?}"
        );
    }

    /// StoredEvent → EventStoreDB event (data + custom metadata) → StoredEvent, identical.
    #[test]
    fn metadata_round_trips_to_the_identical_stored_event() {
        let name = stream("association-0190c3e4.a:b_c");
        let mut odd = new_event(
            "Odd",
            json!({ "z": 1.5e-7, "a": [1, 2.5, -0.0, null, 1e300], "ü\"\n": "ß 🦛 \u{0}", "nested": { " spaced key ": "  x  " } }),
        );
        odd.metadata.causation_id = None;
        let plain = new_event("Plain", json!({ "n": 1 }));
        let batch = prepare(&[odd.clone(), plain]).unwrap();
        // The text is what serde_json writes once; the store keeps it as is.
        assert_eq!(batch[0].payload, serde_json::to_string(&odd.payload).unwrap());
        assert_eq!(batch[0].metadata.recorded_at.timestamp_subsec_nanos(), 123_456_000, "truncated to microseconds");

        let prev = [9u8; 32];
        let (data, hashes) = encode_batch(&name, 4, prev, &batch).unwrap();
        for (index, event) in batch.iter().enumerate() {
            let prev_hash = if index == 0 { prev } else { hashes[index - 1] };
            let mut esdb_event = recorded("ns-", &name, 4 + index as u64, 1000 + 100 * index as u64, event);
            esdb_event.custom_metadata = Bytes::from(
                encode_metadata(event.schema_version, &event.metadata, &prev_hash, &hashes[index]).unwrap(),
            );
            let resolved = ResolvedEvent { event: Some(esdb_event), link: None, commit_position: None };
            let stored = decode_stream_event(&resolved, &name).unwrap();
            let expected = StoredEvent {
                position: 1000 + 100 * index as u64,
                stream: name.clone(),
                version: 5 + index as u64,
                event_type: event.event_type.clone(),
                schema_version: 3,
                metadata: event.metadata.clone(),
                payload: event.payload.clone(),
                prev_hash,
                hash: hashes[index],
            };
            assert_eq!(stored, expected);
            assert!(event.is_same_as(&name, &stored));
            // The chain checks out on what was decoded.
            assert_eq!(chain::recompute_hash(&stored), stored.hash);
        }
        // Read through `$all` by a store with that namespace, the stream name comes back as thitl's.
        let esdb_event = recorded("ns-", &name, 4, 1000, &batch[0]);
        assert_eq!(visible_stream("ns-", &esdb_event.stream_id, &esdb_event.event_type), Some(name.as_str()));

        // The metadata JSON: ESDB's names for correlation and causation, chain's time format,
        // no causation key when there is none.
        let text = String::from_utf8(encode_metadata(3, &batch[1].metadata, &prev, &hashes[1]).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["thitl"], 1);
        assert_eq!(value["recorded_at"], "2025-03-04T05:06:07.123456Z");
        assert_eq!(value["$correlationId"], batch[1].metadata.correlation_id.to_string());
        assert_eq!(value["$causationId"], batch[1].metadata.causation_id.unwrap().to_string());
        assert_eq!(value["actor"], json!({ "principal": "alice", "role": "annotator" }));
        assert_eq!(value["prev_hash"], hex::encode(prev));
        let first = String::from_utf8(encode_metadata(3, &batch[0].metadata, &prev, &hashes[0]).unwrap()).unwrap();
        assert!(!first.contains("$causationId"), "{first}");
        // The payload bytes the client sends are the hashed text (EventData shows them in Debug).
        let shown = format!("{:?}", data[1]);
        assert!(shown.contains(r#"{\"n\":1}"#), "{shown}");
    }

    #[test]
    fn unreadable_events_are_corrupt_not_panics() {
        let name = stream("model-1");
        let batch = prepare(&[new_event("A", json!({ "a": 1 }))]).unwrap();
        let good = encode_metadata(3, &batch[0].metadata, &[0; 32], &[1; 32]).unwrap();
        let decode = |data: &[u8], metadata: &[u8], id: Uuid| {
            let mut event = recorded("", &name, 0, 77, &batch[0]);
            event.data = Bytes::from(data.to_vec());
            event.custom_metadata = Bytes::from(metadata.to_vec());
            event.id = id;
            decode_recorded(&event, name.clone(), 77)
        };
        let id = batch[0].metadata.event_id;
        assert!(decode(br#"{"a":1}"#, &good, id).is_ok());
        for (data, metadata, event_id, what) in [
            (&b"\xff\xfe"[..], &good[..], id, "UTF-8"),
            (&br#"{"a":1}"#[..], &b""[..], id, "not a thitl event"),
            (&br#"{"a":1}"#[..], &b"{\"other\":\"app\"}"[..], id, "not a thitl event"),
            (&br#"{"a":1}"#[..], &good[..], Uuid::nil(), "names event id"),
        ] {
            let error = decode(data, metadata, event_id).unwrap_err();
            assert!(
                matches!(&error, StoreError::Corrupt(message) if message.contains(what) && message.contains("model-1")),
                "{what}: {error:?}"
            );
        }
        let mut bad = serde_json::from_slice::<serde_json::Value>(&good).unwrap();
        bad["hash"] = json!("abcd");
        assert!(
            matches!(decode(br#"{"a":1}"#, &serde_json::to_vec(&bad).unwrap(), id), Err(StoreError::Corrupt(message)) if message.contains("unreadable hash"))
        );
        bad["hash"] = json!(hex::encode([1u8; 32]));
        bad["recorded_at"] = json!("yesterday");
        assert!(
            matches!(decode(br#"{"a":1}"#, &serde_json::to_vec(&bad).unwrap(), id), Err(StoreError::Corrupt(message)) if message.contains("recorded_at"))
        );
        bad["recorded_at"] = json!("2025-03-04T05:06:07.123456Z");
        bad["thitl"] = json!(2);
        assert!(matches!(
            decode(br#"{"a":1}"#, &serde_json::to_vec(&bad).unwrap(), id),
            Err(StoreError::UnsupportedFormat(_))
        ));
        bad["thitl"] = json!(1);
        bad["actor"]["role"] = json!("emperor");
        assert!(matches!(decode(br#"{"a":1}"#, &serde_json::to_vec(&bad).unwrap(), id), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn batches_are_checked_before_anything_is_sent() {
        assert_eq!(prepare(&[]).unwrap_err(), StoreError::EmptyAppend);
        let event = new_event("A", json!({}));
        assert!(
            matches!(prepare(&[event.clone(), event.clone()]), Err(StoreError::InvalidEvent(message)) if message.contains("twice"))
        );
        let mut system = event.clone();
        system.event_type = "$metadata".into();
        assert!(matches!(prepare(&[system]), Err(StoreError::InvalidEvent(message)) if message.contains("reserves")));
        let mut empty = event;
        empty.event_type.clear();
        assert!(
            matches!(prepare(&[empty]), Err(StoreError::InvalidEvent(message)) if message.contains("empty event type"))
        );
    }

    /// Stored events for `batch` at versions `first_version..`, as a store would return them.
    fn stored_as(stream: &StreamName, batch: &[PreparedEvent], first_version: u64) -> Vec<StoredEvent> {
        batch
            .iter()
            .enumerate()
            .map(|(index, event)| StoredEvent {
                position: 100 * (first_version + index as u64),
                stream: stream.clone(),
                version: first_version + index as u64,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                metadata: event.metadata.clone(),
                payload: event.payload.clone(),
                prev_hash: [0; 32],
                hash: [1; 32],
            })
            .collect()
    }

    fn known(events: &[StoredEvent]) -> HashMap<Uuid, StoredEvent> {
        events.iter().map(|event| (event.metadata.event_id, event.clone())).collect()
    }

    #[test]
    fn the_idempotency_rule_matches_the_sqlite_adapter() {
        let name = stream("prompt-replay");
        let batch = prepare(&[
            new_event("A", json!({ "i": 0 })),
            new_event("B", json!({ "i": 1 })),
            new_event("C", json!({ "i": 2 })),
        ])
        .unwrap();
        let stored = stored_as(&name, &batch, 3);
        let all = known(&stored);
        let replay = AppendResult { first_position: 300, last_position: 500, stream_version: 5 };
        // A replay answers the original result whatever the expectation.
        for expected in
            [ExpectedVersion::Any, ExpectedVersion::NoStream, ExpectedVersion::Exact(2), ExpectedVersion::Exact(6)]
        {
            assert_eq!(decide(&name, expected, 6, &batch, &all), Decision::Done(Ok(replay)), "{expected:?}");
        }
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &batch[1..2], &all),
            Decision::Done(Ok(AppendResult { first_position: 400, last_position: 400, stream_version: 4 }))
        );
        // Nothing stored: the expectation decides.
        let fresh = prepare(&[new_event("N", json!({}))]).unwrap();
        assert_eq!(decide(&name, ExpectedVersion::Exact(6), 6, &fresh, &all), Decision::Append);
        assert_eq!(
            decide(&name, ExpectedVersion::Exact(5), 6, &fresh, &all),
            Decision::Done(Err(StoreError::WrongExpectedVersion {
                stream: name.clone(),
                expected: ExpectedVersion::Exact(5),
                actual: 6
            }))
        );
        // Mixed: new, stored, new → the stored one breaks it; stored, new → the new one does.
        let mixed = vec![fresh[0].clone(), batch[0].clone()];
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &mixed, &all),
            Decision::Done(Err(StoreError::PartialReplay { event_id: batch[0].metadata.event_id }))
        );
        let mixed = vec![batch[0].clone(), fresh[0].clone()];
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &mixed, &all),
            Decision::Done(Err(StoreError::PartialReplay { event_id: fresh[0].metadata.event_id }))
        );
        // Another order.
        let reordered = vec![batch[1].clone(), batch[0].clone()];
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &reordered, &all),
            Decision::Done(Err(StoreError::PartialReplay { event_id: batch[0].metadata.event_id }))
        );
        // The same id with other content, first or later in the batch.
        let mut changed = batch[0].clone();
        changed.payload = r#"{"i":99}"#.into();
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, std::slice::from_ref(&changed), &all),
            Decision::Done(Err(StoreError::DuplicateEventId { event_id: changed.metadata.event_id }))
        );
        let mut later_changed = batch[1].clone();
        later_changed.metadata.actor = Actor::new("mallory", Role::Admin);
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &[fresh[0].clone(), later_changed.clone()], &all),
            Decision::Done(Err(StoreError::DuplicateEventId { event_id: later_changed.metadata.event_id }))
        );
        // An id stored in another stream (as far as this adapter can know it): different stream → duplicate.
        let elsewhere = stored_as(&stream("prompt-other"), &batch[..1], 1);
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 0, &batch[..1], &known(&elsewhere)),
            Decision::Done(Err(StoreError::DuplicateEventId { event_id: batch[0].metadata.event_id }))
        );
        // A payload stored with other spacing is still the same event.
        let mut spaced = stored.clone();
        spaced[0].payload = r#"{ "i" : 0 }"#.into();
        assert_eq!(
            decide(&name, ExpectedVersion::Any, 6, &batch[..1], &known(&spaced)),
            Decision::Done(Ok(AppendResult { first_position: 300, last_position: 300, stream_version: 3 }))
        );
    }

    #[test]
    fn replay_windows_look_where_a_replay_can_be() {
        let name = stream("job-1");
        let batch =
            prepare(&[new_event("A", json!({})), new_event("B", json!({})), new_event("C", json!({}))]).unwrap();
        let none = HashMap::new();
        // A retry of Exact(10) on a stream now at 80 whose tail read versions 49..=80.
        assert_eq!(replay_windows(ExpectedVersion::Exact(10), 80, 49, &batch, &none), vec![11]);
        assert_eq!(replay_windows(ExpectedVersion::NoStream, 80, 49, &batch, &none), vec![1]);
        // Inside the tail already, or nothing to look for.
        assert!(replay_windows(ExpectedVersion::Exact(60), 80, 49, &batch, &none).is_empty());
        assert!(replay_windows(ExpectedVersion::Exact(80), 80, 49, &batch, &none).is_empty());
        assert!(replay_windows(ExpectedVersion::Any, 80, 49, &batch, &none).is_empty());
        // The batch's last event found at 49: its first would be at 47.
        let tail = known(&stored_as(&name, &batch[2..], 49));
        assert_eq!(replay_windows(ExpectedVersion::Any, 80, 49, &batch, &tail), vec![47]);
        assert_eq!(replay_windows(ExpectedVersion::Exact(10), 80, 49, &batch, &tail), vec![11, 47]);
        // The first one found: the rule needs nothing more.
        let found = known(&stored_as(&name, &batch, 50));
        assert!(replay_windows(ExpectedVersion::Exact(10), 80, 49, &batch, &found).is_empty());
    }

    /// The contract suite checks only the weaker behaviour where a guarantee is not declared:
    /// declaring one this adapter cannot give would make it fail on a live node.
    #[test]
    fn declares_neither_gap_free_positions_nor_cross_stream_id_detection() {
        assert_eq!(EsdbStore::CAPABILITIES.missing(), ["gap_free_positions", "detects_event_id_reuse_across_streams"]);
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("thitl-test-0190c3e4:").is_ok());
        for bad in ["", "has space", "$system", "slash/", &"x".repeat(101)] {
            assert!(
                matches!(check_namespace(bad), Err(StoreError::Backend(message)) if message.contains("namespace")),
                "{bad:?}"
            );
        }
    }

    /// No server here: a closed port must give a clear error, from several threads at once (the
    /// first client of the process installs its rustls provider, which the others must not take
    /// for a foreign one), again afterwards, and from inside a tokio runtime. The only test of
    /// this binary that starts a client, so it is the process's first.
    #[test]
    fn connecting_to_a_closed_port_fails_clearly_and_can_be_retried() {
        let url = "esdb://127.0.0.1:1?tls=false&discoveryInterval=50";
        // Staggered, so that later ones start while the first is still connecting.
        let racing: Vec<_> = (0..4u64)
            .map(|index| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(10 * index));
                    EsdbStore::connect(url).unwrap_err()
                })
            })
            .collect();
        for thread in racing {
            let error = thread.join().unwrap();
            assert!(
                matches!(&error, StoreError::Backend(message) if message.contains("cannot reach EventStoreDB at 127.0.0.1:1")),
                "{error}"
            );
        }
        for _ in 0..2 {
            let error = EsdbStore::connect(url).unwrap_err();
            assert!(
                matches!(&error, StoreError::Backend(message) if message.contains("127.0.0.1:1") && message.contains("tls=false")),
                "{error}"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let error = runtime.block_on(async { EsdbStore::connect_new_namespace(url, "t-").unwrap_err() });
        assert!(matches!(&error, StoreError::Backend(message) if message.contains("127.0.0.1:1")), "{error}");
        assert!(
            matches!(EsdbStore::connect("esdb://127.0.0.1:1?tsl=false"), Err(StoreError::Backend(message)) if message.contains("unknown parameter"))
        );
    }
}
