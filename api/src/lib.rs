//! The `thitl` library behind the binary: the only crate that does IO.
pub mod store;
