//! chatwoot-export: every contact of a Chatwoot account as analysis-ready Parquet, CSV or NDJSON.
//!
//! Data flows one way: `source` (HTTP pages) -> `transform` (flatten, type, spill, batch)
//! -> `sink` (one writer per format) -> `store` (temporary names, atomic finish), wired by
//! `pipeline`, recorded by `manifest`. `fake` is a Chatwoot-compatible server for the demo,
//! the tests and the benchmarks. The binary (`main.rs`) is a thin layer over `app`.

pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod fake;
pub mod idset;
pub mod manifest;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runner;
pub mod secret;
pub mod sink;
pub mod source;
pub mod store;
pub mod table;
pub mod transform;
