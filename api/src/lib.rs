//! The `thitl` binary's library: HTTP (actix-web), the command line and the demo. Thin: it parses,
//! authorizes and calls the application (`app`).
//!
//! | module | job |
//! |---|---|
//! | [`startup`], [`routes`], [`state`] | the HTTP server (`/v1`, OpenAPI), its routes and the state they reach |
//! | [`auth`] | the bearer-token extractor (the policy itself is `app::auth`) |
//! | [`problem`] | every error as problem+json |
//! | [`configuration`], [`metrics`] | server settings; Prometheus `/metrics` |
//! | [`demo`] | `thitl demo`: a whole T-HITL campaign on the reference world, simulated annotators |
//! | [`remote_worker`] | `thitl worker --api`: jobs leased and recorded over HTTPS, blobs cached by hash |
//! | [`cli`], [`scenes_cli`], [`model_cli`], [`prompts_cli`] | the `thitl` command line |
//!
//! Architecture invariant: no application rule lives here; handlers and commands parse, check
//! the caller's role and call `app`. Modules import one another without a circle
//! (`api/tests/module_graph.rs` checks it, for `app` too).

pub mod auth;
pub mod cli;
pub mod configuration;
pub mod demo;
pub mod metrics;
pub mod model_cli;
pub mod problem;
pub mod prompts_cli;
pub mod remote_worker;
pub mod routes;
pub mod scenes_cli;
pub mod startup;
pub mod state;
