//! Incremental snapshots and the change feed: a simulated week of nightly runs against the
//! fake server's simulated days, each night compared value by value with a full export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chatwoot_export::fake::{DayPlan, FakeServerConfig};
use serde_json::{Map, Value};

use crate::harness::{Fake, assert_no_token, export, manifest};

fn ids(truth: &[serde_json::Value]) -> BTreeSet<i64> {
    truth
        .iter()
        .map(|contact| contact["id"].as_i64().expect("an integer id"))
        .collect()
}

#[test]
fn a_simulated_day_changes_the_truth_as_reported() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 400,
        ..FakeServerConfig::default()
    });
    let before = ids(&fake.truth());
    let report = fake.simulate_day(DayPlan {
        created: 30,
        active: 20,
        deleted_old: 4,
        deleted_new: 2,
        edited: 6,
    });
    let truth = fake.truth();
    let after = ids(&truth);
    assert_eq!(report.deleted.len(), 6);
    for id in &report.created {
        assert!(!before.contains(id), "{id} is new");
    }
    let expected: BTreeSet<i64> = before
        .iter()
        .chain(&report.created)
        .filter(|id| !report.deleted.contains(id))
        .copied()
        .collect();
    assert_eq!(after, expected);
    // created_at stays in listing order, and new contacts are born on the simulated day.
    let created: Vec<i64> = truth
        .iter()
        .map(|c| c["created_at"].as_i64().expect("created_at"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]));
    assert!(*created.last().expect("contacts") <= report.clock);
    let silent = fake.silently_edited();
    assert!(!silent.is_empty());
    assert!(silent.iter().all(|id| report.edited.contains(id)));
}

/// `DIR/<table>.ndjson` as (id, row) in file order.
fn rows(dir: &Path, table: &str) -> Vec<(i64, Map<String, Value>)> {
    let text = std::fs::read_to_string(dir.join(format!("{table}.ndjson")))
        .unwrap_or_else(|err| panic!("{table}.ndjson in {}: {err}", dir.display()));
    text.lines()
        .map(|line| {
            let row: Map<String, Value> = serde_json::from_str(line).expect("a JSON object");
            let id = row
                .get("id")
                .or_else(|| row.get("contact_id"))
                .and_then(Value::as_i64)
                .expect("an id");
            (id, row)
        })
        .collect()
}

pub(crate) fn by_id(rows: &[(i64, Map<String, Value>)]) -> BTreeMap<i64, Map<String, Value>> {
    rows.iter().cloned().collect()
}

/// The keys whose values differ between two rows.
pub(crate) fn differing(a: &Map<String, Value>, b: &Map<String, Value>) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|key| a.get(*key) != b.get(*key))
        .cloned()
        .collect()
}

/// A change feed, by contact: (change, columns).
pub(crate) type Feed = BTreeMap<i64, (String, BTreeSet<String>)>;

/// The change feed of `dir`: (id, change, columns).
fn changes(dir: &Path) -> Feed {
    feed_of(rows(dir, "contact_changes"))
}

/// The change feed in the rows of a `contact_changes` table.
pub(crate) fn feed_of(rows: Vec<(i64, Map<String, Value>)>) -> Feed {
    rows.into_iter()
        .map(|(id, row)| {
            let change = row["change"].as_str().expect("change").to_owned();
            let columns: BTreeSet<String> = match &row["columns"] {
                Value::String(text) => serde_json::from_str(text).expect("a JSON array"),
                Value::Null => BTreeSet::new(),
                other => panic!("columns {other}"),
            };
            (id, (change, columns))
        })
        .collect()
}

/// The change feed from `yesterday`'s snapshot to `today`'s, by contact id: what
/// `contact_changes` must hold.
pub(crate) fn expected_feed(
    yesterday: &BTreeMap<i64, Map<String, Value>>,
    today: &BTreeMap<i64, Map<String, Value>>,
) -> Feed {
    let mut expected = Feed::new();
    for (id, row) in today {
        match yesterday.get(id) {
            None => {
                expected.insert(*id, ("added".into(), BTreeSet::new()));
            }
            Some(old) => {
                let keys = differing(old, row);
                if !keys.is_empty() {
                    expected.insert(*id, ("updated".into(), keys));
                }
            }
        }
    }
    for id in yesterday.keys().filter(|id| !today.contains_key(id)) {
        expected.insert(*id, ("removed".into(), BTreeSet::new()));
    }
    expected
}

