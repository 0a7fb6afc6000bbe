//! Load benchmark of the REST API: annotation submissions over keep-alive HTTP on loopback.
//!
//! ```text
//! cargo bench -p thitl-api --bench annotations                 # 3 runs, 8 clients, 2,000 items × 3
//! cargo bench -p thitl-api --bench annotations -- --quick      # 1 small run, a smoke test
//! cargo bench -p thitl-api --bench annotations -- --clients 16 --runs 5 --submissions 5000
//! cargo bench -p thitl-api --bench annotations -- --data-in /dev/shm   # tmpfs: fsync costs nothing
//! cargo bench -p thitl-api --bench annotations -- --chained     # one POST per annotation ("next": true)
//! ```
//!
//! Each run starts the server in-process on 127.0.0.1:0 over a fresh temporary data directory
//! (the embedded SQLite store, durable commits), issues one annotator token per client, opens
//! a round 1 over `--items` images with `--raters` raters each, and lets every client thread —
//! one keep-alive connection each, like an annotator's browser — loop `GET /v1/rounds/{id}/next`
//! then `POST /v1/rounds/{id}/annotations`. The first `--warmup` submissions of each client are
//! not timed. Then `--submissions` in all are timed (bounded by `--max-seconds` too).
//!
//! Reported: acknowledged (201) submissions per second of the timed phase, p50/p99 latency of
//! the POSTs (and of the GETs), as medians over the runs. Afterwards every acknowledged
//! submission must be in the log: the round's progress counts them, and each acknowledged
//! (item, annotator) is found as an `AnnotationSubmitted` event in the round's stream.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use domain::{Actor, Role};

/// The same allocator as the `thitl` binary, so the server measured here is the one deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use app::commands::{CommandBus, CommandContext};
use app::data::DataDir;
use serde_json::{Value, json};
use store::StreamName;
use thitl::configuration::Settings;
use thitl::startup::{Application, Storage};

struct Options {
    clients: usize,
    items: usize,
    raters: u32,
    warmup: usize,
    submissions: usize,
    runs: usize,
    max_seconds: u64,
    /// Where to make the temporary data directories (default: the system's temp dir).
    data_in: Option<std::path::PathBuf>,
    /// Each submission asks for the next task (`"next": true`) instead of a separate GET.
    chained: bool,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            clients: 8,
            items: 2_000,
            raters: 3,
            warmup: 25,
            submissions: 4_000,
            runs: 3,
            max_seconds: 120,
            data_in: None,
            chained: false,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = || {
                args.get(i + 1)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{} needs a number", args[i]))
            };
            match args[i].as_str() {
                "--quick" => {
                    options = Options {
                        clients: 4,
                        items: 300,
                        raters: 3,
                        warmup: 10,
                        submissions: 600,
                        runs: 1,
                        max_seconds: 60,
                        ..options
                    };
                    i += 1;
                    continue;
                }
                "--chained" => {
                    options.chained = true;
                    i += 1;
                    continue;
                }
                "--clients" => options.clients = value(),
                "--items" => options.items = value(),
                "--raters" => options.raters = value() as u32,
                "--warmup" => options.warmup = value(),
                "--submissions" => options.submissions = value(),
                "--runs" => options.runs = value(),
                "--max-seconds" => options.max_seconds = value() as u64,
                "--data-in" => options.data_in = Some(args.get(i + 1).expect("--data-in needs a directory").into()),
                // cargo bench passes --bench; ignore it and anything else unknown.
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        let capacity = options.items * options.raters as usize;
        assert!(options.clients >= options.raters as usize, "need at least as many clients as raters per item");
        assert!(
            options.submissions + options.warmup * options.clients <= capacity,
            "the round holds {capacity} annotations: fewer submissions, or more items"
        );
        options
    }
}

