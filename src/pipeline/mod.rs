//! The export, stage by stage: walk the pages -> repair drift -> fill the side tables ->
//! write the tables -> manifest last.
//!
//! Receives resolved `ExportSettings`; emits the output folder's files and an `ExportSummary`,
//! and tells what people should know while it runs (`Notice`) to the settings' `Notices`: it
//! prints nothing itself.
//! `walk` fetches pages (through the `source::Fetcher`: retries, the rate budget, adaptive
//! concurrency) into the `collector`, which flattens, deduplicates and spills rows to disk, so
//! memory stays flat whatever the account's size; `saver` checkpoints as it goes. `repair`
//! finds contacts missed while the account changed. `side_tables` fills the selected tables
//! the walk does not (labels, attribute definitions, contact labels: see `crate::table`).
//! `write` turns the spills into tables once the schemas are final. Ctrl-C or SIGTERM stops the run with a checkpoint that `--resume`
//! continues; so does a failure once pages have been fetched. An incremental run
//! (`incremental`) checkpoints at the end of each of its fetch stages, and is resumed the same
//! way.

mod checkpoint;
mod collector;
pub mod cost;
pub mod incremental;
mod ledger;
mod repair;
mod saver;
mod shared_schema;
mod side_tables;
mod walk;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::manifest::RepairReport;
pub use checkpoint::{CheckpointError, JobParams};
pub use incremental::SnapshotMode;
pub use shared_schema::SharedSchemas;

use checkpoint::{Checkpoint, WalkState};
use collector::Collector;
use ledger::Ledger;
use saver::Saver;

use crate::config::TableSelection;
use crate::manifest::{
    LabelWalkReport, Manifest, RateReport, SnapshotReport, Source, TableEntry, Tool,
};
use crate::progress::{Progress, ProgressFactory};
use crate::sink::{ColumnNames, Compression, Format, SinkError, SinkOptions};
use crate::source::{
    ClientOptions, ContactsClient, FetchError, FetchOptions, FetchStatus, Fetcher, GovernorStatus,
    RateGovernor, RateMode, public_base_url,
};
use crate::store::{BaseAt, MANIFEST_FILE, OutputDir, StoreError};
use crate::transform::flatten::{FlattenError, Flattener};
use crate::transform::inbox_secrets::InboxSecrets;

/// Everything an export needs, resolved from flags, environment and defaults.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    pub client: ClientOptions,
    pub fetch: FetchOptions,
    pub format: Format,
    pub out: PathBuf,
    pub overwrite: bool,
    pub progress: bool,
    /// Continue the interrupted export in `out` instead of starting over.
    pub resume: bool,
    /// Keep the credentials some servers embed in `contact_inboxes[].inbox`.
    pub keep_inbox_secrets: bool,
    /// CSV: neutralise text cells that a spreadsheet would run as a formula.
    pub csv_safe: bool,
    /// CSV: a byte-order mark and CRLF line ends, for spreadsheets (`csv_safe` is set too).
    pub csv_excel: bool,
    /// Parquet: the pages' codec.
    pub compression: Compression,
    /// Column names as the keys make them, or snake case.
    pub column_names: ColumnNames,
    /// Most rows in one file; more make numbered files (`contacts-00000.parquet`, ...).
    /// `None`: one file per table.
    pub rows_per_file: Option<u64>,
    /// Which tables and columns to write (a pipeline file's `[tables]`; all by default).
    pub tables: TableSelection,
    /// A request budget shared with other exports to the same host (several accounts in one
    /// run); `None`: this export has its own.
    pub governor: Option<Arc<RateGovernor>>,
    /// Ask for the first pages together with page 1, before the page count is known: a round
    /// trip saved, and a few requests wasted on a small account. Off when several accounts
    /// share one budget, where many small accounts would waste much of it.
    pub speculate: bool,
    /// Read every contact, or build on the previous snapshot in `out` (`--incremental`).
    pub snapshot: SnapshotMode,
    /// An incremental run reads every contact when the last full read is older than this
    /// (`None`: never), so that edits without activity are seen within this time.
    pub full_refresh_every: Option<Duration>,
    /// Where the accounts of one run agree on one schema per table before writing; `None`:
    /// this export's own columns.
    pub schemas: Option<Arc<SharedSchemas>>,
    /// Makes the export's progress display (the command layer's; the library prints nothing).
    pub progress_display: ProgressFactory,
    /// Where the export's notices go while it runs.
    pub notices: Notices,
    /// Where the previous export an incremental run builds on is (`out`, unless the runner
    /// downloaded a destination's snapshot elsewhere).
    pub base: BaseAt,
    /// This run's id (manifest, `contact_changes.run_id`); `None`: made from its start time.
    /// The runner passes the id its lake or Delta publish writes, so that they agree.
    pub run_id: Option<String>,
}

