//! Blobs (`/v1/blobs`), image metadata (`/v1/images/{id}`) and side-by-side pairs in round 2,
//! through HTTP, as the roles that would use them.

use serde_json::{Value, json};

use crate::api_resources::{base_model, hash};
use crate::helpers::{SMALL_BODY_LIMIT, TestApp, campaign_copy, spawn_app, spawn_app_in};

/// SHA-256("abc"), the FIPS 180-2 test vector.
const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// A 1×1 PNG.
fn png() -> Vec<u8> {
    let hex = "89504e470d0a1a0a0000000d4948445200000001000000010806000000\
               1f15c4890000000d49444154789c6364f8ffff3f0005fe02fea7d6a4c80000000049454e44ae426082";
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Uploads `bytes` as an operator; returns the hash the server answered.
fn upload(app: &TestApp, operator: &str, bytes: &[u8]) -> String {
    let stored = app.upload(operator, bytes);
    assert!([200, 201].contains(&stored.status), "{} {}", stored.status, stored.body);
    stored.json()["sha256"].as_str().unwrap().to_string()
}

#[test]
fn blobs_are_stored_by_sha256_and_served_with_a_long_lived_etag() {
    let app = spawn_app();
    let operator = app.token("operator", "otto");
    let annotator = app.token("annotator", "ann");
    let auditor = app.token("auditor", "audrey");

    let stored = app.upload(&operator, b"abc");
    stored.expect(201);
    assert_eq!(stored.json()["sha256"], ABC_SHA256);
    assert_eq!(stored.json()["size"], 3);
    assert_eq!(stored.json()["created"], true);
    // The same bytes again: nothing new, same name.
    let again = app.upload(&operator, b"abc");
    again.expect(200);
    assert_eq!((again.json()["sha256"].as_str(), again.json()["created"].as_bool()), (Some(ABC_SHA256), Some(false)));

    let image = png();
    let png_hash = upload(&app, &operator, &image);
    for token in [&annotator, &auditor, &operator] {
        let fetched = app.get(&format!("/v1/blobs/{png_hash}"), token);
        fetched.expect(200);
        assert_eq!(fetched.bytes, image);
        assert_eq!(fetched.header("content-type"), Some("image/png"));
        assert_eq!(fetched.header("etag"), Some(format!("\"{png_hash}\"").as_str()));
        let cache = fetched.header("cache-control").unwrap_or_default();
        assert!(cache.contains("immutable") && cache.contains("max-age=31536000"), "{cache}");
    }
    let other = app.get(&format!("/v1/blobs/{ABC_SHA256}"), &annotator);
    other.expect(200);
    assert_eq!((other.bytes.as_slice(), other.header("content-type")), (&b"abc"[..], Some("application/octet-stream")));
    // A client holding the current copy gets 304 and no body.
    let etag = format!("\"{png_hash}\"");
    let cached =
        app.request("GET", &format!("/v1/blobs/{png_hash}"), Some(&annotator), &[("If-None-Match", &etag)], None);
    assert_eq!(cached.status, 304, "{}", cached.body);
    assert!(cached.bytes.is_empty());
}

#[test]
fn blob_errors_are_problems_and_change_nothing() {
    let app = spawn_app();
    let operator = app.token("operator", "otto");
    let annotator = app.token("annotator", "ann");
    let unknown = hash('0');
    app.get(&format!("/v1/blobs/{unknown}"), &annotator).expect(404);
    app.get("/v1/blobs/not-a-hash", &annotator).expect(422);
    app.get(&format!("/v1/blobs/{}", ABC_SHA256.to_uppercase()), &annotator).expect(422);
    app.get(&format!("/v1/blobs/{ABC_SHA256}0"), &annotator).expect(422);
    assert_eq!(app.request("GET", &format!("/v1/blobs/{unknown}"), None, &[], None).status, 401);
    // If-None-Match does not make an unknown blob exist.
    let quoted = format!("\"{unknown}\"");
    app.request("GET", &format!("/v1/blobs/{unknown}"), Some(&annotator), &[("If-None-Match", &quoted)], None)
        .expect(404);

    app.upload(&operator, b"").expect(422);
    app.upload(&annotator, b"abc").expect(403);
    app.upload(&operator, &vec![7u8; SMALL_BODY_LIMIT + 1]).expect(413);
    let blobs = app.dir.path().join("blobs");
    let stored: Vec<_> = walk(&blobs).into_iter().filter(|p| !p.starts_with(blobs.join("tmp"))).collect();
    assert!(stored.is_empty(), "a refused upload stored {stored:?}");
    // Uploads record no event: blobs are not history, the events that use them are.
    let head = app.head();
    app.upload(&operator, b"abc").expect(201);
    assert_eq!(app.head(), head);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn a_changed_blob_is_refused_as_corrupt_never_served() {
    let app = spawn_app();
    let operator = app.token("operator", "otto");
    let hash = upload(&app, &operator, &png());
    // An attacker (or a failing disk) changes the file behind the store's back.
    let file = app.dir.path().join("blobs").join(&hash[..2]).join(&hash);
    assert!(file.is_file(), "blobs live at blobs/<first two hex digits>/<hash>");
    std::fs::write(&file, b"\x89PNG\r\n\x1a\nsomething else").unwrap();
    let answer = app.get(&format!("/v1/blobs/{hash}"), &operator);
    answer.expect(503);
    assert!(answer.body.contains("corrupt"), "{}", answer.body);
    assert!(!answer.body.contains("something else"));
    // Uploading the original bytes again repairs it.
    app.upload(&operator, &png()).expect(201);
    assert_eq!(app.get(&format!("/v1/blobs/{hash}"), &operator).bytes, png());
}

#[test]
fn image_metadata_comes_from_generations_and_rounds_and_is_hidden_from_annotators() {
    let app = spawn_app_in(campaign_copy());
    let auditor = app.token("auditor", "audrey");
    let curator = app.token("curator", "cora");
    let annotator = app.token("annotator", "ann");

    // An image a generation job recorded (the scripted campaign's).
    let events = app.get("/v1/audit/events?type=ImageGenerated&limit=1", &auditor);
    events.expect(200);
    let generated = events.json()["events"][0].clone();
    let payload = &generated["payload"];
    let image_id = payload["image_id"].as_str().expect("an ImageGenerated event").to_string();
    let image = app.get(&format!("/v1/images/{image_id}"), &auditor);
    image.expect(200);
    let image = image.json();
    assert_eq!(image["image_id"], image_id.as_str());
    assert_eq!(image["blob"], payload["blob"]);
    assert_eq!(image["generation_id"], payload["generation_id"]);
    assert_eq!(image["index"], payload["index"]);
    assert_eq!(image["model_version"], payload["model_version"]);
    assert_eq!(image["purpose"], payload["purpose"]);
    assert_eq!(image["prompt"], payload["item"]["prompt"]);
    assert_eq!(image["seed"], payload["item"]["seed"]);
    assert!(image["position"].as_u64().unwrap() >= generated["position"].as_u64().unwrap());
    // The scripted campaign put its generated images into rounds.
    assert!(!image["rounds"].as_array().unwrap().is_empty(), "{image}");

    // Annotators never read metadata: it names the model and the prompt.
    app.get(&format!("/v1/images/{image_id}"), &annotator).expect(403);
    assert_eq!(app.request("GET", &format!("/v1/images/{image_id}"), None, &[], None).status, 401);
    app.get("/v1/images/01900000-0000-7000-8000-000000000000", &curator).expect(404);
    app.get("/v1/images/not-a-uuid", &curator).expect(404);
    let beyond = app.head() + 1000;
    app.get(&format!("/v1/images/{image_id}?wait_for={beyond}"), &curator).expect(422);
    app.get(&format!("/v1/images/{image_id}?wait_for=x"), &curator).expect(400);

    // An image a curator put in a round by hand is known from that round, at once.
    let operator = app.token("operator", "otto");
    let model = base_model(&app, &operator);
    let by_hand = "01900000-0000-7000-8000-0000000000aa";
    let opened = app.post(
        "/v1/rounds",
        &curator,
        json!({"kind": "check", "items": [{"image_id": by_hand, "blob": hash('b'), "prompt": "a woman reading", "seed": 42, "model_version": model}]}),
    );
    opened.expect(201);
    let position = opened.json()["position"].as_u64().unwrap();
    let round = opened.json()["id"].as_str().unwrap().to_string();
    let image = app.get(&format!("/v1/images/{by_hand}?wait_for={position}"), &curator);
    image.expect(200);
    let image = image.json();
    assert_eq!((image["prompt"].as_str(), image["seed"].as_u64()), (Some("a woman reading"), Some(42)));
    assert_eq!(image["model_version"], model.as_str());
    assert_eq!(image["blob"], hash('b'));
    assert_eq!(image["generation_id"], Value::Null);
    assert_eq!(image["rounds"], json!([round]));
}

/// Opens a round 2 with one pair (base left, tuned right) and one single image; returns
/// (round id, pair item id, single item id, base model, tuned model).
fn open_check_round(app: &TestApp, curator: &str, operator: &str) -> (String, String, String, String, String) {
    let base = base_model(app, operator);
    let tuned = base_model(app, operator);
    let pair = json!({
        "pair": {
            "left": {"blob": hash('1'), "model_version": base},
            "right": {"blob": hash('2'), "model_version": tuned},
        },
        "prompt": "a photo of a woman at the beach",
        "seed": 7,
    });
    let single =
        json!({"blob": hash('3'), "prompt": "a photo of a woman at the beach", "seed": 8, "model_version": tuned});
    let opened =
        app.post("/v1/rounds", curator, json!({"kind": "check", "items": [pair, single], "raters_per_item": 2}));
    opened.expect(201);
    let body = opened.json();
    let items = body["items"].as_array().unwrap();
    (
        body["id"].as_str().unwrap().to_string(),
        items[0].as_str().unwrap().to_string(),
        items[1].as_str().unwrap().to_string(),
        base,
        tuned,
    )
}

#[test]
fn round_two_pairs_are_shown_blind_and_answered_left_or_right() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let auditor = app.token("auditor", "audrey");
    let annotators = [app.token("annotator", "ann"), app.token("annotator", "bob")];
    let (round, pair_item, single_item, base, tuned) = open_check_round(&app, &curator, &operator);

    for (n, annotator) in annotators.iter().enumerate() {
        // The pair comes first (balanced assignment takes items in order).
        let next = app.get(&format!("/v1/rounds/{round}/next"), annotator);
        next.expect(200);
        let task = next.json()["task"].clone();
        assert_eq!(task["item_id"], pair_item.as_str());
        let pair = &task["content"]["pair"];
        assert_eq!(pair["left"]["blob"], hash('1'));
        assert_eq!(pair["right"]["blob"], hash('2'));
        assert_eq!(pair["left"]["url"], format!("/v1/blobs/{}", hash('1')));
        assert!(task["question"].as_str().unwrap().contains("compare"), "{task}");
        // Blind: no model, prompt, seed, or image id (a UUIDv7's timestamp could tell which job made it).
        for hidden in [base.as_str(), tuned.as_str(), "beach", "image_id", "seed", "model"] {
            assert!(!next.body.contains(hidden), "the task reveals {hidden:?}: {}", next.body);
        }
        // The annotator can fetch both images through the URLs the task gives.
        for side in ["left", "right"] {
            let url = pair[side]["url"].as_str().unwrap();
            // These placeholder blobs were never uploaded: 404, but not 403.
            app.get(url, annotator).expect(404);
        }
        // A pair is not rated like an image.
        let wrong = json!({"item_id": pair_item, "answer": {"check": {"concept_present": false, "quality": 4}}});
        app.post(&format!("/v1/rounds/{round}/annotations"), annotator, wrong).expect(422);
        let bad_side = json!({"item_id": pair_item, "answer": {"compare": {"preferred": "middle"}}});
        app.post(&format!("/v1/rounds/{round}/annotations"), annotator, bad_side).expect(422);
        let preferred = if n == 0 { "right" } else { "left" };
        let answer = json!({"item_id": pair_item, "answer": {"compare": {"preferred": preferred}}});
        app.post(&format!("/v1/rounds/{round}/annotations"), annotator, answer).expect(201);

        // Then the single image, which takes a round 2 rating, not a comparison.
        let next = app.get(&format!("/v1/rounds/{round}/next"), annotator).json();
        assert_eq!(next["task"]["item_id"], single_item.as_str());
        assert_eq!(next["task"]["content"]["image"]["blob"], hash('3'));
        let compare = json!({"item_id": single_item, "answer": {"compare": {"preferred": "left"}}});
        app.post(&format!("/v1/rounds/{round}/annotations"), annotator, compare).expect(422);
        let rating = json!({"item_id": single_item, "answer": {"check": {"concept_present": false, "quality": 5}}});
        app.post(&format!("/v1/rounds/{round}/annotations"), annotator, rating).expect(201);
    }

    let closed = app.post(&format!("/v1/rounds/{round}/close"), &curator, json!({}));
    closed.expect(200);
    let history = app.get(&format!("/v1/audit/streams/round-{round}"), &auditor);
    history.expect(200);
    let history = history.json();
    let events = history["events"].as_array().unwrap();
    let closed = events.iter().find(|e| e["type"] == "RoundClosed").expect("RoundClosed");
    let outcome =
        closed["payload"]["outcomes"].as_array().unwrap().iter().find(|o| o["item_id"] == pair_item.as_str()).unwrap();
    assert_eq!(outcome["verdict"]["compare"], json!({"left_votes": 1, "right_votes": 1}));
    // The auditor sees which model made which side.
    let opened = events.iter().find(|e| e["type"] == "RoundOpened").unwrap();
    assert_eq!(opened["payload"]["items"][0]["label"]["models"], json!([base, tuned]));
    // And the images' metadata names the models per side.
    let left_id = opened["payload"]["items"][0]["content"]["pair"]["left"]["image_id"].as_str().unwrap();
    let right_id = opened["payload"]["items"][0]["content"]["pair"]["right"]["image_id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/images/{left_id}"), &auditor).json()["model_version"], base.as_str());
    assert_eq!(app.get(&format!("/v1/images/{right_id}"), &auditor).json()["model_version"], tuned.as_str());
}

