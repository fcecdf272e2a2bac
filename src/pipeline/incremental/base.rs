//! The base snapshot: the previous complete export in the output folder, if one can be built on.
//!
//! Receives the output folder and this run's job (server, account, inbox policy); emits the
//! base's manifest facts and, when an incremental run needs it, an index of its raw contacts
//! (id and `created_at` day of each, contacts per day, newest times), read in one pass.
//! A base is usable only when its manifest says complete, names the same server and account
//! and inbox policy, and lists a raw file that is there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::raw::{Key, RawReader};
use crate::manifest::{Manifest, SnapshotReport};
use crate::pipeline::ExportError;
use crate::store::MANIFEST_FILE;

/// The previous export, as its manifest describes it.
#[derive(Debug)]
pub struct Base {
    pub run_id: String,
    pub raw: PathBuf,
    pub snapshot: SnapshotReport,
    /// The base's own requests, when it was a full run not resumed (what a full run costs now,
    /// about).
    pub full_requests: Option<u64>,
    pub page_size: u64,
    /// Whole UTC days between the base run's start and end (by this machine's clock): the
    /// margin the day filters go back by, so that activity during a run that crossed midnight
    /// is not missed.
    pub span_days: i64,
}

/// Why no base is used, for the note an incremental run prints before it goes full.
pub type NoBase = String;

/// Finds the base in `out`: `Err` says why there is none.
pub fn find(
    out: &Path,
    base_url: &str,
    account_id: u64,
    keep_inbox_secrets: bool,
) -> Result<Base, NoBase> {
    let text = std::fs::read_to_string(out.join(MANIFEST_FILE))
        .map_err(|_| format!("{} holds no complete export", out.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|err| format!("its manifest cannot be read ({err})"))?;
    if !manifest.complete {
        return Err("the last export there is not complete".into());
    }
    if manifest.source.base_url != base_url || manifest.source.account_id != account_id {
        return Err("the last export there is of another server or account".into());
    }
    if manifest.keep_inbox_secrets != keep_inbox_secrets {
        return Err("the last export there kept inbox fields differently".into());
    }
    let Some(snapshot) = manifest.snapshot else {
        return Err(
            "the last export there kept no raw contacts (run without --full or --incremental, or by an older version)"
                .into(),
        );
    };
    let raw = out.join(&snapshot.raw_file);
    if !raw.is_file() {
        return Err(format!("{} is missing", raw.display()));
    }
    let day = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp().div_euclid(86_400))
            .ok()
    };
    let span_days = match (day(&manifest.started_at), day(&manifest.finished_at)) {
        (Some(start), Some(end)) => (end - start).max(0),
        _ => 1,
    };
    Ok(Base {
        run_id: manifest.run_id,
        raw,
        // A resumed full run's `requests` are its last attempt's only: no measure of a full run.
        full_requests: (manifest.mode == "full" && manifest.resumes == 0)
            .then_some(manifest.requests),
        page_size: manifest.page_size.max(1),
        snapshot,
        span_days,
    })
}

/// When an incremental run must read everything instead: the last full read of `base` (its
/// `verified_through`, RFC 3339) if it is `every` or more before `now`, or unreadable.
pub fn full_refresh_due(
    base: &Base,
    every: Option<std::time::Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let every = chrono::Duration::from_std(every?).unwrap_or(chrono::Duration::MAX);
    let last_full = &base.snapshot.verified_through;
    let due = match chrono::DateTime::parse_from_rfc3339(last_full) {
        Ok(at) => now.signed_duration_since(at) >= every,
        Err(_) => true,
    };
    due.then(|| last_full.clone())
}

/// A base contact in listing order: its `created_at` (`i64::MIN` when it has none) and id.
pub type Listed = (i64, i64);

/// The `created_at` day of a `Listed` time (`i64::MIN` stays `i64::MIN`).
pub fn day_of(created_at: i64) -> i64 {
    if created_at == i64::MIN {
        i64::MIN
    } else {
        created_at.div_euclid(86_400)
    }
}

/// The base's raw contacts, indexed for the checks.
#[derive(Debug, Default)]
pub struct Index {
    /// (`created_at`, id) of every contact (`i64::MIN` without a `created_at`), sorted: the
    /// listing's order (`sort=created_at`; ties, which the server orders as it likes, by id).
    /// 16 bytes a contact: 16 MB at a million.
    pub keys: Vec<Listed>,
    /// Contacts per `created_at` day.
    pub days: BTreeMap<i64, u64>,
    pub contacts: u64,
}

impl Index {
    /// Reads the raw file once.
    pub fn read(path: &Path) -> Result<Self, ExportError> {
        let mut index = Self::default();
        let error = |detail: String| {
            ExportError::Resume(format!(
                "cannot read the base snapshot's raw contacts {} ({detail}): run with --full",
                path.display()
            ))
        };
        for line in RawReader::open(path).map_err(|e| error(e.to_string()))? {
            let line = line.map_err(|e| error(e.to_string()))?;
            let key = Key::of(&line).ok_or_else(|| error("a line is not a contact".into()))?;
            let created = key.created_at.unwrap_or(i64::MIN);
            index.keys.push((created, key.id));
            *index.days.entry(day_of(created)).or_default() += 1;
            index.contacts += 1;
        }
        index.keys.sort_unstable();
        Ok(index)
    }

    /// Whether the base holds the contact `key` names (by its id, found where its
    /// `created_at` puts it: that never changes).
    pub fn holds(&self, key: &Key) -> bool {
        let created = key.created_at.unwrap_or(i64::MIN);
        self.keys.binary_search(&(created, key.id)).is_ok()
    }

    /// Contacts with a `created_at` day from `low` to `high`, both included.
    pub fn count(&self, low: i64, high: i64) -> u64 {
        if low > high {
            return 0;
        }
        self.days.range(low..=high).map(|(_, n)| n).sum()
    }

    /// Ids with a `created_at` day from `low` to `high`, both included.
    pub fn ids(&self, low: i64, high: i64) -> impl Iterator<Item = i64> + '_ {
        self.listed(low, high).iter().map(|&(_, id)| id)
    }

    /// The keys with a `created_at` day from `low` to `high`, both included, in listing
    /// order.
    pub fn listed(&self, low: i64, high: i64) -> &[Listed] {
        let start = self
            .keys
            .partition_point(|&(created, _)| day_of(created) < low);
        let end = self
            .keys
            .partition_point(|&(created, _)| day_of(created) <= high);
        &self.keys[start..end.max(start)]
    }

    /// The day that splits the contacts from `low` to `high` in half (`low <= result < high`),
    /// if the range spans several days.
    pub fn pivot(&self, low: i64, high: i64) -> Option<i64> {
        if low >= high {
            return None;
        }
        let half = self.count(low, high) / 2;
        let mut seen = 0;
        for (&day, &n) in self.days.range(low..=high) {
            seen += n;
            if seen >= half.max(1) {
                return Some(day.clamp(low, high - 1));
            }
        }
        Some(low + (high - low) / 2)
    }
}
