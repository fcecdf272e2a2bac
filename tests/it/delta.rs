//! Delta Lake tables (`format = "delta"`) for real: the binary commits exports of the fake
//! Chatwoot's accounts to a local lake, and the tables are read back with the Python
//! `deltalake` package (delta-rs) and Polars `read_delta`, compared with the fake's ground
//! truth, their history and time travel checked. DuckDB's `delta` extension is downloaded on
//! first use, which the offline test machines cannot do, so DuckDB is not among the readers
//! here (a test that skips proves nothing); docs/delta.md says how to read with it. Every
//! script ends with `os._exit(0)` once its output is flushed:
//! the `deltalake` package's threads can abort the interpreter's own exit ("terminate called
//! without an active exception", delta-io/delta-rs#2184), after the work is done.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use chatwoot_export::fake::FakeServerConfig;
use serde_json::Value;

use crate::expected::{self, Table};
use crate::harness::{Fake, TOKEN, assert_no_token, python, run_python, run_with_env};
use crate::readers::{assert_same, read};

/// Reads one account's rows of a Delta table with delta-rs (the `deltalake` package), at a
/// version or the latest, keeps the contract's columns (given as JSON) and writes them to a
/// Parquet file the Rust readers compare with the ground truth. Prints the version read, the
/// table's columns, and the columns outside the contract's that hold a value in these rows.
const DELTA_READ: &str = r#"
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
from deltalake import DeltaTable
uri, account, version, columns, out = sys.argv[1:]
table = DeltaTable(uri, version=None if version == "latest" else int(version))
rows = table.to_pyarrow_table(filters=[("account_id", "=", int(account))])
columns = json.loads(columns)
others = [c for c in rows.column_names if c not in columns and c not in ("account_id", "dt")]
filled = [c for c in others if rows.column(c).null_count != rows.num_rows]
def plain(t):
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t
kept = rows.select(columns)
kept = kept.cast(pa.schema([pa.field(f.name, plain(f.type)) for f in kept.schema]))
pq.write_table(kept, out)
print(json.dumps({
    "version": table.version(),
    "columns": [f.name for f in table.schema().fields],
    "partitions": table.metadata().partition_columns,
    "filled_elsewhere": filled,
    "accounts": sorted(set(rows.column("account_id").to_pylist())),
}))
sys.stdout.flush()
os._exit(0)
"#;

/// The table's history, oldest first: each commit's operation and this tool's facts.
const DELTA_HISTORY: &str = r#"
import json, os, sys
from deltalake import DeltaTable
history = DeltaTable(sys.argv[1]).history()
print(json.dumps([
    {"version": h["version"], "operation": h["operation"], "facts": h.get("chatwoot_export")}
    for h in sorted(history, key=lambda h: h["version"])
], default=str))
sys.stdout.flush()
os._exit(0)
"#;

/// Rows by account of the latest version, with Polars' `read_delta`.
const POLARS_COUNTS: &str = r#"
import json, os, sys
import polars as pl
frame = pl.read_delta(sys.argv[1])
counts = frame.group_by("account_id").len().sort("account_id")
print(json.dumps({
    "counts": {str(a): n for a, n in counts.iter_rows()},
    "columns": frame.columns,
}))
sys.stdout.flush()
os._exit(0)
"#;

/// Keeps reading the table's rows by account until the file `argv[2]` exists, one JSON line
/// per read: what a dashboard refreshing during a nightly rerun sees.
const WATCH: &str = r#"
import json, os, sys
from deltalake import DeltaTable
uri, stop = sys.argv[1:]
while True:
    last = os.path.exists(stop)
    rows = DeltaTable(uri).to_pyarrow_table(columns=["account_id"])
    counts = {}
    for a in rows.column("account_id").to_pylist():
        counts[str(a)] = counts.get(str(a), 0) + 1
    print(json.dumps(counts), flush=True)
    if last:
        break
sys.stdout.flush()
os._exit(0)
"#;

/// The contract's column names of a table, as JSON for the Python readers.
fn column_names(table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| n.as_str()).collect();
    serde_json::to_string(&names).expect("json")
}

