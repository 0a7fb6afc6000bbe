//! The auditor's endpoints: filtered log, stream history, verification, live feed, and metrics.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api_resources::woman_hippo;
use crate::helpers::spawn_app;

#[test]
fn the_log_filters_by_stream_type_actor_and_time() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let auditor = app.token("auditor", "audrey");
    let registered = app.post("/v1/associations", &curator, woman_hippo()).json();
    let stream = registered["stream"].as_str().unwrap();

    let by_actor = app.get("/v1/audit/events?actor=cora", &auditor);
    by_actor.expect(200);
    let events = by_actor.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["stream"], stream);
    let by_type = app.get("/v1/audit/events?type=CategoryDefined&limit=2", &auditor).json();
    assert_eq!(by_type["events"].as_array().unwrap().len(), 2);
    assert!(by_type["position"].as_u64().unwrap() < by_type["head"].as_u64().unwrap());
    let by_stream = app.get(&format!("/v1/audit/events?stream={stream}"), &auditor).json();
    assert_eq!(by_stream["events"][0]["type"], "AssociationRegistered");
    let future = app.get("/v1/audit/events?since=2999-01-01T00:00:00Z", &auditor).json();
    assert_eq!(future["events"].as_array().unwrap().len(), 0);
    assert_eq!(future["position"], future["head"]);
    let past = app.get("/v1/audit/events?until=2000-01-01T00:00:00Z", &auditor).json();
    assert_eq!(past["events"].as_array().unwrap().len(), 0);

    let verified = app.get("/v1/audit/verify", &auditor);
    verified.expect(200);
    assert_eq!(verified.json()["ok"], true);
}

#[test]
fn the_live_feed_streams_new_events() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let auditor = app.token("auditor", "audrey");
    // A client of its own: the feed is read as it comes, for at most 20 s in all.
    let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
    let mut stream = client.get(format!("http://{}/v1/audit/feed", app.address)).bearer_auth(&auditor).send().unwrap();
    assert_eq!(stream.status(), 200);
    let content_type = stream.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    // Wait for the feed's greeting so the registration below is after its start.
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("audit feed from position") {
        assert!(Instant::now() < deadline, "no greeting: {seen}");
        let n = stream.read(&mut buffer).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    app.post("/v1/associations", &curator, woman_hippo()).expect(201);
    while !seen.contains("AssociationRegistered") {
        assert!(Instant::now() < deadline, "the feed did not show the new event: {seen}");
        let n = stream.read(&mut buffer).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.contains("event: recorded"), "{seen}");
    assert!(seen.contains("\"principal\":\"cora\""), "{seen}");
    // The feed is the auditor's.
    app.get("/v1/audit/feed", &curator).expect(403);
}

#[test]
fn metrics_count_requests_events_and_lag() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    app.post("/v1/associations", &curator, woman_hippo()).expect(201);
    app.post("/v1/associations", &curator, json!({})).expect(422);
    let metrics = app.request("GET", "/metrics", None, &[], None);
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    assert!(
        text.contains("thitl_http_requests_total{method=\"POST\",route=\"/v1/associations\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("thitl_http_requests_total{method=\"POST\",route=\"/v1/associations\",status=\"422\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("thitl_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/associations\"} 2"),
        "{text}"
    );
    // The admin's token issuing the curator's, then the registration.
    assert!(text.contains("thitl_events_appended_total 2"), "{text}");
    assert!(text.contains("thitl_projection_lag_events"), "{text}");
}
