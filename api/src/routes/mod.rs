//! HTTP routes. Until the REST issue lands this serves health and the auditors' read-only views.

mod audit;
mod health;
pub mod problem;

use actix_web::web;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/v1/audit/events", web::get().to(audit::events))
        .route("/v1/audit/verify", web::get().to(audit::verify));
}