/// Something an export tells people while it runs, besides its summary: the command layer
/// words and shows it (the library prints nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The output folder held an interrupted export, discarded because `resume` was off.
    DiscardedInterrupted { out: PathBuf },
    /// The custom attribute definitions could not be read: the export goes on, typing the
    /// custom attribute columns from their values.
    NoAttributeDefinitions { cause: String },
    /// The `contact_labels` walk's cost, known from every label's first page, before the rest
    /// of it is spent.
    LabelWalkCost {
        labels: u64,
        tagged: u64,
        requests: u64,
        sent: u64,
    },
    /// `--incremental` found no previous export to build on: this run reads every contact.
    NoSnapshot { why: String },
    /// An incremental run's requests, predicted before it spends them, and a full run's.
    IncrementalCost { predicted: u64, full: u64 },
    /// `--incremental`, but the last full read (`last_full`, RFC 3339) is older than
    /// `full_refresh_every`: this run reads every contact (and its change feed is exact).
    FullRefreshDue { last_full: String, every: Duration },
}

/// Where an export's notices go: a function the command layer gives.
#[derive(Clone)]
pub struct Notices(Arc<dyn Fn(&Notice) + Send + Sync>);

impl Notices {
    /// Notices handed to `tell`.
    pub fn new(tell: impl Fn(&Notice) + Send + Sync + 'static) -> Self {
        Self(Arc::new(tell))
    }

    /// Passes one notice on.
    pub fn tell(&self, notice: Notice) {
        (self.0)(&notice);
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notices")
    }
}

/// What a finished export reports.
#[derive(Debug)]
pub struct ExportSummary {
    pub contacts: u64,
    pub inbox_links: u64,
    pub pages: u64,
    pub duplicates_dropped: u64,
    pub expected_count: Option<u64>,
    pub final_count: Option<u64>,
    pub elapsed: Duration,
    pub out: PathBuf,
    pub fetch: FetchStatus,
    pub drift: RepairReport,
    pub manifest: Manifest,
}

