//! Resolution: flags, a pipeline file and the environment -> the `ExportSettings` of each
//! export, for every command.
//!
//! Receives parsed arguments (`cli`), a pipeline file (`config`) and the process environment;
//! emits `ExportSettings` (built in one place, `export_settings`) or a one-line usage error.
//! Precedence: flag > environment variable > pipeline file > default. The defaults are
//! `options`' (which `cli` and `config` read too); the rules that span options (`--csv-safe`
//! with CSV only, `--compression` with Parquet only, plain http only to loopback) are checked
//! here for flags and in `config` for pipeline files, both from `options`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::report;
use crate::cli::{ContactsArgs, FetchArgs, OutputArgs, SafetyArgs};
use crate::config::{self, PipelineFile, SinkSettings, TableSelection};
use crate::error::Error;
use crate::options::{
    DEFAULT_FULL_REFRESH_EVERY, FetchKnobs, SinkConflict, TOKEN_ENV, check_sort, insecure_http,
    parse_full_refresh_every, sink_conflicts,
};
use crate::pipeline::{ExportSettings, SharedSchemas, SnapshotMode};
use crate::runner::{RunStart, Target};
use crate::secret::ApiToken;
use crate::sink::{ColumnNames, Compression, Format};
use crate::source::{ClientOptions, FetchOptions, RateGovernor, public_base_url};
use crate::store::{RunVars, is_url};

/// What an export does besides what it fetches and writes.
struct Conduct {
    progress: bool,
    resume: bool,
    governor: Option<Arc<RateGovernor>>,
    speculate: bool,
    schemas: Option<Arc<SharedSchemas>>,
    /// Every contact read, or only what can have changed since the previous export.
    snapshot: SnapshotMode,
    /// How old the last full read of an incremental schedule may be.
    full_refresh_every: Option<Duration>,
}

/// The one place `ExportSettings` are assembled: `out` is where this export writes (a folder,
/// or an object store URL that the runner swaps for a staging folder).
fn export_settings(
    client: ClientOptions,
    fetch: FetchOptions,
    sink: &SinkSettings,
    out: PathBuf,
    tables: TableSelection,
    conduct: Conduct,
) -> ExportSettings {
    ExportSettings {
        client,
        fetch,
        format: sink.format,
        out,
        overwrite: sink.overwrite,
        progress: conduct.progress,
        resume: conduct.resume,
        keep_inbox_secrets: sink.keep_inbox_secrets,
        csv_safe: sink.csv_safe,
        csv_excel: sink.csv_excel,
        compression: sink.compression,
        rows_per_file: sink.rows_per_file,
        column_names: sink.column_names,
        tables,
        governor: conduct.governor,
        speculate: conduct.speculate,
        schemas: conduct.schemas,
        snapshot: conduct.snapshot,
        full_refresh_every: conduct.full_refresh_every,
        notices: report::notices(),
        progress_display: super::progress::display(),
        // The runner sets both for a staged export (runner.rs `export_staged`).
        base: crate::store::BaseAt::Out,
        run_id: None,
    }
}

impl FetchArgs {
    /// The fetch flags as the knobs pipeline files use.
    fn knobs(&self) -> FetchKnobs {
        FetchKnobs {
            sort: self.sort.clone(),
            concurrency: self.concurrency,
            rate_limit: self.rate_limit,
            rate_window_secs: self.rate_window_secs,
            rate_share: self.rate_share,
            max_retries: self.max_retries,
            timeout_secs: self.timeout_secs,
        }
    }
}

/// Who to ask for the contacts, and how.
fn client_options(
    base_url: Url,
    account_id: u64,
    token: ApiToken,
    sort: String,
    knobs: &FetchKnobs,
) -> ClientOptions {
    ClientOptions {
        base_url,
        account_id,
        token,
        sort,
        timeout: knobs.timeout(),
    }
}