/// A keep-alive HTTP/1.1 connection: just enough client for JSON requests to thitl.
///
/// Hand-written on purpose, unlike every other client in thitl (reqwest): the bench measures the
/// server, so each client thread owns exactly one connection and does nothing per request but
/// write the request and read the answer. A general client's pool, runtime thread and per-request
/// bookkeeping would add their own latency and scheduling to the figures (on 2 cores, the load
/// generator shares the CPUs with the server it measures).
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Connection {
    fn open(address: &str) -> Connection {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        Connection {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
            host: address.to_string(),
        }
    }

    /// Sends one request and reads its answer: (status, body).
    fn request(&mut self, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n", self.host);
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        if let Some(body) = body {
            head.push_str(body);
        }
        self.writer.write_all(head.as_bytes()).expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
                assert!(!name.eq_ignore_ascii_case("transfer-encoding"), "chunked answers are not expected");
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

struct Server {
    address: String,
    dir: tempfile::TempDir,
    bus: CommandBus,
    curator: String,
    annotators: Vec<(String, String)>,
}

fn start_server(options: &Options) -> Server {
    let dir = match &options.data_in {
        Some(parent) => tempfile::tempdir_in(parent).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let data = DataDir::open_or_create(dir.path()).expect("data dir");
    let bus = CommandBus::new(data.store.clone());
    let setup = CommandContext::new(Actor::new("bench-setup", Role::Admin));
    let issue = |name: &str, role| app::auth::issue_token(&bus, &setup, name, role).expect("token").secret;
    let curator = issue("cora", Role::Curator);
    let annotators: Vec<(String, String)> = (0..options.clients)
        .map(|i| format!("annotator-{i}"))
        .map(|name| (issue(&name, Role::Annotator), name))
        .collect();
    let storage = Storage {
        store: data.store.clone(),
        checkpoint: Some(data.checkpoint_path()),
        idempotency: Some(dir.path().join("idempotency.db")),
    };
    // The round's list of images is large; everything else is as `thitl serve` runs by default.
    let settings = Settings { bind: "127.0.0.1:0".into(), body_limit_bytes: 16 * 1024 * 1024, ..Settings::default() };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = Application::build_with(storage, settings).expect("build server");
            sender.send(app.port()).expect("port");
            app.run_until_stopped().await.expect("serve");
        })
    });
    let port = receiver.recv_timeout(Duration::from_secs(60)).expect("server start");
    Server { address: format!("127.0.0.1:{port}"), dir, bus, curator, annotators }
}

fn open_round(server: &Server, options: &Options) -> String {
    let mut connection = Connection::open(&server.address);
    let model = "01900000-0000-7000-8000-0000000000ff";
    let items: Vec<Value> = (0..options.items)
        .map(|i| json!({"blob": format!("{i:064x}"), "prompt": "a photo of a woman at the beach", "seed": i, "model_version": model}))
        .collect();
    let body = json!({"kind": "screen", "items": items, "raters_per_item": options.raters}).to_string();
    let (status, answer) = connection.request("POST", "/v1/rounds", &server.curator, Some(&body));
    assert_eq!(status, 201, "open round: {answer}");
    serde_json::from_str::<Value>(&answer).expect("json")["id"].as_str().expect("round id").to_string()
}

/// What one client measured.
#[derive(Default)]
struct ClientResult {
    post_latencies: Vec<Duration>,
    get_latencies: Vec<Duration>,
    /// Every acknowledged (item id, annotator), warm-up included.
    acknowledged: Vec<(String, String)>,
    timed_acknowledged: usize,
    max_position: u64,
    refused: usize,
    /// Requests the server refused with 409 for a write race (and the client sent again).
    races: usize,
    /// In chained mode: the task the last submission's answer assigned.
    next_task: Option<String>,
}

/// Whether an answer is the server giving up on a write race ("changed since version …"):
/// the command is safe to send again, as a browser would.
fn is_write_race(status: u16, body: &str) -> bool {
    status == 409 && body.contains("changed since version")
}

/// Sends a request until it is not refused for a write race; counts the races.
fn send_retrying(
    connection: &mut Connection,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
    races: &mut usize,
) -> (u16, String) {
    loop {
        let (status, answer) = connection.request(method, path, token, body);
        if !is_write_race(status, &answer) {
            return (status, answer);
        }
        *races += 1;
    }
}

