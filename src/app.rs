//! Runs a parsed command line: resolves flags, environment and defaults into settings, runs
//! the job, and prints the human summary. Precedence: flag > environment variable > default.

use std::path::Path;
use std::time::Duration;

use indicatif::HumanCount;
use url::Url;

use crate::cli::{Cli, Command, ContactsArgs, DemoArgs, FakeServerArgs, RunArgs, ValidateArgs};
use crate::config::{self, Pipeline, TOKEN_ENV, TableSelection, is_loopback};
use crate::error::Error;
use crate::fake::{FakeAccount, FakeServer, FakeServerConfig, FaultConfig, write_truth};
use crate::pipeline::{ExportSettings, ExportSummary, SnapshotMode, export};
use crate::report::print_summary;
use crate::runner;
use crate::secret::ApiToken;
use crate::sink::Compression;
use crate::source::{ClientOptions, FetchOptions, RetryPolicy, public_base_url};
use crate::store::{RunVars, is_url};

pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Contacts(args) => contacts(args).await,
        Command::Demo(args) => demo(args).await,
        Command::FakeServer(args) => fake_server(args).await,
        Command::Run(args) => run_file(args).await,
        Command::Validate(args) => validate(args),
    }
}

/// `run FILE`: validate the whole file first (exit 2 on any problem), then run it.
async fn run_file(args: RunArgs) -> Result<(), Error> {
    let pipeline = load_pipeline(&args.file, &args.sets)?;
    let kept = runner::KeptWork::from_flags(args.resume, args.restart, true);
    let report = runner::run_pipeline(&pipeline, !args.no_progress && !args.json, kept).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|err| Error::Usage(format!("cannot encode the run report: {err}")))?;
        println!("{text}");
    }
    report.outcome()
}

/// `validate FILE`: every problem on its own line, exit 2 if any.
fn validate(args: ValidateArgs) -> Result<(), Error> {
    match load_pipeline(&args.file, &args.sets) {
        Ok(pipeline) => {
            eprintln!(
                "chatwoot-export: {} is valid: {} account(s), {} to {}",
                args.file.display(),
                pipeline.accounts.len(),
                pipeline.sink.format.extension(),
                pipeline.sink.destination
            );
            Ok(())
        }
        Err(Error::Config(errors)) => {
            for problem in &errors.problems {
                eprintln!("{}: {problem}", errors.file.display());
            }
            Err(Error::Usage(format!(
                "{} has {} problem(s), listed above",
                errors.file.display(),
                errors.problems.len()
            )))
        }
        Err(other) => Err(other),
    }
}

fn load_pipeline(file: &Path, sets: &[String]) -> Result<Pipeline, Error> {
    let text = std::fs::read_to_string(file).map_err(|err| {
        Error::Usage(format!(
            "cannot read pipeline file {}: {err}",
            file.display()
        ))
    })?;
    Ok(config::parse(file, &text, sets, &|name| {
        std::env::var(name).ok()
    })?)
}

