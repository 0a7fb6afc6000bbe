//! The write side: load an aggregate from its stream, `decide`, append with the expected version.
//!
//! HTTP handlers, the CLI and the campaign runner all go through [`CommandBus::execute`], so
//! every event gets the same metadata (UUIDv7 id, UTC time, actor, correlation and causation)
//! and every append is checked against the version the decision was made on.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Thread};

use chrono::Utc;
use domain::{Actor, Aggregate, DecodeError, DomainError, EventMetadata, decode, encode};
use uuid::Uuid;

use store::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamName};

/// Who asks, and in what context; becomes every event's metadata.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl CommandContext {
    pub fn new(actor: Actor) -> Self {
        CommandContext { actor, correlation_id: Uuid::now_v7(), causation_id: None }
    }

    pub fn system() -> Self {
        Self::new(Actor::system())
    }
}

/// Where a command's events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stream: String,
    /// The stream's version after the command (unchanged if it caused no event).
    pub stream_version: u64,
    /// The global position of the last event written (None if the command caused no event).
    pub position: Option<u64>,
    pub event_ids: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{stream} changed since version {expected}: it is now at version {actual}; reload and retry")]
    Conflict { stream: String, expected: u64, actual: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored history cannot be read: {0}")]
    Decode(#[from] DecodeError),
}

/// Runs commands against an event store.
///
/// Key design decisions:
/// - **One writer per stream in this process, with batching.** Commands on one stream queue up;
///   whoever finds no command running becomes the stream's leader, takes every queued command,
///   decides them one after the other on the evolving state and appends all their events in one
///   append (one durable commit). So many annotators rating one round share each `fsync`, and
///   concurrent commands never race each other to the same version. Each command still sees the
///   state its predecessors left, and its `If-Match` is checked against that version.
/// - **States stay in memory and change in place.** The bus keeps each stream's aggregate with
///   the version it reflects; before every batch it reads only the events recorded after that
///   version (another process may have written: events are immutable, so a cached prefix never
///   changes). No command clones its aggregate, so a round of 100,000 items costs the same per
///   annotation as a round of ten. If an append fails, the state that already took the batch's
///   events is dropped and reloaded from the store.
/// - **Conflicts with other processes are retried.** When another writer appended in between,
///   the batch is decided again on the newer state (up to ten times); a command with an expected
///   version then fails with [`CommandError::Conflict`], as it should.
#[derive(Clone)]
pub struct CommandBus {
    store: Arc<dyn EventStore>,
    slots: Arc<Mutex<HashMap<(TypeId, String), AnySlot>>>,
}

/// A [`Slot`] of some aggregate type, found again by its `TypeId`.
type AnySlot = Arc<dyn Any + Send + Sync>;

/// How many events to read per batch when loading an aggregate.
const LOAD_BATCH: usize = 10_000;
/// How many stream states the bus keeps; past this it forgets those not in use.
const CACHE_CAPACITY: usize = 4096;
/// How often a batch is decided again after another process appended in between.
const CONFLICT_RETRIES: usize = 10;
/// The most commands decided into one append.
const MAX_BATCH: usize = 1024;

/// What a reader run right after a command returns (see [`CommandBus::execute_then`]).
type ReadResult = Box<dyn Any + Send>;
type Reader<A> = Box<dyn Fn(&A, &Outcome) -> ReadResult + Send>;
type JobResult = Result<(Outcome, Option<ReadResult>), CommandError>;

fn boxed_reader<A: Aggregate, R: Send + 'static>(read: impl Fn(&A, &Outcome) -> R + Send + 'static) -> Reader<A> {
    Box::new(move |state, outcome| Box::new(read(state, outcome)))
}

/// The value of a job that had a reader (its type is the reader's, by construction).
fn unbox<R: 'static>(value: Option<ReadResult>) -> R {
    *value.and_then(|v| v.downcast::<R>().ok()).expect("a job with a reader answers with its value")
}

/// One stream's writer: its state, the commands waiting, and whether a leader is running them.
struct Slot<A: Aggregate> {
    shared: Mutex<Shared<A>>,
}

