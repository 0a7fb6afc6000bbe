//! The per-stream hash chain, and `verify`, which recomputes it from any [`EventStore`].
//!
//! `hash = SHA-256(prev_hash ‖ canonical_bytes)`, where `prev_hash` of version 1 is 32 zero bytes
//! and `canonical_bytes` is the concatenation, each field prefixed with its byte length as a
//! big-endian `u32`, of these UTF-8 texts:
//!
//! | # | field |
//! |---|---|
//! | 1 | the literal `thitl-event-v1` (changes if this layout ever changes) |
//! | 2 | stream name |
//! | 3 | version, decimal |
//! | 4 | event id, hyphenated lowercase |
//! | 5 | event type |
//! | 6 | schema version, decimal |
//! | 7 | recorded-at, RFC 3339 with exactly 6 fractional digits and `Z` |
//! | 8 | actor principal |
//! | 9 | actor role (`Role::as_str`) |
//! | 10 | correlation id, hyphenated lowercase |
//! | 11 | causation id, hyphenated lowercase, or empty |
//! | 12 | payload JSON text, exactly as stored |
//!
//! Length prefixes make the encoding unambiguous without escaping. The global position is
//! deliberately not hashed, so a stream copied into another store keeps its chain.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
use domain::EventMetadata;
use sha2::{Digest, Sha256};

use super::{EventStore, StoreError, StoredEvent, StreamName};

/// `prev_hash` of every stream's first event.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

/// The first canonical field; names the layout of the fields after it.
pub const CANONICAL_LAYOUT: &str = "thitl-event-v1";

/// The hashed fields of one event, borrowed from a [`StoredEvent`] or from an append in progress.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub stream: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    /// `recorded_at` must already be at microsecond precision (see [`truncate_to_micros`]).
    pub metadata: &'a EventMetadata,
    pub payload: &'a str,
}

impl<'a> EventFields<'a> {
    pub fn of(event: &'a StoredEvent) -> Self {
        EventFields {
            stream: event.stream.as_str(),
            version: event.version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            metadata: &event.metadata,
            payload: &event.payload,
        }
    }

    /// Feeds every canonical field, in order, to `sink`. One definition serves both
    /// [`canonical_bytes`] and [`event_hash`], so they cannot drift apart.
    fn for_each_field(&self, mut sink: impl FnMut(&[u8])) {
        let mut number = [0u8; 20];
        let mut event_id = uuid::Uuid::encode_buffer();
        let mut correlation_id = uuid::Uuid::encode_buffer();
        let mut causation_id = uuid::Uuid::encode_buffer();
        let metadata = self.metadata;

        sink(CANONICAL_LAYOUT.as_bytes());
        sink(self.stream.as_bytes());
        sink(decimal(self.version, &mut number));
        sink(metadata.event_id.hyphened_lower(&mut event_id));
        sink(self.event_type.as_bytes());
        sink(decimal(u64::from(self.schema_version), &mut number));
        let recorded_at = RecordedAtText::new(&metadata.recorded_at);
        sink(recorded_at.as_str().as_bytes());
        sink(metadata.actor.principal.as_bytes());
        sink(metadata.actor.role.as_str().as_bytes());
        sink(metadata.correlation_id.hyphened_lower(&mut correlation_id));
        match metadata.causation_id {
            Some(causation) => sink(causation.hyphened_lower(&mut causation_id)),
            None => sink(b""),
        }
        sink(self.payload.as_bytes());
    }
}

trait HyphenedLower {
    fn hyphened_lower<'b>(&self, buffer: &'b mut [u8; 45]) -> &'b [u8];
}

impl HyphenedLower for uuid::Uuid {
    fn hyphened_lower<'b>(&self, buffer: &'b mut [u8; 45]) -> &'b [u8] {
        self.hyphenated().encode_lower(buffer).as_bytes()
    }
}

/// Length prefix of one field. Fields over 4 GiB cannot occur: appends reject them and SQLite
/// holds at most 1 GB per value.
fn length_prefix(field: &[u8]) -> [u8; 4] {
    u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes()
}

