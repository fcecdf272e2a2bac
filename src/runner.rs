//! Runs exports to their destinations: every account of a run concurrently (within the one
//! request budget their settings share), each exported and published, and a run report.
//!
//! Receives resolved `ExportSettings` per account and a `Target` (for `contacts --out URL`, one
//! account); emits the files (directly into a local folder, or staged in a temporary folder and
//! published through `store::Destination`), each finished export's summary to the caller's
//! `OnSummary`, and a `RunReport`. Prints nothing. One failing account does not stop the
//! others: each gets its own partition, manifest and report entry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{EXIT_FAILURE, Error};
use crate::pipeline::{ExportSettings, ExportSummary, export};
use crate::rng::Rng;
use crate::sink::Format;
use crate::store::{
    Destination, LakeError, Published, RunVars, StagingError, StagingPlace, fetch_snapshot, is_url,
    keep_snapshot, publish_delta, remove_old_staging, staging_root,
};

/// One account's outcome, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct AccountReport {
    pub account_id: u64,
    /// `complete` or `failed`.
    pub status: &'static str,
    pub exit_code: u8,
    pub error: Option<String>,
    /// Rows written, by table.
    pub rows: BTreeMap<String, u64>,
    /// Files written (data files, then manifests), as paths or URLs.
    pub files: Vec<String>,
    /// Files of earlier runs removed from the partitions.
    pub replaced: Vec<String>,
    pub duration_secs: f64,
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    /// How the requests were paced (the run's accounts share one rate).
    pub rate: crate::manifest::RateReport,
    /// Contacts the drift repair recovered and those it could not reconcile.
    pub drift_recovered: u64,
    pub drift_unresolved: u64,
    /// How many times this account's export was resumed (`--resume`) before it ended: 0 for
    /// one that ran through at once.
    pub resumes: u32,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// `complete`, `partial` (some accounts failed) or `failed`.
    pub status: &'static str,
    pub run_id: String,
    pub started_at: String,
    pub duration_secs: f64,
    pub accounts: Vec<AccountReport>,
}

impl RunReport {
    /// `Ok` when every account is complete, else the error `main` reports (with the exit code).
    pub fn outcome(&self) -> Result<(), Error> {
        let failed: Vec<&AccountReport> = self
            .accounts
            .iter()
            .filter(|a| a.status != "complete")
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let first = failed[0].exit_code;
        let code = if failed.iter().all(|a| a.exit_code == first) {
            first
        } else {
            EXIT_FAILURE
        };
        Err(Error::Accounts {
            total: self.accounts.len(),
            failed: failed
                .iter()
                .map(|a| {
                    format!(
                        "account {}: {}",
                        a.account_id,
                        a.error.as_deref().unwrap_or("failed")
                    )
                })
                .collect(),
            code,
        })
    }
}

/// Where one account's files go.
#[derive(Clone, Debug)]
pub struct Target {
    /// A local folder or an object store URL.
    pub destination: String,
    /// The partition template; `None` with a local folder writes straight into it.
    pub path: Option<String>,
}

/// When a run of several accounts started, and the random part of its id.
#[derive(Clone, Copy, Debug)]
pub struct RunStart {
    clock: Instant,
    started: chrono::DateTime<chrono::Utc>,
    nonce: u64,
}

impl RunStart {
    /// A run starting now.
    pub fn now() -> Self {
        Self {
            clock: Instant::now(),
            started: chrono::Utc::now(),
            nonce: Rng::from_entropy().next_u64(),
        }
    }

    /// The placeholders of `account_id`'s partition in this run.
    pub fn vars(&self, account_id: u64) -> RunVars {
        RunVars::now(account_id, self.started, self.nonce)
    }
}

/// Told each finished export's summary and where its files went (the command layer prints it).
pub type OnSummary = dyn Fn(&ExportSummary, &str) + Send + Sync;

/// The accounts of `jobs` that hold work a failed or interrupted run kept: `(account, folder)`.
pub fn kept_work(jobs: &[(ExportSettings, RunVars)], target: &Target) -> Vec<(u64, PathBuf)> {
    jobs.iter()
        .filter_map(|(settings, vars)| {
            let folder = if is_direct(target, settings.format) {
                has_kept_work(&settings.out).then(|| settings.out.clone())
            } else {
                let place = staging_place(settings, target);
                place.has_kept_work().then_some(place.folder)
            };
            folder.map(|folder| (vars.account_id, folder))
        })
        .collect()
}

