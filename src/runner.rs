//! Runs a validated pipeline: every account concurrently within one shared request budget,
//! each exported to its destination, and a run report.
//!
//! Receives a `config::Pipeline` (or, for `contacts --out URL`, one account's settings and an
//! object store URL); emits the files (directly into a local folder, or staged in a temporary
//! folder and published through `store::Destination`) and a `RunReport`. One failing account
//! does not stop the others: each gets its own partition, manifest and report entry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use url::Url;

use crate::config::{Pipeline, SourceUrl};
use crate::error::{EXIT_FAILURE, Error};
use crate::fake::{FakeServer, FakeServerConfig};
use crate::pipeline::{ExportSettings, ExportSummary, SnapshotMode, export};
use crate::report::{print_summary, print_summary_to};
use crate::rng::Rng;
use crate::secret::ApiToken;
use crate::source::{ClientOptions, RateGovernor};
use crate::store::{
    Destination, LakeError, Published, RunVars, StagingError, StagingPlace, is_url,
    remove_old_staging, staging_root,
};

/// How many contacts each account of the built-in fake server holds.
const BUILTIN_FAKE_CONTACTS: u64 = 1500;

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

/// Runs every account of the pipeline and reports on each.
/// `kept`: what to do with the work earlier failed runs kept (refuse, resume, restart); with
/// `Refuse`, any account's kept work stops the run before it starts.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    progress: bool,
    kept: KeptWork,
) -> Result<RunReport, Error> {
    let clock = Instant::now();
    let started = chrono::Utc::now();
    let nonce = Rng::from_entropy().next_u64();
    // The built-in fake: one server per account, in-process, on loopback.
    let mut servers = Vec::new();
    let mut sources = Vec::new();
    for &account_id in &pipeline.accounts {
        match &pipeline.source {
            SourceUrl::Chatwoot(url) => {
                let token = pipeline
                    .token
                    .clone()
                    .ok_or_else(|| Error::Usage("no API token: set source.token".into()))?;
                sources.push((url.clone(), token));
            }
            SourceUrl::BuiltinFake => {
                let config = FakeServerConfig {
                    contacts: BUILTIN_FAKE_CONTACTS,
                    seed: 42 + account_id,
                    account_id,
                    ..FakeServerConfig::default()
                };
                let server = FakeServer::start(config.clone(), 0)
                    .await
                    .map_err(|source| Error::Io {
                        what: "cannot start the built-in fake Chatwoot on 127.0.0.1".into(),
                        source,
                    })?;
                eprintln!(
                    "chatwoot-export: builtin:fake: account {account_id} ({BUILTIN_FAKE_CONTACTS} contacts) is served at {}",
                    server.base_url()
                );
                let url =
                    Url::parse(&server.base_url()).map_err(|e| Error::Usage(e.to_string()))?;
                let token =
                    ApiToken::new(&config.token).map_err(|e| Error::Usage(e.to_string()))?;
                sources.push((url, token));
                servers.push(server);
            }
        }
    }
    // Chatwoot limits requests per client IP: every account of the run takes from one budget.
    let governor = Arc::new(RateGovernor::new(
        pipeline.fetch.rate_limit,
        pipeline.fetch.rate_window,
        pipeline.fetch.rate_share,
    ));
    let several = pipeline.accounts.len() > 1;
    let target = Target {
        destination: pipeline.sink.destination.clone(),
        path: pipeline.sink.path.clone(),
    };
    let jobs = pipeline
        .accounts
        .iter()
        .zip(sources)
        .map(|(&account_id, (base_url, token))| {
            let settings = ExportSettings {
                client: ClientOptions {
                    base_url,
                    account_id,
                    token,
                    sort: pipeline.sort.clone(),
                    timeout: pipeline.timeout,
                },
                fetch: pipeline.fetch,
                format: pipeline.sink.format,
                out: target.destination.clone().into(),
                overwrite: pipeline.sink.overwrite,
                // One bar per account would garble the terminal.
                progress: progress && !several,
                resume: false,
                keep_inbox_secrets: pipeline.sink.keep_inbox_secrets,
                csv_safe: pipeline.sink.csv_safe,
                compression: pipeline.sink.compression,
                rows_per_file: pipeline.sink.rows_per_file,
                tables: pipeline.tables.clone(),
                governor: Some(Arc::clone(&governor)),
                speculate: !several,
                snapshot: SnapshotMode::Full,
            };
            (settings, RunVars::now(account_id, started, nonce))
        })
        .collect::<Vec<_>>();
    if kept == KeptWork::Refuse {
        let kept_work: Vec<(u64, std::path::PathBuf)> = jobs
            .iter()
            .filter_map(|(settings, vars)| {
                let folder = if is_direct(&target) {
                    has_kept_work(&settings.out).then(|| settings.out.clone())
                } else {
                    let place = staging_place(settings, &target);
                    place.has_kept_work().then_some(place.folder)
                };
                folder.map(|folder| (vars.account_id, folder))
            })
            .collect();
        if !kept_work.is_empty() {
            for server in servers {
                server.shutdown().await;
            }
            return Err(kept_work_refusal(&kept_work));
        }
    }
    let jobs = jobs.into_iter().map(|(settings, vars)| {
        let target = target.clone();
        async move { account(settings, &target, &vars, kept).await }
    });
    let accounts = futures::future::join_all(jobs).await;
    for server in servers {
        server.shutdown().await;
    }
    let failed = accounts.iter().filter(|a| a.status != "complete").count();
    Ok(RunReport {
        status: match failed {
            0 => "complete",
            n if n == accounts.len() => "failed",
            _ => "partial",
        },
        run_id: RunVars::now(0, started, nonce).run_id,
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_secs: clock.elapsed().as_secs_f64(),
        accounts,
    })
}

