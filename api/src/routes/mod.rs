//! HTTP routes, versioned under `/v1`. Every handler names the [`Action`](crate::auth::Action)
//! it performs; [`openapi::ApiDoc`] lists every route for `/openapi.json` and `/docs`.

pub mod associations;
pub mod audit;
mod health;
pub mod images;
pub mod openapi;
pub mod problem;
pub mod rounds;
pub mod support;
pub mod tokens;
pub mod work;

use actix_web::web;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(openapi::document))
        .service(openapi::swagger_ui())
        .service(
            web::scope("/v1")
                .route("/tokens", web::post().to(tokens::create))
                .route("/tokens", web::get().to(tokens::list))
                .route("/tokens/{id}/revoke", web::post().to(tokens::revoke))
                .route("/taxonomy", web::get().to(associations::taxonomy))
                .route("/taxonomy/categories", web::post().to(associations::define_category))
                .route("/taxonomy/categories/{key}/retire", web::post().to(associations::retire_category))
                .route("/associations", web::post().to(associations::register))
                .route("/associations", web::get().to(associations::list))
                .route("/associations/{id}", web::get().to(associations::detail))
                .route("/associations/{id}/recategorize", web::post().to(associations::recategorize))
                .route("/associations/{id}/retire", web::post().to(associations::retire))
                .route("/rounds", web::post().to(rounds::open))
                .route("/rounds", web::get().to(rounds::list))
                .route("/rounds/{id}", web::get().to(rounds::progress))
                .route("/rounds/{id}/next", web::get().to(rounds::next))
                .route("/rounds/{id}/annotations", web::post().to(rounds::submit))
                .route("/rounds/{id}/withdrawals", web::post().to(rounds::withdraw))
                .route("/rounds/{id}/close", web::post().to(rounds::close))
                .route("/images/{id}", web::get().to(images::image))
                .route("/blobs", web::post().to(images::upload))
                .route("/blobs/{sha256}", web::get().to(images::blob))
                .route("/model-versions", web::post().to(work::register_model))
                .route("/model-versions", web::get().to(work::list_model_versions))
                .route("/model-versions/{id}", web::get().to(work::model_version))
                .route("/model-versions/{id}/promote", web::post().to(work::promote))
                .route("/model-versions/{id}/rollback", web::post().to(work::roll_back))
                .route("/prompt-sets", web::post().to(work::create_prompt_set))
                .route("/prompt-sets", web::get().to(work::list_prompt_sets))
                .route("/prompt-sets/{id}", web::get().to(work::prompt_set))
                .route("/prompt-sets/{id}/prompts", web::post().to(work::add_prompts))
                .route("/prompt-sets/{id}/prompts/{prompt_id}", web::post().to(work::review_prompt))
                .route("/prompt-sets/{id}/finalize", web::post().to(work::finalize))
                .route("/generations", web::post().to(work::request_generation))
                .route("/generations", web::get().to(work::list_generations))
                .route("/generations/{id}", web::get().to(work::generation))
                .route("/fine-tunes", web::post().to(work::request_fine_tune))
                .route("/fine-tunes", web::get().to(work::list_fine_tunes))
                .route("/fine-tunes/{id}", web::get().to(work::fine_tune))
                .route("/campaigns", web::post().to(work::start_campaign))
                .route("/campaigns", web::get().to(work::list_campaigns))
                .route("/campaigns/{id}", web::get().to(work::campaign))
                .route("/audit/events", web::get().to(audit::events))
                .route("/audit/streams/{stream}", web::get().to(audit::stream_history))
                .route("/audit/verify", web::get().to(audit::verify))
                .route("/audit/feed", web::get().to(audit::feed)),
        );
}
