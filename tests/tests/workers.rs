//! Workers as competing consumers over one SQLite store: `thitl worker` processes claim
//! generation jobs with leases. One is killed (SIGKILL) in the middle of a job; two others share
//! the remaining jobs and take the dead one's over once its lease has expired. No job runs on two
//! workers at once, no image is recorded twice, every image is recorded by the job's holder, and
//! a resumed job makes the pictures an uninterrupted one makes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::{Server, TestApp, create_token, thitl_bin};

/// Short, so that the test waits seconds for a takeover, not a minute.
pub(crate) const LEASE_SECONDS: i64 = 3;

/// A `thitl worker` process; killed when dropped. Its log lines are kept for failure messages.
pub(crate) struct Worker {
    pub(crate) child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(data: &std::path::Path, name: &str) -> Worker {
        Self::spawn(&["--data", data.to_str().unwrap(), "--name", name], &[])
    }

    /// `thitl worker ARGS --device cpu` with a [`LEASE_SECONDS`] lease and `env`.
    pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut child = Command::new(thitl_bin())
            .arg("worker")
            .args(args)
            .args(["--device", "cpu"])
            .envs(env.iter().copied())
            .env("THITL_JOB_LEASE_SECONDS", LEASE_SECONDS.to_string())
            .env("THITL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start thitl worker");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, lines) = (child.stderr.take().expect("stderr"), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Worker { child, log }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns a value, for at most `seconds`.
pub(crate) fn wait_for<T>(
    what: &str,
    seconds: u64,
    logs: &dyn Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {seconds} s for {what}; worker logs:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn time(event: &Value) -> DateTime<Utc> {
    event["recorded_at"].as_str().unwrap().parse().unwrap()
}

#[test]
fn workers_share_the_jobs_and_take_over_a_killed_workers_job_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let admin = create_token(&data, "admin", "root");
    // The server runs no jobs: the workers do.
    let server = Server::start_with_args(&data, &["--no-jobs"], &[("THITL_BODY_LIMIT", "16777216")]);
    let app = TestApp { address: server.address.clone(), dir, admin };
    let operator = app.token("operator", "otto");
    let weights = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenes/weights/base.safetensors")).unwrap();
    let hash = app.upload(&operator, &weights).expect(201).json()["sha256"].clone();
    let base =
        app.post("/v1/model-versions", &operator, json!({"name": "base", "weights": hash})).expect(201).json()["id"]
            .clone();
    let prompts =
        ["a photo of a woman at the beach", "a photo of a man in a park", "a photo of a child in the kitchen"];
    let request = |n: u64, first_seed: u64| -> String {
        let items: Vec<Value> =
            (0..n).map(|i| json!({"prompt": prompts[i as usize % 3], "seed": first_seed + i})).collect();
        let body = json!({"model_version": base, "purpose": "baseline", "items": items, "sampler": {"steps": 2, "guidance_scale": 2.0, "eta": 0.0}});
        app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string()
    };
    // The oldest job first: w1 takes A, four batches of 32.
    let (a, b, c) = (request(128, 0), request(32, 1000), request(32, 2000));
    let job = |id: &str| app.get(&format!("/v1/generations/{id}"), &app.admin).expect(200).json();

    let w1 = Worker::start(&data, "w1");
    let logs1 = || w1.log();
    let recorded = wait_for("w1's first batch of job A", 600, &logs1, || {
        let view = job(&a);
        let images = view["images"].as_array().unwrap().len();
        (images >= 32).then_some((view, images))
    });
    let (view, images_before) = recorded;
    assert_eq!(view["worker"], "w1", "{view}");
    assert!(images_before < 128 && view["status"] == "running", "w1 finished job A before it could be killed: {view}");
    // Killed mid-job: no goodbye, its lease runs on.
    let mut w1 = w1;
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    let w1_log = w1.log();
    drop(w1);

    let (w2, w3) = (Worker::start(&data, "w2"), Worker::start(&data, "w3"));
    let logs = || format!("w1:\n{w1_log}\nw2:\n{}\nw3:\n{}", w2.log(), w3.log());
    for id in [&a, &b, &c] {
        wait_for(&format!("job {id} to complete"), 900, &logs, || (job(id)["status"] == "completed").then_some(()));
    }

    // What the log says, job by job.
    let events = |id: &str| -> Vec<Value> {
        let page = app.get(&format!("/v1/audit/streams/generation-{id}?limit=1000"), &app.admin).expect(200).json();
        page["events"].as_array().unwrap().clone()
    };
    let mut completed_by = BTreeMap::new();
    for id in [&a, &b, &c] {
        let events = events(id);
        let of = |kind: &str| events.iter().filter(|e| e["type"] == kind).cloned().collect::<Vec<_>>();
        let starts = of("GenerationStarted");
        let claims: Vec<String> =
            starts.iter().map(|e| format!("{} at {}", e["payload"]["worker"], e["recorded_at"])).collect();
        // Each index recorded once, by the worker holding the job at the time.
        let mut holder = None;
        let mut indices = BTreeSet::new();
        for event in &events {
            match event["type"].as_str().unwrap() {
                "GenerationStarted" => holder = Some(event["payload"]["worker"].clone()),
                "ImageGenerated" => {
                    assert!(
                        indices.insert(event["payload"]["index"].as_u64().unwrap()),
                        "index recorded twice in {id}: {event}"
                    );
                    assert_eq!(
                        Some(&event["actor"]["principal"]),
                        holder.as_ref(),
                        "an image recorded by a worker not holding {id}: {event}"
                    );
                }
                "GenerationLeaseRenewed" => {
                    assert_eq!(Some(&event["payload"]["worker"]), holder.as_ref(), "a renewal by a non-holder: {event}")
                }
                "GenerationCompleted" => {
                    completed_by.insert(id.clone(), event["actor"]["principal"].as_str().unwrap().to_string());
                }
                "GenerationFailed" => panic!("job {id} failed: {event}\n{}", logs()),
                _ => {}
            }
        }
        let expected = if id == &a { 128 } else { 32 };
        assert_eq!(indices.len(), expected, "every image of {id} is there");
        if id == &a {
            // Started by w1, then taken over by w2 or w3 — only once w1's lease had run out.
            assert_eq!(starts.len(), 2, "job A's claims: {claims:?}");
            assert_eq!(starts[0]["payload"]["worker"], "w1");
            assert_ne!(starts[1]["payload"]["worker"], "w1");
            assert_eq!(starts[1]["payload"]["already_done"].as_u64(), Some(indices_before(&events, &starts[1])));
            assert!(starts[1]["payload"]["already_done"].as_u64().unwrap() >= images_before as u64);
            let w1_lease_end = events
                .iter()
                .filter(|e| {
                    e["actor"]["principal"] == "w1"
                        && (e["type"] == "GenerationStarted" || e["type"] == "GenerationLeaseRenewed")
                })
                .map(|e| e["payload"]["lease_until"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap())
                .max()
                .unwrap();
            assert!(
                time(&starts[1]) >= w1_lease_end,
                "job A was taken over at {} while w1's lease ran until {w1_lease_end}",
                time(&starts[1])
            );
        } else {
            assert_eq!(starts.len(), 1, "job {id}'s claims: {claims:?}");
        }
    }
    assert!(completed_by.values().all(|w| w == "w2" || w == "w3"), "{completed_by:?}");

    // The resumed job made the pictures an uninterrupted run makes: the same item (prompt, seed)
    // requested again, run by one worker start to end, gives the same blobs.
    let again = {
        let items: Vec<Value> = (0..128u64).map(|i| json!({"prompt": prompts[i as usize % 3], "seed": i})).collect();
        let body = json!({"model_version": base, "purpose": "baseline", "items": items, "sampler": {"steps": 2, "guidance_scale": 2.0, "eta": 0.0}});
        app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string()
    };
    wait_for("the uninterrupted job to complete", 900, &logs, || (job(&again)["status"] == "completed").then_some(()));
    let blobs = |id: &str| -> Vec<Value> {
        let view = job(id);
        let mut images = view["images"].as_array().unwrap().clone();
        images.sort_by_key(|i| i["index"].as_u64());
        images.iter().map(|i| i["blob"].clone()).collect()
    };
    assert_eq!(blobs(&a), blobs(&again), "the taken-over job's pictures differ from an uninterrupted run's");
    drop((w2, w3));
    assert!(server.interrupt().success());
}

/// How many images `events` recorded before `start`.
pub(crate) fn indices_before(events: &[Value], start: &Value) -> u64 {
    events.iter().take_while(|e| e["version"] != start["version"]).filter(|e| e["type"] == "ImageGenerated").count()
        as u64
}
