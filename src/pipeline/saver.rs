//! Writes checkpoints as the walk goes: at most one a second (each costs a flush of the
//! spills and a small rename), and always when asked (end of walk, interruption, failure).
//! Remembers how many pages the checkpoint on disk holds, so that a failure that cannot save
//! a new one (a full disk) still knows what `--resume` will find, and the drift check's ledger,
//! so a resumed run proves completeness with it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ExportError;
use super::checkpoint::{Checkpoint, JobParams, WalkState};
use super::collector::Collector;
use super::ledger::Ledger;

const EVERY: Duration = Duration::from_secs(1);

pub struct Saver {
    work: PathBuf,
    params: JobParams,
    started_at: String,
    resumes: u32,
    last: Option<Instant>,
    /// The pages the checkpoint on disk holds (None: no checkpoint saved yet).
    saved_pages: Option<u64>,
    /// The drift check's ledger, once taken: saved with every checkpoint.
    ledger: Option<Ledger>,
}

impl Saver {
    /// `saved_pages`: the pages of the checkpoint a resumed run started from.
    pub fn new(
        work: PathBuf,
        params: JobParams,
        started_at: String,
        resumes: u32,
        saved_pages: Option<u64>,
        ledger: Option<Ledger>,
    ) -> Self {
        Self {
            work,
            params,
            started_at,
            resumes,
            last: None,
            saved_pages,
            ledger,
        }
    }

    /// The ledger the walk took: every checkpoint from now on carries it.
    pub fn keep_ledger(&mut self, ledger: Option<Ledger>) {
        self.ledger = ledger;
    }

    /// The pages the last checkpoint saved holds, if one was saved: what a failure that cannot
    /// save a new one (a full disk) still keeps for `--resume`.
    pub fn saved_pages(&self) -> Option<u64> {
        self.saved_pages
    }

    /// Saves a checkpoint if a second has passed since the last one, or if `force`.
    pub fn save(
        &mut self,
        collector: &mut Collector,
        walk: &WalkState,
        force: bool,
    ) -> Result<(), ExportError> {
        if !force && self.last.is_some_and(|last| last.elapsed() < EVERY) {
            return Ok(());
        }
        let (spills, shapes, raw) = collector.mark()?;
        let checkpoint = Checkpoint {
            version: Checkpoint::new_version(),
            params: self.params.clone(),
            started_at: self.started_at.clone(),
            walk: walk.clone(),
            pages_fetched: collector.pages,
            duplicates: collector.duplicates,
            resumes: self.resumes,
            spills,
            shapes,
            inbox_fields_dropped: collector.flattener.inbox_secrets.dropped().clone(),
            values_kept_as_text: collector.flattener.values_kept_as_text(),
            ledger: self.ledger.clone(),
            raw,
            incremental: None,
        };
        checkpoint
            .save(&self.work)
            .map_err(|source| ExportError::Spill {
                path: self.work.join(super::checkpoint::CHECKPOINT_FILE),
                source,
            })?;
        self.last = Some(Instant::now());
        self.saved_pages = Some(walk.next_page.saturating_sub(1));
        Ok(())
    }
}
