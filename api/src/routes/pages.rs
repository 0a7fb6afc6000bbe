//! The pages people use, served from assets compiled into the binary (no CDN: works offline):
//! `/annotate` for annotators. Plain HTML, CSS and JavaScript modules under `api/web/`; each page
//! calls the same REST API as any client, with the token the person signs in with (kept in the
//! tab's session storage). Also `GET /v1/me`, which tells a page who its token belongs to.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use domain::Role;
use serde_json::json;

use crate::auth::Principal;
use crate::routes::problem::ApiError;
use crate::routes::support::query_answer;
use crate::startup::AppState;

/// (path under `/web/`, content type, bytes)
const ASSETS: &[(&str, &str, &str)] = &[
    ("thitl.css", "text/css; charset=utf-8", include_str!("../../web/thitl.css")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("../../web/common.js")),
    ("annotate.js", "text/javascript; charset=utf-8", include_str!("../../web/annotate.js")),
];

const ANNOTATE: &str = include_str!("../../web/annotate.html");

fn page(html: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The pages load only their own scripts and styles, and images from this server.
        .insert_header(("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"))
        .body(html)
}

/// The annotation page.
pub async fn annotate() -> HttpResponse {
    page(ANNOTATE)
}

/// A page's script or style sheet.
pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let (_, content_type, body) = ASSETS.iter().find(|(file, _, _)| *file == name).ok_or_else(|| ApiError::not_found(format!("no asset is called '{name}'")))?;
    Ok(HttpResponse::Ok().content_type(*content_type).insert_header((header::CACHE_CONTROL, "no-cache")).body(*body))
}

/// Who the caller's token belongs to (name and role). For an annotator (and an admin), also the
/// open rounds and how far each is, blind: kind and counts only, never the campaign or models.
#[utoipa::path(get, path = "/v1/me", tag = "tokens",
    responses((status = 200, description = "`{\"name\", \"role\", \"rounds\": [{\"id\", \"kind\", \"items\", \"submitted\", \"needed\", \"mine\"}], \"position\"}`", body = Object),
        (status = "4XX", body = crate::routes::problem::Problem, content_type = "application/problem+json")),
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
