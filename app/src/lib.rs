//! thitl's application: what the method does, independent of how it is reached. The HTTP server,
//! the CLI and the demo (`api`) call it; it calls the event store (`store`), the read models
//! (`projections`) and the models (`gpu`, `scenes`).
//!
//! | module | job |
//! |---|---|
//! | [`commands`] | the write side: one writer per stream, decide, append with the expected version |
//! | [`runner`] | the projection runner (checkpointed) and `audit replay` |
//! | [`images`] | the image catalog kept up with the store |
//! | [`data`] | a data directory's layout (the one place that knows it) |
//! | [`blobs`] | the content-addressed blob store (images, weights) and its verification |
//! | [`idempotency`] | `Idempotency-Key` records (SQLite beside the store) |
//! | [`auth`] | tokens and the role policy |
//! | [`defaults`] | the default taxonomy and associations a deployment starts from |
//! | [`campaigns`] | the campaign runner: the process manager's steps, on a model reached through ports |
//! | [`jobs`] | requesting generation and fine-tune jobs (the model must exist) |
//! | [`workers`] | generation and fine-tune jobs, leased |
//! | [`driver`] | `thitl serve`'s background loop: campaigns and jobs |
//! | [`ports`], [`reference`] | how the application reaches a model family and a quality rater; the reference world behind them |
//! | [`prompts`] | prompt generators (templates, an OpenAI-compatible chat endpoint) |
//! | [`lineage`], [`export`], [`audit`] | a model version's lineage; CSV/JSONL exports; events shown to auditors |
//!
//! Architecture invariant: no HTTP framework. Every application rule (a model version exists
//! before a generation is requested; the taxonomy is seeded once) lives here once and serves the
//! HTTP handlers, the CLI and the campaign runner alike.

pub mod audit;
pub mod auth;
pub mod blobs;
pub mod campaigns;
pub mod commands;
pub mod data;
pub mod defaults;
pub mod driver;
pub mod export;
pub mod idempotency;
pub mod images;
pub mod jobs;
pub mod lineage;
pub mod ports;
pub mod prompts;
pub mod reference;
pub mod runner;
pub mod sd;
pub mod team_images;
pub mod workers;
