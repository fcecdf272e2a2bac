//! The checkpoint: what an interrupted export needs to go on where it stopped.
//!
//! Receives the walk's state and the spills' positions; emits `checkpoint.json` in the work
//! folder, replaced atomically (temp + rename) so a `kill -9` leaves either the old or the new
//! one. The spills are flushed before a checkpoint names their length, and cut back to it on
//! resume, so rows written after the last checkpoint are simply fetched again. It carries the
//! drift check's ledger, so a resumed run proves completeness against the counts taken before
//! the walk began. The raw contacts a full run keeps for the next incremental one end a zstd
//! frame at each checkpoint, which records their length and is cut back to it the same way.
//! An incremental run's checkpoint (`IncrementalMark`) says which of its stages are done; the
//! contacts it read by then are in a file of the work folder that the mark names.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::incremental::raw::RawMark;
use super::ledger::Ledger;
use crate::sink::Format;
use crate::store::owner_only;
use crate::transform::schema::ColumnDef;

/// The checkpoint file's name in the work folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const VERSION: u32 = 1;

/// What must be the same for `--resume` to continue a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParams {
    pub base_url: String,
    pub account_id: u64,
    pub sort: String,
    pub format: Format,
    /// `--keep-inbox-secrets`: decides which inbox columns exist.
    #[serde(default)]
    pub keep_inbox_secrets: bool,
}

impl JobParams {
    /// The first difference from `other`, in words, if any.
    pub fn difference(&self, other: &JobParams) -> Option<String> {
        if self.base_url != other.base_url {
            return Some(format!(
                "base URL {} (now {})",
                other.base_url, self.base_url
            ));
        }
        if self.account_id != other.account_id {
            return Some(format!(
                "account {} (now {})",
                other.account_id, self.account_id
            ));
        }
        if self.sort != other.sort {
            return Some(format!("sort {} (now {})", other.sort, self.sort));
        }
        if self.keep_inbox_secrets != other.keep_inbox_secrets {
            let flag = |keep: bool| {
                if keep {
                    "--keep-inbox-secrets"
                } else {
                    "no --keep-inbox-secrets"
                }
            };
            return Some(format!(
                "{} (now {})",
                flag(other.keep_inbox_secrets),
                flag(self.keep_inbox_secrets)
            ));
        }
        if self.format != other.format {
            let name = |f: Format| f.extension();
            return Some(format!(
                "format {} (now {})",
                name(other.format),
                name(self.format)
            ));
        }
        None
    }
}

/// Where the walk over the pages stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WalkState {
    /// Contacts per page, learned from page 1 (0 before it).
    pub page_size: u64,
    /// `ceil(meta.count / page_size)` as of page 1.
    pub planned_pages: u64,
    /// `meta.count` of page 1.
    pub expected_count: Option<u64>,
    /// The latest `meta.count` seen.
    pub final_count: Option<u64>,
    /// The next page to fetch; every page before it is in the spills.
    pub next_page: u64,
    /// True once an empty page past the plan ended the walk.
    pub done: bool,
    /// True if any page's `meta.count` differed from page 1's: the account changed.
    #[serde(default)]
    pub count_changed: bool,
    /// How many custom attribute definitions typed columns (None: none could be read, so the
    /// columns are typed from their values alone).
    #[serde(default)]
    pub attribute_definitions: Option<u64>,
}

impl WalkState {
    /// Records a page's `meta.count`.
    pub fn saw_count(&mut self, count: Option<u64>) {
        if let Some(count) = count {
            self.count_changed |= Some(count) != self.expected_count;
            self.final_count = Some(count);
        }
    }
}

/// A spill's length at the checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpillMark {
    pub bytes: u64,
    pub rows: u64,
}

/// Everything saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub params: JobParams,
    pub started_at: String,
    pub walk: WalkState,
    pub pages_fetched: u64,
    pub duplicates: u64,
    /// How many times this export has been resumed before.
    pub resumes: u32,
    /// One per table the contacts walk fills (`crate::table::walk_tables`), in order; JSON
    /// arrays, as the two-element arrays of earlier versions were.
    pub spills: Vec<SpillMark>,
    pub shapes: Vec<Vec<ColumnDef>>,
    /// Inbox fields left out so far, by column name (see `inbox_secrets`).
    #[serde(default)]
    pub inbox_fields_dropped: std::collections::BTreeMap<String, u64>,
    /// Values kept as text so far (see `Manifest::values_kept_as_text`).
    #[serde(default)]
    pub values_kept_as_text: u64,
    /// The drift check's ledger, once the walk has taken it (checkpoints of earlier versions
    /// have none: their resumed run checks by walking the list again).
    #[serde(default)]
    pub ledger: Option<Ledger>,
    /// The raw contacts kept for the next incremental run, where the walk stands (`None`: the
    /// run keeps none, or the checkpoint is of an earlier version, whose resumed run keeps
    /// none).
    #[serde(default)]
    pub raw: Option<RawMark>,
    /// An incremental run's stages done (`None`: a full run's walk).
    #[serde(default)]
    pub incremental: Option<IncrementalMark>,
}

/// The stages of an incremental run's fetch, in order: a checkpoint is saved at the end of
/// each, and a resumed run starts at the first one not done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Nothing read yet.
    #[default]
    Started,
    /// The probes, the created and the active contacts read, the deletions among the
    /// created found.
    Listed,
    /// The deletions in the past found, and the account's count read: nothing more to fetch.
    Fetched,
}