struct Shared<A: Aggregate> {
    queue: Vec<Job<A>>,
    leader: bool,
    /// The state and the version it reflects; `None` until loaded (or after a failed append).
    state: Option<(A, u64)>,
}

struct Job<A: Aggregate> {
    /// `None` for a read.
    command: Option<A::Command>,
    expected: Option<u64>,
    context: CommandContext,
    reader: Option<Reader<A>>,
    reply: Reply,
}

/// How a job's answer reaches its caller.
enum Reply {
    /// A thread parked until its answer is in (or until it is its turn to lead).
    Thread { answer: Arc<Mutex<Option<JobResult>>>, thread: Thread },
    /// An async caller awaiting a channel (`None` once answered).
    Channel(Option<tokio::sync::oneshot::Sender<JobResult>>),
}

impl<A: Aggregate> Job<A> {
    fn finish(&mut self, result: JobResult) {
        match &mut self.reply {
            Reply::Thread { answer, thread } => {
                *answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                thread.unpark();
            }
            Reply::Channel(sender) => {
                if let Some(sender) = sender.take() {
                    // A caller that went away (a closed connection) no longer needs the answer.
                    let _ = sender.send(result);
                }
            }
        }
    }

    fn answered(&self) -> bool {
        match &self.reply {
            Reply::Thread { answer, .. } => answer.lock().unwrap_or_else(PoisonError::into_inner).is_some(),
            Reply::Channel(sender) => sender.is_none(),
        }
    }
}

impl<A: Aggregate> Drop for Job<A> {
    /// A job dropped unanswered (a panic while deciding) answers with an error, so that its
    /// caller does not wait forever.
    fn drop(&mut self) {
        if !self.answered() {
            self.finish(Err(CommandError::Store(StoreError::Backend(
                "the command was abandoned by a failing writer; nothing was appended for it".into(),
            ))));
        }
    }
}

/// Puts a slot right if its leader unwinds (a panic while deciding): the state may hold half a
/// batch, so it is forgotten, and the slot gets a new leader if commands wait.
struct LeaderGuard<A: Aggregate> {
    bus: CommandBus,
    slot: Arc<Slot<A>>,
    stream: String,
    armed: bool,
}

impl<A: Aggregate> Drop for LeaderGuard<A> {
    fn drop(&mut self) {
        if self.armed {
            let mut shared = self.slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.state = None;
            shared.leader = false;
            self.bus.hand_off(&self.slot, &self.stream, &mut shared);
        }
    }
}

impl CommandBus {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        CommandBus { store, slots: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn slot<A: Aggregate>(&self, stream: &str) -> Arc<Slot<A>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (TypeId::of::<A>(), stream.to_string());
        if let Some(slot) = slots.get(&key).and_then(|slot| slot.clone().downcast::<Slot<A>>().ok()) {
            return slot;
        }
        if slots.len() >= CACHE_CAPACITY {
            // Forget the states no caller holds right now (a reload costs one stream read).
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = Arc::new(Slot::<A> { shared: Mutex::new(Shared { queue: Vec::new(), leader: false, state: None }) });
        slots.insert(key, slot.clone());
        slot
    }

    /// The aggregate's current state and version (a copy: prefer [`execute_then`](Self::execute_then)
    /// or [`read`](Self::read) on hot paths).
    pub fn load<A: Aggregate>(&self, stream: &str) -> Result<(A, u64), CommandError> {
        self.read::<A, _>(stream, |state, version| (state.clone(), version))
    }

    /// Runs `read` on the aggregate's current state and version, without copying it.
    pub fn read<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        read: impl Fn(&A, u64) -> R + Send + 'static,
    ) -> Result<R, CommandError> {
        StreamName::new(stream)?;
        let reader = boxed_reader(move |state: &A, outcome: &Outcome| read(state, outcome.stream_version));
        let (_, value) = self.submit::<A>(stream, None, None, CommandContext::system(), Some(reader))?;
        Ok(unbox(value))
    }

