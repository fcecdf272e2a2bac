//! Drift: contacts deleted and created while the export runs (agents merging duplicates), with
//! server errors on top. Every scenario runs with several seeds and checks the export against
//! the fake's ground truth: every contact alive at the end exactly once, no contact twice,
//! contacts deleted during the run at most once, and a manifest whose counts agree. A repair
//! bound set too low must end with exit 5, `unresolved > 0` and no claim of completeness.

use std::collections::HashSet;
use std::path::Path;

use chatwoot_export::fake::{DriftRound, FakeServerConfig, FaultConfig};
use serde_json::Value;

use crate::harness::{Fake, Run, TOKEN, export, manifest, run_with_env};

/// Deletion rounds mostly behind the walk's position, as in issue 15's heavy scenario:
/// `rounds` rounds of `behind` + `ahead` deletions and `create` creations, every `every`
/// contact requests from request `first`.
fn rounds(
    first: u64,
    every: u64,
    rounds: u64,
    behind: u64,
    ahead: u64,
    create: u64,
) -> Vec<DriftRound> {
    (0..rounds)
        .map(|k| DriftRound {
            at_request: first + k * every,
            delete_behind: behind,
            delete_ahead: ahead,
            create,
        })
        .collect()
}

/// What one export of a drifting account showed.
struct Outcome {
    manifest: Value,
    /// Contacts the fake deleted during the run.
    deleted: usize,
}

/// Exports `fake` as NDJSON and checks the files against its truth; `env` adds variables.
fn export_and_check(fake: &Fake, dir: &Path, extra: &[&str], label: &str) -> Outcome {
    let run = export(&fake.base_url(), "ndjson", dir, extra);
    assert_eq!(run.code, 0, "{label}: {}", run.stderr);
    assert!(!run.stderr.contains(TOKEN), "{label}: the token leaked");
    let manifest = manifest(dir).expect("manifest");
    assert_exact_once(fake, dir, &manifest, label, &run);
    assert_eq!(manifest["complete"], true, "{label}: {manifest}");
    assert_eq!(manifest["drift"]["unresolved"], 0, "{label}: {manifest}");
    assert_eq!(
        manifest["drift"]["stopped"],
        Value::Null,
        "{label}: {manifest}"
    );
    Outcome {
        manifest,
        deleted: fake.deleted_ids().len(),
    }
}

/// Every contact alive at the end exactly once; nothing twice; anything else exported was
/// deleted during the run; the manifest's counts agree with the files and the account.
fn assert_exact_once(fake: &Fake, dir: &Path, manifest: &Value, label: &str, run: &Run) {
    let ids = crate::harness::ndjson_ids(dir);
    let exported: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        exported.len(),
        ids.len(),
        "{label}: a contact exported twice"
    );
    let live: HashSet<i64> = fake
        .truth()
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    let mut missing: Vec<&i64> = live.difference(&exported).collect();
    missing.sort_unstable();
    let complete = manifest["complete"] == true;
    if complete {
        assert!(
            missing.is_empty(),
            "{label}: contacts alive at the end are missing: {missing:?}\n{}\n{manifest}",
            run.stderr
        );
    }
    let deleted: HashSet<i64> = fake.deleted_ids().into_iter().collect();
    let extra: Vec<&i64> = exported.difference(&live).collect();
    assert!(
        extra.iter().all(|id| deleted.contains(id)),
        "{label}: exported contacts the account never listed: {extra:?}"
    );
    assert_eq!(manifest["unique_contacts"], ids.len() as u64, "{label}");
    if complete {
        assert_eq!(
            manifest["final_count"],
            live.len() as u64,
            "{label}: {manifest}"
        );
        assert_eq!(
            manifest["count_difference"],
            ids.len() as i64 - live.len() as i64,
            "{label}"
        );
        assert_eq!(
            manifest["drift"]["deleted_during_export"],
            extra.len() as u64,
            "{label}: {manifest}"
        );
    }
}

fn heavy(seed: u64) -> FakeServerConfig {
    FakeServerConfig {
        contacts: 3000,
        seed,
        // Five rounds of 8 deletions behind the walk and 1 ahead, 5 creations each: 45 and 25.
        drift_rounds: rounds(30, 25, 5, 8, 1, 5),
        faults: FaultConfig {
            fail_rate: 0.05,
            ..FaultConfig::default()
        },
        ..FakeServerConfig::default()
    }
}