fn decimal(value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    let mut rest = value;
    loop {
        start -= 1;
        buffer[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buffer[start..]
}

/// The canonical bytes of an event, as hashed (for documentation, test vectors and other tools).
pub fn canonical_bytes(fields: &EventFields<'_>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256 + fields.payload.len());
    fields.for_each_field(|field| {
        bytes.extend_from_slice(&length_prefix(field));
        bytes.extend_from_slice(field);
    });
    bytes
}

/// `SHA-256(prev_hash ‖ canonical_bytes(fields))`, computed without building the bytes.
pub fn event_hash(prev_hash: &[u8; 32], fields: &EventFields<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    fields.for_each_field(|field| {
        hasher.update(length_prefix(field));
        hasher.update(field);
    });
    hasher.finalize().into()
}

/// What the stored hash of `event` should be, given its stored `prev_hash`.
pub fn recompute_hash(event: &StoredEvent) -> [u8; 32] {
    event_hash(&event.prev_hash, &EventFields::of(event))
}

/// Drops sub-microsecond digits, so that what the store hashes is what it can store and return.
pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = time.nanosecond();
    time.with_nanosecond(nanos - nanos % 1_000).unwrap_or(time)
}

/// Whether `time` has an RFC 3339 text at all (years 0000 to 9999); appends reject other times.
pub fn is_representable(time: &DateTime<Utc>) -> bool {
    (0..=9999).contains(&time.year())
}

/// `recorded_at` as hashed and stored: RFC 3339, exactly 6 fractional digits, `Z`.
pub fn format_recorded_at(time: &DateTime<Utc>) -> String {
    RecordedAtText::new(time).as_str().to_owned()
}

/// Parses what [`format_recorded_at`] writes (any RFC 3339 text is accepted, slower).
pub fn parse_recorded_at(text: &str) -> Option<DateTime<Utc>> {
    parse_recorded_at_fast(text.as_bytes())
        .or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|time| time.with_timezone(&Utc)))
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` without going through chrono's format machinery; reading the
/// log parses one of these per event.
fn parse_recorded_at_fast(text: &[u8]) -> Option<DateTime<Utc>> {
    if text.len() != 27
        || text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
        || text[19] != b'.'
        || text[26] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        text[range]
            .iter()
            .try_fold(0u32, |acc, &digit| digit.is_ascii_digit().then(|| acc * 10 + u32::from(digit - b'0')))
    };
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time = date.and_hms_micro_opt(number(11..13)?, number(14..16)?, number(17..19)?, number(20..26)?)?;
    Some(time.and_utc())
}

/// Formats recorded-at on the stack in the common case (years 0000–9999, no leap second), and
/// through chrono otherwise; both give chrono's `SecondsFormat::Micros` text.
pub(crate) struct RecordedAtText {
    buffer: [u8; 27],
    fallback: Option<String>,
}

impl RecordedAtText {
    pub(crate) fn new(time: &DateTime<Utc>) -> Self {
        let mut buffer = [0u8; 27];
        let year = time.year();
        let nanos = time.nanosecond();
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return RecordedAtText { buffer, fallback: Some(time.to_rfc3339_opts(SecondsFormat::Micros, true)) };
        }
        let mut put = |at: usize, width: usize, value: u32| {
            let mut rest = value;
            for index in (at..at + width).rev() {
                buffer[index] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, time.month());
        put(8, 2, time.day());
        put(11, 2, time.hour());
        put(14, 2, time.minute());
        put(17, 2, time.second());
        put(20, 6, nanos / 1_000);
        for (index, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
            buffer[index] = separator;
        }
        RecordedAtText { buffer, fallback: None }
    }

    pub(crate) fn as_str(&self) -> &str {
        match &self.fallback {
            Some(text) => text,
            // Only ASCII digits and separators were written above.
            None => std::str::from_utf8(&self.buffer).unwrap_or(""),
        }
    }
}

/// What `verify` checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: u64,
}

/// The first thing `verify` found wrong. Its `Display` says where and what, e.g.
/// `stream association-… version 3 (position 17): hash mismatch — the stored event differs
/// from what was appended`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// Something is wrong with one event of one stream.
    #[error("stream {stream} version {version}{}: {problem}", position_suffix(*.position))]
    Event {
        stream: StreamName,
        version: u64,
        /// Known unless the event is missing.
        position: Option<u64>,
        problem: EventProblem,
    },
    /// The global log (`read_all`) disagrees with the streams.
    #[error("global log position {position}: {problem}")]
    Log { position: u64, problem: LogProblem },
    /// The store could not be read (a row that cannot be decoded is reported here as `Corrupt`).
    #[error("could not read the event store: {0}")]
    Store(#[from] StoreError),
}