#[test]
fn malformed_pairs_are_refused_and_append_nothing() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let model = base_model(&app, &operator);
    let head = app.head();
    let side = json!({"blob": hash('1'), "model_version": model});
    let cases = [
        // Pairs belong only in round 2.
        (json!({"kind": "screen", "items": [{"pair": {"left": side, "right": side}, "prompt": "a woman"}]}), "round 2"),
        // A side is missing.
        (json!({"kind": "check", "items": [{"pair": {"left": side}, "prompt": "a woman"}]}), "right"),
        // A side names no model.
        (
            json!({"kind": "check", "items": [{"pair": {"left": side, "right": {"blob": hash('2')}}, "prompt": "a woman"}]}),
            "model_version",
        ),
        // Not a blob hash.
        (
            json!({"kind": "check", "items": [{"pair": {"left": side, "right": {"blob": "xyz", "model_version": model}}, "prompt": "a woman"}]}),
            "blob hash",
        ),
        // An unknown field inside a pair.
        (
            json!({"kind": "check", "items": [{"pair": {"left": side, "right": side, "middle": side}, "prompt": "a woman"}]}),
            "middle",
        ),
        // An image item with an unknown field says so (not "no variant matched").
        (
            json!({"kind": "check", "items": [{"blob": hash('1'), "prompt": "a woman", "model_version": model, "arm": "thitl"}]}),
            "arm",
        ),
    ];
    for (body, mentions) in cases {
        let refused = app.post("/v1/rounds", &curator, body.clone());
        refused.expect(422);
        assert!(
            refused.body.contains(mentions),
            "{body}: expected the problem to mention {mentions:?}: {}",
            refused.body
        );
    }
    assert_eq!(app.head(), head, "a refused round appended an event");
}

