//! Every error class: problem+json with a detail a person can act on, never a 5xx, and nothing
//! appended.

use serde_json::json;

use crate::api_resources::{base_model, open_round, woman_hippo};
use crate::helpers::{SMALL_BODY_LIMIT, spawn_app};

#[test]
fn bad_input_is_a_clear_4xx_and_appends_nothing() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let ann = app.token("annotator", "ann");
    let model = base_model(&app, &operator);
    let (round, _) = open_round(&app, &curator, &model, 1, 1);
    let item =
        app.get(&format!("/v1/rounds/{round}/next"), &ann).json()["task"]["item_id"].as_str().unwrap().to_string();
    let head = app.head();

    let post_raw = |path: &str, token: &str, body: &[u8]| app.request("POST", path, Some(token), &[], Some(body));
    let with = |field: &str, value: serde_json::Value| {
        let mut body = woman_hippo();
        body[field] = value;
        body
    };
    // (what, answer, expected status, a word the detail must contain)
    let cases = vec![
        ("malformed JSON", post_raw("/v1/associations", &curator, b"{\"group\": "), 400, "JSON"),
        ("not an object", post_raw("/v1/associations", &curator, b"[1, 2]"), 422, "invalid type"),
        ("unknown field", { let mut b = woman_hippo(); b["colour"] = json!("red"); app.post("/v1/associations", &curator, b) }, 422, "colour"),
        ("missing field", { let mut b = woman_hippo(); b.as_object_mut().unwrap().remove("concept"); app.post("/v1/associations", &curator, b) }, 422, "concept"),
        ("wrong type", app.post("/v1/associations", &curator, with("probe_prompts", json!("one prompt"))), 422, "sequence"),
        ("empty string", app.post("/v1/associations", &curator, with("group", json!("  "))), 422, "group"),
        ("over-long string", app.post("/v1/associations", &curator, with("concept", json!("x".repeat(101)))), 422, "limit"),
        ("unknown category", app.post("/v1/associations", &curator, with("category", json!("rudeness"))), 422, "known categories"),
        ("probe names the concept", app.post("/v1/associations", &curator, with("probe_prompts", json!(["a woman with a hippo"]))), 422, "concept"),
        (
            "rating out of range",
            app.post(&format!("/v1/rounds/{round}/annotations"), &ann, json!({"item_id": item, "answer": {"screen": {"quality": 6, "group_depicted": true, "concept_present": false}}})),
            422,
            "1 to 5",
        ),
        (
            "answer of another round kind",
            app.post(&format!("/v1/rounds/{round}/annotations"), &ann, json!({"item_id": item, "answer": {"baseline": {"concept_present": true}}})),
            422,
            "round 1",
        ),
        ("unknown id", app.post("/v1/associations/01900000-0000-7000-8000-000000000000/retire", &curator, json!({"reason": "x"})), 404, "does not exist"),
        ("id that is not a UUID", app.get("/v1/associations/banana", &curator), 404, "banana"),
        ("unknown round", app.get("/v1/rounds/01900000-0000-7000-8000-000000000000/next", &ann), 404, "does not exist"),
        ("unknown stream", app.get("/v1/audit/streams/round-nothing", &app.admin), 404, "no events"),
        ("unknown route", app.get("/v1/nothing-here", &curator), 404, "route"),
        ("wrong query type", app.get("/v1/audit/events?after=banana", &app.admin), 400, "query"),
        ("unknown query parameter", app.get("/v1/associations?colour=red", &curator), 400, "colour"),
        ("limit out of range", app.get("/v1/audit/events?limit=0", &app.admin), 400, "limit"),
        ("wait_for beyond the log", app.get("/v1/associations?wait_for=999999", &curator), 422, "beyond"),
        ("position past int64", app.get("/v1/audit/feed?after=9223372036854775808", &app.admin), 400, "larger than any position"),
        ("wait_for past int64", app.get("/v1/associations?wait_for=18446744073709551615", &curator), 400, "larger than any position"),
        ("empty time filter", app.get("/v1/audit/events?since=", &app.admin), 400, "time filter is empty"),
        ("time filter not RFC 3339", app.get("/v1/audit/events?until=yesterday", &app.admin), 400, "RFC 3339"),
        // Well-formed JSON of the wrong shape is 422 even where serde calls it a syntax error.
        ("answer naming no kind", app.post(&format!("/v1/rounds/{round}/annotations"), &ann, json!({"item_id": item, "answer": {}})), 422, "does not fit"),
        ("oversized body", post_raw("/v1/associations", &curator, &vec![b' '; SMALL_BODY_LIMIT + 1]), 413, "larger"),
        ("bad If-Match", app.request("POST", "/v1/associations", Some(&curator), &[("If-Match", "yesterday")], Some(b"{}")), 400, "If-Match"),
        ("empty Idempotency-Key", app.request("POST", "/v1/associations", Some(&curator), &[("Idempotency-Key", " ")], Some(b"{}")), 400, "Idempotency-Key"),
        ("closing an incomplete round", app.post(&format!("/v1/rounds/{round}/close"), &curator, json!({})), 409, "allow_incomplete"),
        ("model version that does not exist", app.post("/v1/generations", &operator, json!({"model_version": "01900000-0000-7000-8000-000000000000", "purpose": "baseline", "items": []})), 422, "register it first"),
    ];
    for (what, response, status, word) in cases {
        assert_eq!(response.status, status, "{what}: {}", response.body);
        response.expect(status);
        let detail = response.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(word), "{what}: the detail should mention '{word}': {detail}");
    }
    assert_eq!(app.head(), head, "a refused request appended an event");
}

