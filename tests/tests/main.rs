//! End-to-end tests: one binary, talking to thitl only through the CLI and HTTP.

mod helpers;

mod audit;
mod serve;