#[test]
fn heavy_drift_behind_the_walk_with_server_errors_is_proven_exact() {
    for seed in [1, 2, 3] {
        let fake = Fake::start(heavy(seed));
        let dir = tempfile::tempdir().expect("temp dir");
        let label = format!("heavy seed {seed}");
        let outcome = export_and_check(&fake, dir.path(), &["--concurrency", "8"], &label);
        assert!(
            outcome.deleted >= 40,
            "{label}: the rounds deleted {}",
            outcome.deleted
        );
        let drift = &outcome.manifest["drift"];
        eprintln!(
            "{label}: pages {} requests {} repair requests {} recovered {} deleted {}",
            outcome.manifest["pages_fetched"],
            outcome.manifest["requests"],
            drift["requests"],
            drift["recovered"],
            drift["deleted_during_export"]
        );
    }
}

#[test]
fn rounds_of_deletions_behind_the_walk_alone_lose_nothing() {
    // Issue 15: six rounds of four deletions behind the walk, no errors, no creations.
    for seed in [11, 12, 13] {
        let fake = Fake::start(FakeServerConfig {
            contacts: 1500,
            seed,
            drift_rounds: rounds(15, 12, 6, 4, 0, 0),
            ..FakeServerConfig::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let label = format!("behind seed {seed}");
        let outcome = export_and_check(&fake, dir.path(), &["--concurrency", "8"], &label);
        assert_eq!(outcome.deleted, 24, "{label}");
    }
}

#[test]
fn drift_while_the_repair_runs_is_proven_exact() {
    // Deletions behind the walk make the repair work; every fourth filter request it sends
    // deletes a contact somewhere and creates one, with 5% server errors throughout.
    for seed in [21, 22] {
        let fake = Fake::start(FakeServerConfig {
            contacts: 1500,
            seed,
            drift_rounds: rounds(20, 15, 3, 5, 1, 2),
            filter_drift_every: Some(4),
            faults: FaultConfig {
                fail_rate: 0.05,
                ..FaultConfig::default()
            },
            ..FakeServerConfig::default()
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let label = format!("during repair seed {seed}");
        let outcome = export_and_check(&fake, dir.path(), &["--concurrency", "4"], &label);
        assert!(outcome.deleted > 18, "{label}: {}", outcome.deleted);
    }
}

#[test]
fn a_quiet_account_costs_the_check_a_small_fraction_of_the_walk() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 3000,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let outcome = export_and_check(&fake, dir.path(), &["--concurrency", "8"], "quiet");
    let pages = outcome.manifest["pages_fetched"].as_u64().expect("pages");
    let check = outcome.manifest["drift"]["requests"]
        .as_u64()
        .expect("requests");
    let all = outcome.manifest["requests"].as_u64().expect("requests");
    eprintln!("quiet: pages {pages} requests {all} check requests {check}");
    assert_eq!(outcome.manifest["drift"]["recovered"], 0);
    assert!(
        check * 10 <= pages,
        "the check took {check} requests for {pages} pages"
    );
    // The walk's pages, the check's and the pages sent with page 1 before the ledger.
    assert!(all <= pages + check + 9, "{all} requests in all");
}

#[test]
fn a_repair_bound_too_low_exits_5_and_does_not_claim_completeness() {
    for seed in [31, 32] {
        let fake = Fake::start(heavy(seed));
        let dir = tempfile::tempdir().expect("temp dir");
        let label = format!("low bound seed {seed}");
        let out = dir.path().to_str().expect("utf-8");
        let base = fake.base_url();
        let run = run_with_env(
            &[
                "contacts",
                "--base-url",
                &base,
                "--account-id",
                "1",
                "--format",
                "ndjson",
                "--out",
                out,
                "--no-progress",
                "--concurrency",
                "8",
            ],
            &[
                ("CHATWOOT_API_TOKEN", TOKEN),
                ("CHATWOOT_EXPORT_REPAIR_MAX_REQUESTS", "12"),
            ],
        );
        assert_eq!(run.code, 5, "{label}: {}", run.stderr);
        assert!(
            run.stderr.contains("could not be reconciled"),
            "{label}: {}",
            run.stderr
        );
        let manifest = manifest(dir.path()).expect("the files found are written, with a manifest");
        assert_eq!(manifest["complete"], false, "{label}: {manifest}");
        let drift = &manifest["drift"];
        assert!(
            drift["unresolved"].as_u64().expect("n") > 0,
            "{label}: {manifest}"
        );
        let stopped = drift["stopped"].as_str().expect("stopped says why");
        assert!(
            stopped.contains("request bound (12 requests)"),
            "{label}: {stopped}"
        );
        assert!(
            drift["requests"].as_u64().expect("n") <= 12,
            "{label}: {manifest}"
        );
        // What was written is still exact for what it holds.
        assert_exact_once(&fake, dir.path(), &manifest, &label, &run);
    }
}