/// `contacts`: the settings of its one export, after every check of its flags.
pub fn contacts(args: ContactsArgs) -> Result<ExportSettings, Error> {
    let (base_url, account_id) = base_url_and_account(&args.base_url, args.account_id)?;
    let token = read_token(args.token_file.as_deref())?;
    check_base_url(&base_url, args.safety.allow_insecure_http)?;
    check_output_flags(&args.output, args.safety.csv_safe)?;
    check_out(&args.output.out)?;
    let knobs = args.fetch.knobs();
    check_sort(&knobs.sort).map_err(|why| Error::Usage(format!("--sort {}: {why}", knobs.sort)))?;
    let OutputArgs {
        format,
        out,
        no_progress,
        compression,
        rows_per_file,
        tables,
        column_names,
        incremental,
        full,
        full_refresh_every,
        csv_excel,
    } = args.output;
    let SafetyArgs {
        overwrite,
        resume,
        csv_safe,
        keep_inbox_secrets,
        ..
    } = args.safety;
    let sink = SinkSettings {
        format,
        destination: out.display().to_string(),
        path: None,
        // --csv-excel includes --csv-safe's protection.
        csv_safe: csv_safe || csv_excel,
        csv_excel,
        keep_inbox_secrets,
        overwrite,
        compression: compression.unwrap_or_default(),
        rows_per_file,
        column_names,
    };
    let client = client_options(base_url, account_id, token, knobs.sort.clone(), &knobs);
    let conduct = Conduct {
        progress: !no_progress,
        resume,
        governor: None,
        speculate: true,
        schemas: None,
        snapshot: if incremental {
            SnapshotMode::Incremental
        } else if full {
            SnapshotMode::Full
        } else {
            SnapshotMode::Plain
        },
        full_refresh_every: match full_refresh_every {
            Some(text) => parse_full_refresh_every(&text)
                .map_err(|why| Error::Usage(format!("--full-refresh-every: {why}")))?,
            None => Some(DEFAULT_FULL_REFRESH_EVERY),
        },
    };
    Ok(export_settings(
        client,
        knobs.fetch_options(),
        &sink,
        out,
        TableSelection::with_tables(&tables),
        conduct,
    ))
}

/// The server and the account: `--base-url` as given, or, for a URL pasted from the dashboard
/// (`https://HOST/app/accounts/3/contacts`), the server before `/app/` and the account in the
/// path, said in a note. A URL without a scheme is refused rather than guessed: http would send
/// the token in clear, https may not be what the server speaks.
fn base_url_and_account(raw: &str, account_id: Option<u64>) -> Result<(Url, u64), Error> {
    let raw = raw.trim();
    if !raw.contains("://") {
        return Err(Error::Usage(format!(
            "--base-url {raw} has no scheme: write https://{raw} (or http://{raw} for a server on this machine)"
        )));
    }
    let url = Url::parse(raw).map_err(|err| {
        Error::Usage(format!(
            "--base-url {raw} is not a URL ({err}): write e.g. https://app.chatwoot.com"
        ))
    })?;
    let Some((base, from_url)) = dashboard_account(&url) else {
        let account_id = account_id.ok_or_else(|| {
            Error::Usage(
                "no account: pass --account-id N (the N of /app/accounts/N/ in the dashboard URL)"
                    .into(),
            )
        })?;
        return Ok((url, account_id));
    };
    if let Some(given) = account_id.filter(|given| *given != from_url) {
        return Err(Error::Usage(format!(
            "--base-url is a dashboard URL of account {from_url} but --account-id is {given}: drop one of them"
        )));
    }
    report::dashboard_url_note(&public_base_url(&base), from_url);
    Ok((base, from_url))
}

/// A dashboard URL's server (what comes before `/app/accounts/N`) and account N.
fn dashboard_account(url: &Url) -> Option<(Url, u64)> {
    let segments: Vec<&str> = url.path_segments()?.collect();
    let at = segments
        .windows(3)
        .position(|w| w[0] == "app" && w[1] == "accounts" && w[2].parse::<u64>().is_ok())?;
    let account_id = segments[at + 2].parse().ok()?;
    let mut base = url.clone();
    base.set_path(&segments[..at].join("/"));
    base.set_query(None);
    base.set_fragment(None);
    Some((base, account_id))
}