/// Exports one account to its target and reports, whatever happened.
pub async fn account(
    settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
) -> AccountReport {
    let clock = Instant::now();
    let account_id = settings.client.account_id;
    tracing::info!(account_id, run_id = %vars.run_id, destination = %target.destination, "account started");
    let result = export_to(settings, target, vars, kept).await;
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
pub fn kept_work_refusal(kept: &[(u64, std::path::PathBuf)]) -> Error {
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

/// Whether the job writes straight into a local folder (no staging).
pub fn is_direct(target: &Target) -> bool {
    !is_url(&target.destination) && target.path.is_none()
}

/// The export, straight into a local folder or staged and published to a destination. On
/// failure, the summary comes along when the export itself finished (unresolved drift). A
/// staged export is built in its job's fixed staging place, under that place's lock; a
/// failure keeps what was fetched there for `--resume`, and a published export removes it.
pub async fn export_to(
    mut settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
    kept: KeptWork,
) -> Result<Exported, (Error, Option<ExportSummary>)> {
    if is_direct(target) {
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
        print_summary(&summary);
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
        return match check_drift(&summary, &target.destination) {
            Ok(()) => Ok((summary, published)),
            Err(error) => Err((error, Some(summary))),
        };
    }
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
    let summary = if resume && place.holds_finished_export() {
        // The export finished but was not published (the destination refused): publish it.
        finished_export(&settings).map_err(|e| (e, None))?
    } else {
        export(&settings).await.map_err(|e| (e.into(), None))?
    };
    let template = target.path.as_deref().unwrap_or("");
    let published = match destination.publish(&settings.out, template, vars).await {
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
    print_summary_to(&summary, &target.destination);
    match check_drift(&summary, &target.destination) {
        Ok(()) => Ok((summary, published)),
        Err(error) => Err((error, Some(summary))),
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

/// Exit code 5 when the account changed and the repair could not account for every contact.
fn check_drift(summary: &ExportSummary, destination: &str) -> Result<(), Error> {
    match summary.drift.unresolved {
        0 => Ok(()),
        unresolved => Err(Error::Drift {
            unresolved,
            out: destination.into(),
        }),
    }
}