/// A simulated week of nightly incremental runs: each night's snapshot equals a full export
/// of that night, except silently edited contacts the run did not read again, which differ
/// only in the edited values; the change feed lists exactly what changed since the night
/// before; the seventh night's --full brings the snapshot back to exact.
#[test]
fn a_week_of_nightly_incremental_runs_matches_full_exports() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 900,
        ..FakeServerConfig::default()
    });
    let snapshot = tempfile::tempdir().expect("temp dir");
    let first = export(&fake.base_url(), "ndjson", snapshot.path(), &["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_manifest = manifest(snapshot.path()).expect("manifest");
    assert_eq!(first_manifest["mode"], "full");
    assert_eq!(first_manifest["snapshot"]["raw_contacts"], 900);
    assert!(
        snapshot
            .path()
            .join("_chatwoot_export/contacts.raw.ndjson.zst")
            .is_file()
    );
    // No base yet: no change feed.
    assert!(!snapshot.path().join("contact_changes.ndjson").exists());
    let full_requests = first_manifest["requests"].as_u64().expect("requests");
    // Silently edited contacts the last incremental run carried over stale, and how many
    // nights had any.
    let mut last_stale: BTreeSet<i64> = BTreeSet::new();
    let mut stale_nights = 0;

    for night in 1..=7 {
        let yesterday = by_id(&rows(snapshot.path(), "contacts"));
        let report = fake.simulate_day(DayPlan {
            created: 25,
            active: 20,
            deleted_old: 3,
            deleted_new: u64::from(night > 1),
            edited: 6,
        });
        let refresh = night == 7;
        let mode = if refresh { "--full" } else { "--incremental" };
        let run = export(&fake.base_url(), "ndjson", snapshot.path(), &[mode]);
        assert_eq!(run.code, 0, "night {night}: {}", run.stderr);
        assert_no_token(&run, snapshot.path());
        let reference = tempfile::tempdir().expect("temp dir");
        let full = export(&fake.base_url(), "ndjson", reference.path(), &[]);
        assert_eq!(full.code, 0, "night {night} reference: {}", full.stderr);

        let ours = rows(snapshot.path(), "contacts");
        let theirs = rows(reference.path(), "contacts");
        let manifest = manifest(snapshot.path()).expect("manifest");
        assert_eq!(manifest["complete"], true, "night {night}");
        assert_eq!(
            manifest["mode"],
            if refresh { "full" } else { "incremental" }
        );
        // The same contacts in the same order, the same columns.
        let ids = |rows: &[(i64, Map<String, Value>)]| -> Vec<i64> {
            rows.iter().map(|(id, _)| *id).collect()
        };
        assert_eq!(
            ids(&ours),
            ids(&theirs),
            "night {night}: contacts and order"
        );
        assert_eq!(
            manifest["tables"]["contacts"]["columns"],
            crate::harness::manifest(reference.path()).expect("manifest")["tables"]["contacts"]["columns"],
            "night {night}: columns"
        );
        let silent: BTreeSet<i64> = fake.silently_edited().into_iter().collect();
        let mut stale = BTreeSet::new();
        for ((id, mine), (_, truth)) in ours.iter().zip(&theirs) {
            let keys = differing(mine, truth);
            if keys.is_empty() {
                continue;
            }
            assert!(
                !refresh,
                "night {night}: the full refresh differs on {id}: {keys:?}"
            );
            assert!(
                silent.contains(id),
                "night {night}: {id} differs ({keys:?}) but was not silently edited"
            );
            assert!(
                keys.iter().all(|k| k == "name" || k == "blocked"),
                "night {night}: {id} differs beyond the edit: {keys:?}"
            );
            stale.insert(*id);
        }
        if !refresh {
            let carried = manifest["snapshot"]["not_reread"].as_u64().expect("count");
            assert!(stale.len() as u64 <= carried, "night {night}");
            // Cheaper than reading everything, even here, where 900 contacts fill 7 days of
            // 10 pages each and every deletion costs a listing of its day (benches/incremental.py
            // measures a realistic account).
            let requests = manifest["requests"].as_u64().expect("requests");
            assert!(
                requests < full_requests,
                "night {night}: {requests} requests, a full run {full_requests}"
            );
            let predicted = manifest["snapshot"]["requests_predicted"]
                .as_u64()
                .expect("predicted");
            assert!(predicted > 0, "night {night}");
            assert!(
                run.stderr.contains("incremental run: about"),
                "{}",
                run.stderr
            );
        }
        // The inbox links are whole: silent edits never touch them.
        let links = |dir: &Path| -> Vec<String> {
            let text = std::fs::read_to_string(dir.join("contact_inboxes.ndjson")).expect("file");
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(
            links(snapshot.path()),
            links(reference.path()),
            "night {night}"
        );

        // The change feed: exactly what differs from last night's snapshot.
        let today = by_id(&ours);
        let expected = expected_feed(&yesterday, &today);
        let feed = changes(snapshot.path());
        assert_eq!(feed, expected, "night {night}: contact_changes");
        // Every one of the day's new and deleted contacts is in it.
        for id in &report.created {
            if !report.deleted.contains(id) {
                assert_eq!(feed.get(id).map(|c| c.0.as_str()), Some("added"), "{id}");
            }
        }
        for id in &report.deleted {
            if yesterday.contains_key(id) {
                assert_eq!(feed.get(id).map(|c| c.0.as_str()), Some("removed"), "{id}");
            }
        }
        let run_ids: BTreeSet<String> = rows(snapshot.path(), "contact_changes")
            .into_iter()
            .map(|(_, row)| row["run_id"].as_str().expect("run_id").to_owned())
            .collect();
        assert_eq!(
            run_ids.into_iter().collect::<Vec<_>>(),
            vec![manifest["run_id"].as_str().expect("run_id").to_owned()]
        );
        if refresh {
            // The refresh reads the stale contacts again: each is an update of its edit.
            for id in last_stale.iter().filter(|id| today.contains_key(id)) {
                let (change, columns) = feed.get(id).expect("the stale contact is in the feed");
                assert_eq!(change, "updated", "{id}");
                assert!(
                    columns.iter().all(|c| c == "name" || c == "blocked"),
                    "{id}"
                );
            }
        } else {
            stale_nights += usize::from(!stale.is_empty());
            last_stale = stale;
        }
    }
    // The week did hold contacts that only a full run could see.
    assert!(stale_nights > 0 && !last_stale.is_empty());
}

/// An incremental Parquet snapshot read back with pyarrow equals the server's data, value by
/// value, when nobody edited a contact silently.
#[test]
fn an_incremental_parquet_snapshot_matches_the_truth() {
    let fake = Fake::with_contacts(500);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "parquet", dir.path(), &["--full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for _ in 0..2 {
        fake.simulate_day(DayPlan {
            created: 40,
            active: 30,
            deleted_old: 5,
            deleted_new: 2,
            edited: 0,
        });
        let run = export(&fake.base_url(), "parquet", dir.path(), &["--incremental"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        crate::export::assert_export_matches(
            dir.path(),
            "parquet",
            &fake.truth(),
            &fake.definitions(),
        );
        let manifest = manifest(dir.path()).expect("manifest");
        assert_eq!(manifest["mode"], "incremental");
        assert_eq!(
            manifest["tables"]["contact_changes"]["files"][0],
            "contact_changes.parquet"
        );
    }
}

/// A failed incremental run (the server refuses the token) leaves the previous snapshot as it
/// was: the same manifest, files and raw contacts.
#[test]
fn a_failed_incremental_run_leaves_the_snapshot_untouched() {
    let fake = Fake::with_contacts(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "csv", dir.path(), &["--full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    fake.simulate_day(DayPlan {
        created: 10,
        active: 5,
        deleted_old: 1,
        ..DayPlan::default()
    });
    let before = crate::harness::all_file_bytes(dir.path());
    let out = dir.path().to_str().expect("utf-8");
    let failed = crate::harness::run_with_env(
        &[
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
            "--format",
            "csv",
            "--out",
            out,
            "--no-progress",
            "--incremental",
        ],
        &[("CHATWOOT_API_TOKEN", "wrong-token")],
    );
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    let mut after = crate::harness::all_file_bytes(dir.path());
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "the snapshot changed");
    // And the next run builds on it.
    let run = export(&fake.base_url(), "csv", dir.path(), &["--incremental"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        manifest(dir.path()).expect("manifest")["mode"],
        "incremental"
    );
}

/// One contact deleted deep in the past is found by a binary search over the pages of its
/// part, not by listing its day (10 pages here) or its part (25): the whole run stays within
/// a few dozen requests, and the snapshot is exact.
#[test]
fn a_single_old_deletion_costs_a_binary_search() {
    let fake = Fake::with_contacts(3000);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "ndjson", dir.path(), &["--full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = fake.simulate_day(DayPlan {
        deleted_old: 1,
        ..DayPlan::default()
    });
    let run = export(&fake.base_url(), "ndjson", dir.path(), &["--incremental"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ours: Vec<i64> = rows(dir.path(), "contacts")
        .iter()
        .map(|(id, _)| *id)
        .collect();
    let truth: Vec<i64> = fake
        .truth()
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ours, truth);
    let feed = changes(dir.path());
    assert_eq!(
        feed.into_iter().collect::<Vec<_>>(),
        vec![(report.deleted[0], ("removed".to_owned(), BTreeSet::new()))]
    );
    let requests = manifest(dir.path()).expect("manifest")["requests"]
        .as_u64()
        .expect("requests");
    // 19 when measured: the definitions, page 1 of the created and active sets and of 8
    // parts, the created set's other pages, 5 pages of binary search and the final count.
    // Bisecting down to the deleted contact's day and listing it took 26.
    assert!(requests <= 22, "{requests} requests");
}

/// A pipeline with `snapshot.mode = "incremental"` is a nightly schedule: the first run has
/// no base and reads everything, the next builds on it, a run whose last full read is older
/// than `full_refresh_every` reads everything again (and says why), and `run --full` forces
/// one. Each night's contacts equal the server's, except silent edits an incremental night
/// did not read, which the full refresh brings back.
#[test]
fn a_pipeline_schedule_is_incremental_with_full_refreshes() {
    let fake = Fake::with_contacts(400);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let file = dir.path().join("nightly.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccount_id = 1\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [sink]\nformat = \"ndjson\"\ndestination = \"{}\"\n\
             [snapshot]\nmode = \"incremental\"\n",
            fake.base_url(),
            out.display()
        ),
    )
    .expect("write the pipeline");
    let night = |extra: &[&str]| {
        let mut args = vec!["run", file.to_str().expect("utf-8"), "--no-progress"];
        args.extend_from_slice(extra);
        let run =
            crate::harness::run_with_env(&args, &[("CHATWOOT_API_TOKEN", crate::harness::TOKEN)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_no_token(&run, &out);
        (run, manifest(&out).expect("manifest"))
    };
    let day = || {
        fake.simulate_day(DayPlan {
            created: 20,
            active: 10,
            deleted_old: 2,
            deleted_new: 1,
            edited: 4,
        })
    };
    let ids_now = || ids(&fake.truth());
    let ids_written =
        |out: &Path| -> BTreeSet<i64> { crate::harness::ndjson_ids(out).into_iter().collect() };

    let (first, manifest) = night(&[]);
    assert!(
        first.stderr.contains("no snapshot to build on"),
        "{}",
        first.stderr
    );
    assert_eq!(manifest["mode"], "full");
    let full_requests = manifest["requests"].as_u64().expect("requests");

    day();
    let (second, manifest) = night(&[]);
    assert_eq!(manifest["mode"], "incremental", "{}", second.stderr);
    assert!(second.stderr.contains("incremental run: about"));
    assert!(manifest["requests"].as_u64().expect("requests") < full_requests / 2);
    assert_eq!(ids_written(&out), ids_now());

    // The last full read is older than 0 s: due.
    day();
    let (third, manifest) = night(&["--set", "snapshot.full_refresh_every=\"0s\""]);
    assert_eq!(manifest["mode"], "full");
    assert!(
        third
            .stderr
            .contains("(full_refresh_every): this run reads every contact"),
        "{}",
        third.stderr
    );
    // A full run with a base: the change feed is exact, and so is the snapshot.
    assert!(out.join("contact_changes.ndjson").is_file());
    crate::export::assert_export_matches(&out, "ndjson", &fake.truth(), &fake.definitions());

    day();
    let (_, manifest) = night(&["--full"]);
    assert_eq!(manifest["mode"], "full");
    assert_eq!(
        manifest["snapshot"]["verified_through"],
        manifest["started_at"]
    );
    day();
    let (_, manifest) = night(&[]);
    assert_eq!(manifest["mode"], "incremental");
    assert_eq!(ids_written(&out), ids_now());
}

/// `contacts --full-refresh-every` does for one command what the pipeline key does, and the
/// pipeline's snapshot keys are checked like every other key.
#[test]
fn full_refresh_every_on_the_command_line_and_its_checks() {
    let fake = Fake::with_contacts(120);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "ndjson", dir.path(), &["--full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--incremental", "--full-refresh-every", "0s"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(manifest(dir.path()).expect("manifest")["mode"], "full");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--incremental", "--full-refresh-every", "1w"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        manifest(dir.path()).expect("manifest")["mode"],
        "incremental"
    );
    let bad = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--incremental", "--full-refresh-every", "weekly"],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--full-refresh-every: \"weekly\" is not a duration"),
        "{}",
        bad.stderr
    );

    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[source]\nbase_url = \"http://127.0.0.1:9\"\naccount_id = 1\ntoken = \"${CHATWOOT_API_TOKEN}\"\n\
         [sink]\ndestination = \"out\"\n[snapshot]\nmode = \"nightly\"\nfull_refresh_every = \"7d\"\n",
    )
    .expect("write");
    let checked = crate::harness::run(&["validate", file.to_str().expect("utf-8"), "--offline"]);
    assert_eq!(checked.code, 2, "{}", checked.stderr);
    assert!(
        checked.stderr.contains(
            "snapshot.mode (line 8): must be plain, full or incremental, not \"nightly\""
        ),
        "{}",
        checked.stderr
    );
    std::fs::write(
        &file,
        "[source]\nbase_url = \"http://127.0.0.1:9\"\naccount_id = 1\ntoken = \"${CHATWOOT_API_TOKEN}\"\n\
         [sink]\ndestination = \"out\"\n[snapshot]\nfull_refresh_every = \"7d\"\n",
    )
    .expect("write");
    let checked = crate::harness::run(&["validate", file.to_str().expect("utf-8"), "--offline"]);
    assert_eq!(checked.code, 2, "{}", checked.stderr);
    assert!(
        checked.stderr.contains(
            "snapshot.full_refresh_every (line 8): applies only to mode = \"incremental\""
        ),
        "{}",
        checked.stderr
    );
}

/// Every file of `dir` but the work an interrupted run keeps: the previous snapshot, byte by
/// byte, sorted by path.
fn snapshot_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = crate::harness::all_file_bytes(dir)
        .into_iter()
        .filter(|(path, _)| !path.contains(".chatwoot-export.partial"))
        .collect();
    files.sort();
    files
}

/// The kept work's checkpoint in `dir`, if any.
fn checkpoint(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join(".chatwoot-export.partial/checkpoint.json")).ok()?;
    Some(serde_json::from_slice(&bytes).expect("the checkpoint is JSON"))
}

