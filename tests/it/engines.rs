//! A lake as analysts read it (issue 17): `run` exports three accounts with different custom
//! attributes into Hive partitions, and Spark, DuckDB, Polars, pandas and pyarrow read it the
//! way docs/guide.md says (`tests/readers/read_lake.py`): one run with no options, two nights
//! whose schemas differ (the second night run twice) with the one option each engine needs,
//! and a CSV lake. Each read must give every column, typed partition columns, exactly the
//! manifests' rows, and the fake server's values.
//!
//! Spark runs in one local context on 127.0.0.1 (Java from `.ci/run`, pyspark from
//! tests/requirements.txt).

use std::collections::BTreeMap;
use std::path::Path;

use chatwoot_export::fake::FakeServerConfig;
use serde_json::{Value, json};

use crate::harness::{Fake, TOKEN, run_python, run_with_env};

/// A Parquet lake at `lake`, no extra sink lines.
fn parquet(lake: &Path) -> (&Path, &str, &str) {
    (lake, "parquet", "")
}

/// Runs one night of a `run` over `accounts` into `lake`, partitioned by account and `night`,
/// with `extra` lines in `[sink]`.
fn night(
    fake: &Fake,
    dir: &Path,
    (lake, format, extra): (&Path, &str, &str),
    accounts: &[u64],
    night: &str,
) {
    let file = dir.join(format!("{format}-{night}.toml"));
    let accounts: Vec<String> = accounts.iter().map(u64::to_string).collect();
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccounts = [{}]\n[sink]\nformat = \"{format}\"\n\
             destination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}/dt={night}\"\n{extra}\n",
            fake.base_url(),
            accounts.join(", "),
            lake.display()
        ),
    )
    .expect("write the pipeline file");
    let cache = dir.join("cache");
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--no-progress"],
        &[
            ("CHATWOOT_API_TOKEN", TOKEN),
            ("XDG_CACHE_HOME", cache.to_str().expect("utf-8")),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// Per account: each contact's email, and each custom attribute's values, by contact id.
fn truth(fake: &Fake, accounts: u64) -> Value {
    let mut out = serde_json::Map::new();
    for account in 1..=accounts {
        let mut emails = serde_json::Map::new();
        let mut custom: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
        for contact in fake.truth_of(account) {
            let id = contact["id"].to_string();
            emails.insert(id.clone(), contact["email"].clone());
            if let Some(attributes) = contact["custom_attributes"].as_object() {
                for (key, value) in attributes {
                    custom
                        .entry(format!("custom_attributes__{key}"))
                        .or_default()
                        .insert(id.clone(), value.clone());
                }
            }
        }
        out.insert(
            account.to_string(),
            json!({"emails": emails, "custom": custom}),
        );
    }
    Value::Object(out)
}

#[test]
fn a_three_account_two_night_lake_reads_right_in_spark_duckdb_polars_pandas_and_pyarrow() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 45,
        accounts: 3,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two, csv, snake) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("csv"),
        dir.path().join("snake"),
    );
    let all = [1, 2, 3];
    night(&fake, dir.path(), parquet(&one), &all, "2026-11-28");
    // Account 1 has attributes the others lack: the second night's schema is wider than the
    // first's, as when an account adds a custom attribute.
    night(&fake, dir.path(), parquet(&two), &[2, 3], "2026-11-27");
    night(&fake, dir.path(), parquet(&two), &all, "2026-11-28");
    // A rerun of the night replaces its files: no engine may read them twice.
    night(&fake, dir.path(), parquet(&two), &all, "2026-11-28");
    night(&fake, dir.path(), (&csv, "csv", ""), &all, "2026-11-28");
    let snake_names = "column_names = \"snake\"";
    night(
        &fake,
        dir.path(),
        (&snake, "parquet", snake_names),
        &all,
        "2026-11-28",
    );
    let columns = |account: u64| -> usize {
        let truth = fake.truth_of(account);
        let mut keys: Vec<&String> = truth
            .iter()
            .filter_map(|c| c["custom_attributes"].as_object())
            .flat_map(|a| a.keys())
            .collect();
        keys.sort();
        keys.dedup();
        keys.len()
    };
    assert_ne!(
        columns(1),
        columns(2),
        "the accounts' custom attributes differ, or the test proves nothing"
    );
    let truth_file = dir.path().join("truth.json");
    std::fs::write(&truth_file, truth(&fake, 3).to_string()).expect("write the truth");
    let out = run_python(
        include_str!("../readers/read_lake.py"),
        &[
            one.to_str().expect("utf-8"),
            two.to_str().expect("utf-8"),
            csv.to_str().expect("utf-8"),
            snake.to_str().expect("utf-8"),
            truth_file.to_str().expect("utf-8"),
        ],
    );
    let passed: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ")).collect();
    for engine in ["spark", "duckdb", "polars", "pandas", "pyarrow"] {
        assert!(
            passed
                .iter()
                .any(|l| l.starts_with(&format!("ok {engine} two nights"))),
            "{engine} did not read the two nights: {out}"
        );
    }
    assert!(
        passed.contains(&"ok spark snake names in SQL without backticks"),
        "{out}"
    );
    assert_eq!(passed.len(), 16, "every check ran: {out}");
}