/// Runs every job (one account each, all at once) and reports on each; one failing account
/// does not stop the others. `kept`: what to do with the work earlier failed runs kept.
pub async fn run_accounts(
    jobs: Vec<(ExportSettings, RunVars)>,
    target: &Target,
    kept: KeptWork,
    start: &RunStart,
    on_summary: &OnSummary,
) -> RunReport {
    let jobs = jobs.into_iter().map(|(settings, vars)| async move {
        let schemas = settings.schemas.clone();
        let report = account(settings, target, &vars, kept, on_summary).await;
        // Ended without writing (failed, or only published kept work): nobody waits for it.
        if let Some(schemas) = schemas {
            schemas.leave(vars.account_id);
        }
        report
    });
    let accounts = futures::future::join_all(jobs).await;
    let failed = accounts.iter().filter(|a| a.status != "complete").count();
    RunReport {
        status: match failed {
            0 => "complete",
            n if n == accounts.len() => "failed",
            _ => "partial",
        },
        run_id: start.vars(0).run_id,
        started_at: start
            .started
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_secs: start.clock.elapsed().as_secs_f64(),
        accounts,
    }
}

/// Exports one account to its target and reports, whatever happened.
pub async fn account(
    settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
    on_summary: &OnSummary,
) -> AccountReport {
    let clock = Instant::now();
    let account_id = settings.client.account_id;
    tracing::info!(account_id, run_id = %vars.run_id, destination = %target.destination, "account started");
    let result = export_to(settings, target, vars, kept, on_summary).await;
    let elapsed = clock.elapsed();
    let report = account_report(account_id, result, elapsed);
    // Counts, names and messages only: errors are already scrubbed of the token.
    match &report.error {
        None => tracing::info!(
            account_id,
            contacts = report.rows.get("contacts").copied().unwrap_or(0),
            files = report.files.len(),
            duration_secs = report.duration_secs,
            "account published"
        ),
        Some(error) => {
            tracing::error!(account_id, exit_code = report.exit_code, error = %error, "account failed")
        }
    }
    report
}

fn account_report(
    account_id: u64,
    result: Result<Exported, (Error, Option<ExportSummary>)>,
    elapsed: Duration,
) -> AccountReport {
    match result {
        Ok((summary, published)) => report(account_id, &summary, published, None, elapsed),
        Err((error, Some(summary))) => report(
            account_id,
            &summary,
            Published::default(),
            Some(error),
            elapsed,
        ),
        Err((error, None)) => AccountReport {
            account_id,
            status: "failed",
            exit_code: error.exit_code(),
            error: Some(error.one_line()),
            rows: BTreeMap::new(),
            files: Vec::new(),
            replaced: Vec::new(),
            duration_secs: elapsed.as_secs_f64(),
            requests: 0,
            retries: 0,
            throttled: 0,
            rate: crate::manifest::RateReport::default(),
            drift_recovered: 0,
            drift_unresolved: 0,
            resumes: 0,
        },
    }
}

fn report(
    account_id: u64,
    summary: &ExportSummary,
    published: Published,
    error: Option<Error>,
    elapsed: Duration,
) -> AccountReport {
    let manifest = &summary.manifest;
    AccountReport {
        account_id,
        status: if error.is_none() {
            "complete"
        } else {
            "failed"
        },
        exit_code: error.as_ref().map_or(0, Error::exit_code),
        error: error.as_ref().map(Error::one_line),
        rows: manifest
            .tables
            .iter()
            .map(|(name, table)| (name.clone(), table.rows))
            .collect(),
        files: published.files,
        replaced: published.replaced,
        duration_secs: elapsed.as_secs_f64(),
        requests: manifest.requests,
        retries: manifest.retries,
        throttled: manifest.throttled,
        rate: manifest.rate.clone(),
        drift_recovered: manifest.drift.recovered,
        drift_unresolved: manifest.drift.unresolved,
        resumes: manifest.resumes,
    }
}

type Exported = (ExportSummary, Published);

/// What to do with the work a failed or interrupted run kept for this job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeptWork {
    /// Refuse to start while work is kept (a rerun must not silently throw it away).
    #[default]
    Refuse,
    /// Continue it; having none is an error (`contacts --resume`).
    Resume,
    /// Continue it where there is some, else start (`run --resume`, for every account).
    ResumeIfAny,
    /// Discard it and start over (`--restart`).
    Restart,
}

impl KeptWork {
    /// From the `--resume` and `--restart` flags; `any`: a missing kept export is no error.
    pub fn from_flags(resume: bool, restart: bool, any: bool) -> Self {
        match (resume, restart) {
            (true, _) if any => Self::ResumeIfAny,
            (true, _) => Self::Resume,
            (false, true) => Self::Restart,
            (false, false) => Self::Refuse,
        }
    }
}