/// The one error line of a failed run's stderr (besides its notices).
fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0]
}

fn requests_of(dir: &Path) -> u64 {
    manifest(dir).expect("manifest")["requests"]
        .as_u64()
        .expect("requests")
}

/// Copies the files of `from` (a complete export, no subfolder but the raw contacts') into
/// `to`.
fn copy_export(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_export(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Issue 19: "a failed incremental run leaves the previous snapshot untouched and resumable
/// like any other run". The token is revoked in the middle of the deletion check, after the
/// created and active contacts were read: the run stops with the one-line message of a kept
/// failure, the previous snapshot is byte for byte as it was, a rerun without --resume is
/// refused, and --resume --incremental reads only what the first attempt had not, ending with
/// exactly the tables and change feed of an uninterrupted incremental run.
#[test]
fn an_incremental_run_that_fails_midway_resumes_to_the_same_snapshot() {
    let fake = Fake::with_contacts(1500);
    let dir = tempfile::tempdir().expect("temp dir");
    let first = export(&fake.base_url(), "ndjson", dir.path(), &["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let full_requests = requests_of(dir.path());
    fake.simulate_day(DayPlan {
        created: 40,
        active: 30,
        deleted_old: 6,
        deleted_new: 2,
        edited: 5,
    });
    // The uninterrupted run, on a copy of the same base.
    let reference = tempfile::tempdir().expect("temp dir");
    copy_export(dir.path(), reference.path());
    let before = fake.requests();
    let uninterrupted = export(
        &fake.base_url(),
        "ndjson",
        reference.path(),
        &["--incremental"],
    );
    assert_eq!(uninterrupted.code, 0, "{}", uninterrupted.stderr);
    let reference_requests = fake.requests() - before;
    assert_eq!(
        manifest(reference.path()).expect("manifest")["mode"],
        "incremental"
    );

    // The same run, its token revoked three requests before the end: the final count and the
    // last of the deletion check fail.
    let snapshot = snapshot_bytes(dir.path());
    let before = fake.requests();
    fake.revoke_token_after(Some(reference_requests - 3));
    let failed = export(&fake.base_url(), "ndjson", dir.path(), &["--incremental"]);
    let failed_requests = fake.requests() - before;
    fake.revoke_token_after(None);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    let message = error_line(&failed.stderr);
    assert!(
        message.contains("authentication failed")
            && message.ends_with("run the same command with --resume to continue"),
        "{message}"
    );
    assert_eq!(snapshot_bytes(dir.path()), snapshot, "the snapshot changed");
    let kept = checkpoint(dir.path()).expect("a checkpoint is kept");
    assert_eq!(kept["incremental"]["stage"], "listed", "{kept}");
    let listed_requests = kept["incremental"]["requests"].as_u64().expect("requests");
    assert!(listed_requests > 0);
    assert_no_token(&failed, dir.path());

    // A rerun without --resume would throw the work away: refused, as for a full run.
    let rerun = export(&fake.base_url(), "ndjson", dir.path(), &["--incremental"]);
    assert_eq!(rerun.code, 2, "{}", rerun.stderr);
    assert!(
        rerun
            .stderr
            .contains("--resume to continue it, or with --restart"),
        "{}",
        rerun.stderr
    );
    // So is a resume that is not incremental.
    let plain = export(&fake.base_url(), "ndjson", dir.path(), &["--resume"]);
    assert_eq!(plain.code, 2, "{}", plain.stderr);
    assert!(
        plain.stderr.contains("resume it with --incremental"),
        "{}",
        plain.stderr
    );
    assert_eq!(
        snapshot_bytes(dir.path()),
        snapshot,
        "a refusal changed the snapshot"
    );

    let before = fake.requests();
    let resumed = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--incremental", "--resume"],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let resumed_requests = fake.requests() - before;
    assert_no_token(&resumed, dir.path());
    assert!(checkpoint(dir.path()).is_none(), "the work folder stays");

    // The same snapshot as the uninterrupted run: rows, order, values, inbox links, and the
    // same change feed (its run ids aside).
    for table in ["contacts", "contact_inboxes"] {
        assert_eq!(
            rows(dir.path(), table),
            rows(reference.path(), table),
            "{table}"
        );
    }
    assert_eq!(changes(dir.path()), changes(reference.path()));
    let ours = manifest(dir.path()).expect("manifest");
    let theirs = manifest(reference.path()).expect("manifest");
    assert_eq!(ours["mode"], "incremental");
    assert_eq!(ours["complete"], true);
    assert_eq!(ours["resumes"], 1);
    assert_eq!(
        ours["tables"]["contacts"]["columns"],
        theirs["tables"]["contacts"]["columns"]
    );
    for key in [
        "raw_contacts",
        "newest_created_at",
        "newest_activity_at",
        "base_run",
        "changes",
    ] {
        assert_eq!(
            ours["snapshot"][key], theirs["snapshot"][key],
            "snapshot.{key}"
        );
    }
    // One run id across both attempts, in the feed too.
    let run_ids: BTreeSet<String> = rows(dir.path(), "contact_changes")
        .into_iter()
        .map(|(_, row)| row["run_id"].as_str().expect("run_id").to_owned())
        .collect();
    assert_eq!(
        run_ids.into_iter().collect::<Vec<_>>(),
        vec![ours["run_id"].as_str().expect("run_id").to_owned()]
    );
    // The resumed attempt read nothing the first had read: only the deletion check and the
    // final count again, and the attribute definitions.
    assert!(
        resumed_requests + listed_requests <= reference_requests + 1,
        "resumed {resumed_requests}, listed before {listed_requests}, uninterrupted {reference_requests}"
    );
    // The manifest counts both attempts' requests, and both together cost less than a full run.
    let counted = ours["requests"].as_u64().expect("requests");
    assert!(
        counted > resumed_requests && counted <= failed_requests + resumed_requests,
        "counted {counted}, attempts {failed_requests} + {resumed_requests}"
    );
    assert!(
        failed_requests + resumed_requests < full_requests,
        "{failed_requests} + {resumed_requests} requests, a full run {full_requests}"
    );
}

/// SIGTERM (what cron, systemd and CI send) in the middle of an incremental run stops it with
/// exit 130 and a checkpoint, not a kill: the snapshot stays as it was, and --resume ends with
/// the server's data, value by value (read back with pyarrow).
#[test]
fn sigterm_stops_an_incremental_run_and_resume_ends_exact() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let fake = Fake::start(FakeServerConfig {
        contacts: 1500,
        latency: Duration::from_millis(40),
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let first = export(&fake.base_url(), "parquet", dir.path(), &["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    fake.simulate_day(DayPlan {
        created: 30,
        active: 20,
        deleted_old: 8,
        deleted_new: 1,
        edited: 0,
    });
    let snapshot = snapshot_bytes(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_chatwoot-export"))
        .args([
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
        ])
        .args(["--format", "parquet", "--no-progress", "--concurrency", "1"])
        .arg("--out")
        .arg(dir.path())
        .arg("--incremental")
        .env("CHATWOOT_API_TOKEN", crate::harness::TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Once the first stage is saved, the deletion check is under way (a search of one request
    // at a time, 40 ms each).
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(dir.path()).is_none_or(|c| c["incremental"]["stage"] != "listed") {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of the first stage"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Into the second stage's requests, so that the resume goes on from the first stage's
    // checkpoint with some of the second's work lost.
    std::thread::sleep(Duration::from_millis(100));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("the export ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let message = error_line(&stderr);
    assert!(
        message.contains("interrupted after")
            && message.ends_with("run the same command with --resume to continue"),
        "{stderr}"
    );
    assert_eq!(snapshot_bytes(dir.path()), snapshot, "the snapshot changed");
    assert_eq!(
        checkpoint(dir.path()).expect("kept")["incremental"]["stage"],
        "listed"
    );

    let resumed = export(
        &fake.base_url(),
        "parquet",
        dir.path(),
        &["--incremental", "--resume"],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    crate::export::assert_export_matches(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["mode"], "incremental");
    assert_eq!(manifest["resumes"], 1);
}

/// A resumed --full run keeps the raw contacts like an uninterrupted one (it used to keep none,
/// so the next --incremental read everything again): its manifest has its snapshot and its
/// change feed, and the next incremental run builds on it, for a fraction of the requests, and
/// ends with the server's data.
#[test]
fn a_resumed_full_run_keeps_its_snapshot_for_the_next_incremental_run() {
    let fake = Fake::with_contacts(1500);
    let dir = tempfile::tempdir().expect("temp dir");
    let first = export(&fake.base_url(), "parquet", dir.path(), &["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let full_requests = requests_of(dir.path());
    let report = fake.simulate_day(DayPlan {
        created: 20,
        active: 10,
        deleted_old: 3,
        deleted_new: 0,
        edited: 0,
    });
    let snapshot = snapshot_bytes(dir.path());
    // The walk fails with a revoked token after 35 requests, about a third of its pages.
    fake.revoke_token_after(Some(35));
    let failed = export(&fake.base_url(), "parquet", dir.path(), &["--full"]);
    fake.revoke_token_after(None);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("run the same command with --resume to continue"),
        "{}",
        failed.stderr
    );
    assert_eq!(snapshot_bytes(dir.path()), snapshot, "the snapshot changed");
    let kept = checkpoint(dir.path()).expect("a checkpoint is kept");
    assert!(
        kept["raw"]["contacts"].as_u64().expect("raw contacts") > 0,
        "{kept}"
    );

    let resumed = export(
        &fake.base_url(),
        "parquet",
        dir.path(),
        &["--full", "--resume"],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    crate::export::assert_export_matches(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["mode"], "full");
    assert_eq!(manifest["resumes"], 1);
    let live = fake.truth().len() as u64;
    assert_eq!(manifest["snapshot"]["raw_contacts"], live, "{manifest}");
    // Compared with the base it replaced: the day's changes, exactly.
    let created = report.created.len() as u64;
    let deleted = report.deleted.len() as u64;
    assert_eq!(
        manifest["snapshot"]["changes"]["added"], created,
        "{manifest}"
    );
    assert_eq!(
        manifest["snapshot"]["changes"]["removed"], deleted,
        "{manifest}"
    );
    let full_run = manifest["run_id"].clone();

    fake.simulate_day(DayPlan {
        created: 20,
        active: 10,
        deleted_old: 2,
        deleted_new: 1,
        edited: 0,
    });
    let next = export(&fake.base_url(), "parquet", dir.path(), &["--incremental"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert!(
        !next.stderr.contains("reads every contact"),
        "{}",
        next.stderr
    );
    crate::export::assert_export_matches(dir.path(), "parquet", &fake.truth(), &fake.definitions());
    let manifest = crate::harness::manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["mode"], "incremental");
    assert_eq!(manifest["snapshot"]["base_run"], full_run);
    let requests = requests_of(dir.path());
    assert!(
        requests * 3 < full_requests,
        "{requests} requests, a full run {full_requests}"
    );
    // What it says a full run costs is not the resumed run's last attempt (a third of one).
    let said: u64 = next
        .stderr
        .split("(a full run: about ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cost notice: {}", next.stderr));
    assert!(
        said >= full_requests,
        "said {said}, a full run {full_requests}"
    );
}

/// An interrupted incremental run goes on only on the export it began with: when the folder's
/// export is another one by the time of --resume (its run id differs), the resume is refused
/// on one line that says to start over, and --restart does, on the export now there.
#[test]
fn a_resume_on_another_base_is_refused() {
    let fake = Fake::with_contacts(600);
    let dir = tempfile::tempdir().expect("temp dir");
    let first = export(&fake.base_url(), "csv", dir.path(), &["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    fake.simulate_day(DayPlan {
        created: 20,
        active: 10,
        deleted_old: 3,
        ..DayPlan::default()
    });
    // Revoked for the last two requests of the run (the final count and the last of the
    // deletion check), counted on a copy.
    let copy = tempfile::tempdir().expect("temp dir");
    copy_export(dir.path(), copy.path());
    let before = fake.requests();
    let whole = export(&fake.base_url(), "csv", copy.path(), &["--incremental"]);
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    fake.revoke_token_after(Some(fake.requests() - before - 2));
    let failed = export(&fake.base_url(), "csv", dir.path(), &["--incremental"]);
    fake.revoke_token_after(None);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    let kept = checkpoint(dir.path()).expect("a checkpoint is kept");
    assert_eq!(kept["incremental"]["stage"], "listed", "{kept}");
    // Another run id in the manifest: the export there is not the one the run began with.
    let path = dir.path().join("manifest.json");
    let mut replaced = manifest(dir.path()).expect("manifest");
    let old_run = replaced["run_id"].as_str().expect("run_id").to_owned();
    replaced["run_id"] = Value::String("20990101T000000Z-beef".into());
    std::fs::write(&path, serde_json::to_vec(&replaced).expect("json")).expect("write");

    let refused = export(
        &fake.base_url(),
        "csv",
        dir.path(),
        &["--incremental", "--resume"],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let message = error_line(&refused.stderr);
    assert!(
        message.contains(&format!("(run {old_run}, now 20990101T000000Z-beef)"))
            && message.ends_with("run with --restart to start over"),
        "{message}"
    );
    let restarted = export(
        &fake.base_url(),
        "csv",
        dir.path(),
        &["--incremental", "--restart"],
    );
    assert_eq!(restarted.code, 0, "{}", restarted.stderr);
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["mode"], "incremental");
    assert_eq!(manifest["resumes"], 0);
    assert_eq!(manifest["snapshot"]["base_run"], "20990101T000000Z-beef");
}

/// `contacts --plan --incremental` predicts the run's requests as the run itself does, before
/// anything is spent or written; without a snapshot, or with a full refresh due, it says the
/// run reads every contact.
#[test]
fn the_plan_of_an_incremental_run_predicts_its_requests() {
    let fake = Fake::with_contacts(600);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = |extra: &[&str]| {
        let mut args = vec!["--plan", "--json"];
        args.extend_from_slice(extra);
        let run = export(&fake.base_url(), "parquet", dir.path(), &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let plan: Value = serde_json::from_str(&run.stdout).expect("the plan as JSON");
        plan["accounts"][0].clone()
    };
    let none = plan(&["--incremental"]);
    assert!(none["incremental"].is_null());
    assert!(
        none["notes"][0]
            .as_str()
            .is_some_and(|note| note.starts_with("no snapshot to build on")),
        "{none}"
    );
    let run = export(&fake.base_url(), "parquet", dir.path(), &["--full"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let full = manifest(dir.path()).expect("manifest");
    fake.simulate_day(DayPlan {
        created: 40,
        active: 30,
        deleted_old: 4,
        deleted_new: 1,
        edited: 3,
    });
    let before = crate::harness::all_file_bytes(dir.path());
    let planned = plan(&["--incremental"]);
    assert_eq!(
        crate::harness::all_file_bytes(dir.path()),
        before,
        "the plan wrote"
    );
    let incremental = &planned["incremental"];
    assert_eq!(incremental["base_run"], full["run_id"]);
    assert_eq!(incremental["full_requests"], full["requests"]);
    let due = plan(&["--incremental", "--full-refresh-every", "0s"]);
    assert!(due["incremental"].is_null(), "{due}");

    let run = export(&fake.base_url(), "parquet", dir.path(), &["--incremental"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = manifest(dir.path()).expect("manifest");
    assert_eq!(after["mode"], "incremental");
    assert_eq!(
        incremental["requests"], after["snapshot"]["requests_predicted"],
        "the plan predicts what the run predicts"
    );
    let sent = after["requests"].as_u64().expect("requests");
    let predicted = incremental["requests"].as_u64().expect("requests");
    assert!(sent <= predicted + 2, "{sent} sent, {predicted} predicted");
}
