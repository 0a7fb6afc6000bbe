//! Routes × roles: who may call what. Each row names the roles allowed; every other role must get
//! 403 and no token 401. Allowed calls name an entity that does not exist, so they are refused
//! for that (404/422) instead, and nothing is written either way.

use crate::helpers::spawn_app;

const NONE: &str = "01900000-0000-7000-8000-000000000000";

/// Whether `path` (its query aside) fits the OpenAPI path `template` (`/v1/rounds/{id}/next`).
fn matches_template(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let (mut parts, mut pattern) = (path.split('/'), template.split('/'));
    loop {
        match (parts.next(), pattern.next()) {
            (None, None) => return true,
            (Some(part), Some(segment)) if segment.starts_with('{') || segment == part => {
                if part.is_empty() && segment.starts_with('{') {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[test]
fn every_route_checks_the_role() {
    let app = spawn_app();
    let roles = ["admin", "curator", "operator", "annotator", "auditor", "worker"];
    let tokens: Vec<(&str, String)> = roles.iter().map(|role| (*role, app.token(role, &format!("{role}-1")))).collect();
    let head = app.head();

    let everyone_but_annotators = &["admin", "curator", "operator", "auditor"][..];
    let curators = &["admin", "curator"][..];
    let operators = &["admin", "curator", "operator"][..];
    let uploaders = &["admin", "curator", "operator", "worker"][..];
    let workers = &["admin", "worker"][..];
    let annotators = &["admin", "annotator"][..];
    let auditors = &["admin", "auditor"][..];
    let admins = &["admin"][..];
    let token_readers = &["admin", "auditor"][..];
    let everyone = &["admin", "curator", "operator", "annotator", "auditor", "worker"][..];
    let round = format!("/v1/rounds/{NONE}");
    let zeros = "0".repeat(64);
    let image_record = format!(r#"{{"index":0,"blob":"{zeros}"}}"#);
    let adapter_record = format!(r#"{{"adapter":"{zeros}","final_loss":0.1}}"#);
    // (method, path, body, roles allowed)
    let table: Vec<(&str, String, &str, &[&str])> = vec![
        ("GET", "/v1/me".into(), "", everyone),
        ("GET", "/v1/taxonomy".into(), "", everyone_but_annotators),
        ("POST", "/v1/taxonomy/categories".into(), r#"{"key":"Bad Key","narrative":"n","example":"e"}"#, curators),
        ("POST", "/v1/taxonomy/categories/nothing/retire".into(), "{}", curators),
        ("GET", "/v1/associations".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/associations/{NONE}"), "", everyone_but_annotators),
        ("GET", format!("/v1/associations/{NONE}/evaluation"), "", everyone_but_annotators),
        (
            "POST",
            "/v1/associations".into(),
            r#"{"group":"","concept":"x","category":"threat","description":"d","probe_prompts":[]}"#,
            curators,
        ),
        ("POST", format!("/v1/associations/{NONE}/recategorize"), r#"{"category":"threat"}"#, curators),
        ("POST", format!("/v1/associations/{NONE}/retire"), r#"{"reason":"r"}"#, curators),
        ("GET", "/v1/rounds".into(), "", everyone_but_annotators),
        ("GET", round.clone(), "", everyone_but_annotators),
        ("POST", "/v1/rounds".into(), r#"{"kind":"screen","items":[]}"#, curators),
        ("GET", format!("{round}/next"), "", annotators),
        (
            "POST",
            format!("{round}/annotations"),
            r#"{"item_id":"01900000-0000-7000-8000-000000000000","answer":{"baseline":{"concept_present":true}}}"#,
            annotators,
        ),
        ("POST", format!("{round}/withdrawals"), r#"{"item_id":"01900000-0000-7000-8000-000000000000"}"#, annotators),
        ("POST", format!("{round}/close"), "{}", curators),
        ("GET", format!("{round}/annotators"), "", everyone_but_annotators),
        ("POST", format!("{round}/reinstatements"), r#"{"annotator":"x","reason":"r"}"#, curators),
        ("GET", "/v1/adjudications".into(), "", everyone_but_annotators),
        (
            "POST",
            format!("/v1/adjudications/{NONE}"),
            r#"{"answer":{"check":{"concept_present":true,"quality":3}},"reason":"r"}"#,
            curators,
        ),
        ("GET", format!("/v1/images/{NONE}"), "", everyone_but_annotators),
        ("GET", format!("/v1/blobs/{}", "0".repeat(64)), "", everyone),
        ("POST", "/v1/blobs".into(), "", uploaders),
        ("GET", "/v1/model-versions".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/model-versions/{NONE}"), "", everyone_but_annotators),
        (
            "POST",
            "/v1/model-versions".into(),
            r#"{"name":"","weights":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
            operators,
        ),
        ("POST", format!("/v1/model-versions/{NONE}/promote"), r#"{"reason":"r"}"#, curators),
        ("POST", format!("/v1/model-versions/{NONE}/rollback"), r#"{"reason":"r"}"#, curators),
        ("GET", format!("/v1/model-versions/{NONE}/lineage"), "", everyone_but_annotators),
        ("GET", format!("/v1/models/{NONE}/lineage"), "", everyone_but_annotators),
        ("GET", "/v1/prompt-sets".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/prompt-sets/{NONE}"), "", everyone_but_annotators),
        ("POST", "/v1/prompt-sets".into(), r#"{"association_id":"01900000-0000-7000-8000-000000000000"}"#, curators),
        ("POST", format!("/v1/prompt-sets/{NONE}/prompts"), r#"{"prompts":[{"text":"a woman"}]}"#, curators),
        ("POST", format!("/v1/prompt-sets/{NONE}/prompts/{NONE}"), r#"{"accept":{}}"#, curators),
        ("POST", format!("/v1/prompt-sets/{NONE}/finalize"), "{}", curators),
        ("GET", "/v1/generations".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/generations/{NONE}"), "", everyone_but_annotators),
        (
            "POST",
            "/v1/generations".into(),
            r#"{"model_version":"01900000-0000-7000-8000-000000000000","purpose":"baseline","items":[]}"#,
            operators,
        ),
        ("GET", "/v1/fine-tunes".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/fine-tunes/{NONE}"), "", everyone_but_annotators),
        (
            "POST",
            "/v1/fine-tunes".into(),
            r#"{"base_model":"01900000-0000-7000-8000-000000000000","arm":"traditional","examples":[]}"#,
            operators,
        ),
        ("GET", "/v1/campaigns".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/campaigns/{NONE}"), "", everyone_but_annotators),
        (
            "POST",
            "/v1/campaigns".into(),
            r#"{"name":"c","associations":[],"base_model":"01900000-0000-7000-8000-000000000000"}"#,
            curators,
        ),
        ("POST", format!("/v1/campaigns/{NONE}/conclude"), r#"{"promote":null,"reason":"r"}"#, curators),
        // A worker takes jobs (none here: `job` is null) and records only on jobs it holds.
        ("POST", "/v1/jobs/lease".into(), "{}", workers),
        ("POST", format!("/v1/jobs/generations/{NONE}/renew"), "{}", workers),
        ("POST", format!("/v1/jobs/generations/{NONE}/images"), &image_record, workers),
        ("POST", format!("/v1/jobs/generations/{NONE}/complete"), "{}", workers),
        ("POST", format!("/v1/jobs/generations/{NONE}/fail"), r#"{"reason":"r"}"#, workers),
        ("POST", format!("/v1/jobs/fine-tunes/{NONE}/renew"), "{}", workers),
        ("POST", format!("/v1/jobs/fine-tunes/{NONE}/progress"), r#"{"step":1,"loss":0.5}"#, workers),
        ("POST", format!("/v1/jobs/fine-tunes/{NONE}/complete"), &adapter_record, workers),
        ("POST", format!("/v1/jobs/fine-tunes/{NONE}/fail"), r#"{"reason":"r"}"#, workers),
        ("GET", "/v1/tokens".into(), "", token_readers),
        ("POST", "/v1/tokens".into(), r#"{"name":"","role":"curator"}"#, admins),
        ("POST", format!("/v1/tokens/{NONE}/revoke"), r#"{"reason":"r"}"#, admins),
        ("GET", "/v1/audit/events?limit=1".into(), "", auditors),
        ("GET", "/v1/audit/streams/taxonomy?limit=1".into(), "", auditors),
        ("GET", "/v1/audit/verify".into(), "", auditors),
        ("GET", "/v1/exports/evaluations".into(), "", everyone_but_annotators),
        ("GET", format!("/v1/model-versions/{NONE}/export"), "", everyone_but_annotators),
    ];
    // The live feed answers an allowed caller with a stream that does not end: only refusals
    // are checked for it.
    let feed = "/v1/audit/feed";
    assert_eq!(app.request("GET", feed, None, &[], None).status, 401);
    for (role, token) in tokens.iter().filter(|(role, _)| !auditors.contains(role)) {
        assert_eq!(app.request("GET", feed, Some(token), &[], None).status, 403, "{feed} as {role}");
    }
    // Every route the OpenAPI document lists is in the table (or public, or the feed): the
    // table checks the whole policy, route by route.
    let document = app.get("/openapi.json", &app.admin).expect(200).json();
    let public = ["/healthz", "/readyz", "/metrics", feed];
    for (template, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let covered = public.contains(&template.as_str())
                || table.iter().any(|(m, path, _, _)| *m == method && matches_template(template, path));
            assert!(covered, "{method} {template} is missing from the role table");
        }
    }
    for (method, path, body, allowed) in &table {
        let body = (*method == "POST").then_some(body.as_bytes());
        let anonymous = app.request(method, path, None, &[], body);
        assert_eq!(anonymous.status, 401, "{method} {path} without a token: {}", anonymous.body);
        for (role, token) in &tokens {
            let response = app.request(method, path, Some(token), &[], body);
            if allowed.contains(role) {
                assert!(
                    ![401, 403].contains(&response.status) && response.status < 500,
                    "{method} {path} as {role} should be allowed: {} {}",
                    response.status,
                    response.body
                );
            } else {
                assert_eq!(response.status, 403, "{method} {path} as {role} should be forbidden: {}", response.body);
                response.expect(403);
            }
        }
    }
    assert_eq!(app.head(), head, "a refused request appended an event");
}
