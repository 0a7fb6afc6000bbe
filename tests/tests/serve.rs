//! `thitl serve`: starts, logs its address, answers, and stops cleanly on Ctrl-C.

use serde_json::Value;

use crate::helpers::{Server, campaign_copy};

#[test]
fn serve_answers_health_and_audit_and_stops_on_ctrl_c() {
    let dir = campaign_copy();
    let server = Server::start(dir.path());
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.get("/v1/audit/events?after=0&limit=3");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["position"], 3);
    assert_eq!(page["events"][0]["type"], "CategoryDefined");

    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.get("/v1/audit/verify");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ok"], true);

    // Bad input is a 400 with a problem+json body, never a 500.
    let (status, body) = server.get("/v1/audit/events?limit=0");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (status, _) = server.get("/v1/audit/events?after=banana");
    assert_eq!(status, 400);

    let exit = server.interrupt();
    assert!(exit.success(), "thitl serve exited with {exit:?} on SIGINT");
}

#[test]
fn serve_creates_a_fresh_data_directory() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("new");
    let server = Server::start(&data);
    let (status, body) = server.get("/v1/audit/events");
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["events"].as_array().unwrap().len(), 0);
    assert!(server.interrupt().success());
    assert!(data.join("events.db").is_file());
}