#[test]
fn requests_without_a_valid_token_are_401_with_a_bearer_challenge() {
    let app = spawn_app();
    let cases = [
        app.request("GET", "/v1/taxonomy", None, &[], None),
        app.request("GET", "/v1/taxonomy", None, &[("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")], None),
        app.get("/v1/taxonomy", "thitl_0000000000000000000000000000000000000000000000000000000000000000"),
        app.request("POST", "/v1/associations", None, &[], Some(woman_hippo().to_string().as_bytes())),
    ];
    for response in cases {
        response.expect(401);
        assert_eq!(response.header("www-authenticate"), Some("Bearer realm=\"thitl\""));
    }
    // Health, readiness, metrics and the API description need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(app.request("GET", path, None, &[], None).status, 200, "{path}");
    }
}

#[test]
fn a_method_a_path_does_not_take_is_405_with_allow_as_the_document_declares() {
    let app = spawn_app();
    let document = app.get("/openapi.json", &app.admin).json();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() > 40, "the document lists the API's paths");
    let mut checked = 0;
    for (template, item) in paths {
        let declared: Vec<String> = item.as_object().unwrap().keys().map(|m| m.to_uppercase()).collect();
        // A concrete path: UUIDs for ids, a SHA-256 for blobs, a word for other parameters.
        let path = template
            .replace("{sha256}", &"0".repeat(64))
            .replace("{kind}", "annotations")
            .replace("{key}", "threat")
            .replace("{stream}", "association-0")
            .replace("{id}", "01900000-0000-7000-8000-000000000000")
            .replace("{prompt_id}", "01900000-0000-7000-8000-000000000001");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if declared.iter().any(|d| d == method) {
                continue;
            }
            let response = app.request(method, &path, Some(&app.admin), &[], None);
            assert_eq!(response.status, 405, "{method} {path}: {}", response.body);
            assert_eq!(response.header("content-type"), Some("application/problem+json"), "{method} {path}");
            let mut allowed: Vec<String> =
                response.header("allow").unwrap_or_default().split(',').map(|m| m.trim().to_string()).collect();
            let mut expected = declared.clone();
            allowed.sort();
            expected.sort();
            assert_eq!(allowed, expected, "{method} {path}: Allow lists the declared methods");
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} method/path pairs were tried");
    // A path no route serves stays a 404.
    app.request("DELETE", "/v1/no-such-thing", Some(&app.admin), &[], None).expect(404);
}