    /// Decides `command` on the current state and appends the events. With `expected` set
    /// (an `If-Match` header), the decision is refused unless the stream is at that version.
    pub fn execute<A: Aggregate>(
        &self,
        stream: &str,
        expected: Option<u64>,
        context: &CommandContext,
        command: A::Command,
    ) -> Result<Outcome, CommandError> {
        StreamName::new(stream)?;
        self.submit::<A>(stream, Some(command), expected, context.clone(), None).map(|(outcome, _)| outcome)
    }

    /// Like [`execute`](Self::execute), then runs `read` on the state the command left (before
    /// any later command), e.g. to render the task an assignment produced.
    pub fn execute_then<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        expected: Option<u64>,
        context: &CommandContext,
        command: A::Command,
        read: impl Fn(&A, &Outcome) -> R + Send + 'static,
    ) -> Result<(Outcome, R), CommandError> {
        StreamName::new(stream)?;
        let (outcome, value) =
            self.submit::<A>(stream, Some(command), expected, context.clone(), Some(boxed_reader(read)))?;
        Ok((outcome, unbox(value)))
    }

    /// [`execute`](Self::execute) for async callers (HTTP handlers): awaits the stream's writer
    /// without holding a thread.
    pub async fn execute_async<A: Aggregate>(
        &self,
        stream: &str,
        expected: Option<u64>,
        context: &CommandContext,
        command: A::Command,
    ) -> Result<Outcome, CommandError> {
        StreamName::new(stream)?;
        self.submit_async::<A>(stream, Some(command), expected, context.clone(), None).await.map(|(outcome, _)| outcome)
    }

    /// [`execute_then`](Self::execute_then) for async callers.
    pub async fn execute_then_async<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        expected: Option<u64>,
        context: &CommandContext,
        command: A::Command,
        read: impl Fn(&A, &Outcome) -> R + Send + 'static,
    ) -> Result<(Outcome, R), CommandError> {
        StreamName::new(stream)?;
        let (outcome, value) =
            self.submit_async::<A>(stream, Some(command), expected, context.clone(), Some(boxed_reader(read))).await?;
        Ok((outcome, unbox(value)))
    }

    /// [`execute`](Self::execute) with no expected version. (Every command without an expected
    /// version is decided again when another process appended in between; the name stays for
    /// the callers that rely on it.)
    pub fn execute_retrying<A: Aggregate>(
        &self,
        stream: &str,
        context: &CommandContext,
        command: impl Fn() -> A::Command,
    ) -> Result<Outcome, CommandError> {
        self.execute::<A>(stream, None, context, command())
    }

    /// Queues a job on the stream and waits for its answer, running the queue as leader when
    /// no one else is.
    fn submit<A: Aggregate>(
        &self,
        stream: &str,
        command: Option<A::Command>,
        expected: Option<u64>,
        context: CommandContext,
        reader: Option<Reader<A>>,
    ) -> JobResult {
        let slot = self.slot::<A>(stream);
        let answer = Arc::new(Mutex::new(None));
        let reply = Reply::Thread { answer: answer.clone(), thread: thread::current() };
        let mut shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.queue.push(Job { command, expected, context, reader, reply });
        loop {
            if let Some(answer) = answer.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return answer;
            }
            if !shared.leader {
                shared.leader = true;
                drop(shared);
                // One batch, then the lead passes on: this caller has its answer to return.
                self.lead(&slot, stream, false);
            } else {
                // A wake-up that came before `park` makes it return at once; a spurious one loops.
                drop(shared);
                thread::park();
            }
            shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Queues a job and awaits its answer without holding a thread: if no one leads the stream,
    /// a blocking task is started to lead it until its queue is empty.
    async fn submit_async<A: Aggregate>(
        &self,
        stream: &str,
        command: Option<A::Command>,
        expected: Option<u64>,
        context: CommandContext,
        reader: Option<Reader<A>>,
    ) -> JobResult {
        let slot = self.slot::<A>(stream);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        {
            let mut shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.queue.push(Job { command, expected, context, reader, reply: Reply::Channel(Some(sender)) });
            if !shared.leader {
                shared.leader = true;
                self.spawn_leader(slot.clone(), stream.to_string());
            }
        }
        receiver.await.unwrap_or_else(|_| {
            Err(CommandError::Store(StoreError::Backend(
                "the stream's writer stopped before answering; nothing was appended".into(),
            )))
        })
    }

    /// Starts a leader off the async workers (appends wait for the disk).
    fn spawn_leader<A: Aggregate>(&self, slot: Arc<Slot<A>>, stream: String) {
        let bus = self.clone();
        let lead = move || bus.lead(&slot, &stream, true);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(lead);
            }
            Err(_) => {
                thread::spawn(lead);
            }
        }
    }

    /// After a leader leaves (`shared.leader` is false): gives the lead to the first waiting job.
    fn hand_off<A: Aggregate>(&self, slot: &Arc<Slot<A>>, stream: &str, shared: &mut Shared<A>) {
        match shared.queue.first().map(|job| &job.reply) {
            None => {}
            Some(Reply::Thread { thread, .. }) => thread.unpark(),
            Some(Reply::Channel(_)) => {
                shared.leader = true;
                self.spawn_leader(slot.clone(), stream.to_string());
            }
        }
    }

    /// Runs batches as the stream's leader (the caller has set `leader`): one batch, or until
    /// the queue is empty when `drain`.
    fn lead<A: Aggregate>(&self, slot: &Arc<Slot<A>>, stream: &str, drain: bool) {
        let mut guard = LeaderGuard { bus: self.clone(), slot: slot.clone(), stream: stream.to_string(), armed: true };
        let mut shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let take = shared.queue.len().min(MAX_BATCH);
            let jobs: Vec<Job<A>> = shared.queue.drain(..take).collect();
            let mut state = shared.state.take();
            drop(shared);
            self.run_batch(stream, &mut state, jobs);
            shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.state = state;
            if !drain || shared.queue.is_empty() {
                break;
            }
        }
        shared.leader = false;
        self.hand_off(slot, stream, &mut shared);
        guard.armed = false;
    }

    /// Brings `state` up to date with the stream (loading it on first use).
    fn catch_up<A: Aggregate>(&self, name: &StreamName, state: &mut Option<(A, u64)>) -> Result<(), CommandError> {
        let (aggregate, version) = state.get_or_insert_with(|| (A::default(), 0));
        loop {
            let batch = self.store.read_stream(name, *version + 1, LOAD_BATCH)?;
            let done = batch.len() < LOAD_BATCH;
            for stored in batch {
                let payload = serde_json::from_str(&stored.payload).map_err(|e| DecodeError {
                    event_type: stored.event_type.clone(),
                    schema_version: stored.schema_version,
                    message: e.to_string(),
                })?;
                let event: A::Event = decode(&stored.event_type, stored.schema_version, payload)?;
                aggregate.evolve(&event);
                *version = stored.version;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Decides every job in order on the evolving state and appends all their events at once;
    /// answers every job.
    fn run_batch<A: Aggregate>(&self, stream: &str, state: &mut Option<(A, u64)>, mut jobs: Vec<Job<A>>) {
        let name = match StreamName::new(stream) {
            Ok(name) => name,
            Err(error) => {
                for job in &mut jobs {
                    job.finish(Err(error.clone().into()));
                }
                return;
            }
        };
        let mut attempt = 0;
        loop {
            if let Err(error) = self.catch_up(&name, state) {
                *state = None;
                let message = error.to_string();
                for job in &mut jobs {
                    job.finish(Err(CommandError::Store(StoreError::Backend(message.clone()))));
                }
                return;
            }
            let (aggregate, version) = state.as_mut().expect("caught up");
            let start_version = *version;
            let now = Utc::now();
            // Per job: its answer so far, and how many events it added to the batch.
            let mut answers: Vec<Option<JobResult>> = Vec::with_capacity(jobs.len());
            let mut counts: Vec<usize> = Vec::with_capacity(jobs.len());
            let mut new_events: Vec<NewEvent> = Vec::new();
            for job in &jobs {
                let current = start_version + new_events.len() as u64;
                let Some(command) = &job.command else {
                    let outcome = Outcome {
                        stream: stream.to_string(),
                        stream_version: current,
                        position: None,
                        event_ids: vec![],
                    };
                    let read = job.reader.as_ref().map(|read| read(aggregate, &outcome));
                    answers.push(Some(Ok((outcome, read))));
                    counts.push(0);
                    continue;
                };
                if let Some(expected) = job.expected
                    && expected != current
                {
                    answers.push(Some(Err(CommandError::Conflict {
                        stream: stream.to_string(),
                        expected,
                        actual: current,
                    })));
                    counts.push(0);
                    continue;
                }
                match aggregate.decide(command.clone()) {
                    Err(error) => {
                        answers.push(Some(Err(error.into())));
                        counts.push(0);
                    }
                    Ok(events) => {
                        let mut ids = Vec::with_capacity(events.len());
                        for event in &events {
                            aggregate.evolve(event);
                            let encoded = encode(event);
                            let event_id = Uuid::now_v7();
                            ids.push(event_id);
                            new_events.push(NewEvent {
                                event_type: encoded.event_type,
                                schema_version: encoded.schema_version,
                                payload: encoded.payload,
                                metadata: EventMetadata {
                                    event_id,
                                    recorded_at: now,
                                    actor: job.context.actor.clone(),
                                    correlation_id: job.context.correlation_id,
                                    causation_id: job.context.causation_id,
                                },
                            });
                        }
                        counts.push(events.len());
                        // The position is filled in once the append has one.
                        let outcome = Outcome {
                            stream: stream.to_string(),
                            stream_version: start_version + new_events.len() as u64,
                            position: None,
                            event_ids: ids,
                        };
                        let read = job.reader.as_ref().map(|read| read(aggregate, &outcome));
                        answers.push(Some(Ok((outcome, read))));
                    }
                }
            }
            if new_events.is_empty() {
                for (job, answer) in jobs.iter_mut().zip(answers) {
                    job.finish(answer.expect("every job answered"));
                }
                return;
            }
            let expected =
                if start_version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(start_version) };
            match self.store.append(&name, expected, &new_events) {
                Ok(appended) => {
                    *version = appended.stream_version;
                    // One append's events take consecutive positions.
                    let mut written = 0u64;
                    for ((job, answer), count) in jobs.iter_mut().zip(answers).zip(counts) {
                        let mut answer = answer.expect("every job answered");
                        written += count as u64;
                        if count > 0
                            && let Ok((outcome, _)) = &mut answer
                        {
                            outcome.position = Some(appended.first_position + written - 1);
                        }
                        job.finish(answer);
                    }
                    return;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    // Another process appended: reload and decide the batch again.
                    *state = None;
                    attempt += 1;
                    if attempt > CONFLICT_RETRIES {
                        for job in &mut jobs {
                            job.finish(Err(CommandError::Conflict {
                                stream: stream.to_string(),
                                expected: start_version,
                                actual,
                            }));
                        }
                        return;
                    }
                }
                Err(other) => {
                    *state = None;
                    // Jobs before the first one with events keep their answers; every later one was
                    // decided (or read) on events that are not stored.
                    let first = counts.iter().position(|&count| count > 0).unwrap_or(jobs.len());
                    for (i, (job, answer)) in jobs.iter_mut().zip(answers).enumerate() {
                        job.finish(if i < first {
                            answer.expect("every job answered")
                        } else {
                            Err(other.clone().into())
                        });
                    }
                    return;
                }
            }
        }
    }
}

/// Decodes a stored event into what projections fold.
pub fn to_recorded(stored: &store::StoredEvent) -> Result<domain::Recorded, DecodeError> {
    into_recorded(stored.clone())
}

/// [`to_recorded`] without copying the event's strings (replay owns its batches).
pub fn into_recorded(stored: store::StoredEvent) -> Result<domain::Recorded, DecodeError> {
    let event = domain::DomainEvent::decode_str(
        stored.stream.as_str(),
        &stored.event_type,
        stored.schema_version,
        &stored.payload,
    )?;
    Ok(domain::Recorded {
        position: stored.position,
        stream: String::from(stored.stream),
        version: stored.version,
        event_type: stored.event_type,
        metadata: stored.metadata,
        event,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use domain::round::{Answer, ImageRef, ItemContent, ItemLabel, RoundItem, RoundKind};
    use domain::values::{BlobHash, Quality};
    use domain::{AnnotationRound, ImageId, ItemId, ModelVersionId, RoundCommand, RoundId};

    use super::*;
    use store::sqlite::SqliteStore;
    use store::{AppendResult, StoredEvent};

    /// Counts appends and can be told to fail them.
    struct Probe {
        inner: SqliteStore,
        appends: AtomicUsize,
        fail: AtomicBool,
    }

    impl EventStore for Probe {
        fn append(
            &self,
            stream: &StreamName,
            expected: ExpectedVersion,
            events: &[NewEvent],
        ) -> Result<AppendResult, StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("disk full (test)".into()));
            }
            self.appends.fetch_add(1, Ordering::SeqCst);
            // Slow appends, like a durable commit on a real disk, so that commands queue up.
            std::thread::sleep(Duration::from_millis(2));
            self.inner.append(stream, expected, events)
        }
        fn read_stream(&self, stream: &StreamName, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.read_stream(stream, from, limit)
        }
        fn stream_version(&self, stream: &StreamName) -> Result<u64, StoreError> {
            self.inner.stream_version(stream)
        }
        fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.read_all(after, limit)
        }
        fn head_position(&self) -> Result<u64, StoreError> {
            self.inner.head_position()
        }
        fn wait_for_position_after(&self, position: u64, timeout: Duration) -> Result<u64, StoreError> {
            self.inner.wait_for_position_after(position, timeout)
        }
        fn list_streams(&self) -> Result<Vec<(StreamName, u64)>, StoreError> {
            self.inner.list_streams()
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<Probe>) {
        let dir = tempfile::tempdir().unwrap();
        let inner = SqliteStore::open(dir.path().join("events.db")).unwrap();
        (dir, Arc::new(Probe { inner, appends: AtomicUsize::new(0), fail: AtomicBool::new(false) }))
    }

    fn open_round(bus: &CommandBus, items: usize, raters: u32) -> (String, Vec<ItemId>) {
        let round_id = RoundId(Uuid::now_v7());
        let items: Vec<RoundItem> = (0..items)
            .map(|n| RoundItem {
                item_id: ItemId(Uuid::now_v7()),
                content: ItemContent::Image(ImageRef {
                    image_id: ImageId(Uuid::now_v7()),
                    blob: BlobHash::parse(&format!("{n:064x}")).unwrap(),
                }),
                label: ItemLabel {
                    association_id: None,
                    prompt_id: None,
                    prompt: "a photo of a woman at the beach".into(),
                    seed: n as u64,
                    models: vec![ModelVersionId(Uuid::now_v7())],
                },
            })
            .collect();
        let ids = items.iter().map(|i| i.item_id).collect();
        let command = RoundCommand::Open {
            round_id,
            kind: RoundKind::Screen,
            items,
            raters_per_item: raters,
            quality_threshold: Quality::new(3).unwrap(),
            assignment_lease_seconds: 600,
            campaign_id: None,
            controls: domain::round::RoundControls::default(),
        };
        bus.execute::<AnnotationRound>(&round_id.stream(), None, &CommandContext::system(), command).unwrap();
        (round_id.stream(), ids)
    }

    fn rate(bus: &CommandBus, stream: &str, annotator: &str) -> Option<Outcome> {
        let now = Utc::now();
        let who = annotator.to_string();
        let (_, task) = bus
            .execute_then::<AnnotationRound, _>(
                stream,
                None,
                &CommandContext::system(),
                RoundCommand::AssignNext { annotator: annotator.into(), now },
                move |round, _| round.current_task(&who, now),
            )
            .unwrap();
        let answer = Answer::Screen { quality: Quality::new(4).unwrap(), group_depicted: true, concept_present: false };
        let command = RoundCommand::Submit { annotator: annotator.into(), item_id: task?, answer };
        Some(bus.execute::<AnnotationRound>(stream, None, &CommandContext::system(), command).unwrap())
    }

    #[test]
    fn concurrent_commands_on_one_stream_share_appends_and_all_land() {
        let (_dir, probe) = setup();
        let bus = CommandBus::new(probe.clone());
        let (stream, _) = open_round(&bus, 60, 3);
        let before = probe.appends.load(Ordering::SeqCst);
        let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|n| {
                    let (bus, stream) = (bus.clone(), stream.clone());
                    scope.spawn(move || {
                        (0..10).filter_map(|_| rate(&bus, &stream, &format!("annotator{n}"))).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.len(), 80, "every annotator got and rated ten tasks");
        // 80 assignments + 80 submissions, fewer appends: commands waiting behind a slow append
        // went into the next one together.
        let appends = probe.appends.load(Ordering::SeqCst) - before;
        assert!(appends < 160, "{appends} appends for 160 events: nothing was batched");
        // Each answer names its own event's version and position, and the store agrees.
        let name = StreamName::new(&stream).unwrap();
        let stored = probe.read_stream(&name, 1, 1000).unwrap();
        assert_eq!(stored.len(), 161);
        for outcome in &outcomes {
            let event = &stored[outcome.stream_version as usize - 1];
            assert_eq!(Some(event.position), outcome.position);
            assert_eq!(event.metadata.event_id, outcome.event_ids[0]);
            assert_eq!(event.event_type, "AnnotationSubmitted");
        }
        let (round, version) = bus.load::<AnnotationRound>(&stream).unwrap();
        assert_eq!((round.progress().0, version), (80, 161));
    }

    #[test]
    fn a_second_writer_is_caught_up_with_and_if_match_still_conflicts() {
        let (_dir, probe) = setup();
        let (one, two) = (CommandBus::new(probe.clone()), CommandBus::new(probe.clone()));
        let (stream, _) = open_round(&one, 10, 2);
        rate(&one, &stream, "ann").unwrap();
        // `two` never saw the round being rated; its decision is made on the stored state.
        rate(&two, &stream, "bob").unwrap();
        let outcome = rate(&one, &stream, "cat").unwrap();
        assert_eq!(outcome.stream_version, 7);
        let close = RoundCommand::Close { allow_incomplete: true, leave_out_unadjudicated: false };
        let stale = one.execute::<AnnotationRound>(&stream, Some(5), &CommandContext::system(), close.clone());
        assert!(matches!(stale, Err(CommandError::Conflict { expected: 5, actual: 7, .. })), "{stale:?}");
        two.execute::<AnnotationRound>(&stream, Some(7), &CommandContext::system(), close).unwrap();
    }

    #[test]
    fn a_failed_append_changes_nothing_and_the_next_command_sees_the_stored_state() {
        let (_dir, probe) = setup();
        let bus = CommandBus::new(probe.clone());
        let (stream, items) = open_round(&bus, 2, 1);
        probe.fail.store(true, Ordering::SeqCst);
        let refused = bus.execute::<AnnotationRound>(
            &stream,
            None,
            &CommandContext::system(),
            RoundCommand::AssignNext { annotator: "ann".into(), now: Utc::now() },
        );
        assert!(matches!(refused, Err(CommandError::Store(_))), "{refused:?}");
        probe.fail.store(false, Ordering::SeqCst);
        // Had the bus kept its in-memory assignment, ann would hold item 0 without it being stored.
        let (round, version) = bus.load::<AnnotationRound>(&stream).unwrap();
        assert_eq!((version, round.current_task("ann", Utc::now())), (1, None));
        assert!(rate(&bus, &stream, "ann").is_some());
        let (round, _) = bus.load::<AnnotationRound>(&stream).unwrap();
        assert_eq!(round.submissions.keys().next(), Some(&items[0]));
    }
}