impl ExportSummary {
    /// The summary of the finished export that `manifest` describes, written to `out`.
    pub fn from_manifest(
        manifest: Manifest,
        out: PathBuf,
        elapsed: Duration,
        fetch: FetchStatus,
    ) -> Self {
        Self {
            contacts: manifest.unique_contacts,
            inbox_links: manifest.tables.get("contact_inboxes").map_or(0, |t| t.rows),
            pages: manifest.pages_fetched,
            duplicates_dropped: manifest.duplicates_dropped,
            expected_count: manifest.expected_count,
            final_count: manifest.final_count,
            elapsed,
            out,
            fetch,
            drift: manifest.drift.clone(),
            manifest,
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "page {page} holds a contact that cannot be exported ({source}): check --base-url points at a Chatwoot server"
    )]
    Contact { page: u64, source: FlattenError },
    #[error("cannot write table {table}: {source}")]
    Sink {
        table: &'static str,
        source: SinkError,
    },
    #[error("cannot use the work folder {}: {source}{}", path.display(), crate::store::disk_hint(source))]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("internal error: a page task failed ({0}); please report this")]
    Task(#[from] tokio::task::JoinError),
    #[error("internal error: {0}; please report this")]
    Internal(&'static str),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Resume(String),
    #[error("interrupted after {pages} pages; progress is saved in {}: run the same command with --resume to continue", out.display())]
    Interrupted { pages: u64, out: PathBuf },
    #[error("{source}; the {pages} pages done are kept in {}: {}run the same command with --resume to continue", out.display(), if source.disk_full() { "once there is room again, " } else { "" })]
    Resumable {
        source: Box<ExportError>,
        pages: u64,
        out: PathBuf,
    },
}

impl ExportError {
    /// The fetch error behind this one, if any.
    pub fn fetch(&self) -> Option<&FetchError> {
        match self {
            Self::Fetch(err) => Some(err),
            Self::Resumable { source, .. } => source.fetch(),
            _ => None,
        }
    }

    /// Whether the output disk filled up: then the way on is to free space, not to retry.
    fn disk_full(&self) -> bool {
        let io = match self {
            Self::Spill { source, .. }
            | Self::Store(StoreError::Write { source, .. } | StoreError::Folder { source, .. })
            | Self::Sink {
                source: SinkError::Io(source),
                ..
            } => source,
            Self::Resumable { source, .. } => return source.disk_full(),
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull
    }
}

/// Runs one export. On failure the folder holds no manifest that says complete and no file of
/// this run under a final name; the work done is kept for `--resume` when there is any.
pub async fn export(settings: &ExportSettings) -> Result<ExportSummary, ExportError> {
    let clock = Instant::now();
    // Listen from the start: a Ctrl-C while the base is read stops the first stage.
    drop(shutdown_requested());
    let params = JobParams {
        base_url: public_base_url(&settings.client.base_url),
        account_id: settings.client.account_id,
        sort: settings.client.sort.clone(),
        format: settings.format,
        keep_inbox_secrets: settings.keep_inbox_secrets,
    };
    // The previous complete export, read before anything of this run replaces it: the base of
    // an incremental run, and what the change feed compares with.
    // A resumed run looks again: the previous export stays untouched while work is kept.
    let base = if !settings.snapshot.keeps_snapshot() {
        None
    } else {
        match settings.base.folder(&settings.out).and_then(|folder| {
            incremental::base::find(
                folder,
                &params.base_url,
                params.account_id,
                settings.keep_inbox_secrets,
            )
        }) {
            Ok(base) => Some(base),
            Err(why) => {
                if settings.snapshot == SnapshotMode::Incremental && !settings.resume {
                    settings.notices.tell(Notice::NoSnapshot {
                        why: why.to_string(),
                    });
                }
                None
            }
        }
    };
    // A resumed run goes on as it began (an incremental one stays incremental).
    let refresh_due = base
        .as_ref()
        .filter(|_| !settings.resume && settings.snapshot == SnapshotMode::Incremental)
        .and_then(|base| {
            incremental::base::full_refresh_due(
                base,
                settings.full_refresh_every,
                chrono::Utc::now(),
            )
        });
    if let Some(last_full) = &refresh_due {
        settings.notices.tell(Notice::FullRefreshDue {
            last_full: last_full.clone(),
            every: settings.full_refresh_every.unwrap_or_default(),
        });
    }
    let (dir, checkpoint) = open_output(settings, &params)?;
    let resumed_incremental = checkpoint.as_ref().is_some_and(|c| c.incremental.is_some());
    if let Some(mark) = checkpoint.as_ref().and_then(|c| c.incremental.as_ref()) {
        check_incremental_resume(settings, mark, base.as_ref())?;
    }
    let client = match ContactsClient::new(settings.client.clone()) {
        Ok(client) => client,
        Err(err) => {
            dir.abandon();
            return Err(err.into());
        }
    };
    let fetcher = Arc::new(match &settings.governor {
        Some(governor) => Fetcher::with_governor(client, settings.fetch, Arc::clone(governor)),
        None => Fetcher::new(client, settings.fetch),
    });
    let progress = settings
        .progress_display
        .make(settings.progress, settings.client.account_id);
    let ticker = tokio::spawn({
        let (fetcher, progress) = (Arc::clone(&fetcher), progress.clone());
        async move {
            loop {
                progress.set_status(fetcher.status());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // An interrupted walk goes on as a walk, whatever the mode (the first run of an incremental
    // schedule is one), and an interrupted incremental run as one.
    let result = match &base {
        Some(base)
            if resumed_incremental
                || (checkpoint.is_none()
                    && settings.snapshot == SnapshotMode::Incremental
                    && refresh_due.is_none()) =>
        {
            incremental::run(
                settings, &params, &dir, &fetcher, &progress, base, checkpoint,
            )
            .await
        }
        _ => {
            run(
                settings,
                &params,
                &dir,
                checkpoint,
                &fetcher,
                &progress,
                clock,
                base.as_ref(),
            )
            .await
        }
    };
    ticker.abort();
    progress.clear();
    let (manifest, written, stats) = match result {
        Ok(done) => done,
        Err(Failure { error, resumable }) => {
            if resumable {
                dir.keep_for_resume();
            } else {
                dir.abandon();
            }
            return Err(error);
        }
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|err| StoreError::Write {
        path: dir.root().join(MANIFEST_FILE),
        source: err.into(),
    });
    if let Err(err) = bytes.and_then(|bytes| dir.write_manifest(&bytes)) {
        let out = dir.root().to_owned();
        dir.keep_for_resume();
        return Err(ExportError::Resumable {
            source: Box::new(err.into()),
            pages: manifest.pages_fetched,
            out,
        });
    }
    let out = dir.root().to_owned();
    dir.finish(&written)?;
    Ok(ExportSummary::from_manifest(
        manifest,
        out,
        clock.elapsed(),
        stats,
    ))
}

/// Whether the interrupted incremental run of `mark` can go on: with `--incremental`, and on
/// the base it began with (one-line refusals otherwise).
fn check_incremental_resume(
    settings: &ExportSettings,
    mark: &checkpoint::IncrementalMark,
    base: Option<&incremental::base::Base>,
) -> Result<(), ExportError> {
    let out = settings.out.display();
    if settings.snapshot != SnapshotMode::Incremental {
        return Err(ExportError::Resume(format!(
            "the interrupted export in {out} is an incremental run: resume it with --incremental, or run with --restart to start over"
        )));
    }
    match base {
        Some(base) if base.run_id == mark.base_run => Ok(()),
        Some(base) => Err(ExportError::Resume(format!(
            "the export the interrupted incremental run in {out} builds on changed since (run {}, now {}): run with --restart to start over",
            mark.base_run, base.run_id
        ))),
        None => Err(ExportError::Resume(format!(
            "the export the interrupted incremental run in {out} builds on (run {}) is gone: run with --restart to start over",
            mark.base_run
        ))),
    }
}

/// A failed run, and whether its work is worth keeping for `--resume`.
struct Failure {
    error: ExportError,
    resumable: bool,
}

/// Opens the output folder: fresh, or (with `--resume`) the interrupted export in it.
fn open_output(
    settings: &ExportSettings,
    params: &JobParams,
) -> Result<(OutputDir, Option<Checkpoint>), ExportError> {
    let out = &settings.out;
    if !settings.resume {
        let (dir, discarded) = OutputDir::prepare(out, settings.overwrite)?;
        if discarded {
            settings
                .notices
                .tell(Notice::DiscardedInterrupted { out: out.clone() });
        }
        return Ok((dir, None));
    }
    let no_export = || {
        ExportError::Resume(format!(
            "there is no interrupted export to resume in {}: run without --resume",
            out.display()
        ))
    };
    let dir = OutputDir::reopen(out)?.ok_or_else(no_export)?;
    let checkpoint = Checkpoint::load(dir.work())?.ok_or_else(no_export)?;
    if let Some(difference) = params.difference(&checkpoint.params) {
        return Err(ExportError::Resume(format!(
            "the interrupted export in {} was started with {difference}: resume it with the same options, or run without --resume to start over",
            out.display()
        )));
    }
    Ok((dir, Some(checkpoint)))
}

type Done = (Manifest, Vec<PathBuf>, FetchStatus);

/// The run's state before the first page: fresh, or from the checkpoint of an interrupted run.
struct Begun {
    collector: Collector,
    walk_state: WalkState,
    /// The drift check's ledger: taken by a fresh walk of a large account before it keeps any
    /// contact, and kept in the checkpoint, so a resumed run proves completeness against the
    /// same counts instead of walking the list again.
    ledger: Option<Ledger>,
    saver: Saver,
    started_at: String,
    resumes: u32,
}

/// The export after the checks: fetch phase (walk, repair), final checkpoint, write phase,
/// and the manifest from the run.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the run's inputs, each distinct"
)]
async fn run(
    settings: &ExportSettings,
    params: &JobParams,
    dir: &OutputDir,
    checkpoint: Option<Checkpoint>,
    fetcher: &Arc<Fetcher>,
    progress: &Progress,
    clock: Instant,
    base: Option<&incremental::base::Base>,
) -> Result<Done, Failure> {
    let fatal = |error: ExportError| Failure {
        error,
        resumable: false,
    };
    let Begun {
        mut collector,
        mut walk_state,
        mut ledger,
        mut saver,
        started_at,
        resumes,
    } = begin(settings, params, dir, checkpoint).map_err(fatal)?;
    let fetched = fetch_phase(
        settings,
        fetcher,
        &mut collector,
        &mut walk_state,
        &mut ledger,
        &mut saver,
        progress,
    )
    .await;
    let (drift, final_count) = match fetched {
        Ok(done) => done,
        Err(error) => {
            return Err(stop(
                error,
                &mut collector,
                &walk_state,
                &mut saver,
                &settings.out,
            ));
        }
    };
    walk_state.final_count = final_count.or(walk_state.final_count);
    let (duplicates, pages) = (collector.duplicates, collector.pages);
    // Past the walk every page is in the spills: a failure from here on (a full disk, a folder
    // that refuses a file) keeps them, and the message says how to go on.
    let resumable = |error: ExportError| Failure {
        error: ExportError::Resumable {
            source: Box::new(error),
            pages,
            out: settings.out.clone(),
        },
        resumable: true,
    };
    save_fetched(&mut saver, &mut collector, &walk_state, &settings.out)?;

    let side = until_shutdown(
        side_tables::fill(
            fetcher,
            dir,
            &settings.tables,
            collector.definitions.take(),
            progress,
            &settings.notices,
        ),
        &settings.out,
    )
    .await
    .map_err(|error| match error {
        // Every page is kept: the resumed run fills the side tables again.
        ExportError::Interrupted { out, .. } => Failure {
            error: ExportError::Interrupted { pages, out },
            resumable: true,
        },
        error => resumable(error),
    })?;

    let status = fetcher.status();
    let unique = collector.unique();
    let raw = collector.raw.take();
    let (flattener, spills, _rows) = collector.finish().map_err(resumable)?;
    // Several accounts in one run write one schema per table: the union of theirs.
    let union = match &settings.schemas {
        Some(shared) => {
            progress.phase("waiting for the run's other accounts");
            let mine = write::columns_of(&flattener);
            Some(shared.agree(params.account_id, mine).await)
        }
        None => None,
    };
    let mut filled = write::walk_filled(&flattener, spills, union.as_ref());
    filled.extend(side.filled);
    let options = SinkOptions {
        csv_safe: settings.csv_safe,
        csv_excel: settings.csv_excel,
        compression: settings.compression,
        column_names: settings.column_names,
    };
    let (mut tables, mut written) = write::write_tables(
        settings.format,
        options,
        settings.rows_per_file,
        &settings.tables,
        dir,
        &filled,
        progress,
    )
    .map_err(resumable)?;
    let run_id = run_id_of(settings, &started_at);
    let snapshot = match raw {
        Some(raw) => {
            let finished = incremental::finish_full(
                dir,
                settings,
                options,
                raw,
                base,
                &run_id,
                &started_at,
                chrono::Utc::now().timestamp(),
            )
            .map_err(resumable)?;
            if let Some((entry, path)) = finished.changes {
                tables.insert(incremental::changes::TABLE.to_owned(), entry);
                written.push(path);
            }
            Some(finished.snapshot)
        }
        None => None,
    };
    let record = RunRecord {
        walk_state,
        unique,
        duplicates,
        pages,
        status,
        drift,
        resumes,
        started_at,
        clock,
        label_walk: side.label_walk,
        run_id,
        snapshot,
    };
    let manifest = manifest_from_run(settings, params, record, &flattener, tables);
    Ok((manifest, written, status))
}

/// The checkpoint at the end of the fetch phase, with every page in the spills. If it cannot
/// be saved, the walk's last checkpoint is still whole (checkpoints are replaced atomically):
/// only what was fetched after it is fetched again.
fn save_fetched(
    saver: &mut Saver,
    collector: &mut Collector,
    walk_state: &WalkState,
    out: &std::path::Path,
) -> Result<(), Failure> {
    let Err(error) = saver.save(collector, walk_state, true) else {
        return Ok(());
    };
    Err(match saver.saved_pages() {
        Some(saved) => Failure {
            error: ExportError::Resumable {
                source: Box::new(error),
                pages: saved,
                out: out.to_owned(),
            },
            resumable: true,
        },
        None => Failure {
            error,
            resumable: false,
        },
    })
}

/// The run's starting state: from the checkpoint when resuming, else fresh.
fn begin(
    settings: &ExportSettings,
    params: &JobParams,
    dir: &OutputDir,
    checkpoint: Option<Checkpoint>,
) -> Result<Begun, ExportError> {
    let inbox_secrets = if settings.keep_inbox_secrets {
        InboxSecrets::keep_all()
    } else {
        InboxSecrets::default()
    };
    let (collector, walk_state, started_at, resumes) = match &checkpoint {
        Some(saved) => (
            Collector::resume(dir, saved, inbox_secrets)?,
            saved.walk.clone(),
            saved.started_at.clone(),
            saved.resumes + 1,
        ),
        None => (
            {
                // A fresh run of an incremental schedule keeps the raw contacts for the next.
                let mut collector = Collector::create(dir, inbox_secrets)?;
                if settings.snapshot.keeps_snapshot() {
                    collector.raw = Some(incremental::raw_writer(dir)?);
                }
                collector
            },
            WalkState {
                next_page: 1,
                ..WalkState::default()
            },
            now(),
            0,
        ),
    };
    let ledger = checkpoint.as_ref().and_then(|saved| saved.ledger.clone());
    let saver = Saver::new(
        dir.work().to_owned(),
        params.clone(),
        started_at.clone(),
        resumes,
        checkpoint
            .as_ref()
            .map(|saved| saved.walk.next_page.saturating_sub(1)),
        ledger.clone(),
    );
    Ok(Begun {
        collector,
        walk_state,
        ledger,
        saver,
        started_at,
        resumes,
    })
}

/// The time now, as the manifest writes it (RFC 3339, UTC, seconds).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The fetch phase: the walk over the pages, then the drift repair, each stopped by Ctrl-C or
/// SIGTERM. Returns the repair's report and the account's count at the end.
async fn fetch_phase(
    settings: &ExportSettings,
    fetcher: &Arc<Fetcher>,
    collector: &mut Collector,
    walk_state: &mut WalkState,
    ledger: &mut Option<Ledger>,
    saver: &mut Saver,
    progress: &Progress,
) -> Result<(RepairReport, Option<u64>), ExportError> {
    let walk_options = walk::WalkOptions {
        // Pages fetched ahead of the one being consumed: a few times what is in flight, so
        // that one slow page does not hold back the requests behind it (about 15 KB a page).
        lookahead: settings.fetch.concurrency.saturating_mul(4),
        notices: &settings.notices,
        speculate: settings.speculate,
        sort: &settings.client.sort,
    };
    until_shutdown(
        walk::walk(
            fetcher,
            collector,
            walk_state,
            progress,
            &walk_options,
            ledger,
            saver,
        ),
        &settings.out,
    )
    .await?;
    until_shutdown(
        repair::repair(
            fetcher,
            collector,
            walk_state,
            ledger.as_ref(),
            repair_max_requests(),
            progress,
        ),
        &settings.out,
    )
    .await
}

/// The run's id: the runner's, else one made from its start time.
pub(crate) fn run_id_of(settings: &ExportSettings, started_at: &str) -> String {
    settings
        .run_id
        .clone()
        .unwrap_or_else(|| incremental::run_id(started_at))
}

/// What the run did, for its manifest.
struct RunRecord {
    walk_state: WalkState,
    unique: u64,
    duplicates: u64,
    pages: u64,
    status: FetchStatus,
    drift: RepairReport,
    resumes: u32,
    started_at: String,
    /// Started with the run, for its measured duration.
    clock: Instant,
    /// The `contact_labels` walk, when that table was selected.
    label_walk: Option<LabelWalkReport>,
    run_id: String,
    /// What the next incremental run builds on (`None` for a run that keeps no raw contacts).
    snapshot: Option<SnapshotReport>,
}

/// The manifest of a finished run.
fn manifest_from_run(
    settings: &ExportSettings,
    params: &JobParams,
    record: RunRecord,
    flattener: &Flattener,
    tables: BTreeMap<String, TableEntry>,
) -> Manifest {
    let RunRecord {
        walk_state,
        unique,
        duplicates,
        pages,
        status,
        drift,
        resumes,
        started_at,
        clock,
        label_walk,
        run_id,
        snapshot,
    } = record;
    Manifest {
        // Only a proven export is complete; otherwise the files hold every contact found, and
        // the exit code is 5. So is one whose label walk did not end with the counts announced.
        complete: drift.unresolved == 0 && label_walk.as_ref().is_none_or(|walk| walk.complete),
        format: settings.format,
        expected_count: walk_state.expected_count,
        final_count: walk_state.final_count,
        unique_contacts: unique,
        duplicates_dropped: duplicates,
        count_difference: walk_state
            .final_count
            .map(|count| unique as i64 - count as i64),
        pages_fetched: pages,
        page_size: walk_state.page_size,
        requests: status.governor.sent,
        retries: status.retries,
        throttled: status.governor.throttled,
        rate: rate_report(&status.governor, settings.fetch.rate_share),
        custom_attribute_definitions: walk_state.attribute_definitions,
        drift,
        resumes,
        keep_inbox_secrets: settings.keep_inbox_secrets,
        inbox_fields_dropped: flattener.inbox_secrets.dropped().clone(),
        values_kept_as_text: flattener.values_kept_as_text(),
        csv_safe: settings.csv_safe,
        csv_excel: settings.csv_excel,
        compression: matches!(settings.format, Format::Parquet | Format::Delta)
            .then_some(settings.compression),
        tables,
        label_walk,
        source: Source {
            base_url: params.base_url.clone(),
            account_id: params.account_id,
            sort: params.sort.clone(),
        },
        tool: Tool::current(),
        started_at,
        finished_at: now(),
        // Rounded to the millisecond: a time, not a benchmark.
        duration_secs: (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        mode: "full".into(),
        run_id,
        snapshot,
    }
}

/// What the manifest says of the rate limit, from the governor's status at the end.
fn rate_report(governor: &GovernorStatus, share: f64) -> RateReport {
    let per_minute = |rate: f64| (rate * 600.0).round() / 10.0;
    RateReport {
        mode: match governor.mode {
            RateMode::Unlimited => "unlimited",
            RateMode::Told => "told",
            RateMode::Learned => "learned",
        }
        .to_owned(),
        limit_per_minute: governor.limit.map(per_minute),
        pace_per_minute: governor.pace.map(per_minute),
        share,
        cycle_secs: governor
            .cycle
            .map(|cycle| (cycle.as_secs_f64() * 100.0).round() / 100.0),
        paused_secs: (governor.paused.as_secs_f64() * 100.0).round() / 100.0,
        retry_after_seen: governor.retry_after_seen,
    }
}

/// The repair's request bound from `CHATWOOT_EXPORT_REPAIR_MAX_REQUESTS`, if set (tests and
/// diagnosis; by default the bound follows the drift the check observes).
fn repair_max_requests() -> Option<u64> {
    std::env::var(repair::MAX_REQUESTS_ENV)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

/// Saves a checkpoint after a failure or an interruption, so `--resume` can go on.
fn stop(
    error: ExportError,
    collector: &mut Collector,
    walk: &WalkState,
    saver: &mut Saver,
    out: &std::path::Path,
) -> Failure {
    let pages = walk.next_page.saturating_sub(1);
    if pages == 0 {
        // Nothing fetched (a wrong token on page 1, say): nothing to resume.
        let resumable = matches!(error, ExportError::Interrupted { .. });
        return Failure { error, resumable };
    }
    let pages = match saver.save(collector, walk, true) {
        Ok(()) => pages,
        // The disk is full, say: the last checkpoint that was saved (replaced atomically, at
        // most a second old) still stands, and a resume cuts the spills back to it.
        Err(_) => match saver.saved_pages() {
            Some(saved) if saved > 0 => saved,
            _ => {
                return Failure {
                    error,
                    resumable: false,
                };
            }
        },
    };
    kept(error, pages, out)
}

/// A failure whose work is kept for `--resume` after `pages` (requests, for an incremental
/// run): an interruption says so, any other error says how to go on.
fn kept(error: ExportError, pages: u64, out: &std::path::Path) -> Failure {
    let error = match error {
        ExportError::Interrupted { out, .. } => ExportError::Interrupted { pages, out },
        other => ExportError::Resumable {
            source: Box::new(other),
            pages,
            out: out.to_owned(),
        },
    };
    Failure {
        error,
        resumable: true,
    }
}

/// Runs an export stage until it ends or a shutdown signal (Ctrl-C, SIGTERM) comes; a signal
/// that came before the stage began (between two stages, while a checkpoint was written)
/// stops it at once.
async fn until_shutdown<T>(
    stage: impl Future<Output = Result<T, ExportError>>,
    out: &std::path::Path,
) -> Result<T, ExportError> {
    let interrupted = || ExportError::Interrupted {
        pages: 0,
        out: out.to_owned(),
    };
    let mut shutdown = shutdown_requested();
    if *shutdown.borrow_and_update() {
        return Err(interrupted());
    }
    let signalled = async {
        // The listener is gone only with the runtime it ran on (tests): no signal will come.
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = stage => result,
        () = signalled => Err(interrupted()),
    }
}

/// Whether Ctrl-C or SIGTERM came: one listener for the process, set up by the first export or
/// stage that asks, so that a signal is remembered while no stage is waiting for it (a listener
/// per stage would miss one that came between two stages: tokio does not replay signals). The
/// handlers are installed here, synchronously: from this call on, a signal is never lost.
fn shutdown_requested() -> tokio::sync::watch::Receiver<bool> {
    static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
        std::sync::OnceLock::new();
    SHUTDOWN
        .get_or_init(|| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let signals = ShutdownSignals::install();
            tokio::spawn(async move {
                signals.recv().await;
                let _ = stop.send(true);
                // Kept, so that waiting stages see the flag and not a closed channel.
                std::future::pending::<()>().await;
            });
            stopped
        })
        .clone()
}

/// Ctrl-C and SIGTERM (what cron, systemd and CI send to stop a job), listened to from the
/// moment they are installed.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the first of them.
    async fn recv(self) {
        #[cfg(unix)]
        {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(self.interrupt) => {}
                () = wait(self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_failure_says_how_to_go_on_and_a_full_disk_says_when() {
        let kept = |source: std::io::Error| ExportError::Resumable {
            source: Box::new(ExportError::Spill {
                path: "out/.chatwoot-export.partial/contacts.rows".into(),
                source,
            }),
            pages: 74,
            out: "out".into(),
        };
        let full = kept(std::io::Error::from(std::io::ErrorKind::StorageFull)).to_string();
        assert!(
            full.ends_with(
                "the 74 pages done are kept in out: once there is room again, run the same command with --resume to continue"
            ),
            "{full}"
        );
        let other = kept(std::io::Error::from(std::io::ErrorKind::Other)).to_string();
        assert!(
            other.ends_with(
                "the 74 pages done are kept in out: run the same command with --resume to continue"
            ),
            "{other}"
        );
    }
}
