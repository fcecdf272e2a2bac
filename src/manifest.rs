//! The run's record, `manifest.json`, written last: its presence with `"complete": true` is the
//! promise that every file it lists is whole.
//!
//! Receives what the pipeline counted; emits JSON. It names the source by origin and account,
//! never by anything that could hold a credential.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sink::{Compression, Format};
use crate::transform::schema::TableSchema;

/// The manifest. Field names are part of the output contract.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub complete: bool,
    pub format: Format,
    /// `meta.count` of the first page: how many contacts the account listed when the run began.
    pub expected_count: Option<u64>,
    /// `meta.count` of the last page fetched: how many it listed at the end.
    pub final_count: Option<u64>,
    /// Distinct contacts written.
    pub unique_contacts: u64,
    /// Rows dropped because their contact id had been seen on an earlier page (page drift).
    pub duplicates_dropped: u64,
    /// `unique_contacts - final_count`: 0 when the export matches the account's own count.
    pub count_difference: Option<i64>,
    pub pages_fetched: u64,
    /// Contacts per page, as learned from page 1.
    pub page_size: u64,
    /// HTTP requests sent (all attempts, the repair's included).
    pub requests: u64,
    /// Attempts repeated after a transient error (5xx, dropped connection, time-out, bad JSON).
    pub retries: u64,
    /// Requests refused by a rate limit (429, or 503 as nginx's `limit_req` answers).
    pub throttled: u64,
    /// How the requests were paced: what was learned of the server's rate limit.
    #[serde(default)]
    pub rate: RateReport,
    /// Custom attribute definitions that typed `custom_attributes__*` columns; null when they
    /// could not be read (the columns were typed from their values alone).
    pub custom_attribute_definitions: Option<u64>,
    /// What the drift repair found.
    pub drift: RepairReport,
    /// How many times the export was resumed after an interruption.
    pub resumes: u32,
    /// Whether `--keep-inbox-secrets` kept the credentials some servers embed in inboxes.
    pub keep_inbox_secrets: bool,
    /// Values left out of `contact_inboxes` because their field looks like a credential, by
    /// the column they would have had. Names and counts only, never values.
    pub inbox_fields_dropped: BTreeMap<String, u64>,
    /// Values kept whole as JSON text in their column instead of being taken apart or typed:
    /// nested deeper than the flattener parses (127 levels), or not valid as their column's
    /// declared type (`"soon"` in a date attribute, `"1,234"` in a number one). The export goes
    /// on; 0 on a clean account.
    #[serde(default)]
    pub values_kept_as_text: u64,
    /// Whether CSV text cells that start like a formula got a leading `'` (`--csv-safe`).
    pub csv_safe: bool,
    /// Whether the CSV files are for spreadsheets (`--csv-excel`): a UTF-8 byte-order mark,
    /// CRLF line ends, and `csv_safe`'s protection.
    #[serde(default)]
    pub csv_excel: bool,
    /// Parquet: the pages' codec (`zstd:1`, `snappy`, `none`); null for CSV and NDJSON.
    pub compression: Option<Compression>,
    pub tables: BTreeMap<String, TableEntry>,
    /// The `contact_labels` walk, when the table was written: its predicted and real cost and
    /// whether every label's walk proved complete. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_walk: Option<LabelWalkReport>,
    pub source: Source,
    pub tool: Tool,
    /// When the export started (RFC 3339, UTC; a resumed export keeps its first start).
    pub started_at: String,
    /// When the export finished, just before the manifest was written (RFC 3339, UTC).
    pub finished_at: String,
    /// The time the run that finished the export took, measured (a resumed export: since it
    /// resumed), so it can be less than `finished_at` minus `started_at`.
    pub duration_secs: f64,
    /// How the snapshot was made: `full` (every contact read) or `incremental` (the base
    /// snapshot merged with what can have changed; see docs/incremental.md).
    #[serde(default = "full_mode")]
    pub mode: String,
    /// This run's id: `contact_changes.run_id`, and `snapshot.base_run` of the next run.
    #[serde(default)]
    pub run_id: String,
    /// What an incremental run needs of this one and what this one did; null when the run
    /// kept no raw contacts (a resumed run).
    #[serde(default)]
    pub snapshot: Option<SnapshotReport>,
}

