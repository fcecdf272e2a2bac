//! The export, stage by stage: walk the pages -> repair drift -> write the tables -> manifest
//! last.
//!
//! Receives resolved `ExportSettings`; emits the output folder's files and an `ExportSummary`.
//! `walk` fetches pages (through the `source::Fetcher`: retries, the rate budget, adaptive
//! concurrency) into the `collector`, which flattens, deduplicates and spills rows to disk, so
//! memory stays flat whatever the account's size; `saver` checkpoints as it goes. `repair`
//! finds contacts missed while the account changed. `write` turns the spills into tables once
//! the schemas are final. Ctrl-C or SIGTERM stops the run with a checkpoint that `--resume`
//! continues; so does a failure once pages have been fetched.

mod checkpoint;
mod collector;
pub mod incremental;
mod ledger;
mod repair;
mod saver;
mod walk;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::manifest::RepairReport;
pub use checkpoint::{CheckpointError, JobParams};
pub use incremental::SnapshotMode;

use checkpoint::{Checkpoint, WalkState};
use collector::Collector;
use saver::Saver;

use crate::config::TableSelection;
use crate::manifest::{Manifest, RateReport, Source, Tool};
use crate::progress::Progress;
use crate::sink::{Compression, Format, SinkError, SinkOptions};
use crate::source::{
    ClientOptions, ContactsClient, FetchError, FetchOptions, FetchStatus, Fetcher, GovernorStatus,
    RateGovernor, RateMode, public_base_url,
};
use crate::store::{MANIFEST_FILE, OutputDir, StoreError};
use crate::transform::flatten::FlattenError;
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
    /// Parquet: the pages' codec.
    pub compression: Compression,
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
    let params = JobParams {
        base_url: public_base_url(&settings.client.base_url),
        account_id: settings.client.account_id,
        sort: settings.client.sort.clone(),
        format: settings.format,
        keep_inbox_secrets: settings.keep_inbox_secrets,
    };
    // The previous complete export, read before anything of this run replaces it: the base of
    // an incremental run, and what the change feed compares with.
    let base = if settings.resume {
        None
    } else {
        match incremental::base::find(
            &settings.out,
            &params.base_url,
            params.account_id,
            settings.keep_inbox_secrets,
        ) {
            Ok(base) => Some(base),
            Err(why) => {
                if settings.snapshot == SnapshotMode::Incremental {
                    eprintln!(
                        "chatwoot-export: note: no snapshot to build on ({why}): this run reads every contact"
                    );
                }
                None
            }
        }
    };
    let (dir, checkpoint) = open_output(settings, &params)?;
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
    let progress = Progress::new(settings.progress);
    let ticker = tokio::spawn({
        let (fetcher, progress) = (Arc::clone(&fetcher), progress.clone());
        async move {
            loop {
                progress.set_status(fetcher.status());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let result = match &base {
        Some(base) if settings.snapshot == SnapshotMode::Incremental => {
            let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let run_id = incremental::run_id(&started_at);
            incremental::run(
                settings, &dir, &fetcher, &progress, base, &run_id, started_at,
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
            eprintln!(
                "chatwoot-export: note: discarded an interrupted export in {} (pass --resume to continue one)",
                out.display()
            );
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

async fn run(
    settings: &ExportSettings,
    params: &JobParams,
    dir: &OutputDir,
    checkpoint: Option<Checkpoint>,
    fetcher: &Arc<Fetcher>,
    progress: &Progress,
    base: Option<&incremental::base::Base>,
) -> Result<Done, Failure> {
    let fatal = |error: ExportError| Failure {
        error,
        resumable: false,
    };
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let inbox_secrets = || {
        if settings.keep_inbox_secrets {
            InboxSecrets::keep_all()
        } else {
            InboxSecrets::default()
        }
    };
    let (mut collector, mut walk_state, started_at, resumes) = match &checkpoint {
        Some(saved) => (
            Collector::resume(dir, saved, inbox_secrets()).map_err(fatal)?,
            saved.walk.clone(),
            saved.started_at.clone(),
            saved.resumes + 1,
        ),
        None => (
            {
                // A fresh run keeps the raw contacts for the next incremental run.
                let mut collector = Collector::create(dir, inbox_secrets()).map_err(fatal)?;
                collector.raw = Some(incremental::raw_writer(dir).map_err(fatal)?);
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
    // The drift check's ledger: taken by a fresh walk of a large account before it keeps any
    // contact, and kept in the checkpoint, so a resumed run proves completeness against the
    // same counts instead of walking the list again.
    let mut ledger = checkpoint.as_ref().and_then(|saved| saved.ledger.clone());
    let mut saver = Saver::new(
        dir.work().to_owned(),
        params.clone(),
        started_at.clone(),
        resumes,
        checkpoint
            .as_ref()
            .map(|saved| saved.walk.next_page.saturating_sub(1)),
        ledger.clone(),
    );
    // Pages fetched ahead of the one being consumed: a few times what is in flight, so that one
    // slow page does not hold back the requests behind it (about 15 KB a page).
    let lookahead = settings.fetch.concurrency.saturating_mul(4);

    let walk_options = walk::WalkOptions {
        lookahead,
        speculate: settings.speculate,
        sort: &settings.client.sort,
    };
    let stages = async {
        until_shutdown(
            walk::walk(
                fetcher,
                &mut collector,
                &mut walk_state,
                progress,
                &walk_options,
                &mut ledger,
                &mut saver,
            ),
            &settings.out,
        )
        .await?;
        until_shutdown(
            repair::repair(
                fetcher,
                &mut collector,
                &walk_state,
                ledger.as_ref(),
                repair_max_requests(),
                progress,
            ),
            &settings.out,
        )
        .await
    };
    let (drift, final_count) = match stages.await {
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
    if let Err(error) = saver.save(&mut collector, &walk_state, true) {
        // The walk's last checkpoint is still whole (checkpoints are replaced atomically); only
        // what was fetched after it is fetched again.
        return Err(match saver.saved_pages() {
            Some(saved) => Failure {
                error: ExportError::Resumable {
                    source: Box::new(error),
                    pages: saved,
                    out: settings.out.clone(),
                },
                resumable: true,
            },
            None => fatal(error),
        });
    }

    let status = fetcher.status();
    let unique = collector.unique();
    let raw = collector.raw.take();
    let (flattener, spills, _rows) = collector.finish().map_err(resumable)?;
    let options = SinkOptions {
        csv_safe: settings.csv_safe,
        compression: settings.compression,
    };
    let (mut tables, mut written) = write::write_tables(
        settings.format,
        options,
        settings.rows_per_file,
        &settings.tables,
        dir,
        &flattener,
        &spills,
        progress,
    )
    .map_err(resumable)?;
    let run_id = incremental::run_id(&started_at);
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
    let manifest = Manifest {
        // Only a proven export is complete; otherwise the files hold every contact found, and
        // the exit code is 5.
        complete: drift.unresolved == 0,
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
        compression: (settings.format == Format::Parquet).then_some(settings.compression),
        tables,
        source: Source {
            base_url: params.base_url.clone(),
            account_id: params.account_id,
            sort: params.sort.clone(),
        },
        tool: Tool::current(),
        started_at,
        finished_at: now(),
        duration_secs: 0.0,
        mode: "full".into(),
        run_id,
        snapshot,
    };
    Ok((manifest, written, status))
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

/// Resolves on Ctrl-C or SIGTERM (what cron, systemd and CI send to stop a job).
/// Runs an export stage until it ends or a shutdown signal (Ctrl-C, SIGTERM) comes.
async fn until_shutdown<T>(
    stage: impl Future<Output = Result<T, ExportError>>,
    out: &std::path::Path,
) -> Result<T, ExportError> {
    tokio::select! {
        result = stage => result,
        () = shutdown_signal() => Err(ExportError::Interrupted { pages: 0, out: out.to_owned() }),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).ok();
        let term = async {
            match terminate.as_mut() {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