/// Where an interrupted incremental run stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IncrementalMark {
    /// This run's id, kept by every attempt (the change feed's `run_id`).
    pub run_id: String,
    /// The base it builds on: a resumed run refuses another one.
    pub base_run: String,
    pub stage: Stage,
    /// The contacts read by the end of `stage`, in the work folder (zstd NDJSON); `None`
    /// before the first stage ends.
    pub read_file: Option<String>,
    /// The server's count of each part of the deletion check (the probes' answers).
    pub part_counts: Vec<u64>,
    /// Contacts of the base found deleted so far.
    pub deleted: Vec<i64>,
    pub predicted: u64,
    /// Requests of the fetch's stages done (the `pages_fetched` of the manifest).
    pub requests: u64,
    pub unsettled: u64,
    pub final_count: Option<u64>,
    /// Requests sent by the attempts so far, the failed ones' included: the manifest's
    /// `requests` adds them to the last attempt's.
    pub sent: u64,
}

/// Why a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("the checkpoint {} is damaged ({source}): run without --resume to start over", path.display())]
    Damaged {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

impl Checkpoint {
    pub fn new_version() -> u32 {
        VERSION
    }

    /// Writes the checkpoint into `work`, replacing the previous one atomically. The file is
    /// owner-only (it names the account and the server): a temporary left by a killed run is
    /// removed rather than reused, since reopening would keep its mode.
    pub fn save(&self, work: &Path) -> io::Result<()> {
        let temp = work.join(format!("{CHECKPOINT_FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        match fs::remove_file(&temp) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        owner_only().open(&temp)?.write_all(&bytes)?;
        fs::rename(temp, work.join(CHECKPOINT_FILE))
    }

    /// The checkpoint in `work`, if there is one.
    pub fn load(work: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = work.join(CHECKPOINT_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let checkpoint: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Damaged {
                path: path.clone(),
                source,
            })?;
        Ok(Some(checkpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::schema::ColumnType;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let checkpoint = Checkpoint {
            version: VERSION,
            params: JobParams {
                base_url: "https://x.example".into(),
                account_id: 3,
                sort: "created_at".into(),
                format: Format::Csv,
                keep_inbox_secrets: false,
            },
            started_at: "2026-01-01T00:00:00Z".into(),
            walk: WalkState {
                page_size: 15,
                planned_pages: 10,
                next_page: 4,
                ..WalkState::default()
            },
            pages_fetched: 3,
            duplicates: 1,
            resumes: 0,
            spills: vec![
                SpillMark {
                    bytes: 100,
                    rows: 45,
                },
                SpillMark::default(),
            ],
            shapes: vec![
                vec![ColumnDef {
                    name: "id".into(),
                    ty: ColumnType::Int,
                }],
                vec![],
            ],
            inbox_fields_dropped: [("inbox__imap_password".to_owned(), 2)].into(),
            values_kept_as_text: 3,
            ledger: None,
            raw: Some(RawMark {
                bytes: 9,
                contacts: 3,
            }),
            incremental: Some(IncrementalMark {
                run_id: "r".into(),
                base_run: "b".into(),
                stage: Stage::Listed,
                read_file: Some("read.ndjson.zst".into()),
                deleted: vec![4, 7],
                ..IncrementalMark::default()
            }),
        };
        assert_eq!(Checkpoint::load(dir.path()).expect("no error"), None);
        checkpoint.save(dir.path()).expect("save");
        assert_eq!(
            Checkpoint::load(dir.path()).expect("load"),
            Some(checkpoint)
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_checkpoint_is_owner_only_even_over_a_leftover_temp() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        // A temporary left by a killed run of an older version, readable by all.
        let temp = dir.path().join(format!("{CHECKPOINT_FILE}.tmp"));
        fs::write(&temp, b"{").expect("write");
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).expect("chmod");
        let checkpoint = Checkpoint {
            version: VERSION,
            params: JobParams {
                base_url: "u".into(),
                account_id: 1,
                sort: "created_at".into(),
                format: Format::Csv,
                keep_inbox_secrets: false,
            },
            started_at: String::new(),
            walk: WalkState::default(),
            pages_fetched: 0,
            duplicates: 0,
            resumes: 0,
            spills: vec![SpillMark::default(); 2],
            shapes: vec![vec![], vec![]],
            inbox_fields_dropped: Default::default(),
            values_kept_as_text: 0,
            ledger: None,
            raw: None,
            incremental: None,
        };
        checkpoint.save(dir.path()).expect("save");
        let mode = fs::metadata(dir.path().join(CHECKPOINT_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp.exists());
        assert_eq!(
            Checkpoint::load(dir.path()).expect("load"),
            Some(checkpoint)
        );
    }

    #[test]
    fn names_the_changed_parameter() {
        let a = JobParams {
            base_url: "u".into(),
            account_id: 1,
            sort: "created_at".into(),
            format: Format::Parquet,
            keep_inbox_secrets: false,
        };
        let b = JobParams {
            format: Format::Csv,
            ..a.clone()
        };
        assert_eq!(a.difference(&a), None);
        assert_eq!(
            b.difference(&a).as_deref(),
            Some("format parquet (now csv)")
        );
    }
}