fn position_suffix(position: Option<u64>) -> String {
    position.map(|position| format!(" (position {position})")).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventProblem {
    #[error("hash mismatch — the stored event differs from what was appended")]
    HashMismatch,
    #[error(
        "broken link — prev_hash is not the hash of the stream's previous event (32 zero bytes \
         for version 1): an earlier event of this stream was changed, removed or reordered"
    )]
    BrokenLink,
    #[error(
        "missing — the stream's next stored event is {}: an event was deleted",
        next_stored.map(|version| format!("version {version}")).unwrap_or_else(|| "none, though the stream lists more".into())
    )]
    Missing { next_stored: Option<u64> },
    #[error("version out of sequence — found version {found} where this version was expected")]
    VersionOutOfSequence { found: u64 },
    #[error(
        "out of order — its global position is not after the previous version's position \
         {previous_position}: the log was reordered"
    )]
    OutOfOrder { previous_position: u64 },
    #[error("read_stream returned an event of stream {found}")]
    WrongStream { found: StreamName },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProblem {
    #[error("read_all returned it after position {previous}: positions must strictly increase")]
    NotIncreasing { previous: u64 },
    #[error("missing — positions of this store have no gaps, so an event was deleted")]
    Missing,
    #[error("read_all returned an event that no stream holds, or that differs from the stream's copy")]
    NotInAnyStream,
    #[error("a stream's event at this position is missing from read_all")]
    AbsentFromLog,
}

const PAGE: usize = 1024;

/// Recomputes every stream's chain and cross-checks the global log.
///
/// Per stream, in version order: versions are `1..=n` without gaps, positions increase with
/// version, `prev_hash` links to the previous hash, and the stored hash equals the recomputed one.
/// Then `read_all` from 0 must yield each of those events exactly once, with strictly increasing
/// positions (and, where the store promises it, no gaps). Events appended while `verify` runs
/// are checked in their streams but not counted; the log is cross-checked up to the head seen at
/// the start. Deleting the globally last events cannot be detected from the store alone.
pub fn verify(store: &dyn EventStore) -> Result<VerifyReport, VerifyFailure> {
    let head = store.head_position()?;
    let streams = store.list_streams()?;
    // (position, first 8 bytes of hash) of every event at or below `head`.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut streams_counted = 0u64;

    for (stream, listed_version) in &streams {
        let mut expected_version = 1u64;
        let mut prev_hash = GENESIS_PREV_HASH;
        let mut prev_position: Option<u64> = None;
        let mut counted = false;
        loop {
            let page = store.read_stream(stream, expected_version, PAGE)?;
            if page.is_empty() {
                break;
            }
            for event in &page {
                let failure = |problem| VerifyFailure::Event {
                    stream: stream.clone(),
                    version: expected_version,
                    position: Some(event.position),
                    problem,
                };
                if event.stream != *stream {
                    return Err(failure(EventProblem::WrongStream { found: event.stream.clone() }));
                }
                if event.version != expected_version {
                    return Err(if event.version > expected_version {
                        VerifyFailure::Event {
                            stream: stream.clone(),
                            version: expected_version,
                            position: None,
                            problem: EventProblem::Missing { next_stored: Some(event.version) },
                        }
                    } else {
                        failure(EventProblem::VersionOutOfSequence { found: event.version })
                    });
                }
                if let Some(previous_position) = prev_position.filter(|&previous| event.position <= previous) {
                    return Err(failure(EventProblem::OutOfOrder { previous_position }));
                }
                if event.prev_hash != prev_hash {
                    return Err(failure(EventProblem::BrokenLink));
                }
                if recompute_hash(event) != event.hash {
                    return Err(failure(EventProblem::HashMismatch));
                }
                if event.position <= head {
                    seen.push((event.position, hash_prefix(&event.hash)));
                    counted = true;
                }
                prev_hash = event.hash;
                prev_position = Some(event.position);
                expected_version += 1;
            }
        }
        if expected_version <= *listed_version {
            return Err(VerifyFailure::Event {
                stream: stream.clone(),
                version: expected_version,
                position: None,
                problem: EventProblem::Missing { next_stored: None },
            });
        }
        streams_counted += u64::from(counted);
    }

    check_log(store, head, seen).map(|events| VerifyReport { events, streams: streams_counted })
}

fn hash_prefix(hash: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(prefix)
}

/// Walks `read_all` up to `head` and matches it, event by event, against the streams' events.
fn check_log(store: &dyn EventStore, head: u64, mut seen: Vec<(u64, u64)>) -> Result<u64, VerifyFailure> {
    seen.sort_unstable();
    // Two stream events at one position: only possible in a broken adapter.
    if let Some(pair) = seen.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(VerifyFailure::Log { position: pair[1].0, problem: LogProblem::NotInAnyStream });
    }
    let gap_free = store.capabilities().gap_free_positions;
    let mut expected = seen.iter();
    let mut previous = 0u64;
    let mut count = 0u64;
    'pages: loop {
        let page = store.read_all(previous, PAGE)?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.position > head {
                break 'pages;
            }
            if event.position <= previous {
                return Err(VerifyFailure::Log {
                    position: event.position,
                    problem: LogProblem::NotIncreasing { previous },
                });
            }
            if gap_free && event.position != previous + 1 {
                return Err(VerifyFailure::Log { position: previous + 1, problem: LogProblem::Missing });
            }
            match expected.next() {
                Some(&(position, hash)) if position == event.position && hash == hash_prefix(&event.hash) => {}
                Some(&(position, _)) if position < event.position => {
                    return Err(VerifyFailure::Log { position, problem: LogProblem::AbsentFromLog });
                }
                _ => {
                    return Err(VerifyFailure::Log { position: event.position, problem: LogProblem::NotInAnyStream });
                }
            }
            previous = event.position;
            count += 1;
        }
    }
    if let Some(&(position, _)) = expected.next() {
        return Err(VerifyFailure::Log { position, problem: LogProblem::AbsentFromLog });
    }
    if gap_free && previous != head {
        return Err(VerifyFailure::Log { position: previous + 1, problem: LogProblem::Missing });
    }
    Ok(count)
}