#[test]
fn many_annotators_at_once_are_all_acknowledged_without_write_races() {
    let app = std::sync::Arc::new(spawn_app());
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let model = base_model(&app, &operator);
    let (round, _) = crate::api_resources::open_round(&app, &curator, &model, 30, 3);
    let (clients, cycles) = (8, 10);
    let handles: Vec<_> = (0..clients)
        .map(|n| {
            let (app, round) = (app.clone(), round.clone());
            let token = app.token("annotator", &format!("ann-{n}"));
            std::thread::spawn(move || {
                let mut positions = vec![];
                for _ in 0..cycles {
                    let next = app.get(&format!("/v1/rounds/{round}/next"), &token);
                    next.expect(200);
                    let item = next.json()["task"]["item_id"].as_str().expect("a task is left").to_string();
                    let answer = json!({"item_id": item, "answer": {"screen": {"quality": 3, "group_depicted": true, "concept_present": false}}});
                    // Every submission is acknowledged at once: no 409 for a race with another annotator.
                    let submitted = app.post(&format!("/v1/rounds/{round}/annotations"), &token, answer);
                    submitted.expect(201);
                    positions.push(submitted.json()["position"].as_u64().unwrap());
                }
                positions
            })
        })
        .collect();
    let positions: Vec<u64> = handles.into_iter().flat_map(|h| h.join().expect("client")).collect();
    let last = positions.iter().max().unwrap();
    let progress = app.get(&format!("/v1/rounds/{round}?wait_for={last}"), &curator);
    progress.expect(200);
    assert_eq!(progress.json()["submitted"].as_u64(), Some((clients * cycles) as u64));
}