/// One GET /next + POST cycle; false when there was no task left. Latency counts from the
/// first try to the final answer, races included.
fn annotate_once(
    connection: &mut Connection,
    round: &str,
    token: &str,
    name: &str,
    result: &mut ClientResult,
    timed: bool,
    chained: bool,
) -> bool {
    let item = match result.next_task.take() {
        Some(item) => item,
        None => {
            let started = Instant::now();
            let (status, body) =
                send_retrying(connection, "GET", &format!("/v1/rounds/{round}/next"), token, None, &mut result.races);
            if timed {
                result.get_latencies.push(started.elapsed());
            }
            assert_eq!(status, 200, "next: {body}");
            let next: Value = serde_json::from_str(&body).expect("json");
            let Some(item) = next["task"]["item_id"].as_str() else { return false };
            item.to_string()
        }
    };
    let item = item.as_str();
    let answer =
        json!({"item_id": item, "answer": {"screen": {"quality": 4, "group_depicted": true, "concept_present": false}}, "next": chained})
            .to_string();
    let started = Instant::now();
    let path = format!("/v1/rounds/{round}/annotations");
    let (status, body) = send_retrying(connection, "POST", &path, token, Some(&answer), &mut result.races);
    let elapsed = started.elapsed();
    if status == 201 {
        let answer: Value = serde_json::from_str(&body).expect("json");
        result.max_position = result.max_position.max(answer["position"].as_u64().expect("position"));
        if chained {
            let Some(next) = answer["next"]["task"]["item_id"].as_str() else {
                result.acknowledged.push((item.to_string(), name.to_string()));
                if timed {
                    result.post_latencies.push(elapsed);
                    result.timed_acknowledged += 1;
                }
                return false;
            };
            result.next_task = Some(next.to_string());
        }
        result.acknowledged.push((item.to_string(), name.to_string()));
        if timed {
            result.post_latencies.push(elapsed);
            result.timed_acknowledged += 1;
        }
    } else {
        result.refused += 1;
    }
    true
}

struct RunResult {
    acknowledged: usize,
    seconds: f64,
    per_second: f64,
    post_p50: Duration,
    post_p99: Duration,
    get_p50: Duration,
    get_p99: Duration,
    refused: usize,
    races: usize,
    verified: usize,
    /// CPU time (user + system, server and clients together) per acknowledged submission.
    cpu_per_submission: Duration,
}