/// A local `--out` must be a folder (or not exist yet): a file there is a mistake, said before
/// anything is fetched (`demo`: before its server starts).
pub fn check_out(out: &Path) -> Result<(), Error> {
    let local = out.to_str().is_none_or(|text| !is_url(text));
    if local && out.is_file() {
        return Err(Error::Usage(format!(
            "--out {} is a file: name a folder (it is created if missing)",
            out.display()
        )));
    }
    Ok(())
}

/// `--csv-safe`, `--csv-excel` and `--compression` only with the format they apply to.
fn check_output_flags(output: &OutputArgs, csv_safe: bool) -> Result<(), Error> {
    let conflicts = sink_conflicts(
        output.format,
        csv_safe || output.csv_excel,
        output.compression.is_some(),
    );
    let csv_flag = if csv_safe {
        "--csv-safe"
    } else {
        "--csv-excel"
    };
    match conflicts.first() {
        None => Ok(()),
        Some(SinkConflict::CsvSafeNotCsv) => Err(Error::Usage(format!(
            "{csv_flag} applies only to CSV, not --format {}: add --format csv or drop {csv_flag}",
            output.format.extension()
        ))),
        Some(SinkConflict::CompressionNotParquet) => Err(Error::Usage(format!(
            "--compression applies only to Parquet and Delta, not --format {}: drop --compression",
            output.format.extension()
        ))),
    }
}

/// `demo`: an export of the fake server at `base_url`, with every default.
pub fn demo(
    base_url: &str,
    account_id: u64,
    token: &str,
    format: Format,
    out: PathBuf,
    progress: bool,
) -> Result<ExportSettings, Error> {
    let knobs = FetchKnobs::default();
    let client = client_options(
        Url::parse(base_url).map_err(|err| Error::Usage(err.to_string()))?,
        account_id,
        ApiToken::new(token).map_err(|err| Error::Usage(err.to_string()))?,
        knobs.sort.clone(),
        &knobs,
    );
    let sink = SinkSettings {
        format,
        destination: out.display().to_string(),
        path: None,
        csv_safe: false,
        csv_excel: false,
        keep_inbox_secrets: false,
        overwrite: false,
        compression: Compression::default(),
        rows_per_file: None,
        column_names: ColumnNames::Verbatim,
    };
    let conduct = Conduct {
        progress,
        resume: false,
        governor: None,
        speculate: true,
        schemas: None,
        snapshot: SnapshotMode::Plain,
        full_refresh_every: None,
    };
    Ok(export_settings(
        client,
        knobs.fetch_options(),
        &sink,
        out,
        TableSelection::default(),
        conduct,
    ))
}

/// `run`: one export per account of the pipeline, `sources` giving each account's server and
/// token in the pipeline's order; all share one request budget (Chatwoot limits requests per
/// client IP) and the pipeline's target. `full`: every account reads everything this run
/// (`run --full`) and keeps the snapshot.
pub fn pipeline_jobs(
    pipeline: &PipelineFile,
    sources: Vec<(Url, ApiToken)>,
    progress: bool,
    full: bool,
    start: &RunStart,
) -> (Vec<(ExportSettings, RunVars)>, Target) {
    let governor = Arc::new(RateGovernor::new(
        pipeline.fetch.rate_limit,
        pipeline.fetch.rate_window,
        pipeline.fetch.rate_share,
    ));
    let several = pipeline.accounts.len() > 1;
    // Several accounts write their tables in one schema, the union of all of theirs, so that
    // engines reading the lake's folders see every column in every file.
    let schemas = several.then(|| Arc::new(SharedSchemas::new(pipeline.accounts.clone())));
    let target = Target {
        destination: pipeline.sink.destination.clone(),
        path: pipeline.sink.path.clone(),
    };
    let jobs = pipeline
        .accounts
        .iter()
        .zip(sources)
        .map(|(&account_id, (base_url, token))| {
            let client = ClientOptions {
                base_url,
                account_id,
                token,
                sort: pipeline.sort.clone(),
                timeout: pipeline.timeout,
            };
            let conduct = Conduct {
                // One bar per account would garble the terminal.
                progress: progress && !several,
                resume: false,
                governor: Some(Arc::clone(&governor)),
                speculate: !several,
                schemas: schemas.clone(),
                snapshot: if full {
                    SnapshotMode::Full
                } else {
                    pipeline.snapshot
                },
                full_refresh_every: pipeline.full_refresh_every,
            };
            let settings = export_settings(
                client,
                pipeline.fetch,
                &pipeline.sink,
                target.destination.clone().into(),
                pipeline.tables.clone(),
                conduct,
            );
            (settings, start.vars(account_id))
        })
        .collect();
    (jobs, target)
}

