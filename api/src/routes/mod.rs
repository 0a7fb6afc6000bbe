//! HTTP routes, versioned under `/v1`. Every handler names the [`Action`](crate::auth::Action)
//! it performs; [`openapi::ApiDoc`] lists every route for `/openapi.json` and `/docs`.

pub mod associations;
pub mod audit;
pub mod exports;
mod health;
pub mod images;
pub mod jobs;
pub mod model_export;
pub mod openapi;
pub mod pages;
pub mod rounds;
pub mod support;
pub mod tokens;
pub mod work;

use actix_web::dev::HttpServiceFactory;
use actix_web::{FromRequest, Handler, Resource, Responder, web};

use crate::problem::method_not_allowed;

/// One path and the methods it takes; any other method answers 405 with `Allow` listing these.
struct At {
    resource: Resource,
    allow: Vec<&'static str>,
}

fn at(path: &str) -> At {
    At { resource: web::resource(path), allow: Vec::new() }
}

impl At {
    fn get<F, Args>(mut self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::get().to(handler));
        self.allow.push("GET");
        self
    }

    fn post<F, Args>(mut self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::post().to(handler));
        self.allow.push("POST");
        self
    }

    fn done(self) -> impl HttpServiceFactory {
        let allow = self.allow.join(", ");
        self.resource.default_service(web::to(move || {
            let answer = method_not_allowed(&allow);
            async move { answer }
        }))
    }
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        // Families of routes in their own scopes: a request is matched against its family's few
        // patterns only (each `{id}` pattern is a regular expression), hot routes first.
        .service(
            web::scope("/v1")
                .service(at("/me").get(pages::me).done())
                .service(
                    web::scope("/rounds")
                        .service(at("/{id}/next").get(rounds::next).done())
                        .service(at("/{id}/annotations").post(rounds::submit).done())
                        .service(at("").post(rounds::open).get(rounds::list).done())
                        .service(at("/{id}").get(rounds::progress).done())
                        .service(at("/{id}/withdrawals").post(rounds::withdraw).done())
                        .service(at("/{id}/close").post(rounds::close).done())
                        .service(at("/{id}/annotators").get(rounds::annotators).done())
                        .service(at("/{id}/reinstatements").post(rounds::reinstate).done()),
                )
                .service(
                    web::scope("/adjudications")
                        .service(at("").get(rounds::adjudications).done())
                        .service(at("/{item_id}").post(rounds::adjudicate).done()),
                )
                .service(
                    web::scope("/blobs")
                        .service(at("").post(images::upload).done())
                        .service(at("/{sha256}").get(images::blob).done()),
                )
                .service(at("/images/{id}").get(images::image).done())
                .service(
                    web::scope("/tokens")
                        .service(at("").post(tokens::create).get(tokens::list).done())
                        .service(at("/{id}/revoke").post(tokens::revoke).done()),
                )
                .service(
                    web::scope("/taxonomy")
                        .service(at("").get(associations::taxonomy).done())
                        .service(at("/categories").post(associations::define_category).done())
                        .service(at("/categories/{key}/retire").post(associations::retire_category).done()),
                )
                .service(
                    web::scope("/associations")
                        .service(at("").post(associations::register).get(associations::list).done())
                        .service(at("/{id}").get(associations::detail).done())
                        .service(at("/{id}/evaluation").get(associations::evaluation).done())
                        .service(at("/{id}/recategorize").post(associations::recategorize).done())
                        .service(at("/{id}/retire").post(associations::retire).done()),
                )
                .service(
                    web::scope("/model-versions")
                        .service(at("").post(work::register_model).get(work::list_model_versions).done())
                        .service(at("/{id}").get(work::model_version).done())
                        .service(at("/{id}/lineage").get(work::lineage).done())
                        .service(at("/{id}/export").get(model_export::export_version).done())
                        .service(at("/{id}/promote").post(work::promote).done())
                        .service(at("/{id}/rollback").post(work::roll_back).done()),
                )
                // The lineage under the name auditors look for first.
                .service(at("/models/{id}/lineage").get(work::model_lineage).done())
                .service(
                    web::scope("/prompt-sets")
                        .service(at("").post(work::create_prompt_set).get(work::list_prompt_sets).done())
                        .service(at("/{id}").get(work::prompt_set).done())
                        .service(at("/{id}/prompts").post(work::add_prompts).done())
                        .service(at("/{id}/prompts/{prompt_id}").post(work::review_prompt).done())
                        .service(at("/{id}/finalize").post(work::finalize).done()),
                )
                .service(
                    web::scope("/generations")
                        .service(at("").post(work::request_generation).get(work::list_generations).done())
                        .service(at("/{id}").get(work::generation).done()),
                )
                .service(
                    web::scope("/fine-tunes")
                        .service(at("").post(work::request_fine_tune).get(work::list_fine_tunes).done())
                        .service(at("/{id}").get(work::fine_tune).done()),
                )
                .service(
                    web::scope("/jobs")
                        .service(at("/lease").post(jobs::lease).done())
                        .service(at("/generations/{id}/renew").post(jobs::renew_generation).done())
                        .service(at("/generations/{id}/images").post(jobs::record_image).done())
                        .service(at("/generations/{id}/complete").post(jobs::complete_generation).done())
                        .service(at("/generations/{id}/fail").post(jobs::fail_generation).done())
                        .service(at("/fine-tunes/{id}/renew").post(jobs::renew_fine_tune).done())
                        .service(at("/fine-tunes/{id}/progress").post(jobs::record_progress).done())
                        .service(at("/fine-tunes/{id}/complete").post(jobs::complete_fine_tune).done())
                        .service(at("/fine-tunes/{id}/fail").post(jobs::fail_fine_tune).done()),
                )
                .service(
                    web::scope("/campaigns")
                        .service(at("").post(work::start_campaign).get(work::list_campaigns).done())
                        .service(at("/{id}").get(work::campaign).done())
                        .service(at("/{id}/conclude").post(work::conclude_campaign).done()),
                )
                .service(at("/exports/{kind}").get(exports::export).done())
                .service(
                    web::scope("/audit")
                        .service(at("/events").get(audit::events).done())
                        .service(at("/streams/{stream}").get(audit::stream_history).done())
                        .service(at("/verify").get(audit::verify).done())
                        .service(at("/feed").get(audit::feed).done()),
                ),
        )
        .service(at("/annotate").get(pages::annotate).done())
        .service(at("/dashboard").get(pages::dashboard).done())
        .service(at("/audit").get(pages::audit).done())
        .service(at("/web/{file}").get(pages::asset).done())
        .service(at("/healthz").get(health::healthz).done())
        .service(at("/readyz").get(health::readyz).done())
        .service(at("/metrics").get(health::metrics).done())
        .service(at("/openapi.json").get(openapi::document).done())
        // Last: its `/docs/{_:.*}` pattern would otherwise be tried on every request.
        .service(openapi::swagger_ui());
}
