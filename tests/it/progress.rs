//! What a scheduled run shows on stderr (issue 18, "Honest progress"): progress lines when
//! stderr is not a terminal (the tests never have one), `--log-format json` making every
//! stderr line a JSON event for `contacts`, `run` and `demo`, and `--csv-excel` files read
//! back as a spreadsheet user's tools read them.

use std::time::Duration;

use chatwoot_export::fake::FakeServerConfig;
use chatwoot_export::progress::LINE_INTERVAL_ENV;
use serde_json::Value;

use crate::harness::{Fake, Run, TOKEN, assert_no_token, run_with_env};

/// A fake slow enough that a walk of its pages takes over a second.
fn slow_fake(contacts: u64) -> Fake {
    Fake::start(FakeServerConfig {
        contacts,
        latency: Duration::from_millis(40),
        ..FakeServerConfig::default()
    })
}

/// `contacts` with progress on (no `--no-progress`), a progress line every 100 ms.
fn contacts(fake: &Fake, out: &std::path::Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "contacts",
        "--base-url",
        &fake.base_url(),
        "--account-id",
        "1",
        "--format",
        "csv",
        "--concurrency",
        "2",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_with_env(
        &args,
        &[("CHATWOOT_API_TOKEN", TOKEN), (LINE_INTERVAL_ENV, "100")],
    )
}

/// Every stderr line as JSON; fails on the first line that is not a JSON object.
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}\n{stderr}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

#[test]
fn a_run_without_a_terminal_prints_progress_lines_with_pages_rate_and_eta() {
    // 1,500 contacts are 100 pages: at 2 in flight and 40 ms each, about 2 s of walk.
    let fake = slow_fake(1_500);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = contacts(&fake, &dir.path().join("out"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| {
            l.starts_with("chatwoot-export: progress: account 1: ") && l.contains(" pages (")
        })
        .collect();
    assert!(lines.len() >= 3, "a line every 100 ms: {}", run.stderr);
    let mut last_done = 0;
    for line in &lines {
        let pages = line
            .split(": ")
            .nth(3)
            .and_then(|rest| rest.split(" pages").next())
            .unwrap_or_else(|| panic!("pages in {line}"));
        let (done, planned) = pages.split_once('/').expect("done/planned");
        let done: u64 = done.replace(',', "").parse().expect("pages done");
        assert_eq!(planned, "100", "{line}");
        assert!(done >= last_done, "pages go forward: {}", run.stderr);
        last_done = done;
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" pages/s") && l.contains("  ETA ")),
        "a line with the rate and the ETA: {}",
        run.stderr
    );
    // The summary comes last and says what was waited for.
    let summary = run.stderr.lines().last().expect("a summary");
    assert!(
        summary.contains("exported 1,500 contacts")
            && summary.contains("0 retries, 0 429s, 0 s waiting for the rate limit"),
        "{summary}"
    );
    assert_no_token(&run, dir.path());
}

/// An incremental run's progress counts requests against the count it predicted before it
/// began (issue 19, "Budget-aware"), not pages of the whole account.
#[test]
fn an_incremental_run_shows_its_requests_against_the_prediction() {
    let fake = slow_fake(1_500);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let full = contacts(&fake, &out, &["--full"]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    fake.simulate_day(chatwoot_export::fake::DayPlan {
        created: 150,
        active: 150,
        deleted_old: 3,
        deleted_new: 2,
        edited: 0,
    });
    let run = contacts(&fake, &out, &["--incremental"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = crate::harness::manifest(&out).expect("manifest");
    assert_eq!(manifest["mode"], "incremental");
    let predicted = manifest["snapshot"]["requests_predicted"]
        .as_u64()
        .expect("requests_predicted");
    let spent = manifest["pages_fetched"].as_u64().expect("pages_fetched");
    let counts: Vec<(u64, u64)> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("chatwoot-export: progress: account 1: "))
        .filter_map(|l| l.split(": ").nth(3)?.split(" requests (").next())
        .filter_map(|pair| {
            let (done, planned) = pair.split_once('/')?;
            Some((
                done.replace(',', "").parse().ok()?,
                planned.replace(',', "").parse().ok()?,
            ))
        })
        .collect();
    assert!(counts.len() >= 2, "request lines: {}", run.stderr);
    // The bar starts at the prediction and grows only if the run needs more.
    assert_eq!(counts[0].1, predicted, "{}", run.stderr);
    for pair in counts.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 && pair[1].1 >= pair[0].1,
            "{:?}",
            pair
        );
    }
    for (done, planned) in &counts {
        assert!(
            done <= planned && *done <= spent,
            "{done}/{planned} of {spent}"
        );
        assert_eq!(*planned, predicted.max(*planned));
    }
    // The deletion search shows its requests too, up to the last.
    let last = counts.last().expect("a line");
    assert!(
        last.0 * 4 >= spent * 3,
        "{last:?} of {spent}: {}",
        run.stderr
    );
}