/// The one-line refusal for a rerun that would discard kept work: `(account, folder)` each.
pub fn kept_work_refusal(kept: &[(u64, PathBuf)]) -> Error {
    let what = kept
        .iter()
        .map(|(account_id, folder)| format!("account {account_id} is kept in {}", folder.display()))
        .collect::<Vec<_>>()
        .join(", ");
    Error::Usage(format!(
        "an interrupted export of {what}: run the same command with --resume to continue it, or with --restart to discard it and start over"
    ))
}

/// Where a job that does not write straight into a local folder is staged.
pub fn staging_place(settings: &ExportSettings, target: &Target) -> StagingPlace {
    StagingPlace::for_job(
        &staging_root(),
        &target.destination,
        target.path.as_deref().unwrap_or(""),
        &crate::source::public_base_url(&settings.client.base_url),
        settings.client.account_id,
    )
}

/// Whether the job writes straight into a local folder (no staging; a Delta table is always
/// staged, then committed).
pub fn is_direct(target: &Target, format: Format) -> bool {
    !is_url(&target.destination) && target.path.is_none() && format != Format::Delta
}

/// The export, straight into a local folder or staged and published to a destination. On
/// failure, the summary comes along when the export itself finished (unresolved drift). A
/// staged export is built in its job's fixed staging place, under that place's lock; a
/// failure keeps what was fetched there for `--resume`, and a published export removes it.
pub async fn export_to(
    settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
    on_summary: &OnSummary,
) -> Result<Exported, (Error, Option<ExportSummary>)> {
    if is_direct(target, settings.format) {
        export_direct(settings, target, vars, kept, on_summary).await
    } else {
        export_staged(settings, target, vars, kept, on_summary).await
    }
}

/// The export straight into the local folder `settings.out`.
async fn export_direct(
    mut settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
    on_summary: &OnSummary,
) -> Result<Exported, (Error, Option<ExportSummary>)> {
    settings.resume = match kept {
        KeptWork::Refuse | KeptWork::Restart => false,
        KeptWork::Resume => true,
        KeptWork::ResumeIfAny => has_kept_work(&settings.out),
    };
    if kept == KeptWork::Refuse && has_kept_work(&settings.out) {
        return Err((
            kept_work_refusal(&[(vars.account_id, settings.out.clone())]),
            None,
        ));
    }
    let summary = export(&settings).await.map_err(|e| (e.into(), None))?;
    on_summary(&summary, &summary.out.display().to_string());
    let files = summary
        .manifest
        .tables
        .values()
        .flat_map(|t| t.files.iter())
        .chain(std::iter::once(&crate::store::MANIFEST_FILE.to_owned()))
        .map(|name| summary.out.join(name).display().to_string())
        .collect();
    let published = Published {
        files,
        replaced: Vec::new(),
    };
    match drift_verdict(&summary, target.destination.clone().into()) {
        Ok(()) => Ok((summary, published)),
        Err(error) => Err((error, Some(summary))),
    }
}

