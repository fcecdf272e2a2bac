//! `demo`: receives its flags; starts the fake Chatwoot in-process, exports from it, prints
//! the summary, where the files are and how to look at them (with DuckDB when its command is
//! on PATH, else with Python as well).

use std::path::Path;
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
    println!("files: {}", summary.out.display());
    for hint in look_hints(&contacts, args.format, on_path("duckdb")) {
        println!("look:  {hint}");
    }
    Ok(())
}

/// Commands that show the first contacts of `contacts`: DuckDB's, and a Python one (pandas)
/// when the `duckdb` command is not there, as on most machines.
fn look_hints(contacts: &Path, format: Format, duckdb: bool) -> Vec<String> {
    let (sql_reader, pandas_reader) = match format {
        // A Delta table's files are Parquet.
        Format::Parquet | Format::Delta => ("read_parquet", "read_parquet('{}')"),
        Format::Csv => ("read_csv", "read_csv('{}')"),
        Format::Ndjson => ("read_json", "read_json('{}', lines=True)"),
    };
    let path = contacts.display().to_string();
    let mut hints = vec![format!(
        "duckdb -c \"SELECT id, name, email, created_at FROM {sql_reader}('{path}') LIMIT 5\""
    )];
    if !duckdb {
        hints.push(format!(
            "python3 -c \"import pandas as pd; print(pd.{}[['id', 'name', 'email', 'created_at']].head())\"",
            pandas_reader.replace("{}", &path)
        ));
    }
    hints
}

/// Whether `program` is an executable file in one of PATH's folders.
fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

#[cfg(unix)]
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(file: &Path) -> bool {
    file.with_extension("exe").is_file() || file.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_adds_python_when_duckdb_is_missing() {
        let file = Path::new("/tmp/demo/contacts.ndjson");
        let with = look_hints(file, Format::Ndjson, true);
        assert_eq!(
            with,
            [
                "duckdb -c \"SELECT id, name, email, created_at FROM read_json('/tmp/demo/contacts.ndjson') LIMIT 5\""
            ]
        );
        let without = look_hints(file, Format::Ndjson, false);
        assert_eq!(without[0], with[0]);
        assert_eq!(
            without[1],
            "python3 -c \"import pandas as pd; print(pd.read_json('/tmp/demo/contacts.ndjson', \
             lines=True)[['id', 'name', 'email', 'created_at']].head())\""
        );
    }
}