/// CPU time this process has used, from `/proc/self/stat` (Linux; zero elsewhere).
fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name; the
    // kernel counts them in USER_HZ, 100 on every Linux architecture that matters here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run(options: &Options) -> RunResult {
    let server = start_server(options);
    let round = open_round(&server, options);
    let per_client = options.submissions.div_ceil(options.clients);
    let deadline_after = Duration::from_secs(options.max_seconds);
    let barrier = Arc::new(Barrier::new(options.clients + 1));
    let handles: Vec<_> = server
        .annotators
        .iter()
        .cloned()
        .map(|(token, name)| {
            let (address, round, barrier) = (server.address.clone(), round.clone(), barrier.clone());
            let (warmup, chained) = (options.warmup, options.chained);
            std::thread::spawn(move || {
                let mut connection = Connection::open(&address);
                let mut result = ClientResult::default();
                for _ in 0..warmup {
                    annotate_once(&mut connection, &round, &token, &name, &mut result, false, chained);
                }
                barrier.wait();
                let deadline = Instant::now() + deadline_after;
                while result.timed_acknowledged < per_client && Instant::now() < deadline {
                    if !annotate_once(&mut connection, &round, &token, &name, &mut result, true, chained) {
                        break;
                    }
                }
                result
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let results: Vec<ClientResult> = handles.into_iter().map(|h| h.join().expect("client")).collect();
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_time().saturating_sub(cpu_before);

    let mut posts: Vec<Duration> = results.iter().flat_map(|r| r.post_latencies.iter().copied()).collect();
    let mut gets: Vec<Duration> = results.iter().flat_map(|r| r.get_latencies.iter().copied()).collect();
    posts.sort();
    gets.sort();
    let timed: usize = results.iter().map(|r| r.timed_acknowledged).sum();
    let refused: usize = results.iter().map(|r| r.refused).sum();
    let races: usize = results.iter().map(|r| r.races).sum();
    let verified = verify(&server, &round, &results);
    drop(server.dir);
    RunResult {
        acknowledged: timed,
        seconds,
        per_second: timed as f64 / seconds,
        post_p50: percentile(&posts, 50.0),
        post_p99: percentile(&posts, 99.0),
        get_p50: percentile(&gets, 50.0),
        get_p99: percentile(&gets, 99.0),
        refused,
        races,
        verified,
        cpu_per_submission: cpu / timed.max(1) as u32,
    }
}

/// Every acknowledged submission is in the log: the round's progress (over HTTP, read-your-writes)
/// counts them all, and each (item, annotator) is an `AnnotationSubmitted` in the round's stream.
/// Returns how many were checked; panics on a missing one.
fn verify(server: &Server, round: &str, results: &[ClientResult]) -> usize {
    let acknowledged: Vec<&(String, String)> = results.iter().flat_map(|r| r.acknowledged.iter()).collect();
    let max_position = results.iter().map(|r| r.max_position).max().unwrap_or(0);
    let mut connection = Connection::open(&server.address);
    let (status, body) =
        connection.request("GET", &format!("/v1/rounds/{round}?wait_for={max_position}"), &server.curator, None);
    assert_eq!(status, 200, "progress: {body}");
    let progress: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        progress["submitted"].as_u64(),
        Some(acknowledged.len() as u64),
        "the round's progress misses acknowledged submissions: {progress}"
    );

    let stream = StreamName::new(format!("round-{round}")).expect("stream name");
    let mut recorded = HashSet::new();
    let mut from = 1;
    loop {
        let batch = server.bus.store().read_stream(&stream, from, 10_000).expect("read round");
        for event in &batch {
            if event.event_type == "AnnotationSubmitted" {
                let payload: Value = serde_json::from_str(&event.payload).expect("payload");
                recorded.insert((
                    payload["item_id"].as_str().unwrap().to_string(),
                    payload["annotator"].as_str().unwrap().to_string(),
                ));
            }
            from = event.version + 1;
        }
        if batch.len() < 10_000 {
            break;
        }
    }
    for submission in &acknowledged {
        assert!(recorded.contains(*submission), "acknowledged submission {submission:?} is not in the log");
    }
    acknowledged.len()
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1e3)
}

fn main() {
    // A client thread that fails must stop the whole benchmark, not leave the others waiting.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(1);
    }));
    let options = Options::parse();
    println!(
        "REST API: annotation submissions — {} clients (keep-alive, loopback), round of {} items × {} raters, \
         {} timed submissions per run after {} warm-up per client, {} run(s), {} CPU(s), data in {}, {}",
        options.clients,
        options.items,
        options.raters,
        options.submissions,
        options.warmup,
        options.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.data_in.as_deref().unwrap_or(&std::env::temp_dir()).display(),
        if options.chained { "one POST per annotation (\"next\": true)" } else { "GET /next + POST per annotation" },
    );
    println!();
    println!(
        "| run | acknowledged | seconds | submissions/s | POST p50 ms | POST p99 ms | GET /next p50 ms | GET /next p99 ms | CPU µs per submission | 409 races | refused | verified present |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results = vec![];
    for run_number in 1..=options.runs {
        let result = run(&options);
        println!(
            "| {run_number} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            result.acknowledged,
            result.seconds,
            result.per_second,
            ms(result.post_p50),
            ms(result.post_p99),
            ms(result.get_p50),
            ms(result.get_p99),
            result.cpu_per_submission.as_micros(),
            result.races,
            result.refused,
            result.verified
        );
        results.push(result);
    }
    let per_second = median(results.iter().map(|r| r.per_second).collect());
    let p50 = median(results.iter().map(|r| r.post_p50).collect());
    let p99 = median(results.iter().map(|r| r.post_p99).collect());
    println!(
        "| median | | | {per_second:.0} | {} | {} | {} | {} | {} | | | |",
        ms(p50),
        ms(p99),
        ms(median(results.iter().map(|r| r.get_p50).collect())),
        ms(median(results.iter().map(|r| r.get_p99).collect())),
        median(results.iter().map(|r| r.cpu_per_submission).collect()).as_micros(),
    );
    println!();
    let met = per_second >= 5_000.0 && p99 <= Duration::from_millis(20);
    println!(
        "target ≥ 5,000 acknowledged submissions/s with POST p99 ≤ 20 ms: {} ({per_second:.0}/s, p99 {} ms)",
        if met { "met" } else { "MISSED" },
        ms(p99)
    );
    println!(
        "every acknowledged submission present afterwards: yes ({} checked)",
        results.iter().map(|r| r.verified).sum::<usize>()
    );
}
