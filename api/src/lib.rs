//! The `thitl` library behind the binary: the only crate that does IO.
//!
//! | module | job |
//! |---|---|
//! | [`store`] | the `EventStore` trait, the SQLite and EventStoreDB/KurrentDB adapters, the hash chain and its verification |
//! | [`commands`] | the write side: load, decide, append with the expected version |
//! | [`runner`] | the projection runner (checkpointed) and `audit replay` |
//! | [`data`] | a data directory's layout |
//! | [`blobs`] | the content-addressed blob store (images, weights) and its verification |
//! | [`startup`], [`routes`] | the HTTP server (`/v1`, problem+json errors, OpenAPI) |
//! | [`auth`] | bearer tokens and the role policy |
//! | [`idempotency`] | `Idempotency-Key` records (SQLite beside the store) |
//! | [`configuration`], [`metrics`] | server settings; Prometheus `/metrics` |
//! | [`demo`] | `thitl demo`: a whole T-HITL campaign on the reference world, simulated annotators |
//! | [`scripted`] | a synthetic campaign history in under a second (placeholder images), for backbone tests |
//! | [`cli`] | the `thitl` command line |
//!
//! Architecture invariant: `domain` and `projections` stay pure; everything that touches a
//! disk, a socket, a clock or a random id happens here.

pub mod audit;
pub mod auth;
pub mod blobs;
pub mod campaigns;
pub mod cli;
pub mod commands;
pub mod configuration;
pub mod data;
pub mod demo;
pub mod driver;
pub mod export;
pub mod http_client;
pub mod idempotency;
pub mod lineage;
pub mod metrics;
pub mod prompts;
pub mod routes;
pub mod runner;
pub mod scenes_cli;
pub mod scripted;
pub mod startup;
pub mod store;
pub mod workers;
