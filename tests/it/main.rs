//! The integration test binary: runs the real `chatwoot-export` binary against the fake
//! Chatwoot server on 127.0.0.1 and checks what it wrote against the server's ground truth.

mod errors;
mod expected;
mod export;
mod faults;
mod harness;
mod python;
mod readers;
mod secrets;
