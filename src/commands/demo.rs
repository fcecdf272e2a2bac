//! `demo`: receives its flags; starts the fake Chatwoot in-process, exports from it, prints
//! the summary, where the files are and how to look at them.

use std::time::Duration;

use indicatif::HumanCount;

use super::contacts::{export_to_object_store, object_store_url};
use super::report;
use super::settings;
use crate::cli::DemoArgs;
use crate::error::Error;
use crate::fake::{FakeServer, FakeServerConfig};
use crate::pipeline::export;
use crate::runner::KeptWork;
use crate::sink::Format;

pub async fn demo(args: DemoArgs) -> Result<(), Error> {
    settings::check_out(&args.out)?;
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
    report::fake_serving(&format!(
        "demo: a fake Chatwoot with {} contacts is serving at {}",
        HumanCount(args.contacts),
        server.base_url()
    ));
    let settings = match settings::demo(
        &server.base_url(),
        config.account_id,
        &config.token,
        args.format,
        args.out,
        !args.no_progress,
    ) {
        Ok(settings) => settings,
        Err(error) => {
            server.shutdown().await;
            return Err(error);
        }
    };
    if let Some(url) = object_store_url(&settings) {
        // A demo has nothing worth keeping: it starts over.
        let result = export_to_object_store(settings, url.clone(), KeptWork::Restart).await;
        server.shutdown().await;
        result?;
        println!("files: {url}");
        return Ok(());
    }
    let result = export(&settings).await;
    server.shutdown().await;
    let summary = result?;
    report::print_summary(&summary);
    let contacts = summary
        .out
        .join(format!("contacts.{}", args.format.extension()));
    let reader = match args.format {
        Format::Parquet => "read_parquet",
        Format::Csv => "read_csv",
        Format::Ndjson => "read_json",
    };
    println!("files: {}", summary.out.display());
    println!(
        "look:  duckdb -c \"SELECT id, name, email, created_at FROM {reader}('{}') LIMIT 5\"",
        contacts.display()
    );
    Ok(())
}
