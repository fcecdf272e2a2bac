//! Never lose or duplicate a contact: server errors, dropped connections, a rate limit,
//! a malformed page, drift, kill -9 and Ctrl-C each end with the exact ground truth.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatwoot_export::fake::{FakeServerConfig, FaultConfig};
use serde_json::Value;

use crate::expected;
use crate::harness::{Fake, TOKEN, assert_no_token, export, interrupt, manifest};
use crate::readers::{assert_same, read};

pub(crate) fn assert_exact(dir: &Path, format: &str, truth: &[Value], definitions: &Value) {
    let (contacts, inboxes) = expected::tables(truth, definitions);
    assert_same(
        "contacts",
        format,
        &contacts,
        &read(dir, "contacts", format, &contacts),
    );
    assert_same(
        "contact_inboxes",
        format,
        &inboxes,
        &read(dir, "contact_inboxes", format, &inboxes),
    );
    let manifest = manifest(dir).expect("manifest");
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["unique_contacts"], truth.len() as u64);
}

fn faulty(contacts: u64, faults: FaultConfig) -> Fake {
    Fake::start(FakeServerConfig {
        contacts,
        faults,
        ..FakeServerConfig::default()
    })
}

#[test]
fn survives_server_errors_and_dropped_connections() {
    let fake = faulty(
        900,
        FaultConfig {
            fail_rate: 0.10,
            drop_rate: 0.05,
            ..FaultConfig::default()
        },
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "parquet",
        dir.path(),
        &["--concurrency", "6"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    let retries = manifest["retries"].as_u64().expect("retries");
    assert!(retries > 0, "about 15% of 61 requests failed: {manifest}");
    assert_eq!(
        manifest["requests"].as_u64().expect("requests"),
        fake.requests()
    );
    assert_no_token(&run, dir.path());
}

#[test]
fn a_malformed_page_is_fetched_again() {
    let fake = faulty(
        100,
        FaultConfig {
            malformed_page: Some(3),
            ..FaultConfig::default()
        },
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "csv", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "csv", &fake.truth(), &fake.definitions());
    assert_eq!(manifest(dir.path()).expect("manifest")["retries"], 1);
}

#[test]
fn learns_the_rate_limit_and_waits_for_windows_instead_of_storming() {
    // 8 requests per 1-second window; the exporter is told only the window length, so it
    // must learn the budget from the 429s.
    let fake = faulty(
        300,
        FaultConfig {
            rate_limit: Some(8),
            rate_window_secs: 1,
            ..FaultConfig::default()
        },
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &[
            "--rate-limit",
            "0",
            "--rate-window-secs",
            "1",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "ndjson", &fake.truth(), &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    let throttled = manifest["throttled"].as_u64().expect("throttled");
    assert_eq!(throttled, fake.throttled());
    // Learning takes two windows (the first, partial one proves nothing: someone else may
    // have used it), each costing the requests in flight when the 429 comes and a probe; a
    // storm would cost many times the 22 requests the export needs.
    assert!(throttled <= 12, "{throttled} 429s: {manifest}");
    assert!(throttled > 0, "the budget had to be learned");
    // The rate learned is the server's: 8 a second, 480 a minute.
    let rate = &manifest["rate"];
    assert_eq!(rate["mode"], "learned", "{manifest}");
    let limit = rate["limit_per_minute"].as_f64().expect("limit learned");
    assert!((430.0..=530.0).contains(&limit), "{limit}: {manifest}");
    assert_eq!(
        rate["cycle_secs"].as_f64().map(f64::round),
        Some(1.0),
        "{manifest}"
    );
}

#[test]
fn a_known_rate_limit_is_kept_without_429s() {
    let fake = faulty(
        300,
        FaultConfig {
            rate_limit: Some(8),
            rate_window_secs: 1,
            ..FaultConfig::default()
        },
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "parquet",
        dir.path(),
        &["--rate-limit", "8", "--rate-window-secs", "1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    assert_eq!(fake.throttled(), 0, "{}", run.stderr);
}

#[test]
fn drift_with_inserts_and_deletes_is_repaired() {
    // During the first 30 requests, every third deletes a contact somewhere and creates one:
    // deletions before the walk's offset shift pages back and hide contacts from the walk.
    let fake = Fake::start(FakeServerConfig {
        contacts: 600,
        drift_every: Some(3),
        drift_requests: Some(30),
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let truth = fake.truth();
    let ids = crate::harness::ndjson_ids(dir.path());
    let exported: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(exported.len(), ids.len(), "every contact at most once");
    let live: HashSet<i64> = truth
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    let missing: Vec<&i64> = live.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "contacts the account lists are missing: {missing:?}\n{}",
        run.stderr
    );
    // Anything else exported existed when it was fetched and was deleted afterwards.
    let extra = exported.difference(&live).count() as u64;
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["drift"]["unresolved"], 0, "{manifest}");
    assert!(
        manifest["drift"]["recovered"].as_u64().expect("n") > 0,
        "the walk missed some: {manifest}"
    );
    assert_eq!(manifest["drift"]["deleted_during_export"], extra);
    assert!(
        run.stderr.contains("the repair recovered"),
        "{}",
        run.stderr
    );
}

/// Starts an export of `fake` into `dir` in the background (slow enough to interrupt).
fn start_export(fake: &Fake, dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chatwoot-export"))
        .args([
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
            "--format",
            "parquet",
        ])
        .args(["--no-progress", "--concurrency", "2", "--out"])
        .arg(dir)
        .args(extra)
        .env("CHATWOOT_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits until the export in `dir` has checkpointed at least `pages` pages.
fn wait_for_checkpoint(dir: &Path, pages: u64) {
    let path = dir.join(".chatwoot-export.partial/checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let next_page = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|checkpoint| checkpoint["walk"]["next_page"].as_u64());
        if next_page.is_some_and(|next| next > pages) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no checkpoint past page {pages} within 60 s");
}

fn slow_fake() -> Fake {
    Fake::start(FakeServerConfig {
        contacts: 3000,
        latency: Duration::from_millis(15),
        ..FakeServerConfig::default()
    })
}

fn resume(fake: &Fake, dir: &Path) -> crate::harness::Run {
    export(
        &fake.base_url(),
        "parquet",
        dir,
        &["--resume", "--concurrency", "2"],
    )
}

#[test]
fn kill_9_then_resume_ends_exact() {
    let fake = slow_fake();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = start_export(&fake, dir.path(), &[]);
    wait_for_checkpoint(dir.path(), 40);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        manifest(dir.path()).is_none(),
        "a killed run has no manifest"
    );
    let before = fake.requests();
    let run = resume(&fake, dir.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    let resumed_requests = fake.requests() - before;
    assert!(
        resumed_requests < 200,
        "finished pages were fetched again: {resumed_requests} requests"
    );
    assert_eq!(manifest(dir.path()).expect("manifest")["resumes"], 1);
    assert_no_token(&run, dir.path());
}

#[test]
fn ctrl_c_stops_with_exit_130_and_resume_ends_exact() {
    let fake = slow_fake();
    let dir = tempfile::tempdir().expect("temp dir");
    let child = start_export(&fake, dir.path(), &[]);
    wait_for_checkpoint(dir.path(), 40);
    let stopped = interrupt(child);
    let stderr = &stopped.stderr;
    assert_eq!(stopped.code, 130, "{stderr}");
    assert!(
        stderr.contains("interrupted after") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(manifest(dir.path()).is_none());

    // Changed options are refused rather than mixed into one export.
    let csv = export(&fake.base_url(), "csv", dir.path(), &["--resume"]);
    assert_eq!(csv.code, 2, "{}", csv.stderr);
    assert!(
        csv.stderr.contains("format parquet (now csv)"),
        "{}",
        csv.stderr
    );

    let run = resume(&fake, dir.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(dir.path(), "parquet", &fake.truth(), &fake.definitions());
}

#[test]
fn resume_without_an_interrupted_export_is_refused() {
    let fake = Fake::with_contacts(10);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = resume(&fake, dir.path());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no interrupted export to resume"),
        "{}",
        run.stderr
    );
}