/// Reads `account`'s rows of the table at `uri` (at `version`, or the latest) with delta-rs
/// and asserts they equal `want`; returns what the reader printed.
fn assert_account_reads(
    uri: &Path,
    account: u64,
    version: &str,
    name: &str,
    want: &Table,
) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join(format!("{name}.parquet"));
    let printed = run_python(
        DELTA_READ,
        &[
            uri.to_str().expect("utf-8"),
            &account.to_string(),
            version,
            &column_names(want),
            out.to_str().expect("utf-8"),
        ],
    );
    let info: Value = serde_json::from_str(&printed).expect("json");
    assert_same(
        name,
        "parquet",
        want,
        &read(dir.path(), name, "parquet", want),
    );
    assert_eq!(
        info["filled_elsewhere"],
        Value::Array(Vec::new()),
        "{name} of account {account}: other accounts' columns are null here: {info}"
    );
    if !want.rows.is_empty() {
        assert_eq!(info["accounts"], serde_json::json!([account]), "{info}");
    }
    info
}

fn history(uri: &Path) -> Vec<Value> {
    let printed = run_python(DELTA_HISTORY, &[uri.to_str().expect("utf-8")]);
    serde_json::from_str::<Vec<Value>>(&printed).expect("json")
}

/// Writes a pipeline committing accounts 1 to 3 to a Delta lake partitioned by day.
fn delta_pipeline(dir: &Path, lake: &Path) -> std::path::PathBuf {
    let file = dir.join("delta.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"${{CHATWOOT_BASE_URL}}\"\naccounts = [1, 2, 3]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [sink]\nformat = \"delta\"\ndestination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}/dt={{date}}\"\n",
            lake.display()
        ),
    )
    .expect("write");
    file
}

