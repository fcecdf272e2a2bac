//! The integration test binary: runs the real `chatwoot-export` binary against the fake
//! Chatwoot server on 127.0.0.1 and checks what it wrote against the server's ground truth.

mod cli;
mod csv_safe;
mod delta;
mod drift;
mod engines;
mod errors;
mod exact;
mod expected;
mod export;
mod faults;
mod files;
mod harness;
mod import_cycles;
mod inbox_secrets;
mod incremental;
mod incremental_lake;
mod lake;
mod limiters;
mod loopback;
mod pipelines;
mod plan;
mod progress;
mod python;
mod readers;
mod redirects;
mod robustness;
mod secrets;
mod sink;
mod staged;
mod tables;
