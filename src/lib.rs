//! chatwoot-export: every contact of a Chatwoot account as analysis-ready Parquet, CSV or NDJSON.
//!
//! Data flows one way: `source` (HTTP pages) -> `transform` (flatten, type, spill, batch)
//! -> `sink` (one writer per format) -> `store` (temporary names, atomic finish), wired by
//! `pipeline`, recorded by `manifest`. `fake` is a Chatwoot-compatible server for the demo,
//! the tests and the benchmarks. `runner` takes exports to their destinations. The binary
//! (`main.rs`) is a thin layer over `commands`, the only layer above the library: it resolves
//! flags, pipeline files and the environment into settings (`commands::settings`, with the
//! defaults of `options`) and prints what the library returns.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod fake;
pub mod idset;
pub mod manifest;
pub mod options;
pub mod pipeline;
pub mod progress;
pub mod rng;
pub mod runner;
pub mod secret;
pub mod sink;
pub mod source;
pub mod store;
pub mod table;
pub mod transform;
