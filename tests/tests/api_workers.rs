//! The worker routes over HTTP (`/v1/jobs/…`), driven by hand: a worker token leases a job with
//! what it needs to run it, records only on a job it holds and only blobs it uploaded, a retried
//! record is answered and not recorded twice, and another worker is refused until the lease is its.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

fn lease(app: &TestApp, token: &str, body: Value) -> Value {
    app.post("/v1/jobs/lease", token, body).expect(200).json()
}

#[test]
fn a_worker_leases_a_job_and_records_on_it_alone() {
    let app = spawn_app();
    let operator = app.token("operator", "otto");
    let (gpu_a, gpu_b) = (app.token("worker", "gpu-a"), app.token("worker", "gpu-b"));
    // Any bytes serve as weights here: nothing is sampled, the worker only names them.
    let weights = app.upload(&operator, b"weights").expect(201).json()["sha256"].as_str().unwrap().to_string();
    let base =
        app.post("/v1/model-versions", &operator, json!({"name": "base", "weights": weights})).expect(201).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
    let items =
        json!([{"prompt": "a photo of a woman at the beach", "seed": 1}, {"prompt": "a woman in the park", "seed": 2}]);
    let body = json!({"model_version": base, "purpose": "baseline", "items": items});
    let job = app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();

    // Nothing else to do: an empty body leases as the token's own name, with the default lease.
    let leased = lease(&app, &gpu_a, json!({"name": "one", "lease_seconds": 30}));
    assert_eq!(leased["worker"], "gpu-a/one", "{leased}");
    assert_eq!(leased["stream"], format!("generation-{job}"));
    let generation = &leased["job"]["generation"];
    assert_eq!(generation["id"], job.as_str());
    let asked: Vec<(&Value, &Value)> =
        generation["items"].as_array().unwrap().iter().map(|item| (&item["prompt"], &item["seed"])).collect();
    let requested: Vec<(&Value, &Value)> =
        items.as_array().unwrap().iter().map(|item| (&item["prompt"], &item["seed"])).collect();
    assert_eq!(asked, requested);
    assert_eq!(generation["recorded"], json!([]));
    assert_eq!(leased["models"], json!([{"id": base, "weights": weights}]), "what the worker fetches");
    let until: chrono::DateTime<chrono::Utc> = leased["lease_until"].as_str().unwrap().parse().unwrap();
    assert!(until > chrono::Utc::now() + chrono::TimeDelta::seconds(20), "{until}");
    // The job is held: another worker gets none, and its records are refused.
    assert_eq!(lease(&app, &gpu_b, json!({}))["job"], Value::Null);
    let png = app.upload(&gpu_a, b"\x89PNG a picture").expect(201).json()["sha256"].as_str().unwrap().to_string();
    let images = format!("/v1/jobs/generations/{job}/images");
    let head = app.head();
    let refused = app.post(&images, &gpu_b, json!({"index": 0, "blob": png}));
    refused.expect(409);
    assert_eq!(refused.json()["title"], "Lease lost", "{}", refused.body);
    // The holder names the same process: without `name` it is another worker (the token alone).
    app.post(&images, &gpu_a, json!({"index": 0, "blob": png})).expect(409);
    // A blob not uploaded first is refused.
    let missing = "0".repeat(64);
    app.post(&images, &gpu_a, json!({"name": "one", "index": 0, "blob": missing})).expect(422);
    assert_eq!(app.head(), head, "a refused record appended");

    // Recorded once, however often the worker retries the same call.
    let record = json!({"name": "one", "index": 0, "blob": png}).to_string();
    let key = [("Idempotency-Key", "image-0"), ("Content-Type", "application/json")];
    let first = app.request("POST", &images, Some(&gpu_a), &key, Some(record.as_bytes()));
    first.expect(201);
    let retried = app.request("POST", &images, Some(&gpu_a), &key, Some(record.as_bytes()));
    retried.expect(201);
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.head(), head + 1);
    // Recorded again under a new key: the index holds its image already.
    app.post(&images, &gpu_a, json!({"name": "one", "index": 0, "blob": png})).expect(409);
    assert_eq!(app.head(), head + 1);

    // Renewed from now by the server's clock; completed once every image is there.
    let complete = format!("/v1/jobs/generations/{job}/complete");
    app.post(&format!("/v1/jobs/generations/{job}/renew"), &gpu_a, json!({"name": "one", "lease_seconds": 60}))
        .expect(200);
    app.post(&complete, &gpu_a, json!({"name": "one"})).expect(409);
    app.post(&images, &gpu_a, json!({"name": "one", "index": 1, "blob": png})).expect(201);
    app.post(&complete, &gpu_a, json!({"name": "one"})).expect(200);
    let view = app.get(&format!("/v1/generations/{job}"), &operator).expect(200).json();
    assert_eq!((view["status"].as_str(), view["worker"].as_str()), (Some("completed"), Some("gpu-a/one")), "{view}");
    assert_eq!(view["images"].as_array().unwrap().len(), 2);
    app.post(&format!("/v1/jobs/generations/{job}/fail"), &gpu_a, json!({"name": "one", "reason": "late"})).expect(409);
    // The events name the token as their actor, in the worker role.
    let events = app.get(&format!("/v1/audit/streams/generation-{job}?limit=100"), &app.admin).expect(200).json();
    for event in events["events"].as_array().unwrap().iter().skip(1) {
        assert_eq!(event["actor"], json!({"principal": "gpu-a", "role": "worker"}), "{event}");
    }

    // A fine-tune: the examples to fetch, the losses, the adapter uploaded before completing.
    let example =
        json!({"image_id": "01900000-0000-7000-8000-000000000001", "blob": png, "prompt": "a photo of a woman"});
    let body = json!({"base_model": base, "arm": "traditional", "examples": [example], "progress_every": 1});
    let tune = app.post("/v1/fine-tunes", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    let leased = lease(&app, &gpu_b, json!({}));
    assert_eq!(leased["worker"], "gpu-b");
    let fine_tune = &leased["job"]["fine_tune"];
    assert_eq!(fine_tune["id"].as_str(), Some(tune.as_str()), "{leased}");
    let fetched = &fine_tune["examples"][0];
    assert_eq!((&fetched["blob"], &fetched["prompt"]), (&example["blob"], &example["prompt"]), "{leased}");
    let progress = format!("/v1/jobs/fine-tunes/{tune}/progress");
    app.post(&progress, &gpu_b, json!({"step": 1, "loss": 0.5})).expect(201);
    app.post(&progress, &gpu_a, json!({"name": "one", "step": 2, "loss": 0.4})).expect(409);
    let complete = format!("/v1/jobs/fine-tunes/{tune}/complete");
    app.post(&complete, &gpu_b, json!({"adapter": missing, "final_loss": 0.4})).expect(422);
    let adapter = app.upload(&gpu_b, b"an adapter").expect(201).json()["sha256"].as_str().unwrap().to_string();
    app.post(&complete, &gpu_b, json!({"adapter": adapter, "final_loss": 0.4})).expect(200);
    let view = app.get(&format!("/v1/fine-tunes/{tune}"), &operator).expect(200).json();
    assert_eq!(
        (view["status"].as_str(), view["adapter"].as_str()),
        (Some("completed"), Some(adapter.as_str())),
        "{view}"
    );
    // No job left.
    assert_eq!(lease(&app, &gpu_a, json!({}))["job"], Value::Null);
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type().unwrap().is_dir() {
            true => found.extend(files(&entry.path())),
            false => found.push(entry.path()),
        }
    }
    found
}

/// An upload cut off mid-way (a worker's connection lost) stores nothing: the server gets a short
/// body and refuses it (400), so there is no blob under its hash, nor of the half that arrived,
/// nor a partial file; the whole upload afterwards is a new blob.
#[test]
fn an_upload_cut_off_mid_way_leaves_no_blob() {
    use std::io::Write;
    let app = spawn_app();
    let worker = app.token("worker", "gpu");
    let blobs = app.dir.path().join("blobs");
    let before = files(&blobs);
    let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut stream = std::net::TcpStream::connect(&app.address).unwrap();
    write!(
        stream,
        "POST /v1/blobs HTTP/1.1\r\nHost: thitl\r\nAuthorization: Bearer {worker}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    stream.write_all(&bytes[..bytes.len() / 2]).unwrap();
    stream.flush().unwrap();
    // The sender's side of the connection ends mid-way; the server's answer says so.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    drop(stream);
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    assert!(status == "400" && answer.contains("cut off"), "the server's answer: {answer:?}");
    assert_eq!(files(&blobs), before, "a cut-off upload left a file");
    let whole = app.upload(&worker, &bytes);
    whole.expect(201);
    assert_eq!(whole.json()["created"], true, "the blob was there before its whole upload");
}
