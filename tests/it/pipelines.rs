//! Pipeline files: every example in pipelines/ validates, `validate` lists every problem at
//! once, and pipelines run for real against the fake server (local folders, column filters,
//! several accounts with one failing).

use std::path::{Path, PathBuf};

use chatwoot_export::fake::{FakeServerConfig, FaultConfig};
use serde_json::Value;

use crate::expected;
use crate::harness::{Fake, Run, TOKEN, assert_no_token, run_python, run_with_env};
use crate::readers::{assert_same, read, read_files};

fn pipelines() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("pipelines/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Runs `pipelines/NAME` against the fake at `base_url` (account 1) into the folder `out`,
/// with more `--set KEY=VALUE` overrides.
pub fn run_example(name: &str, base_url: &str, out: &Path, sets: &[&str]) -> Run {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name);
    let base = format!("source.base_url={base_url}");
    let dest = format!("sink.destination={}", out.display());
    let mut args = vec![
        "run",
        file.to_str().expect("utf-8"),
        "--set",
        &base,
        "--set",
        &dest,
        "--set",
        "source.account_id=1",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    run_with_env(&args, &env(""))
}

fn env(base_url: &str) -> Vec<(&str, &str)> {
    vec![
        ("CHATWOOT_API_TOKEN", TOKEN),
        ("CHATWOOT_BASE_URL", base_url),
    ]
}

#[test]
fn every_example_pipeline_validates() {
    let files = pipelines();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for want in [
        "demo.toml",
        "multi-account.toml",
        "nightly-s3.toml",
        "oneoff-parquet.toml",
        "spreadsheet-csv.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "pipelines/{want} exists");
    }
    for file in files {
        let run = run_with_env(
            &["validate", file.to_str().expect("utf-8")],
            &env("https://chat.example.com"),
        );
        assert_eq!(run.code, 0, "{}: {}", file.display(), run.stderr);
        assert!(run.stderr.contains("is valid"), "{}", run.stderr);
        if file.ends_with("nightly-s3.toml") {
            assert!(
                run.stderr
                    .contains(", incremental (a full read every 7 days)"),
                "{}",
                run.stderr
            );
        }
    }
}

#[test]
fn validate_reports_every_problem_at_once_with_keys_and_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[source]\nbase_url = \"https://chat.example.com\"\naccount_id = 3\n\
         token = \"my-literal-token-123\"\ncolour = \"blue\"\n\n[fetch]\nconcurrency = \"many\"\n\n\
         [sink]\nformat = \"xlsx\"\ndestination = \"out\"\npath = \"{table}/{month}\"\n",
    )
    .expect("write");
    let run = run_with_env(&["validate", file.to_str().expect("utf-8")], &[]);
    assert_eq!(run.code, 2, "invalid configuration exits 2: {}", run.stderr);
    for want in [
        "source.token (line 4)",
        "source.colour (line 5): unknown key",
        "fetch.concurrency (line 8)",
        "sink.format (line 11)",
        "sink.path (line 13): unknown placeholder {month}",
    ] {
        assert!(
            run.stderr.contains(want),
            "{want:?} missing from:\n{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("my-literal-token-123"),
        "{}",
        run.stderr
    );
    // `run` refuses the same file with the same exit code, before any request.
    let run = run_with_env(&["run", file.to_str().expect("utf-8")], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("5 problems"), "{}", run.stderr);
}

/// Asserts that the Parquet tables in `out` hold the built-in fake account of `seed` (1,500
/// contacts): the same account, started here, is the ground truth.
fn assert_is_builtin_fake(out: &Path, seed: u64) {
    let fake = Fake::start(FakeServerConfig {
        contacts: 1500,
        seed,
        ..FakeServerConfig::default()
    });
    let (contacts, inboxes) = expected::tables(&fake.truth(), &fake.definitions());
    for (name, table) in [("contacts", &contacts), ("contact_inboxes", &inboxes)] {
        assert_same(name, "parquet", table, &read(out, name, "parquet", table));
    }
}

#[test]
fn the_quick_start_demo_exports_the_builtin_fake_and_its_duckdb_hint_works() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("demo");
    let run = run_with_env(
        &[
            "demo",
            "--out",
            out.to_str().expect("utf-8"),
            "--no-progress",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("exported 1,500 contacts")
            && run.stderr.contains("the account lists 1,500)"),
        "{}",
        run.stderr
    );
    assert_is_builtin_fake(&out, 42);
    // The one-liner it prints runs as printed (DuckDB's Python package in place of its CLI).
    let sql = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("look:  duckdb -c \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no DuckDB hint in {:?}", run.stdout));
    let rows = run_python(
        "import duckdb, sys; print(len(duckdb.sql(sys.argv[1]).fetchall()))",
        &[sql],
    );
    assert_eq!(rows.trim(), "5", "{sql}");
}

