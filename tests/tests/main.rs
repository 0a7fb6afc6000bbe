//! End-to-end tests: one binary, talking to thitl only through the CLI and HTTP.

mod helpers;

mod api_audit;
mod api_errors;
mod api_idempotency;
mod api_images;
mod api_openapi;
mod api_quality;
mod api_resources;
mod api_roles;
mod api_workers;
mod audit;
mod browser;
mod demo;
mod export_parquet;
mod model;
mod prompts_cli;
mod scenes;
mod serve;
mod serve_campaign;
mod store_copy;
mod webdriver;
mod workers;
mod workers_remote;
