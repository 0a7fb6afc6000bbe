//! `thitl serve`: starts, logs its address, answers, and stops cleanly on Ctrl-C.

use serde_json::Value;

use crate::helpers::{Server, campaign_copy, create_token};

#[test]
fn serve_answers_health_and_audit_and_stops_on_ctrl_c() {
    let dir = campaign_copy();
    let auditor = create_token(dir.path(), "auditor", "audrey");
    let auditor = Some(auditor.as_str());
    let server = Server::start(dir.path());
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "{body}");

    // The audit endpoints need an auditor's token.
    let (status, body) = server.get("/v1/audit/events?after=0&limit=3");
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.get_as("/v1/audit/events?after=0&limit=3", auditor);
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["position"], 3);
    assert_eq!(page["events"][0]["type"], "CategoryDefined");

    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.get_as("/v1/audit/verify", auditor);
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ok"], true);

    // Bad input is a 400 with a problem+json body, never a 500.
    let (status, body) = server.get_as("/v1/audit/events?limit=0", auditor);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (status, _) = server.get_as("/v1/audit/events?after=banana", auditor);
    assert_eq!(status, 400);

    let exit = server.interrupt();
    assert!(exit.success(), "thitl serve exited with {exit:?} on SIGINT");
}

#[test]
fn serve_creates_a_fresh_data_directory() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("new");
    let server = Server::start(&data);
    assert_eq!(server.get("/healthz").0, 200);
    assert!(server.interrupt().success());
    assert!(data.join("events.db").is_file());
    // A token issued on the fresh directory works on the next start; the log then holds the
    // token's issuing and the default taxonomy seeded on first start.
    let auditor = create_token(&data, "auditor", "audrey");
    let server = Server::start(&data);
    let (status, body) = server.get_as("/v1/audit/events", Some(&auditor));
    assert_eq!(status, 200, "{body}");
    let types: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["CategoryDefined", "CategoryDefined", "CategoryDefined", "CategoryDefined", "TokenIssued"]);
    assert!(server.interrupt().success());
    assert!(data.join("events.db").is_file());
}