async fn contacts(args: ContactsArgs) -> Result<(), Error> {
    let token = read_token(args.token_file.as_deref())?;
    check_base_url(&args.base_url, args.allow_insecure_http)?;
    if args.output.csv_safe && args.output.format != crate::sink::Format::Csv {
        return Err(Error::Usage(format!(
            "--csv-safe applies only to CSV, not --format {}: add --format csv or drop --csv-safe",
            args.output.format.extension()
        )));
    }
    if args.output.compression.is_some() && args.output.format != crate::sink::Format::Parquet {
        return Err(Error::Usage(format!(
            "--compression applies only to Parquet, not --format {}: drop --compression",
            args.output.format.extension()
        )));
    }
    let settings = ExportSettings {
        client: ClientOptions {
            base_url: args.base_url,
            account_id: args.account_id,
            token,
            sort: args.fetch.sort,
            timeout: Duration::from_secs(args.fetch.timeout_secs.max(1)),
        },
        fetch: FetchOptions {
            concurrency: usize::from(args.fetch.concurrency),
            retry: RetryPolicy {
                max_retries: args.fetch.max_retries,
                ..RetryPolicy::default()
            },
            rate_limit: (args.fetch.rate_limit > 0).then_some(args.fetch.rate_limit),
            rate_window: Duration::from_secs(args.fetch.rate_window_secs.max(1)),
            rate_share: args.fetch.rate_share,
        },
        format: args.output.format,
        out: args.output.out,
        overwrite: args.output.overwrite,
        progress: !args.output.no_progress,
        resume: args.output.resume,
        keep_inbox_secrets: args.output.keep_inbox_secrets,
        csv_safe: args.output.csv_safe,
        compression: args.output.compression.unwrap_or_default(),
        rows_per_file: args.output.rows_per_file,
        tables: TableSelection::default(),
        governor: None,
        speculate: true,
        snapshot: if args.output.incremental {
            SnapshotMode::Incremental
        } else {
            SnapshotMode::Full
        },
    };
    let kept = runner::KeptWork::from_flags(args.output.resume, args.output.restart, false);
    if let Some(url) = object_store_url(&settings) {
        return export_to_object_store(settings, url, kept).await;
    }
    // A rerun must not silently throw away what an interrupted run fetched.
    if kept == runner::KeptWork::Refuse
        && matches!(crate::store::OutputDir::reopen(&settings.out), Ok(Some(_)))
    {
        return Err(runner::kept_work_refusal(&[(
            settings.client.account_id,
            settings.out.clone(),
        )]));
    }
    let summary = export(&settings).await?;
    print_summary(&summary);
    check_drift(&summary)
}

/// `--out` when it names an object store (`s3://`, `gs://`, `az://`, `file://`) rather than
/// a local folder.
fn object_store_url(settings: &ExportSettings) -> Option<String> {
    let out = settings.out.to_str()?;
    is_url(out).then(|| out.to_owned())
}

