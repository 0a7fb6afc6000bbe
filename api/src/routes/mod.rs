//! HTTP routes, versioned under `/v1`. Every handler names the [`Action`](crate::auth::Action)
//! it performs; [`openapi::ApiDoc`] lists every route for `/openapi.json` and `/docs`.

pub mod associations;
pub mod audit;
pub mod exports;
mod health;
pub mod images;
pub mod openapi;
pub mod pages;
pub mod rounds;
pub mod support;
pub mod tokens;
pub mod work;

use actix_web::web;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        // Families of routes in their own scopes: a request is matched against its family's few
        // patterns only (each `{id}` pattern is a regular expression), hot routes first.
        .service(
            web::scope("/v1")
                .route("/me", web::get().to(pages::me))
                .service(
                    web::scope("/rounds")
                        .route("/{id}/next", web::get().to(rounds::next))
                        .route("/{id}/annotations", web::post().to(rounds::submit))
                        .route("", web::post().to(rounds::open))
                        .route("", web::get().to(rounds::list))
                        .route("/{id}", web::get().to(rounds::progress))
                        .route("/{id}/withdrawals", web::post().to(rounds::withdraw))
                        .route("/{id}/close", web::post().to(rounds::close)),
                )
                .service(
                    web::scope("/blobs")
                        .route("", web::post().to(images::upload))
                        .route("/{sha256}", web::get().to(images::blob)),
                )
                .route("/images/{id}", web::get().to(images::image))
                .service(
                    web::scope("/tokens")
                        .route("", web::post().to(tokens::create))
                        .route("", web::get().to(tokens::list))
                        .route("/{id}/revoke", web::post().to(tokens::revoke)),
                )
                .service(
                    web::scope("/taxonomy")
                        .route("", web::get().to(associations::taxonomy))
                        .route("/categories", web::post().to(associations::define_category))
                        .route("/categories/{key}/retire", web::post().to(associations::retire_category)),
                )
                .service(
                    web::scope("/associations")
                        .route("", web::post().to(associations::register))
                        .route("", web::get().to(associations::list))
                        .route("/{id}", web::get().to(associations::detail))
                        .route("/{id}/evaluation", web::get().to(associations::evaluation))
                        .route("/{id}/recategorize", web::post().to(associations::recategorize))
                        .route("/{id}/retire", web::post().to(associations::retire)),
                )
                .service(
                    web::scope("/model-versions")
                        .route("", web::post().to(work::register_model))
                        .route("", web::get().to(work::list_model_versions))
                        .route("/{id}", web::get().to(work::model_version))
                        .route("/{id}/lineage", web::get().to(work::lineage))
                        .route("/{id}/promote", web::post().to(work::promote))
                        .route("/{id}/rollback", web::post().to(work::roll_back)),
                )
                // The lineage under the name auditors look for first.
                .route("/models/{id}/lineage", web::get().to(work::model_lineage))
                .service(
                    web::scope("/prompt-sets")
                        .route("", web::post().to(work::create_prompt_set))
                        .route("", web::get().to(work::list_prompt_sets))
                        .route("/{id}", web::get().to(work::prompt_set))
                        .route("/{id}/prompts", web::post().to(work::add_prompts))
                        .route("/{id}/prompts/{prompt_id}", web::post().to(work::review_prompt))
                        .route("/{id}/finalize", web::post().to(work::finalize)),
                )
                .service(
                    web::scope("/generations")
                        .route("", web::post().to(work::request_generation))
                        .route("", web::get().to(work::list_generations))
                        .route("/{id}", web::get().to(work::generation)),
                )
                .service(
                    web::scope("/fine-tunes")
                        .route("", web::post().to(work::request_fine_tune))
                        .route("", web::get().to(work::list_fine_tunes))
                        .route("/{id}", web::get().to(work::fine_tune)),
                )
                .service(
                    web::scope("/campaigns")
                        .route("", web::post().to(work::start_campaign))
                        .route("", web::get().to(work::list_campaigns))
                        .route("/{id}", web::get().to(work::campaign))
                        .route("/{id}/conclude", web::post().to(work::conclude_campaign)),
                )
                .route("/exports/{kind}", web::get().to(exports::export))
                .service(
                    web::scope("/audit")
                        .route("/events", web::get().to(audit::events))
                        .route("/streams/{stream}", web::get().to(audit::stream_history))
                        .route("/verify", web::get().to(audit::verify))
                        .route("/feed", web::get().to(audit::feed)),
                ),
        )
        .route("/annotate", web::get().to(pages::annotate))
        .route("/dashboard", web::get().to(pages::dashboard))
        .route("/audit", web::get().to(pages::audit))
        .route("/web/{file}", web::get().to(pages::asset))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(openapi::document))
        // Last: its `/docs/{_:.*}` pattern would otherwise be tried on every request.
        .service(openapi::swagger_ui());
}