/// Regression (issue 18, 6): a run that waited for the rate limit said "0 rate-limited".
#[test]
fn a_rate_limited_run_says_its_429s_and_the_time_it_waited() {
    use chatwoot_export::fake::FaultConfig;
    // 8 requests a 1-second window, to be learned from the 429s (2 requests in flight).
    let fake = Fake::start(FakeServerConfig {
        contacts: 300,
        faults: FaultConfig {
            rate_limit: Some(8),
            rate_window_secs: 1,
            ..FaultConfig::default()
        },
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = contacts(
        &fake,
        &out,
        &["--rate-limit", "0", "--rate-window-secs", "1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = crate::harness::manifest(&out).expect("manifest");
    let throttled = manifest["throttled"].as_u64().expect("throttled");
    assert_eq!(throttled, fake.throttled());
    assert!(throttled > 0, "the limit had to be learned");
    let paused = manifest["rate"]["paused_secs"]
        .as_f64()
        .expect("paused_secs");
    let summary = run.stderr.lines().last().expect("a summary");
    assert!(
        summary.contains(&format!(
            "0 retries, {throttled} 429s, {paused:.0} s waiting for the rate limit, limit learned "
        )),
        "{summary}"
    );
    // The progress lines count the 429s as they come, and once the limit is learned the ETA
    // follows its pace.
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(" pages (") && l.contains("  429s ")),
        "{}",
        run.stderr
    );
}

#[test]
fn no_progress_lines_with_no_progress() {
    let fake = slow_fake(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = contacts(&fake, &dir.path().join("out"), &["--no-progress"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("progress:"), "{}", run.stderr);
}

#[test]
fn contacts_with_log_format_json_writes_only_json_on_stderr() {
    let fake = slow_fake(1_500);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = contacts(
        &fake,
        &dir.path().join("out"),
        &["--log-format", "json", "--table", "labels"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = json_lines(&run.stderr);
    // The walk's lines (a phase line says what goes on before and after it).
    let progress: Vec<&Value> = events(&lines, "progress")
        .into_iter()
        .filter(|l| l.get("phase").is_none())
        .collect();
    assert!(progress.len() >= 2, "{}", run.stderr);
    for line in &progress {
        assert_eq!(line["account_id"], 1);
        assert_eq!(line["pages_planned"], 100);
        assert!(line["pages_done"].as_u64().expect("pages_done") <= 100);
    }
    assert!(
        progress
            .iter()
            .any(|l| l["pages_per_sec"].as_f64().is_some()),
        "{}",
        run.stderr
    );
    let summary = events(&lines, "summary");
    assert_eq!(summary.len(), 1, "{}", run.stderr);
    assert_eq!(summary[0]["level"], "INFO");
    assert!(
        summary[0]["message"]
            .as_str()
            .expect("message")
            .starts_with("exported 1,500 contacts"),
        "{}",
        run.stderr
    );
    assert_no_token(&run, dir.path());
}

#[test]
fn an_error_with_log_format_json_is_a_json_event() {
    let fake = Fake::with_contacts(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = run_with_env(
        &[
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
            "--out",
            dir.path().join("out").to_str().expect("utf-8"),
            "--log-format",
            "json",
        ],
        &[("CHATWOOT_API_TOKEN", "not-the-token")],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let lines = json_lines(&run.stderr);
    let errors = events(&lines, "error");
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert_eq!(errors[0]["level"], "ERROR");
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("HTTP 401"),
        "{}",
        run.stderr
    );
}

#[test]
fn run_with_log_format_json_writes_only_json_on_stderr() {
    let fake = slow_fake(600);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("one.toml");
    let lake = dir.path().join("lake");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = {:?}\naccount_id = 1\n\n[fetch]\nconcurrency = 2\n\n\
             [sink]\nformat = \"csv\"\ndestination = {:?}\n",
            fake.base_url(),
            lake.to_str().expect("utf-8")
        ),
    )
    .expect("pipeline file");
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--log-format", "json"],
        &[("CHATWOOT_API_TOKEN", TOKEN), (LINE_INTERVAL_ENV, "100")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = json_lines(&run.stderr);
    assert!(!events(&lines, "progress").is_empty(), "{}", run.stderr);
    let summary = events(&lines, "summary");
    assert_eq!(summary.len(), 1, "{}", run.stderr);
    assert!(
        summary[0]["message"]
            .as_str()
            .expect("message")
            .contains("exported 600 contacts"),
        "{}",
        run.stderr
    );
    // The runner's own events are there too, as JSON.
    assert!(
        lines.iter().any(|l| l["message"] == "account started"),
        "{}",
        run.stderr
    );
    assert_no_token(&run, dir.path());
}

#[test]
fn demo_with_log_format_json_writes_only_json_on_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("demo");
    let run = run_with_env(
        &[
            "demo",
            "--contacts",
            "300",
            "--out",
            out.to_str().expect("utf-8"),
            "--log-format",
            "json",
        ],
        &[(LINE_INTERVAL_ENV, "100")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = json_lines(&run.stderr);
    assert_eq!(events(&lines, "fake_server").len(), 1, "{}", run.stderr);
    assert_eq!(events(&lines, "summary").len(), 1, "{}", run.stderr);
    // The demo's token (the fake's default) is no more in the output than a real one.
    assert!(!run.stderr.contains("fake-token"), "{}", run.stderr);
    assert!(run.stdout.contains("files: "), "{}", run.stdout);
}

/// Reads a CSV file as Python's `csv` module (`utf-8-sig`, which drops the byte-order mark)
/// and as DuckDB (every column as text) read it: `{"python": rows, "duckdb": rows}`, the
/// header first.
const READ_EXCEL_CSV: &str = r#"
import csv, json, sys
import duckdb
path = sys.argv[1]
with open(path, encoding="utf-8-sig", newline="") as f:
    python = [row for row in csv.reader(f)]
rel = duckdb.sql(f"SELECT * FROM read_csv('{path}', header=true, all_varchar=true)")
duck = [list(rel.columns)] + [["" if v is None else v for v in row] for row in rel.fetchall()]
print(json.dumps({"python": python, "duckdb": duck}))
"#;

/// Whether every line break outside a quoted cell is CRLF (a quoted cell keeps its own).
fn crlf_records(bytes: &[u8]) -> (usize, bool) {
    let (mut quoted, mut records, mut all_crlf) = (false, 0, true);
    for (i, byte) in bytes.iter().enumerate() {
        match byte {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                records += 1;
                all_crlf &= i > 0 && bytes[i - 1] == b'\r';
            }
            _ => {}
        }
    }
    (records, all_crlf)
}

/// A cell of a `--csv-excel` text column as the data had it: the `'` that `--csv-safe`
/// puts before a formula start taken off again.
fn unguarded(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

#[test]
fn csv_excel_has_a_bom_and_crlf_and_python_and_duckdb_read_the_truth() {
    use crate::expected::{Kind, tables};
    use crate::readers::{assert_same, read_file};

    let fake = Fake::with_contacts(300);
    let (contacts_truth, inboxes_truth) = tables(&fake.truth(), &fake.definitions());
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("excel");
    let run = crate::harness::export(&fake.base_url(), "csv", &out, &["--csv-excel"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = crate::harness::manifest(&out).expect("manifest");
    assert_eq!(manifest["csv_excel"], true);
    assert_eq!(manifest["csv_safe"], true, "--csv-excel protects formulas");
    for (table, expected) in [
        ("contacts", &contacts_truth),
        ("contact_inboxes", &inboxes_truth),
    ] {
        let path = out.join(format!("{table}.csv"));
        let bytes = std::fs::read(&path).expect("csv file");
        assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "{table}: a UTF-8 BOM");
        let (records, all_crlf) = crlf_records(&bytes);
        assert!(all_crlf, "{table}: every record ends with CRLF");
        assert_eq!(records, expected.rows.len() + 1, "{table}: header and rows");

        let read: Value = serde_json::from_str(
            crate::harness::run_python(READ_EXCEL_CSV, &[path.to_str().expect("utf-8")]).trim(),
        )
        .expect("the reader's JSON");
        let python = read["python"].as_array().expect("rows");
        assert_eq!(
            read["duckdb"], read["python"],
            "{table}: DuckDB and Python agree"
        );
        // Back to the lossless cells (and to CSV without BOM or CR), then compared with the
        // fake's truth by the same reader as every other CSV test.
        let header: Vec<String> = python[0]
            .as_array()
            .expect("header")
            .iter()
            .map(|c| c.as_str().expect("text").to_owned())
            .collect();
        let plain = dir.path().join(format!("{table}-plain.csv"));
        let mut writer = csv::Writer::from_path(&plain).expect("plain csv");
        writer.write_record(&header).expect("header");
        let mut guarded = 0;
        for row in &python[1..] {
            let cells: Vec<&str> = row
                .as_array()
                .expect("row")
                .iter()
                .zip(&header)
                .map(|(cell, name)| {
                    let cell = cell.as_str().expect("text");
                    if expected.kind(name) == Kind::Str && unguarded(cell) != cell {
                        guarded += 1;
                        unguarded(cell)
                    } else {
                        cell
                    }
                })
                .collect();
            writer.write_record(&cells).expect("row");
        }
        writer.flush().expect("flush");
        drop(writer);
        assert_same(table, "csv", expected, &read_file(&plain, "csv", expected));
        if table == "contacts" {
            assert!(
                guarded > 0,
                "the fake has +972... phones and formula-like names"
            );
            let phone = header
                .iter()
                .position(|h| h == "phone_number")
                .expect("phone");
            assert!(
                python[1..]
                    .iter()
                    .any(|r| r[phone].as_str().is_some_and(|p| p.starts_with("'+972"))),
                "phone numbers stay text in a spreadsheet"
            );
            assert!(
                python[1..]
                    .iter()
                    .flat_map(|r| r.as_array().expect("row"))
                    .any(|c| c.as_str().is_some_and(|c| c.contains("דנה כהן"))),
                "Hebrew read intact"
            );
        }
    }
}

#[test]
fn csv_excel_with_another_format_is_refused() {
    let fake = Fake::with_contacts(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = crate::harness::export(&fake.base_url(), "ndjson", dir.path(), &["--csv-excel"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "--csv-excel applies only to CSV, not --format ndjson: add --format csv or drop --csv-excel"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(fake.requests(), 0);
}

/// The tests' Python as a path: a bare `python3` found on PATH before PATH is replaced.
fn python_path() -> std::path::PathBuf {
    let python = std::path::PathBuf::from(crate::harness::python());
    if python.components().count() > 1 {
        return python;
    }
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|dir| dir.join(&python))
        .find(|file| file.is_file())
        .unwrap_or_else(|| panic!("{} is not on PATH", python.display()))
}

/// Regression (issue 18, 8): the demo's hint needed the `duckdb` command, which most machines
/// lack. Without it on PATH, a Python line comes too, and it runs.
#[test]
fn the_demo_hint_works_without_the_duckdb_command() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    // A wrapper, not a link: a venv's Python finds its packages from the path it was run by.
    let wrapper = bin.join("python3");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", python_path().display()),
    )
    .expect("python3");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("mode");
    let path = bin.to_str().expect("utf-8");
    let demo = |out: &str| {
        run_with_env(
            &[
                "demo",
                "--contacts",
                "40",
                "--format",
                "csv",
                "--no-progress",
                "--out",
                dir.path().join(out).to_str().expect("utf-8"),
            ],
            &[("PATH", path)],
        )
    };
    let run = demo("without");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hints: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("look:  "))
        .collect();
    assert_eq!(hints.len(), 2, "{}", run.stdout);
    assert!(hints[0].starts_with("duckdb -c "), "{}", run.stdout);
    let python = hints[1];
    assert!(python.starts_with("python3 -c "), "{}", run.stdout);
    let shown = std::process::Command::new("/bin/sh")
        .args(["-c", python])
        .env("PATH", path)
        .output()
        .expect("sh runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{python}: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let header = text.lines().next().expect("a header");
    for column in ["id", "name", "email", "created_at"] {
        assert!(header.contains(column), "{text}");
    }
    assert_eq!(text.lines().count(), 6, "the header and 5 contacts: {text}");

    // With a `duckdb` on PATH, its line is enough.
    let duckdb = bin.join("duckdb");
    std::fs::write(&duckdb, "#!/bin/sh\n").expect("duckdb");
    std::fs::set_permissions(&duckdb, std::fs::Permissions::from_mode(0o755)).expect("mode");
    let run = demo("with");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hints: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("look:"))
        .collect();
    assert_eq!(hints.len(), 1, "{}", run.stdout);
    assert!(hints[0].starts_with("look:  duckdb -c "), "{}", run.stdout);
}

#[test]
fn completions_and_the_man_page_come_from_the_clap_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let run = run_with_env(&["completions", shell], &[]);
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("contacts"), "{shell}: {}", run.stdout);
        // Flags of a subcommand are completed too.
        assert!(run.stdout.contains("csv-excel"), "{shell}");
    }
    let run = run_with_env(&["completions", "tcsh"], &[]);
    assert_eq!(
        run.code, 2,
        "an unknown shell is a usage error: {}",
        run.stderr
    );

    let run = run_with_env(&["man"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(".ie \\n(.g .ds Aq"),
        "roff: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains(".TH chatwoot-export 1"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("contacts"), "{}", run.stdout);

    let dir = tempfile::tempdir().expect("temp dir");
    let pages = dir.path().join("man1");
    let run = run_with_env(&["man", "--out-dir", pages.to_str().expect("utf-8")], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let contacts = std::fs::read_to_string(pages.join("chatwoot-export-contacts.1"))
        .expect("a page for contacts");
    assert!(contacts.contains("CHATWOOT_BASE_URL"), "env vars shown");
    assert!(contacts.contains("csv\\-excel"), "{contacts}");
}
