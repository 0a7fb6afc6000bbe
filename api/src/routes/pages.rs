//! The pages people use, served from assets compiled into the binary (no CDN: works offline):
//! `/annotate` for annotators, `/dashboard` for curators, analysts and auditors, `/audit` for
//! auditors. One HTML shell here, CSS and JavaScript modules under `api/web/`; each page
//! calls the same REST API as any client, with the token the person signs in with (kept in the
//! tab's session storage). Also `GET /v1/me`, which tells a page who its token belongs to.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use domain::Role;
use serde_json::json;

use crate::auth::Principal;
use crate::problem::ApiError;
use crate::routes::support::query_answer;
use crate::state::AppState;

/// (path under `/web/`, content type, bytes)
const ASSETS: &[(&str, &str, &str)] = &[
    ("thitl.css", "text/css; charset=utf-8", include_str!("../../web/thitl.css")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("../../web/common.js")),
    ("annotate.js", "text/javascript; charset=utf-8", include_str!("../../web/annotate.js")),
    ("dashboard.js", "text/javascript; charset=utf-8", include_str!("../../web/dashboard.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_str!("../../web/audit.js")),
];

/// A page: the shared head and header, the page's module script, and the two places every
/// page fills (`#message` for what it has to say, `#view` for its content).
fn shell(title: &str, script: &str, aside: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>thitl · {title}</title>
  <link rel="stylesheet" href="/web/thitl.css">
  <script type="module" src="/web/{script}"></script>
</head>
<body>
  <header class="bar">
    <h1>thitl · {title}</h1>
    {aside}
    <span class="who" id="who"></span>
  </header>
  <main>
    <div id="message" role="status" aria-live="polite"></div>
    <div id="view"><p class="muted">Loading…</p></div>
  </main>
</body>
</html>
"#
    )
}

const NAV: &str =
    r#"<nav><a href="/dashboard">dashboard</a> · <a href="/audit">audit</a> · <a href="/annotate">annotate</a></nav>"#;

fn page(html: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The pages load only their own scripts and styles, and images from this server.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ))
        .body(html)
}

/// The annotation page.
pub async fn annotate() -> HttpResponse {
    page(shell(
        "annotate",
        "annotate.js",
        r#"<span class="muted">rate what you see; the page never says which model made a picture</span>"#,
    ))
}

/// The dashboard: evaluations, campaigns, rounds, fine-tunes.
pub async fn dashboard() -> HttpResponse {
    page(shell("dashboard", "dashboard.js", NAV))
}

/// The auditor's timeline: the log, histories, the live feed, verification, lineage.
pub async fn audit() -> HttpResponse {
    page(shell("audit", "audit.js", NAV))
}

/// A page's script or style sheet.
pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or_else(|| ApiError::not_found(format!("no asset is called '{name}'")))?;
    Ok(HttpResponse::Ok().content_type(*content_type).insert_header((header::CACHE_CONTROL, "no-cache")).body(*body))
}

/// Who the caller's token belongs to (name and role). For an annotator (and an admin), also the
/// open rounds and how far each is, blind: kind and counts only, never the campaign or models.
#[utoipa::path(get, path = "/v1/me", tag = "tokens",
    responses((status = 200, description = "`{\"name\", \"role\", \"rounds\": [{\"id\", \"kind\", \"items\", \"submitted\", \"needed\", \"mine\"}], \"position\"}`", body = Object),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn me(state: web::Data<AppState>, principal: Principal) -> Result<HttpResponse, ApiError> {
    let annotates = matches!(principal.role, Role::Annotator | Role::Admin);
    let (rounds, position) = state.projections.read(|p| {
        let rounds: Vec<serde_json::Value> = if annotates {
            p.rounds
                .rounds
                .values()
                .filter(|round| round.status == "open")
                .map(|round| {
                    json!({
                        "id": round.id, "kind": round.kind, "items": round.items, "submitted": round.submitted, "needed": round.needed,
                        "mine": round.annotators.get(&principal.name).copied().unwrap_or(0),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        (rounds, p.position)
    });
    Ok(query_answer(json!({"name": principal.name, "role": principal.role.as_str(), "rounds": rounds}), position, None))
}