/// Exports into the job's staging place, then uploads it to `url` with the manifest last
/// (and prints the summary); `kept` says what to do with work an earlier run kept there.
async fn export_to_object_store(
    settings: ExportSettings,
    url: String,
    kept: runner::KeptWork,
) -> Result<(), Error> {
    let target = runner::Target {
        destination: url,
        path: None,
    };
    let nonce = crate::rng::Rng::from_entropy().next_u64();
    let vars = RunVars::now(settings.client.account_id, chrono::Utc::now(), nonce);
    runner::export_to(settings, &target, &vars, kept)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

async fn demo(args: DemoArgs) -> Result<(), Error> {
    let config = FakeServerConfig {
        contacts: args.contacts,
        seed: args.seed,
        latency: Duration::from_millis(args.latency_ms),
        ..FakeServerConfig::default()
    };
    let server = FakeServer::start(config.clone(), 0)
        .await
        .map_err(|source| Error::Io {
            what: "cannot start the fake Chatwoot server on 127.0.0.1".into(),
            source,
        })?;
    eprintln!(
        "chatwoot-export: demo: a fake Chatwoot with {} contacts is serving at {}",
        HumanCount(args.contacts),
        server.base_url()
    );
    let settings = ExportSettings {
        client: ClientOptions {
            base_url: Url::parse(&server.base_url())
                .map_err(|err| Error::Usage(err.to_string()))?,
            account_id: config.account_id,
            token: ApiToken::new(&config.token).map_err(|err| Error::Usage(err.to_string()))?,
            sort: "created_at".into(),
            timeout: Duration::from_secs(60),
        },
        fetch: FetchOptions {
            concurrency: 8,
            retry: RetryPolicy::default(),
            rate_limit: Some(3000),
            rate_window: Duration::from_secs(60),
            rate_share: crate::cli::DEFAULT_RATE_SHARE,
        },
        format: args.format,
        out: args.out,
        overwrite: false,
        progress: !args.no_progress,
        resume: false,
        keep_inbox_secrets: false,
        csv_safe: false,
        compression: Compression::default(),
        rows_per_file: None,
        tables: TableSelection::default(),
        governor: None,
        speculate: true,
        snapshot: SnapshotMode::Full,
    };
    if let Some(url) = object_store_url(&settings) {
        // A demo has nothing worth keeping: it starts over.
        let result = export_to_object_store(settings, url.clone(), runner::KeptWork::Restart).await;
        server.shutdown().await;
        result?;
        println!("files: {url}");
        return Ok(());
    }
    let result = export(&settings).await;
    server.shutdown().await;
    let summary = result?;
    print_summary(&summary);
    let contacts = summary
        .out
        .join(format!("contacts.{}", args.format.extension()));
    let reader = match args.format {
        crate::sink::Format::Parquet => "read_parquet",
        crate::sink::Format::Csv => "read_csv",
        crate::sink::Format::Ndjson => "read_json",
    };
    println!("files: {}", summary.out.display());
    println!(
        "look:  duckdb -c \"SELECT id, name, email, created_at FROM {reader}('{}') LIMIT 5\"",
        contacts.display()
    );
    Ok(())
}

async fn fake_server(args: FakeServerArgs) -> Result<(), Error> {
    if let Some(path) = &args.dump_truth {
        let io_error = |source| Error::Io {
            what: format!("cannot write {}", path.display()),
            source,
        };
        let file = std::fs::File::create(path).map_err(io_error)?;
        let mut out = std::io::BufWriter::new(file);
        let account = FakeAccount::new(args.seed, args.contacts)
            .with_legacy_inbox_secrets(args.legacy_inbox_secrets);
        write_truth(&account, &mut out).map_err(io_error)?;
        return Ok(());
    }
    let config = FakeServerConfig {
        contacts: args.contacts,
        seed: args.seed,
        account_id: args.account_id,
        accounts: args.accounts,
        token: args.token.clone(),
        latency: Duration::from_millis(args.latency_ms),
        grow_every: args.grow_every,
        drift_every: args.drift.then_some(args.drift_every),
        faults: FaultConfig {
            fail_rate: args.fail_rate,
            drop_rate: args.drop_rate,
            rate_limit: args.rate_limit,
            rate_window_secs: args.rate_window_secs,
            malformed_page: args.malformed_page,
        },
        legacy_inbox_secrets: args.legacy_inbox_secrets,
        ..FakeServerConfig::default()
    };
    let server = FakeServer::start(config, args.port)
        .await
        .map_err(|source| Error::Io {
            what: format!("cannot listen on 127.0.0.1:{}", args.port),
            source,
        })?;
    println!("{}", server.base_url());
    let accounts = match args.accounts {
        1 => format!("account {}", args.account_id),
        n => format!(
            "each of accounts {} to {}",
            args.account_id,
            args.account_id + n - 1
        ),
    };
    eprintln!(
        "chatwoot-export: fake Chatwoot serving {} contacts of {accounts} at {} (token {:?}); Ctrl-C stops it",
        args.contacts,
        server.base_url(),
        args.token
    );
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    Ok(())
}

/// The token from `--token-file` if given, else from `CHATWOOT_API_TOKEN`.
fn read_token(token_file: Option<&Path>) -> Result<ApiToken, Error> {
    let raw = match token_file {
        Some(path) => {
            warn_if_others_can_read(path);
            std::fs::read_to_string(path).map_err(|err| {
                Error::Usage(format!("cannot read --token-file {}: {err}", path.display()))
            })?
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
                eprintln!(
                    "chatwoot-export: warning: --token-file {} can be read by other users (mode {mode:o}): \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
    }
}

/// Only http(s); plain http only to loopback unless explicitly allowed.
fn check_base_url(url: &Url, allow_insecure_http: bool) -> Result<(), Error> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(url) => Ok(()),
        "http" => Err(Error::Usage(format!(
            "--base-url {} is plain http, which would send the token unencrypted: use https, or pass --allow-insecure-http",
            public_base_url(url)
        ))),
        other => Err(Error::Usage(format!(
            "--base-url must be http or https, not {other}:"
        ))),
    }
}

/// Exit code 5 when the account changed and the repair could not account for every contact.
fn check_drift(summary: &ExportSummary) -> Result<(), Error> {
    match summary.drift.unresolved {
        0 => Ok(()),
        unresolved => Err(Error::Drift {
            unresolved,
            out: summary.out.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
