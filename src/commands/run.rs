//! `run FILE`: receives a pipeline file and its flags; validates the whole file first (exit 2
//! on any problem), checks that an object store or lake destination is writable (before any
//! request to Chatwoot), starts the built-in fake server for `builtin:fake`, runs every account
//! through the runner and prints each summary and, with `--json`, the run report on stdout.
//! With `--plan`, prints what the run will cost instead (`plan`) and writes nothing.

use url::Url;

use super::plan::plan;
use super::report;
use super::settings::{load_pipeline, pipeline_jobs};
use super::validate::check_destination;
use crate::cli::RunArgs;
use crate::config::{PipelineFile, SourceUrl};
use crate::error::Error;
use crate::fake::{FakeServer, FakeServerConfig};
use crate::runner::{KeptWork, RunStart, kept_work, kept_work_refusal, run_accounts};
use crate::secret::ApiToken;
use crate::store::is_url;

/// How many contacts each account of the built-in fake server holds.
const BUILTIN_FAKE_CONTACTS: u64 = 1500;

pub async fn run(args: RunArgs) -> Result<(), Error> {
    let pipeline = load_pipeline(&args.file, &args.sets)?;
    let kept = KeptWork::from_flags(args.resume, args.restart, true);
    let start = RunStart::now();
    let destination = &pipeline.sink.destination;
    if !args.plan && (is_url(destination) || pipeline.sink.path.is_some()) {
        // Before any server is asked anything: an unwritable destination costs no request.
        check_destination(destination, &start.vars(0).run_id).await?;
    }
    let (sources, servers) = sources(&pipeline).await?;
    let progress = !args.no_progress && !args.json;
    let (jobs, target) = pipeline_jobs(&pipeline, sources, progress, args.full, &start);
    if args.plan {
        let settings: Vec<_> = jobs.into_iter().map(|(settings, _)| settings).collect();
        let planned = plan(&settings, args.json).await;
        for server in servers {
            server.shutdown().await;
        }
        return planned;
    }
    // With neither --resume nor --restart, any account's kept work stops the run before it
    // starts: a rerun must not silently throw it away.
    let refused = match kept {
        KeptWork::Refuse => Some(kept_work(&jobs, &target)).filter(|kept| !kept.is_empty()),
        _ => None,
    };
    let report = match refused {
        Some(kept) => Err(kept_work_refusal(&kept)),
        // Several accounts' summaries come out mixed: each line names its account.
        None if pipeline.accounts.len() > 1 => Ok(run_accounts(
            jobs,
            &target,
            kept,
            &start,
            &report::print_account_summary_to,
        )
        .await),
        None => Ok(run_accounts(jobs, &target, kept, &start, &report::print_summary_to).await),
    };
    for server in servers {
        server.shutdown().await;
    }
    let report = report?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|err| Error::Usage(format!("cannot encode the run report: {err}")))?;
        println!("{text}");
    }
    report.outcome()
}

/// Each account's server and token, in the pipeline's order; for `builtin:fake`, the servers
/// started in-process (one per account, on loopback), to be shut down after the run.
async fn sources(
    pipeline: &PipelineFile,
) -> Result<(Vec<(Url, ApiToken)>, Vec<FakeServer>), Error> {
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
                let (server, source) = builtin_fake(account_id).await?;
                sources.push(source);
                servers.push(server);
            }
        }
    }
    Ok((sources, servers))
}

/// Starts the built-in fake Chatwoot for one account and says where it serves.
async fn builtin_fake(account_id: u64) -> Result<(FakeServer, (Url, ApiToken)), Error> {
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
    report::fake_serving(&format!(
        "builtin:fake: account {account_id} ({BUILTIN_FAKE_CONTACTS} contacts) is served at {}",
        server.base_url()
    ));
    let url = Url::parse(&server.base_url()).map_err(|e| Error::Usage(e.to_string()))?;
    let token = ApiToken::new(&config.token).map_err(|e| Error::Usage(e.to_string()))?;
    Ok((server, (url, token)))
}
