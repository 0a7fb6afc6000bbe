//! GPU workers that reach thitl over HTTP alone (`thitl worker --api URL` with a worker token),
//! each on its own data directory: nothing shared with the server but the API. `thitl serve
//! --no-local-jobs` steps a campaign; one worker is killed (SIGKILL) in the middle of the
//! campaign's first job, the other takes the job over once the lease has run out and runs every
//! other job of the campaign to its end. The audit log shows one claim after the other, each
//! image index recorded once by the job's holder, and the pictures equal an uninterrupted run's.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::{Server, TestApp, create_token};
use crate::serve_campaign::{annotate_open_rounds, stage};
use crate::workers::{Worker, indices_before, time, wait_for};

/// A server restarted in the middle of a job loses nothing the worker recorded: the worker
/// retries each call until the server is back, keeps its lease and finishes the job; every image
/// recorded once, by the one claim it made.
#[test]
fn a_remote_worker_rides_out_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let admin = create_token(&data, "admin", "root");
    // A fixed port, so that the restarted server is where the worker looks for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let env = [("THITL_BODY_LIMIT", "16777216")];
    let server = Server::start_at(&data, &bind, &["--no-local-jobs"], &env);
    let app = TestApp { address: server.address.clone(), dir, admin };
    let operator = app.token("operator", "otto");
    let token = app.token("worker", "gpu");
    let weights = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenes/weights/base.safetensors")).unwrap();
    let hash = app.upload(&operator, &weights).expect(201).json()["sha256"].clone();
    let base =
        app.post("/v1/model-versions", &operator, json!({"name": "base", "weights": hash})).expect(201).json()["id"]
            .clone();
    let items: Vec<Value> = (0..128).map(|i| json!({"prompt": "a photo of a woman at the beach", "seed": i})).collect();
    let body = json!({"model_version": base, "purpose": "baseline", "items": items, "sampler": {"steps": 2, "guidance_scale": 2.0, "eta": 0.0}});
    let job = app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    let view = |app: &TestApp| app.get(&format!("/v1/generations/{job}"), &operator).expect(200).json();

    let cache = tempfile::tempdir().unwrap();
    let worker = remote(&app, cache.path(), &token, "one");
    let logs = || worker.log();
    wait_for("the worker's first batch", 600, &logs, || {
        (view(&app)["images"].as_array().unwrap().len() >= 32).then_some(())
    });
    assert!(server.interrupt().success(), "the server stopped cleanly");
    let server = Server::start_at(&data, &bind, &["--no-local-jobs"], &env);
    wait_for("the job to complete after the restart", 600, &logs, || {
        (view(&app)["status"] == "completed").then_some(())
    });
    assert!(logs().contains("trying again"), "the worker never lost the server:\n{}", logs());
    let events = app.get(&format!("/v1/audit/streams/generation-{job}?limit=1000"), &app.admin).expect(200).json();
    let events = events["events"].as_array().unwrap();
    let starts = events.iter().filter(|e| e["type"] == "GenerationStarted").count();
    assert_eq!(starts, 1, "the worker kept its claim through the restart");
    let indices: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["type"] == "ImageGenerated")
        .map(|e| e["payload"]["index"].as_u64().unwrap())
        .collect();
    let recorded = events.iter().filter(|e| e["type"] == "ImageGenerated").count();
    assert_eq!((indices.len(), recorded), (128, 128), "each index recorded once");
    drop(worker);
    assert!(server.interrupt().success());
}

/// A remote worker on its own directory, with `token`, named `name`.
fn remote(app: &TestApp, dir: &std::path::Path, token: &str, name: &str) -> Worker {
    let api = format!("http://{}", app.address);
    Worker::spawn(&["--api", &api, "--data", dir.to_str().unwrap(), "--name", name], &[("THITL_TOKEN", token)])
}

