//! A Chatwoot-compatible server for the demo, the tests and the benchmarks.
//!
//! `data` generates an account's contacts from a seed; `server` serves them over HTTP on
//! loopback with the real API's paging, sorting, meta and error bodies. `truth` writes the
//! account's contacts in listing order, the ground truth an export is checked against.
//! `days` simulates days between exports (created, active, deleted and silently edited
//! contacts) for the incremental mode's tests and benchmark.

mod data;
mod days;
mod faults;
mod listing;
mod server;

pub use data::FakeAccount;
pub use days::{DayPlan, DayReport};
pub use faults::FaultConfig;
pub use server::{DriftRound, FakeServer, FakeServerConfig};

use std::io::{self, Write};

/// Writes every contact of `account`, in `created_at` order, one JSON object a line.
pub fn write_truth(account: &FakeAccount, out: &mut impl Write) -> io::Result<()> {
    for index in 0..account.len() {
        serde_json::to_writer(&mut *out, &account.contact(index))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