/// Runs the pipeline against `fake` and returns each account's rows by table, from the report.
fn run_pipeline(file: &Path, fake: &Fake) -> (crate::harness::Run, Value) {
    let base = fake.base_url();
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--json"],
        &[("CHATWOOT_API_TOKEN", TOKEN), ("CHATWOOT_BASE_URL", &base)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON report");
    (run, report)
}

fn fake(contacts: u64) -> Fake {
    Fake::start(FakeServerConfig {
        contacts,
        accounts: 3,
        ..FakeServerConfig::default()
    })
}

#[test]
fn a_nightly_pipeline_commits_each_account_once_and_a_rerun_replaces_its_partition() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    let file = delta_pipeline(dir.path(), &lake);
    let contacts_uri = lake.join("contacts");
    let inboxes_uri = lake.join("contact_inboxes");

    // Night one: three accounts, concurrently, into the same two tables.
    let first = fake(60);
    let (run, report) = run_pipeline(&file, &first);
    assert_no_token(&run, &lake);
    for account in report["accounts"].as_array().expect("accounts") {
        assert_eq!(account["status"], "complete", "{account}");
        assert_eq!(account["rows"]["contacts"], 60, "{account}");
    }
    let mut union = BTreeSet::new();
    for account in 1..=3 {
        let (contacts, inboxes) =
            expected::tables(&first.truth_of(account), &first.definitions_of(account));
        union.extend(contacts.columns.iter().map(|(n, _)| n.clone()));
        let info = assert_account_reads(&contacts_uri, account, "latest", "contacts", &contacts);
        assert_eq!(info["partitions"], serde_json::json!(["account_id", "dt"]));
        assert_account_reads(&inboxes_uri, account, "latest", "contact_inboxes", &inboxes);
    }
    // One schema for the table: every account's columns (schema evolution), then the
    // partition columns.
    let printed = run_python(POLARS_COUNTS, &[contacts_uri.to_str().expect("utf-8")]);
    let polars: Value = serde_json::from_str(&printed).expect("json");
    let columns: BTreeSet<String> = polars["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .filter(|c| c != "account_id" && c != "dt")
        .collect();
    assert_eq!(columns, union, "Polars reads every account's columns");
    assert_eq!(
        polars["counts"],
        serde_json::json!({"1": 60, "2": 60, "3": 60}),
        "{polars}"
    );
    // One commit per account and table, each carrying the run's facts.
    let night_one = history(&contacts_uri);
    assert_eq!(night_one.len(), 3, "{night_one:?}");
    let mut committed: Vec<u64> = night_one
        .iter()
        .map(|h| {
            assert_eq!(h["operation"], "WRITE", "{h}");
            assert_eq!(h["facts"]["rows"], 60, "{h}");
            assert_eq!(h["facts"]["table"], "contacts", "{h}");
            assert_eq!(h["facts"]["drift"]["unresolved"], 0, "{h}");
            assert!(h["facts"]["run_id"].is_string(), "{h}");
            h["facts"]["account_id"].as_u64().expect("account id")
        })
        .collect();
    committed.sort_unstable();
    assert_eq!(committed, vec![1, 2, 3]);
    assert_eq!(history(&inboxes_uri).len(), 3);

    // A rerun the same day, after the accounts lost contacts, with a dashboard reading the
    // table all along: each account's partition is replaced in one commit, so a read sees
    // that account's old rows or its new ones, never both and never none.
    let second = fake(45);
    let stop = dir.path().join("stop");
    let watcher = Command::new(python())
        .args(["-c", WATCH])
        .arg(&contacts_uri)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let (run, report) = run_pipeline(&file, &second);
    std::fs::write(&stop, "").expect("write");
    let watched = watcher.wait_with_output().expect("the watcher ends");
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let reads: Vec<Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    assert!(!reads.is_empty());
    for counts in &reads {
        for account in ["1", "2", "3"] {
            let n = counts[account].as_u64().unwrap_or(0);
            assert!(
                n == 60 || n == 45,
                "account {account} read {n} rows: {counts}"
            );
        }
    }
    assert_eq!(
        reads.last(),
        Some(&serde_json::json!({"1": 45, "2": 45, "3": 45})),
        "the last read, after the run: only the new rows"
    );
    assert_no_token(&run, &lake);
    for account in report["accounts"].as_array().expect("accounts") {
        assert_eq!(account["rows"]["contacts"], 45, "{account}");
        assert!(
            account["replaced"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "the report names the files the rerun took out of the table: {account}"
        );
    }
    let both_nights = history(&contacts_uri);
    assert_eq!(both_nights.len(), 6, "one more commit per account");
    for account in 1..=3 {
        let (contacts, inboxes) =
            expected::tables(&second.truth_of(account), &second.definitions_of(account));
        assert_account_reads(&contacts_uri, account, "latest", "contacts", &contacts);
        assert_account_reads(&inboxes_uri, account, "latest", "contact_inboxes", &inboxes);
        // Time travel: the version before the rerun holds night one's rows.
        let (before, _) =
            expected::tables(&first.truth_of(account), &first.definitions_of(account));
        assert_account_reads(&contacts_uri, account, "2", "contacts", &before);
        // The partition's manifest names the commit it describes.
        let partitions: Vec<_> =
            std::fs::read_dir(contacts_uri.join(format!("account_id={account}")))
                .expect("partition")
                .map(|e| e.expect("entry").path())
                .collect();
        assert_eq!(partitions.len(), 1, "one day: {partitions:?}");
        // It lives apart from the table, under the destination's _chatwoot_export/.
        let root = contacts_uri.parent().expect("the destination");
        let manifest_at = root
            .join("_chatwoot_export")
            .join(
                partitions[0]
                    .strip_prefix(root)
                    .expect("under the destination"),
            )
            .join("manifest.json");
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(manifest_at).expect("manifest"))
                .expect("json");
        let version = manifest["delta"]["version"].as_u64().expect("version");
        let commit = &both_nights[usize::try_from(version).expect("small")];
        assert_eq!(commit["facts"]["account_id"], account, "{commit}");
        assert_eq!(commit["facts"]["run_id"], manifest["run_id"], "{commit}");
        assert_eq!(manifest["tables"]["contacts"]["rows"], 45);
    }
    let printed = run_python(POLARS_COUNTS, &[contacts_uri.to_str().expect("utf-8")]);
    let polars: Value = serde_json::from_str(&printed).expect("json");
    assert_eq!(
        polars["counts"],
        serde_json::json!({"1": 45, "2": 45, "3": 45}),
        "Polars: the rerun's rows, never both runs': {polars}"
    );
}

#[test]
fn a_new_custom_attribute_is_added_to_the_table_by_schema_evolution() {
    // Accounts of the fake differ in their optional custom attributes: commit the account
    // with fewer columns first, then one that has a column the table lacks.
    let fake = Fake::start(FakeServerConfig {
        contacts: 40,
        accounts: 4,
        ..FakeServerConfig::default()
    });
    let columns = |account: u64| -> BTreeSet<String> {
        let (contacts, _) =
            expected::tables(&fake.truth_of(account), &fake.definitions_of(account));
        contacts.columns.into_iter().map(|(n, _)| n).collect()
    };
    let pair = (1..=4u64)
        .flat_map(|a| (1..=4u64).map(move |b| (a, b)))
        .find(|&(a, b)| !columns(b).is_subset(&columns(a)))
        .expect("two accounts of the fake with different custom attributes");
    let (narrow, wide) = pair;
    let added: Vec<String> = columns(wide)
        .difference(&columns(narrow))
        .cloned()
        .collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    let base = fake.base_url();
    for account in [narrow, wide] {
        let run = run_with_env(
            &[
                "contacts",
                "--base-url",
                &base,
                "--account-id",
                &account.to_string(),
                "--format",
                "delta",
                "--out",
                lake.to_str().expect("utf-8"),
                "--no-progress",
            ],
            &[("CHATWOOT_API_TOKEN", TOKEN)],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_no_token(&run, &lake);
    }
    let uri = lake.join("contacts");
    let (narrow_table, _) = expected::tables(&fake.truth_of(narrow), &fake.definitions_of(narrow));
    let (wide_table, _) = expected::tables(&fake.truth_of(wide), &fake.definitions_of(wide));
    let before = assert_account_reads(&uri, narrow, "0", "contacts", &narrow_table);
    let after = assert_account_reads(&uri, wide, "latest", "contacts", &wide_table);
    // The narrow account's rows read at the new version too: its new columns are null.
    assert_account_reads(&uri, narrow, "latest", "contacts", &narrow_table);
    let has = |info: &Value, column: &str| {
        info["columns"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == column))
    };
    for column in &added {
        assert!(!has(&before, column), "{column} at version 0: {before}");
        assert!(has(&after, column), "{column} at version 1: {after}");
    }
    assert_eq!(after["version"], 1, "one commit per run: {after}");
    assert_eq!(
        after["partitions"],
        serde_json::json!(["account_id"]),
        "contacts --out has no date in its path"
    );
    let commits = history(&uri);
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!(commits[1]["facts"]["account_id"], wide);
}

#[test]
fn contacts_to_s3_commit_a_delta_table_there_and_a_rerun_is_one_more_version() {
    let moto = crate::lake::Moto::start();
    let fake = Fake::with_contacts(50);
    let base = fake.base_url();
    let args = crate::lake::contacts_to(&base, "s3://lake/delta", &["--format", "delta"]);
    for _ in 0..2 {
        let run = run_with_env(&args, &moto.env());
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(!run.stderr.contains(TOKEN));
    }
    let options = serde_json::json!({
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    });
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
table = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]))
rows = table.to_pyarrow_table(columns=["id", "account_id"])
print(json.dumps({
    "version": table.version(),
    "ids": sorted(rows.column("id").to_pylist()),
    "accounts": sorted(set(rows.column("account_id").to_pylist())),
    "facts": [h.get("chatwoot_export", {}).get("rows") for h in table.history()],
}))
sys.stdout.flush()
os._exit(0)
"#;
    let printed = run_python(script, &["s3://lake/delta/contacts", &options.to_string()]);
    let got: Value = serde_json::from_str(&printed).expect("json");
    let mut ids: Vec<i64> = fake
        .truth()
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(got["version"], 1, "one commit per run: {got}");
    assert_eq!(got["ids"], serde_json::json!(ids), "the rerun's rows only");
    assert_eq!(got["accounts"], serde_json::json!([1]));
    assert_eq!(got["facts"], serde_json::json!([50, 50]), "{got}");
    let objects = crate::lake::objects(&moto.store(), "delta/contacts");
    let data: Vec<&str> = objects
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.ends_with(".parquet"))
        .collect();
    assert_eq!(
        data.len(),
        2,
        "the first run's file stays for time travel: {data:?}"
    );
}