/// The export built in the job's staging place, then published to the destination.
async fn export_staged(
    mut settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
    on_summary: &OnSummary,
) -> Result<Exported, (Error, Option<ExportSummary>)> {
    // Open first: a bad URL or missing credentials fail before any request to Chatwoot.
    let destination = Destination::open(&target.destination).map_err(|e| (e.into(), None))?;
    let removed = remove_old_staging(&std::env::temp_dir());
    if removed > 0 {
        tracing::info!(
            removed,
            "removed staging folders left by an earlier version"
        );
    }
    let place = staging_place(&settings, target);
    // Held until the end of this function: a second run of the job refuses meanwhile.
    let _lock = place.lock().map_err(|e| (staging_error(e), None))?;
    let kept_work = place.has_kept_work();
    let resume = match kept {
        KeptWork::Refuse if kept_work => {
            return Err((
                kept_work_refusal(&[(vars.account_id, place.folder.clone())]),
                None,
            ));
        }
        KeptWork::Resume if !kept_work => {
            return Err((
                Error::Usage(format!(
                    "there is no interrupted export of account {} to {} to resume: run without --resume",
                    vars.account_id, target.destination
                )),
                None,
            ));
        }
        KeptWork::Resume | KeptWork::ResumeIfAny => kept_work,
        KeptWork::Refuse | KeptWork::Restart => false,
    };
    if !resume {
        place.discard().map_err(|source| {
            (
                Error::Io {
                    what: format!(
                        "cannot remove the kept export in {}",
                        place.folder.display()
                    ),
                    source,
                },
                None,
            )
        })?;
    }
    settings.out = place.folder.clone();
    settings.overwrite = false;
    settings.resume = resume;
    // The id the publish writes, so that the manifest, the change feed and the lake agree.
    settings.run_id = Some(vars.run_id.clone());
    let template = target.path.as_deref().unwrap_or("");
    // Beside the staging folder (which the export prepares and discards), removed when done.
    let base_folder = BaseFolder(place.folder.with_extension("base"));
    // A resumed incremental run checks its base again (and builds on it); an export that only
    // waits to be published needs none.
    if settings.snapshot.keeps_snapshot() && !(resume && place.holds_finished_export()) {
        let delta = (settings.format == Format::Delta).then_some(template);
        settings.base = fetch_snapshot(&destination, &base_folder.0, vars, delta)
            .await
            .map_err(|e| (e.into(), None))?;
    }
    let summary = if resume && place.holds_finished_export() {
        // The export finished but was not published (the destination refused): publish it.
        finished_export(&settings).map_err(|e| (e, None))?
    } else {
        export(&settings).await.map_err(|e| (e.into(), None))?
    };
    let publishing = async {
        let mut published = if settings.format == Format::Delta {
            publish_delta(&destination, &settings.out, template, vars).await?
        } else {
            destination.publish(&settings.out, template, vars).await?
        };
        // Only once the tables are published: a failed publish never moves the base.
        let kept = keep_snapshot(&destination, &settings.out, vars).await?;
        published.files.extend(kept);
        Ok::<_, LakeError>(published)
    }
    .await;
    let published = match publishing {
        Ok(published) => published,
        Err(error) => {
            let kept = LakeError::Kept {
                source: Box::new(error),
                folder: place.folder.clone(),
            };
            return Err((kept.into(), Some(summary)));
        }
    };
    if let Err(err) = place.discard() {
        tracing::warn!(folder = %place.folder.display(), error = %err, "cannot remove the staging folder after publishing");
    }
    on_summary(&summary, &target.destination);
    match drift_verdict(&summary, target.destination.clone().into()) {
        Ok(()) => Ok((summary, published)),
        Err(error) => Err((error, Some(summary))),
    }
}

/// The local folder a destination's snapshot is downloaded into, removed (with the personal
/// data it holds) when the export is done, whatever happened.
struct BaseFolder(PathBuf);

impl Drop for BaseFolder {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(folder = %self.0.display(), error = %err, "cannot remove the downloaded snapshot");
            }
            _ => {}
        }
    }
}

/// Whether the local folder `out` holds an interrupted export.
fn has_kept_work(out: &std::path::Path) -> bool {
    matches!(crate::store::OutputDir::reopen(out), Ok(Some(_)))
}

fn staging_error(error: StagingError) -> Error {
    match error {
        StagingError::Locked { .. } => Error::Usage(error.to_string()),
        StagingError::Create { source, path } => Error::Io {
            what: format!("cannot create the staging folder {}", path.display()),
            source,
        },
    }
}

/// The summary of an export that finished in the staging place but was not published, read
/// from its manifest: publishing it again costs no request to Chatwoot.
fn finished_export(settings: &ExportSettings) -> Result<ExportSummary, Error> {
    let path = settings.out.join(crate::store::MANIFEST_FILE);
    let damaged = |detail: String| {
        Error::Usage(format!(
            "the kept export's manifest {} is unreadable ({detail}): run again with --restart",
            path.display()
        ))
    };
    let bytes = std::fs::read(&path).map_err(|err| damaged(err.to_string()))?;
    let manifest: crate::manifest::Manifest =
        serde_json::from_slice(&bytes).map_err(|err| damaged(err.to_string()))?;
    if manifest.format != settings.format {
        return Err(Error::Usage(format!(
            "the kept export in {} was made with format {} (now {}): resume it with the same options, or run with --restart",
            settings.out.display(),
            manifest.format.extension(),
            settings.format.extension()
        )));
    }
    Ok(ExportSummary::from_manifest(
        manifest,
        settings.out.clone(),
        Duration::ZERO,
        crate::source::FetchStatus::default(),
    ))
}

/// Exit code 5 when the account changed and the repair could not account for every contact;
/// `out` names where the files are.
pub fn drift_verdict(summary: &ExportSummary, out: PathBuf) -> Result<(), Error> {
    match summary.drift.unresolved {
        // A complete walk can still have a label walk that missed its counts: exit 5 too.
        0 => Error::check_label_walk(summary, &out),
        unresolved => Err(Error::Drift { unresolved, out }),
    }
}