#[test]
fn remote_workers_run_a_campaigns_jobs_and_one_takes_over_a_killed_workers_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let admin = create_token(&data, "admin", "root");
    // The server steps campaigns and runs no job: the workers do.
    let server = Server::start_with_args(&data, &["--no-local-jobs"], &[("THITL_BODY_LIMIT", "16777216")]);
    let app = TestApp { address: server.address.clone(), dir, admin };
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let annotator = app.token("annotator", "anna");
    let (token_a, token_b) = (app.token("worker", "gpu-a"), app.token("worker", "gpu-b"));

    let weights = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenes/weights/base.safetensors")).unwrap();
    let hash = app.upload(&operator, &weights).expect(201).json()["sha256"].clone();
    let base =
        app.post("/v1/model-versions", &operator, json!({"name": "base", "weights": hash})).expect(201).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
    let association = app
        .post(
            "/v1/associations",
            &curator,
            json!({
                "group": "woman", "concept": "hippopotamus", "category": "dehumanization",
                "description": "asked for a woman, the model adds a hippopotamus",
                "probe_prompts": ["a photo of a woman at the beach", "a woman in the park"],
            }),
        )
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // 128 probe images: the baseline job has four batches of 32, so a worker can die inside it.
    let settings = json!({
        "probe_images_per_association": 128, "training_prompts_per_association": 2, "candidates_per_prompt": 2,
        "prior_preservation_images": 2, "pairs_per_association": 2, "raters_per_item": 1, "traditional_arm": false,
        "auto_accept": true,
        "lora": {"rank": 4, "alpha": 4.0, "targets": ["qkv"], "steps": 6, "batch_size": 4, "learning_rate": 0.003, "weight_decay": 0.0, "seed": 1, "prior_weight": 1.0},
        "sampler": {"steps": 2, "guidance_scale": 2.0, "eta": 0.0}, "seed": 7,
    });
    let campaign = app
        .post(
            "/v1/campaigns",
            &curator,
            json!({"name": "remote", "associations": [association], "base_model": base, "settings": settings}),
        )
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let baseline_job = || -> Option<String> {
        stage(&app, &curator, &campaign)["work"]
            .as_array()?
            .iter()
            .find_map(|w| w.get("baseline_generation").map(|b| b["generation_id"].as_str().unwrap().to_string()))
    };
    let job = |id: &str| app.get(&format!("/v1/generations/{id}"), &operator).expect(200).json();

    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = remote(&app, dir_a.path(), &token_a, "one");
    let logs_a = || a.log();
    let baseline = wait_for("the campaign's baseline job", 120, &logs_a, baseline_job);
    let (view, images_before) = wait_for("worker a's first batch of the baseline job", 600, &logs_a, || {
        let view = job(&baseline);
        let images = view["images"].as_array().unwrap().len();
        (images >= 32).then_some((view, images))
    });
    assert_eq!(view["worker"], "gpu-a/one", "{view}");
    assert!(images_before < 128 && view["status"] == "running", "worker a finished before it could be killed: {view}");
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let log_a = a.log();
    drop(a);

    let b = remote(&app, dir_b.path(), &token_b, "two");
    let logs = || format!("worker a:\n{log_a}\nworker b:\n{}", b.log());
    // The campaign runs to its end on worker b; the annotator works its rounds meanwhile.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let state = stage(&app, &curator, &campaign);
        assert_ne!(state["stage"], "failed", "{state}\n{}", logs());
        if state["stage"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the campaign did not complete: {state}\n{}", logs());
        if !annotate_open_rounds(&app, &annotator, &curator) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The baseline job, from the log: claimed by a, taken over by b only after a's lease ended,
    // each index recorded once, by the holder of the time.
    let events: Vec<Value> = app
        .get(&format!("/v1/audit/streams/generation-{baseline}?limit=1000"), &app.admin)
        .expect(200)
        .json()["events"]
        .as_array()
        .unwrap()
        .clone();
    let starts: Vec<&Value> = events.iter().filter(|e| e["type"] == "GenerationStarted").collect();
    let holders: Vec<&str> = starts.iter().map(|e| e["payload"]["worker"].as_str().unwrap()).collect();
    assert_eq!(holders, ["gpu-a/one", "gpu-b/two"], "{}", logs());
    assert_eq!(starts[0]["actor"]["principal"], "gpu-a");
    assert_eq!(starts[1]["actor"]["principal"], "gpu-b");
    assert_eq!(starts[1]["actor"]["role"], "worker");
    let lease_of_a = events
        .iter()
        .filter(|e| e["actor"]["principal"] == "gpu-a" && e["payload"]["lease_until"].is_string())
        .map(|e| e["payload"]["lease_until"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap())
        .max()
        .unwrap();
    assert!(time(starts[1]) >= lease_of_a, "taken over at {} while a's lease ran until {lease_of_a}", time(starts[1]));
    assert_eq!(starts[1]["payload"]["already_done"].as_u64(), Some(indices_before(&events, starts[1])));
    assert!(starts[1]["payload"]["already_done"].as_u64().unwrap() >= images_before as u64);
    let (mut holder, mut indices) = ("", BTreeSet::new());
    for event in &events {
        match event["type"].as_str().unwrap() {
            "GenerationStarted" => holder = event["actor"]["principal"].as_str().unwrap(),
            "ImageGenerated" => {
                assert!(indices.insert(event["payload"]["index"].as_u64().unwrap()), "index recorded twice: {event}");
                assert_eq!(event["actor"]["principal"], holder, "an image recorded by a worker not holding the job");
            }
            _ => {}
        }
    }
    assert_eq!(indices.len(), 128);

    // Every other job of the campaign ran on worker b, start to end.
    let state = stage(&app, &curator, &campaign);
    let mut jobs = 0;
    for work in state["work"].as_array().unwrap() {
        let linked = work.as_object().unwrap().values().next().unwrap();
        let (stream, id) = match (linked.get("generation_id"), linked.get("fine_tune_id")) {
            (Some(id), _) => ("generation", id.as_str().unwrap()),
            (_, Some(id)) => ("finetune", id.as_str().unwrap()),
            _ => continue,
        };
        if id == baseline {
            continue;
        }
        let events = app.get(&format!("/v1/audit/streams/{stream}-{id}?limit=1000"), &app.admin).expect(200).json();
        let claims: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"].as_str().unwrap().ends_with("Started"))
            .collect();
        assert_eq!(claims.len(), 1, "{stream} {id}: {claims:?}");
        assert_eq!(claims[0]["payload"]["worker"], "gpu-b/two");
        jobs += 1;
    }
    assert!(jobs >= 4, "candidates, prior-preservation, the fine-tune and the evaluation images: {jobs} jobs");
    // The fine-tune's adapter came back as a blob the server holds.
    let tuned = state["work"].as_array().unwrap().iter().find_map(|w| w.get("fine_tune")).expect("a fine-tune");
    let fine_tune =
        app.get(&format!("/v1/fine-tunes/{}", tuned["fine_tune_id"].as_str().unwrap()), &operator).expect(200).json();
    let adapter = fine_tune["adapter"].as_str().expect("an adapter");
    app.get(&format!("/v1/blobs/{adapter}"), &operator).expect(200);

    // The taken-over job's pictures equal an uninterrupted run's: the same items again, one worker.
    let first = job(&baseline);
    let body =
        json!({"model_version": base, "purpose": "baseline", "items": first["items"], "sampler": first["sampler"]});
    let again = app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    wait_for("the uninterrupted job", 600, &logs, || (job(&again)["status"] == "completed").then_some(()));
    let blobs = |id: &str| -> Vec<Value> {
        let mut images = job(id)["images"].as_array().unwrap().clone();
        images.sort_by_key(|i| i["index"].as_u64());
        images.iter().map(|i| i["blob"].clone()).collect()
    };
    assert_eq!(blobs(&baseline), blobs(&again), "the taken-over job's pictures differ from an uninterrupted run's");

    // Nothing shared: each worker kept only its own cache of blobs, and no event store.
    for dir in [dir_a.path(), dir_b.path()] {
        assert!(!dir.join("events.db").exists(), "a remote worker opened a store in {}", dir.display());
        assert!(dir.join("blobs").is_dir());
    }
    drop(b);
    assert!(server.interrupt().success());
}