/// A pipeline file, with its `--set` overrides and the environment it names.
pub fn load_pipeline(file: &Path, sets: &[String]) -> Result<PipelineFile, Error> {
    let text = read_pipeline(file)?;
    Ok(config::parse(file, &text, sets, &|name| {
        std::env::var(name).ok()
    })?)
}

/// A pipeline file's text.
pub fn read_pipeline(file: &Path) -> Result<String, Error> {
    std::fs::read_to_string(file).map_err(|err| {
        Error::Usage(format!(
            "cannot read pipeline file {}: {err}",
            file.display()
        ))
    })
}

/// The token from `--token-file` if given, else from `CHATWOOT_API_TOKEN`.
fn read_token(token_file: Option<&Path>) -> Result<ApiToken, Error> {
    let raw = match token_file {
        Some(path) => {
            warn_if_others_can_read(path);
            let text = std::fs::read_to_string(path).map_err(|err| {
                Error::Usage(format!("cannot read --token-file {}: {err}", path.display()))
            })?;
            if text.trim().is_empty() {
                return Err(Error::Usage(format!(
                    "--token-file {} is empty: put the API token in it (Chatwoot: Profile settings > Access Token)",
                    path.display()
                )));
            }
            text
        }
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            Error::Usage(format!(
                "no API token: set {TOKEN_ENV} or pass --token-file PATH (Chatwoot: Profile settings > Access Token)"
            ))
        })?,
    };
    ApiToken::new(&raw).map_err(|err| Error::Usage(err.to_string()))
}

/// Warns, as ssh does for keys, when the token file is open to other users: anyone who can
/// read it can read every contact of the account. A warning, not a refusal: the file may be a
/// secret mounted by a scheduler with its own permissions scheme.
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                crate::commands::log::say(
                    "notice",
                    &format!(
                        "warning: --token-file {} can be read by other users (mode {mode:o}): \
                         run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    ),
                );
            }
        }
    }
}

/// Only http(s); plain http only to loopback unless explicitly allowed.
fn check_base_url(url: &Url, allow_insecure_http: bool) -> Result<(), Error> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if !insecure_http(url, allow_insecure_http) => Ok(()),
        "http" => Err(Error::Usage(format!(
            "--base-url {} is plain http, which would send the token unencrypted: use https, or pass --allow-insecure-http",
            public_base_url(url)
        ))),
        other => Err(Error::Usage(format!(
            "--base-url must be http or https, not {other}:"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_urls_give_the_server_and_the_account() {
        let parse = |u: &str| {
            dashboard_account(&Url::parse(u).expect("url")).map(|(base, id)| (base.to_string(), id))
        };
        for (pasted, base, id) in [
            (
                "https://chat.example.com/app/accounts/3/contacts",
                "https://chat.example.com/",
                3,
            ),
            (
                "https://chat.example.com/app/accounts/12",
                "https://chat.example.com/",
                12,
            ),
            (
                "https://example.com/chatwoot/app/accounts/7/contacts?page=2#top",
                "https://example.com/chatwoot",
                7,
            ),
        ] {
            assert_eq!(parse(pasted), Some((base.to_owned(), id)), "{pasted}");
        }
        assert_eq!(parse("https://app.chatwoot.com"), None);
        assert_eq!(parse("https://x.com/app/accounts/new"), None);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let ok = |u: &str, allow| check_base_url(&Url::parse(u).expect("url"), allow).is_ok();
        assert!(ok("https://app.chatwoot.com", false));
        assert!(ok("http://127.0.0.1:3000", false));
        assert!(ok("http://localhost:3000", false));
        assert!(ok("http://[::1]:3000", false));
        assert!(!ok("http://chat.example.com", false));
        assert!(ok("http://chat.example.com", true));
        assert!(!ok("ftp://chat.example.com", true));
    }
}