#[test]
fn the_demo_pipeline_exports_the_builtin_fake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("demo");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml");
    let set = format!("sink.destination={}", out.display());
    let run = run_with_env(
        &[
            "run",
            demo.to_str().expect("utf-8"),
            "--set",
            &set,
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON on stdout");
    assert_eq!(report["status"], "complete");
    assert_eq!(report["accounts"][0]["rows"]["contacts"], 1500);
    assert_is_builtin_fake(&out, 43);
}

#[test]
fn column_selection_and_csv_safe_from_the_spreadsheet_pipeline() {
    let fake = Fake::with_contacts(120);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("sheets");
    let run = run_example("spreadsheet-csv.toml", &fake.base_url(), &out, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !out.join("contact_inboxes.csv").exists(),
        "a disabled table is not written"
    );
    let mut reader = csv::Reader::from_path(out.join("contacts.csv")).expect("csv");
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(
        header,
        [
            "id",
            "name",
            "email",
            "phone_number",
            "created_at",
            "last_activity_at"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 120);
    let names: Vec<&str> = rows.iter().map(|r| &r[1]).collect();
    assert!(
        names.iter().all(|n| !n.starts_with(['=', '+', '-', '@'])),
        "csv_safe applied"
    );
    let truth = fake.truth();
    let formula = truth
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with('=')))
        .count();
    assert!(formula > 0, "the fake serves names starting with =");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("'=")).count(),
        formula
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let columns: Vec<&str> = manifest["tables"]["contacts"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(columns, header);
    assert!(manifest["tables"].get("contact_inboxes").is_none());
    assert_no_token(&run, dir.path());
}

#[test]
fn several_accounts_share_a_run_and_one_failure_loses_nothing_else() {
    // The fake's token belongs to account 1; account 2 exists but refuses it (401).
    let fake = Fake::with_contacts(90);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("multi.toml");
    let lake = dir.path().join("lake");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"${{CHATWOOT_BASE_URL}}\"\naccounts = [1, 2]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [fetch]\nconcurrency = 2\n[sink]\nformat = \"ndjson\"\ndestination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}/dt={{date}}\"\n",
            lake.display()
        ),
    )
    .expect("write");
    let base = fake.base_url();
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--json"],
        &env(&base),
    );
    assert_eq!(
        run.code, 3,
        "the failed account's exit code (auth): {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 2 accounts failed: account 2"),
        "{}",
        run.stderr
    );
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON report");
    assert_eq!(report["status"], "partial");
    let accounts = report["accounts"].as_array().expect("accounts");
    assert_eq!(accounts[0]["account_id"], 1);
    assert_eq!(accounts[0]["status"], "complete");
    assert_eq!(accounts[0]["rows"]["contacts"], 90);
    assert_eq!(accounts[1]["status"], "failed");
    assert_eq!(accounts[1]["exit_code"], 3);
    // Account 1's partitions are complete and readable.
    let day = std::fs::read_dir(lake.join("contacts/account_id=1"))
        .expect("partition")
        .next()
        .expect("dt=")
        .expect("entry")
        .path();
    assert!(
        day.file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("dt=")
    );
    let manifest_at = lake
        .join("_chatwoot_export/contacts/account_id=1")
        .join(day.file_name().expect("dt="))
        .join("manifest.json");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(manifest_at).expect("manifest"))
            .expect("json");
    let file_name = manifest["tables"]["contacts"]["files"][0]
        .as_str()
        .expect("file");
    let staged = tempfile::tempdir().expect("temp dir");
    std::fs::copy(day.join(file_name), staged.path().join("contacts.ndjson")).expect("copy");
    let truth = fake.truth();
    let (contacts, _) = expected::tables(&truth, &fake.definitions());
    assert_same(
        "contacts",
        "ndjson",
        &contacts,
        &read(staged.path(), "contacts", "ndjson", &contacts),
    );
    assert!(
        !lake.join("contacts/account_id=2").exists(),
        "nothing for the failed account"
    );
    assert_no_token(&run, dir.path());
}

