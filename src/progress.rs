//! What an export reports about its progress, and to whom: the library side of the progress
//! display, which prints nothing.
//!
//! Receives nothing; emits the `ProgressSink` trait the pipeline reports to (the walk's plan,
//! each page done, the fetcher's status, the phase), `Progress`, the handle the pipeline's
//! stages share, and `ProgressFactory`, which the command layer puts in `ExportSettings` to
//! make one display per export (`commands::progress` draws the bar and the lines).

use std::sync::Arc;

/// Overrides the 30 s between progress lines when stderr is not a terminal, in milliseconds
/// (for tests and diagnosis).
pub const LINE_INTERVAL_ENV: &str = "CHATWOOT_EXPORT_PROGRESS_INTERVAL_MS";

use crate::source::FetchStatus;

/// Where an export's progress goes.
pub trait ProgressSink: Send + Sync {
    /// The totals, once page 1 has told them; `pages_done` and `contacts` are where the walk
    /// already stands (a resumed export).
    fn plan(&self, pages: u64, contacts_expected: Option<u64>, pages_done: u64, contacts: u64);
    /// An incremental run's plan: the requests predicted, `done` already spent; from here on
    /// `page_done` counts requests (each a page of a filtered listing or a count).
    fn plan_requests(&self, requests: u64, done: u64);
    /// One more page done, with the contacts kept so far.
    fn page_done(&self, contacts: u64);
    /// The fetcher's counters and the rate governor's state.
    fn set_status(&self, status: FetchStatus);
    /// What the export is doing now ("writing contacts", "counting the account's parts").
    fn phase(&self, phase: &str);
    /// The export is over: take the display away.
    fn clear(&self);
}

/// The progress handle the pipeline's stages share.
pub type Progress = Arc<dyn ProgressSink>;

/// Makes an export's progress display: `wanted` is false with `--no-progress`; the account
/// names the export in lines that several accounts print.
#[derive(Clone)]
pub struct ProgressFactory(Arc<dyn Fn(bool, u64) -> Progress + Send + Sync>);

impl ProgressFactory {
    pub fn new(make: impl Fn(bool, u64) -> Progress + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// A display for `account_id`'s export.
    pub fn make(&self, wanted: bool, account_id: u64) -> Progress {
        (self.0)(wanted, account_id)
    }

    /// No display at all (a library caller that shows nothing).
    pub fn silent() -> Self {
        Self::new(|_, _| Arc::new(Silent))
    }
}

impl std::fmt::Debug for ProgressFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFactory")
    }
}

/// Progress that goes nowhere.
struct Silent;

impl ProgressSink for Silent {
    fn plan(&self, _: u64, _: Option<u64>, _: u64, _: u64) {}
    fn plan_requests(&self, _: u64, _: u64) {}
    fn page_done(&self, _: u64) {}
    fn set_status(&self, _: FetchStatus) {}
    fn phase(&self, _: &str) {}
    fn clear(&self) {}
}
