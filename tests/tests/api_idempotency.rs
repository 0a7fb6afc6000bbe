//! `Idempotency-Key` replays and `If-Match` conflicts.

use serde_json::json;

use crate::api_resources::woman_hippo;
use crate::helpers::spawn_app;

#[test]
fn a_replayed_key_returns_the_first_answer_and_appends_nothing() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let body = woman_hippo().to_string();
    let key = [("Idempotency-Key", "register-woman-hippo-1")];
    let first = app.request("POST", "/v1/associations", Some(&curator), &key, Some(body.as_bytes()));
    first.expect(201);
    let head = app.head();

    let replay = app.request("POST", "/v1/associations", Some(&curator), &key, Some(body.as_bytes()));
    replay.expect(201);
    assert_eq!(replay.json(), first.json());
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.head(), head, "the replay appended");

    // The same key with another body is a client bug: 422, nothing appended.
    let mut other = woman_hippo();
    other["group"] = json!("wheelchair user");
    other["probe_prompts"] = json!(["a wheelchair user in a park"]);
    app.request("POST", "/v1/associations", Some(&curator), &key, Some(other.to_string().as_bytes())).expect(422);
    // Keys belong to a principal: another curator's same key is a new request.
    let other_curator = app.token("curator", "carl");
    let head = app.head();
    app.request("POST", "/v1/associations", Some(&other_curator), &key, Some(body.as_bytes())).expect(201);
    assert_eq!(app.head(), head + 1);
    // A failed command releases its key: fixing the body and retrying with it works.
    let bad = json!({"group": "", "concept": "x", "category": "threat", "description": "d", "probe_prompts": ["p"]})
        .to_string();
    let retry_key = [("Idempotency-Key", "retry-after-fix")];
    app.request("POST", "/v1/associations", Some(&curator), &retry_key, Some(bad.as_bytes())).expect(422);
    let mut fixed = woman_hippo();
    fixed["concept"] = json!("lamp");
    app.request("POST", "/v1/associations", Some(&curator), &retry_key, Some(fixed.to_string().as_bytes())).expect(201);
}

#[test]
fn a_key_interrupted_by_a_crash_is_answered_409_and_never_rerun() {
    let app = spawn_app();
    let created = app.post("/v1/tokens", &app.admin, json!({"name": "cora", "role": "curator"})).json();
    let (curator, token_id) =
        (created["token"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string());
    let fingerprint = fingerprint_of_current(&app, &curator);
    // What a crash between "in progress" and "completed" leaves behind.
    let db = rusqlite::Connection::open(app.dir.path().join("idempotency.db")).unwrap();
    db.execute(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, state, created_at) VALUES (?1, 'crashed', ?2, 'in_progress', 'then')",
        [&token_id, &fingerprint],
    )
    .unwrap();
    let head = app.head();
    let answer = app.request(
        "POST",
        "/v1/associations",
        Some(&curator),
        &[("Idempotency-Key", "crashed")],
        Some(woman_hippo().to_string().as_bytes()),
    );
    answer.expect(409);
    assert!(answer.json()["detail"].as_str().unwrap().contains("audit log"), "{}", answer.body);
    assert_eq!(app.head(), head, "an interrupted key ran again");
}

/// The fingerprint the server stores for POST /v1/associations with `woman_hippo()`: learned by
/// sending it once under a throwaway key and reading it back.
fn fingerprint_of_current(app: &crate::helpers::TestApp, token: &str) -> String {
    let body = woman_hippo().to_string();
    let db = rusqlite::Connection::open(app.dir.path().join("idempotency.db")).unwrap();
    let _ =
        app.request("POST", "/v1/associations", Some(token), &[("Idempotency-Key", "probe")], Some(body.as_bytes()));
    db.query_row("SELECT fingerprint FROM idempotency_keys WHERE key = 'probe'", [], |r| r.get(0)).unwrap()
}

#[test]
fn if_match_guards_against_lost_updates() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let created = app.post("/v1/associations", &curator, woman_hippo()).json();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["version"], 1);
    let path = format!("/v1/associations/{id}/recategorize");
    let body = json!({"category": "degradation"}).to_string();

    // Someone else's edit got in first: stale version → 409, nothing appended.
    let stale = app.request("POST", &path, Some(&curator), &[("If-Match", "\"0\"")], Some(body.as_bytes()));
    stale.expect(409);
    assert!(stale.json()["detail"].as_str().unwrap().contains("version 1"), "{}", stale.body);
    let current = app.request("POST", &path, Some(&curator), &[("If-Match", "\"1\"")], Some(body.as_bytes()));
    current.expect(200);
    assert_eq!(current.json()["version"], 2);
    // The same expected version again is now stale.
    let again = json!({"category": "threat"}).to_string();
    app.request("POST", &path, Some(&curator), &[("If-Match", "1")], Some(again.as_bytes())).expect(409);
}
