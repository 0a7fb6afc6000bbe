//! The committed contract `openapi/openapi.json` equals what the server serves, and `/docs`
//! renders with no internet.
//!
//! After a deliberate API change, regenerate the file (see openapi/README.md):
//! `THITL_BLESS_OPENAPI=1 cargo test -p thitl-tests api_openapi`

use std::path::PathBuf;

use crate::helpers::spawn_app;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

#[test]
fn the_served_document_matches_the_committed_contract() {
    let app = spawn_app();
    let served = app.request("GET", "/openapi.json", None, &[], None);
    served.expect(200);
    let document = served.json();
    if std::env::var_os("THITL_BLESS_OPENAPI").is_some() {
        std::fs::write(committed_path(), &served.body).expect("write openapi/openapi.json");
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        served.body == committed,
        "openapi/openapi.json differs from what the server serves. If the API change is deliberate, run\n  \
         THITL_BLESS_OPENAPI=1 cargo test -p thitl-tests api_openapi\nand commit the new file."
    );
    // Every route the server has is documented.
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/associations",
        "/v1/rounds/{id}/next",
        "/v1/rounds/{id}/annotations",
        "/v1/images/{id}",
        "/v1/blobs",
        "/v1/blobs/{sha256}",
        "/v1/audit/events",
        "/v1/audit/feed",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(document["components"]["schemas"]["Problem"].is_object());
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app();
    let page = app.request("GET", "/docs/", None, &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Swagger UI"), "{}", page.body);
    let init = app.request("GET", "/docs/swagger-initializer.js", None, &[], None);
    assert_eq!(init.status, 200);
    assert!(init.body.contains("/openapi.json"), "{}", init.body);
    assert_eq!(app.request("GET", "/docs/swagger-ui-bundle.js", None, &[], None).status, 200);
}
