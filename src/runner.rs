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
use crate::pipeline::{ExportSettings, ExportSummary, export};
use crate::rng::Rng;
use crate::secret::ApiToken;
use crate::source::{ClientOptions, RateGovernor};
use crate::store::{Destination, Published, RunVars, is_url};

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
pub async fn run_pipeline(pipeline: &Pipeline, progress: bool) -> Result<RunReport, Error> {
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
            };
            let vars = RunVars::now(account_id, started, nonce);
            let target = target.clone();
            async move { account(settings, &target, &vars).await }
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
pub async fn account(settings: ExportSettings, target: &Target, vars: &RunVars) -> AccountReport {
    let clock = Instant::now();
    let account_id = settings.client.account_id;
    tracing::info!(account_id, run_id = %vars.run_id, destination = %target.destination, "account started");
    let result = export_to(settings, target, vars).await;
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

/// The export, straight into a local folder or staged and published to a destination. On
/// failure, the summary comes along when the export itself finished (unresolved drift).
pub async fn export_to(
    mut settings: ExportSettings,
    target: &Target,
    vars: &RunVars,
) -> Result<Exported, (Error, Option<ExportSummary>)> {
    let direct = !is_url(&target.destination) && target.path.is_none();
    if direct {
        let summary = export(&settings).await.map_err(|e| (e.into(), None))?;
        crate::app::print_summary(&summary);
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
    let staging = tempfile::Builder::new()
        .prefix("chatwoot-export-staging-")
        .tempdir()
        .map_err(|source| {
            (
                Error::Io {
                    what: "cannot create a staging folder under the temporary directory (set TMPDIR to a disk with room)".into(),
                    source,
                },
                None,
            )
        })?;
    settings.out = staging.path().join(format!("account-{}", vars.account_id));
    settings.overwrite = false;
    settings.resume = false;
    // The staging folder goes with `staging`: no "--resume" in the message.
    let summary = export(&settings)
        .await
        .map_err(|e| (e.without_resume().into(), None))?;
    let template = target.path.as_deref().unwrap_or("");
    let published = match destination.publish(&settings.out, template, vars).await {
        Ok(published) => published,
        Err(error) => return Err((error.into(), Some(summary))),
    };
    crate::app::print_summary_to(&summary, &target.destination);
    match check_drift(&summary, &target.destination) {
        Ok(()) => Ok((summary, published)),
        Err(error) => Err((error, Some(summary))),
    }
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