impl VerifyFailure {
    /// The stream the failure names, if it names one (log-level failures do not).
    pub fn stream(&self) -> Option<&StreamName> {
        match self {
            VerifyFailure::Event { stream, .. } => Some(stream),
            _ => None,
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verified {} events in {} streams: every hash chain is intact", self.events, self.streams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::{Actor, Role};
    use uuid::Uuid;

    fn metadata(recorded_at: DateTime<Utc>, causation: Option<Uuid>) -> EventMetadata {
        EventMetadata {
            event_id: Uuid::parse_str("0190c3e4-1111-7000-8000-000000000001").unwrap(),
            recorded_at,
            actor: Actor::new("alice", Role::Curator),
            correlation_id: Uuid::parse_str("0190c3e4-2222-7000-8000-000000000002").unwrap(),
            causation_id: causation,
        }
    }

    #[test]
    fn canonical_bytes_follow_the_documented_layout() {
        let time = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap() + chrono::Duration::microseconds(12);
        let metadata = metadata(time, None);
        let fields = EventFields {
            stream: "association-1",
            version: 3,
            event_type: "AssociationRegistered",
            schema_version: 2,
            metadata: &metadata,
            payload: r#"{"a":1}"#,
        };
        let mut expected = Vec::new();
        for field in [
            "thitl-event-v1",
            "association-1",
            "3",
            "0190c3e4-1111-7000-8000-000000000001",
            "AssociationRegistered",
            "2",
            "2024-05-06T07:08:09.000012Z",
            "alice",
            "curator",
            "0190c3e4-2222-7000-8000-000000000002",
            "",
            r#"{"a":1}"#,
        ] {
            expected.extend_from_slice(&(field.len() as u32).to_be_bytes());
            expected.extend_from_slice(field.as_bytes());
        }
        assert_eq!(canonical_bytes(&fields), expected);

        let mut hasher = Sha256::new();
        hasher.update([7u8; 32]);
        hasher.update(&expected);
        let direct: [u8; 32] = hasher.finalize().into();
        assert_eq!(event_hash(&[7u8; 32], &fields), direct);
        // Every field matters, including the previous hash.
        assert_ne!(event_hash(&GENESIS_PREV_HASH, &fields), direct);
        let with_causation = self::metadata(time, Some(Uuid::nil()));
        assert_ne!(event_hash(&[7u8; 32], &EventFields { metadata: &with_causation, ..fields }), direct);
        assert_ne!(event_hash(&[7u8; 32], &EventFields { version: 4, ..fields }), direct);
    }

    #[test]
    fn recorded_at_text_matches_chrono_and_round_trips() {
        let samples = [
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap() + chrono::Duration::nanoseconds(999_999_999),
            Utc.with_ymd_and_hms(9999, 12, 31, 1, 2, 3).unwrap() + chrono::Duration::microseconds(5),
            // A leap second takes the chrono fallback.
            NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        ];
        for sample in samples {
            let time = truncate_to_micros(sample);
            let text = format_recorded_at(&time);
            assert_eq!(text, time.to_rfc3339_opts(SecondsFormat::Micros, true));
            assert_eq!(parse_recorded_at(&text), Some(time), "{text}");
        }
        assert_eq!(format_recorded_at(&samples[1]), "2024-02-29T23:59:59.999999Z");
        assert_eq!(format_recorded_at(&samples[3]), "2016-12-31T23:59:60.500000Z");
        assert!(!is_representable(&Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap()));
        assert!(!is_representable(&Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap()));
        assert_eq!(parse_recorded_at("2024-02-30T00:00:00.000000Z"), None);
        assert_eq!(parse_recorded_at("2024-02-01T00:00:0x.000000Z"), None);
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut buffer = [0u8; 20];
        assert_eq!(decimal(0, &mut buffer), b"0");
        assert_eq!(decimal(1_234_567, &mut buffer), b"1234567");
        assert_eq!(decimal(u64::MAX, &mut buffer), u64::MAX.to_string().as_bytes());
    }
}
