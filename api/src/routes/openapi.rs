//! The OpenAPI document (utoipa), served at `/openapi.json`, with Swagger UI at `/docs`
//! (vendored: it works with no internet). The committed `openapi/openapi.json` must equal what
//! the server serves; `tests/tests/api_openapi.rs` fails otherwise.

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{associations, audit, exports, health, images, pages, rounds, support, tokens, work};
use crate::problem;

#[derive(OpenApi)]
#[openapi(
    info(title = "thitl", description = "Twice-human-in-the-loop mitigation of problematic associations in image-generation models. \
        Every command answers `{stream, version, position}`; every query answers the `position` it reflects and accepts `?wait_for=POS`. \
        Errors are RFC 7807 `application/problem+json`. POSTs accept `Idempotency-Key`; commands on an existing entity accept `If-Match: <version>`."),
    paths(
        health::healthz, health::readyz, health::metrics,
        tokens::create, tokens::list, tokens::revoke, pages::me,
        associations::taxonomy, associations::define_category, associations::retire_category,
        associations::register, associations::list, associations::detail, associations::evaluation, associations::recategorize, associations::retire,
        rounds::open, rounds::list, rounds::progress, rounds::next, rounds::submit, rounds::withdraw, rounds::close,
        images::image, images::blob, images::upload,
        work::register_model, work::list_model_versions, work::model_version, work::lineage, work::model_lineage, work::promote, work::roll_back,
        work::create_prompt_set, work::list_prompt_sets, work::prompt_set, work::add_prompts, work::review_prompt, work::finalize,
        work::request_generation, work::list_generations, work::generation,
        work::request_fine_tune, work::list_fine_tunes, work::fine_tune,
        work::start_campaign, work::list_campaigns, work::campaign, work::conclude_campaign,
        exports::export,
        audit::events, audit::stream_history, audit::verify, audit::feed,
    ),
    components(schemas(
        problem::Problem, support::CommandAnswer,
        tokens::CreateToken, associations::RegisterAssociation, associations::Recategorize, associations::Reason,
        associations::DefineCategory, associations::Empty,
        rounds::OpenRound, rounds::RoundItemInput, rounds::ImageItem, rounds::PairItem, rounds::PairSides, rounds::PairImage,
        rounds::SubmitAnnotation, rounds::WithdrawAnnotation, rounds::CloseRound,
        work::RegisterBaseModel, work::CreatePromptSet, work::AddPrompts, work::PromptText, work::PromptReview,
        work::RequestGeneration, work::RequestFineTune, work::StartCampaign, work::ConcludeCampaign,
        projections::ImageRecord, images::StoredBlob, images::BlobBytes,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served (pretty JSON, stable key order), also what `openapi/openapi.json` holds.
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make every release a spurious diff of the contract.
    doc.info.version = "v1".to_string();
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// `GET /openapi.json`.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document_json())
}

/// Swagger UI at `/docs`, from files compiled into the binary.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi())
}