fn full_mode() -> String {
    "full".into()
}

/// The snapshot's facts and staleness (issue 19).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotReport {
    /// The raw contacts, relative to the manifest's folder.
    pub raw_file: String,
    /// Contacts in it.
    pub raw_contacts: u64,
    /// Newest `created_at` and `last_activity_at` in it (unix seconds): where the next
    /// incremental run starts looking.
    pub newest_created_at: Option<i64>,
    pub newest_activity_at: Option<i64>,
    /// The start of the last full run: every contact was read in full then. A silent edit
    /// (no activity) since then may be missing until the next full run.
    pub verified_through: String,
    /// The run this one was made from or compared with (its `run_id`); null without a base.
    pub base_run: Option<String>,
    /// Requests predicted before an incremental run began; null for a full run.
    pub requests_predicted: Option<u64>,
    /// What a full run would have sent (the base's own requests, when it was full; else its
    /// pages plus the ledger) less what this run sent; null for a full run.
    pub requests_saved: Option<u64>,
    /// Contacts carried over from the base without being read again.
    pub not_reread: u64,
    /// Contacts read again, or for the first time, by an incremental run.
    pub fetched: u64,
    /// The change feed's counts (`contact_changes`); null without a base.
    pub changes: Option<ChangeCounts>,
}

/// Counts of `contact_changes` rows by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeCounts {
    pub added: u64,
    pub removed: u64,
    pub updated: u64,
}

/// The rate limit as the run met it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RateReport {
    /// `told` (the --rate-limit given, never contradicted), `learned` (from the server's
    /// refusals) or `unlimited` (none told and none met).
    pub mode: String,
    /// The rate the server sustains for this run at the end, in requests a minute.
    pub limit_per_minute: Option<f64>,
    /// The pace requests went at: `share` of the limit, in requests a minute.
    pub pace_per_minute: Option<f64>,
    /// The part of the limit the run takes (`--rate-share`).
    pub share: f64,
    /// The time between the last two reopenings after refusals: a fixed-window limiter's
    /// window. Null when none was measured.
    pub cycle_secs: Option<f64>,
    /// Time every worker spent stopped by refusals.
    pub paused_secs: f64,
    /// Whether the server sent `Retry-After` with its refusals.
    pub retry_after_seen: bool,
}

/// The `contact_labels` walk: one walk of the list per label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelWalkReport {
    /// Labels walked (the account's labels with a title).
    pub labels: u64,
    /// Requests the walk would take, from each label's first page (`meta.count` over the page
    /// size), said before the rest was sent.
    pub predicted_requests: u64,
    /// Requests it sent (retries and refusals included).
    pub requests: u64,
    /// Rows of `contact_labels`.
    pub pairs: u64,
    /// Whether every label's walk saw as many contacts as its first page announced.
    pub complete: bool,
    /// The labels whose walk did not.
    pub incomplete_labels: Vec<String>,
}

/// What the repair did; part of the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Passes over parts that were not proven at once (0: nothing needed repair).
    pub rounds: u32,
    /// Requests the ledger, the check and the repair sent.
    pub requests: u64,
    /// Contacts found by the repair that the walk had missed.
    pub recovered: u64,
    /// Contacts the check could not rule out as missing: 0 only when completeness is proven.
    pub unresolved: u64,
    /// Contacts exported that the account no longer lists: deleted during the run.
    pub deleted_during_export: u64,
    /// Why the repair stopped early, if it did (its request bound, the filter endpoint
    /// refused, ...).
    pub stopped: Option<String>,
}

/// One output table.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    /// Paths relative to the manifest's folder.
    pub files: Vec<String>,
    pub rows: u64,
    pub columns: Vec<ColumnEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ColumnEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The name the column had before `column_names = "snake"` renamed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Scheme, host, port and path prefix of the base URL; no user info, no query.
    pub base_url: String,
    pub account_id: u64,
    pub sort: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Tool {
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl TableEntry {
    pub fn new(files: Vec<String>, rows: u64, schema: &TableSchema) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| ColumnEntry {
                name: c.name.clone(),
                ty: c.ty.manifest_name().into(),
                source_name: None,
            })
            .collect();
        Self {
            files,
            rows,
            columns,
        }
    }
}
