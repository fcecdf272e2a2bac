//! The drift check's ledger: the server's count of every part of the account, taken before the
//! walk (`repair::take_ledger` takes it, `repair::repair` proves completeness with it).
//!
//! Data only, so that the checkpoint, which saves the ledger for a resumed run, does not import
//! the repair, which reads the walk's state from the checkpoint.

use serde::{Deserialize, Serialize};

/// A `created_at` range in days since the epoch: both bounds exclusive, either open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Range {
    pub(super) after: Option<i64>,
    pub(super) before: Option<i64>,
}

impl Range {
    /// The first and last day inside the range (its bounds are exclusive; open ends are the
    /// extreme days).
    pub(super) fn days(self) -> (i64, i64) {
        let low = self.after.map_or(i64::MIN, |after| after.saturating_add(1));
        let high = self
            .before
            .map_or(i64::MAX, |before| before.saturating_sub(1));
        (low, high)
    }
}

/// A past part and an upper bound of how many contacts the server listed in it at the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Part {
    pub(super) range: Range,
    pub(super) bound: u64,
}

/// The server's count of every part of the account, taken before the walk fetched anything it
/// keeps. Saved in the checkpoint (serde), so a resumed run proves completeness with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The parts before the newest contact's day, with their counts.
    pub(super) parts: Vec<Part>,
    /// The newest day and after, where contacts are created, and its count.
    pub(super) open: Range,
    pub(super) open_count: u64,
    /// Requests it took.
    pub(super) requests: u64,
}