#[test]
fn several_accounts_on_one_host_keep_within_one_shared_request_budget() {
    // One Chatwoot host serving three accounts behind one rate limit, as rack-attack counts
    // requests per client IP: 8 requests per 1-second window, aligned to the epoch, 429 without
    // Retry-After past that. Each account needs 9 requests (the attribute definitions, 7 pages
    // and the empty one after). With a budget per account, the three would send up to 3 x 8 =
    // 24 requests in the first window and the server would answer 16 of them 429; with the
    // one shared pace (0.9 of 8 a second) the run sends 7 or 8 a window, as the pace's phase
    // falls, and the server never throttles.
    const LIMIT: u64 = 8;
    let fake = Fake::start(FakeServerConfig {
        contacts: 105,
        accounts: 3,
        faults: FaultConfig {
            rate_limit: Some(LIMIT),
            rate_window_secs: 1,
            ..FaultConfig::default()
        },
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("budget.toml");
    let lake = dir.path().join("lake");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"${{CHATWOOT_BASE_URL}}\"\naccounts = [1, 2, 3]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [fetch]\nconcurrency = 4\nrate_limit = {LIMIT}\nrate_window_secs = 1\n\
             [sink]\nformat = \"parquet\"\ndestination = \"{}\"\npath = \"account_id={{account_id}}\"\n",
            lake.display()
        ),
    )
    .expect("write");
    let base = fake.base_url();
    let clock = std::time::Instant::now();
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--json"],
        &env(&base),
    );
    let elapsed = clock.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(fake.throttled(), 0, "no 429 across the accounts together");
    assert!(
        (LIMIT - 1..=LIMIT).contains(&fake.busiest_window()),
        "the accounts together wanted more than the limit, and got their share of it: {}",
        fake.busiest_window()
    );
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON report");
    let accounts = report["accounts"].as_array().expect("accounts");
    assert_eq!(accounts.len(), 3);
    // Each account reports its own requests, not the shared budget's total.
    let requests: u64 = accounts
        .iter()
        .map(|a| a["requests"].as_u64().expect("requests"))
        .sum();
    assert_eq!(requests, fake.requests(), "{report}");
    // 27 requests at 7.2 a second take more than three seconds; at 8 a window, more than two.
    assert!(elapsed > std::time::Duration::from_secs(2), "{elapsed:?}");
    // One run: every account's files share one schema per table, the union of theirs.
    let run_tables = expected::run_tables(
        &(1..=3)
            .map(|id| (fake.truth_of(id), fake.definitions_of(id)))
            .collect::<Vec<_>>(),
    );
    for account in accounts {
        let id = account["account_id"].as_u64().expect("id");
        assert_eq!(account["status"], "complete", "{account}");
        assert_eq!(account["throttled"], 0);
        assert_eq!(account["requests"], 9, "{account}");
        let partition = lake.join(format!("account_id={id}"));
        let manifest_at = lake.join(format!("_chatwoot_export/account_id={id}/manifest.json"));
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(manifest_at).expect("manifest"))
                .expect("json");
        let (contacts, inboxes) = &run_tables[id as usize - 1];
        for (table, want) in [("contacts", contacts), ("contact_inboxes", inboxes)] {
            let files: Vec<String> = manifest["tables"][table]["files"]
                .as_array()
                .expect("files")
                .iter()
                .map(|f| f.as_str().expect("name").to_owned())
                .collect();
            let (got, _) = read_files(&partition, &files, "parquet", want);
            assert_same(table, "parquet", want, &got);
        }
    }
    assert_ne!(
        fake.truth_of(1),
        fake.truth_of(2),
        "each account has data of its own"
    );
}

#[test]
fn several_small_accounts_send_no_speculative_requests() {
    // A single export asks for pages 2 to 8 with page 1, before it knows how many there are;
    // with several accounts on one budget that would waste up to 7 requests an account, so
    // each asks for page 1 alone, then for the pages it needs and the empty one after.
    let fake = Fake::start(FakeServerConfig {
        contacts: 20,
        accounts: 3,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("small.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"${{CHATWOOT_BASE_URL}}\"\naccounts = [1, 2, 3]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [sink]\nformat = \"csv\"\ndestination = \"{}\"\npath = \"account_id={{account_id}}\"\n",
            dir.path().join("lake").display()
        ),
    )
    .expect("write");
    let base = fake.base_url();
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--json"],
        &env(&base),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON report");
    for account in report["accounts"].as_array().expect("accounts") {
        assert_eq!(account["status"], "complete", "{account}");
        assert_eq!(account["rows"]["contacts"], 20, "{account}");
        // The definitions with page 1, then page 2 (the last of 15 + 5 contacts) and page 3
        // (empty) together.
        assert_eq!(account["requests"], 4, "{account}");
    }
    assert_eq!(fake.requests(), 12);
}
