//! Incremental runs into object store lakes and Delta tables: the base is the snapshot the
//! previous publish kept at the destination (`_chatwoot_export/snapshots/account_id=<id>/`),
//! not a local folder. Simulated nights against the fake server, the published tables read
//! back with pyarrow and the `deltalake` package and compared with a full export of the same
//! night, as tests/it/incremental.rs does for a local folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chatwoot_export::fake::{DayPlan, FakeServerConfig};
use serde_json::{Map, Value};

use crate::harness::{Fake, TOKEN, export, run_python, run_with_env};
use crate::incremental::{by_id, differing, expected_feed, feed_of};
use crate::lake::{Moto, assert_no_token_in, contacts_to, download, objects};

/// Prints the rows of a Parquet file (`parquet PATH`) or of account 1 in a Delta table
/// (`delta URI`, its partition columns dropped) as one JSON object a line.
const ROWS: &str = r#"
import datetime, decimal, json, os, sys
kind, path = sys.argv[1:3]
if kind == "delta":
    from deltalake import DeltaTable
    table = DeltaTable(path).to_pyarrow_table(filters=[("account_id", "=", 1)])
    table = table.select([c for c in table.column_names if c not in ("account_id", "dt")])
else:
    import pyarrow.parquet as pq
    table = pq.read_table(path)
def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value
for row in table.to_pylist():
    print(json.dumps({k: plain(v) for k, v in row.items()}, default=str))
sys.stdout.flush()
os._exit(0)
"#;

/// A table's rows as (id, row).
type Rows = Vec<(i64, Map<String, Value>)>;

/// A table's rows as (id, row), in the reader's order.
fn rows(kind: &str, path: &Path) -> Rows {
    run_python(ROWS, &[kind, path.to_str().expect("utf-8")])
        .lines()
        .map(|line| {
            let row: Map<String, Value> = serde_json::from_str(line).expect("a JSON object");
            let id = row["id"].as_i64().expect("an id");
            (id, row)
        })
        .collect()
}

/// A plain full export of the fake's account 1 now, in Parquet: the night's truth as a full
/// run reads it.
fn reference(fake: &Fake) -> (tempfile::TempDir, Rows, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "parquet", dir.path(), &[]);
    assert_eq!(run.code, 0, "reference: {}", run.stderr);
    let contacts = rows("parquet", &dir.path().join("contacts.parquet"));
    let manifest = crate::harness::manifest(dir.path()).expect("manifest");
    (dir, contacts, manifest)
}

/// Asserts that `ours` holds the contacts of `theirs` (a full export of the same moment),
/// except silently edited ones, which differ only in their edited values; returns those.
fn assert_matches_but_silent_edits(
    fake: &Fake,
    night: u32,
    ours: &BTreeMap<i64, Map<String, Value>>,
    theirs: &BTreeMap<i64, Map<String, Value>>,
) -> BTreeSet<i64> {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "night {night}: the contacts"
    );
    let silent: BTreeSet<i64> = fake.silently_edited().into_iter().collect();
    let mut stale = BTreeSet::new();
    for (id, mine) in ours {
        let keys = differing(mine, &theirs[id]);
        if keys.is_empty() {
            continue;
        }
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
    stale
}

/// The run ids in a `contact_changes` table's rows.
fn feed_run_ids(rows: &Rows) -> BTreeSet<String> {
    rows.iter()
        .map(|(_, row)| row["run_id"].as_str().expect("run_id").to_owned())
        .collect()
}

/// The day each night simulates: new, active, deleted and silently edited contacts.
fn a_day(night: u32) -> DayPlan {
    DayPlan {
        created: 20,
        active: 15,
        deleted_old: 2,
        deleted_new: u64::from(night > 1),
        edited: 5,
    }
}

/// Folders the runs left in the staging root that hold a downloaded snapshot (none should:
/// it is personal data, removed when the export is done).
fn downloaded_snapshots_left(cache: &Path) -> Vec<String> {
    crate::harness::all_file_bytes(cache)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.contains(".base/"))
        .collect()
}

/// `--full`, then two `--incremental` nights into an S3 bucket (moto): each night's published
/// contacts equal a full export of that night but for silent edits, the run builds on the
/// night before (its manifest's `base_run`), spends far fewer requests, and its change feed
/// is exact; one run id names the partition manifest, the change feed and the snapshot kept.
#[test]
fn nightly_incremental_runs_into_s3_build_on_the_snapshot_kept_there() {
    let moto = Moto::start();
    let store = moto.store();
    let fake = Fake::start(FakeServerConfig {
        contacts: 1500,
        ..FakeServerConfig::default()
    });
    let cache = tempfile::tempdir().expect("temp dir");
    let mut env = moto.env();
    env.push(("XDG_CACHE_HOME", cache.path().to_str().expect("utf-8")));
    let base = fake.base_url();
    let url = "s3://lake/nightly";
    let night_run = |mode: &str| {
        let run = run_with_env(
            &contacts_to(&base, url, &["--format", "parquet", mode]),
            &env,
        );
        assert!(!run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN));
        run
    };
    let snapshots = "nightly/_chatwoot_export/snapshots/account_id=1/";
    // The published partition, downloaded: its manifest, contacts and change feed.
    let published = || {
        let listed = objects(&store, "nightly");
        assert_no_token_in(&listed);
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = download(&listed, "nightly", dir.path());
        let kept: Vec<(String, Vec<u8>)> = listed
            .into_iter()
            .filter_map(|(name, bytes)| {
                name.strip_prefix(snapshots)
                    .map(|rest| (rest.to_owned(), bytes))
            })
            .collect();
        (dir, manifest, kept)
    };

    let first = night_run("--full");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let (dir, manifest, kept) = published();
    assert_eq!(manifest["mode"], "full");
    let mut previous_run = manifest["run_id"].as_str().expect("run_id").to_owned();
    let mut yesterday = by_id(&rows("parquet", &dir.path().join("contacts.parquet")));
    assert_eq!(yesterday.len(), 1500);
    assert_eq!(
        kept.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [
            format!("contacts.raw-{previous_run}.ndjson.zst").as_str(),
            "snapshot.json"
        ]
    );

    for night in 1..=2 {
        let report = fake.simulate_day(a_day(night));
        let run = night_run("--incremental");
        assert_eq!(run.code, 0, "night {night}: {}", run.stderr);
        assert!(
            !run.stderr.contains("no snapshot to build on"),
            "night {night}: {}",
            run.stderr
        );
        let (truth_dir, theirs, truth_manifest) = reference(&fake);
        let (dir, manifest, kept) = published();
        assert_eq!(manifest["complete"], true, "night {night}");
        assert_eq!(manifest["mode"], "incremental", "night {night}");
        assert_eq!(manifest["snapshot"]["base_run"], previous_run.as_str());
        // A third of a full run's at most, even at this size, where the deletion checks'
        // part counts are a large share (benches/incremental.py measures a real account).
        let requests = manifest["requests"].as_u64().expect("requests");
        let full_requests = truth_manifest["requests"].as_u64().expect("requests");
        assert!(
            requests * 3 < full_requests,
            "night {night}: {requests} requests, a full run {full_requests}"
        );
        assert_eq!(
            manifest["tables"]["contacts"]["columns"],
            truth_manifest["tables"]["contacts"]["columns"],
            "night {night}: columns"
        );

        let ours = rows("parquet", &dir.path().join("contacts.parquet"));
        assert_eq!(
            ours.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            theirs.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            "night {night}: contacts and order"
        );
        let today = by_id(&ours);
        let stale = assert_matches_but_silent_edits(&fake, night, &today, &by_id(&theirs));
        let carried = manifest["snapshot"]["not_reread"].as_u64().expect("count");
        assert!(stale.len() as u64 <= carried, "night {night}");
        for id in report
            .created
            .iter()
            .filter(|id| !report.deleted.contains(id))
        {
            assert!(today.contains_key(id), "night {night}: new contact {id}");
        }

        // The change feed: exactly what differs from last night's published contacts.
        let feed_rows = rows("parquet", &dir.path().join("contact_changes.parquet"));
        assert_eq!(
            feed_of(feed_rows.clone()),
            expected_feed(&yesterday, &today),
            "night {night}: contact_changes"
        );
        let run_id = manifest["run_id"].as_str().expect("run_id").to_owned();
        assert_eq!(
            feed_run_ids(&feed_rows),
            BTreeSet::from([run_id.clone()]),
            "the feed's run id is the published run's"
        );

        // The snapshot kept: this run's raw contacts and the pointer, nothing older.
        assert_eq!(
            kept.iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            [
                format!("contacts.raw-{run_id}.ndjson.zst").as_str(),
                "snapshot.json"
            ],
            "night {night}"
        );
        let pointer: Value = serde_json::from_slice(&kept[1].1).expect("pointer is JSON");
        assert_eq!(pointer["run_id"], run_id.as_str());
        assert_eq!(pointer["snapshot"]["raw_contacts"], today.len() as u64);
        assert!(downloaded_snapshots_left(cache.path()).is_empty());
        drop(truth_dir);
        previous_run = run_id;
        yesterday = today;
    }
}

/// The Delta table's latest version of account 1's partition, from its manifest (beside the
/// tables, under `_chatwoot_export/`).
fn delta_manifest(lake: &Path) -> Value {
    let path = lake.join("_chatwoot_export/contacts/account_id=1/manifest.json");
    serde_json::from_slice(&std::fs::read(&path).expect("partition manifest")).expect("JSON")
}

/// Nights of `--incremental` into a Delta table build on the snapshot while the table's latest
/// version is the snapshot's run; a commit by another writer makes the next one say so and read
/// every contact (exact, no silent edit left), and the night after builds on that run again.
#[test]
fn nightly_incremental_runs_into_a_delta_table_follow_its_latest_version() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 1200,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    let cache = tempfile::tempdir().expect("temp dir");
    let base = fake.base_url();
    let lake_text = lake.to_str().expect("utf-8").to_owned();
    let night_run = |mode: &str| {
        let run = run_with_env(
            &contacts_to(&base, &lake_text, &["--format", "delta", mode]),
            &[
                ("CHATWOOT_API_TOKEN", TOKEN),
                ("XDG_CACHE_HOME", cache.path().to_str().expect("utf-8")),
            ],
        );
        crate::harness::assert_no_token(&run, &lake);
        run
    };
    let contacts_uri = lake.join("contacts");
    let changes_uri = lake.join("contact_changes");

    let first = night_run("--full");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let mut previous_run = delta_manifest(&lake)["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    let mut yesterday = by_id(&rows("delta", &contacts_uri));

    for night in 1..=4 {
        let other_writer = night == 3;
        if other_writer {
            // Someone else deletes a row: the table is no longer the snapshot.
            let gone = *yesterday.keys().next().expect("a contact");
            run_python(
                "import os, sys\nfrom deltalake import DeltaTable\nDeltaTable(sys.argv[1]).delete(f'id = {sys.argv[2]}')\nos._exit(0)",
                &[contacts_uri.to_str().expect("utf-8"), &gone.to_string()],
            );
            yesterday = by_id(&rows("delta", &contacts_uri));
        }
        fake.simulate_day(a_day(night));
        let run = night_run("--incremental");
        assert_eq!(run.code, 0, "night {night}: {}", run.stderr);
        let (_truth_dir, theirs, truth_manifest) = reference(&fake);
        let full_requests = truth_manifest["requests"].as_u64().expect("requests");
        let manifest = delta_manifest(&lake);
        let today = by_id(&rows("delta", &contacts_uri));
        let stale = assert_matches_but_silent_edits(&fake, night, &today, &by_id(&theirs));
        let run_id = manifest["run_id"].as_str().expect("run_id").to_owned();
        // The run's facts in the table's log carry the same id as its manifest.
        let latest = run_python(
            "import json, os, sys\nfrom deltalake import DeltaTable\nh = DeltaTable(sys.argv[1]).history(1)[0]\nprint(json.dumps(h.get('chatwoot_export')))\nsys.stdout.flush()\nos._exit(0)",
            &[contacts_uri.to_str().expect("utf-8")],
        );
        let facts: Value = serde_json::from_str(latest.trim()).expect("JSON");
        assert_eq!(facts["run_id"], run_id.as_str(), "night {night}");
        if other_writer {
            assert!(
                run.stderr.contains(&format!(
                    "note: no snapshot to build on (the Delta table was changed by another writer since the snapshot's run {previous_run}): this run reads every contact"
                )),
                "{}",
                run.stderr
            );
            assert_eq!(manifest["mode"], "full");
            assert!(stale.is_empty(), "a full run is exact: {stale:?}");
            // Nothing to compare with, so no feed: last night's is gone from the latest version.
            assert_eq!(rows("delta", &changes_uri), Rows::new());
        } else {
            assert!(
                !run.stderr.contains("no snapshot to build on"),
                "night {night}: {}",
                run.stderr
            );
            assert_eq!(manifest["mode"], "incremental", "night {night}");
            assert_eq!(manifest["snapshot"]["base_run"], previous_run.as_str());
            let requests = manifest["requests"].as_u64().expect("requests");
            assert!(
                requests * 3 < full_requests,
                "night {night}: {requests} requests, a full run {full_requests}"
            );
            let feed_rows = rows("delta", &changes_uri);
            assert_eq!(
                feed_of(feed_rows.clone()),
                expected_feed(&yesterday, &today),
                "night {night}: contact_changes"
            );
            assert_eq!(feed_run_ids(&feed_rows), BTreeSet::from([run_id.clone()]));
        }
        assert!(downloaded_snapshots_left(cache.path()).is_empty());
        previous_run = run_id;
        yesterday = today;
    }
}

/// The snapshot objects of account 1 in a lake folder, with their bytes.
fn snapshot_files(lake: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = crate::harness::all_file_bytes(&lake.join("_chatwoot_export/snapshots"));
    files.sort();
    files
}

/// A publish that fails (a folder stands where the contacts file goes) after an incremental
/// run fetched everything leaves the previous snapshot's pointer and raw contacts as they
/// were, and the next run builds on that snapshot and publishes the night exactly.
#[test]
fn a_failed_publish_leaves_the_snapshot_and_the_next_run_builds_on_it() {
    let fake = Fake::with_contacts(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    std::fs::create_dir(&lake).expect("mkdir");
    let url = format!("file://{}", lake.display());
    let cache = tempfile::tempdir().expect("temp dir");
    let base = fake.base_url();
    let env = [
        ("CHATWOOT_API_TOKEN", TOKEN),
        ("XDG_CACHE_HOME", cache.path().to_str().expect("utf-8")),
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["--format", "parquet"];
        args.extend_from_slice(extra);
        run_with_env(&contacts_to(&base, &url, &args), &env)
    };
    let first = run(&["--full"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let manifest_path = lake.join("_chatwoot_export/manifest.json");
    let first_run: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("JSON");
    let before = snapshot_files(&lake);
    assert_eq!(
        before.len(),
        2,
        "{:?}",
        before.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    fake.simulate_day(DayPlan {
        created: 15,
        active: 10,
        deleted_old: 2,
        ..DayPlan::default()
    });
    let contacts_file = lake.join("contacts.parquet");
    std::fs::remove_file(&contacts_file).expect("rm");
    std::fs::create_dir_all(contacts_file.join("in-the-way")).expect("mkdir");
    let failed = run(&["--incremental"]);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("cannot upload") && failed.stderr.contains("contacts.parquet"),
        "{}",
        failed.stderr
    );
    assert_eq!(snapshot_files(&lake), before, "the snapshot changed");
    assert!(downloaded_snapshots_left(cache.path()).is_empty());

    std::fs::remove_dir_all(&contacts_file).expect("rm");
    let next = run(&["--incremental", "--restart"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("JSON");
    assert_eq!(manifest["mode"], "incremental");
    assert_eq!(manifest["snapshot"]["base_run"], first_run["run_id"]);
    // Nobody edited silently: the night is exact.
    let published = tempfile::tempdir().expect("temp dir");
    for table in ["contacts", "contact_inboxes"] {
        let name = format!("{table}.parquet");
        std::fs::copy(lake.join(&name), published.path().join(&name)).expect("copy");
    }
    std::fs::copy(&manifest_path, published.path().join("manifest.json")).expect("copy");
    crate::export::assert_export_matches(
        published.path(),
        "parquet",
        &fake.truth(),
        &fake.definitions(),
    );
    assert_ne!(
        snapshot_files(&lake),
        before,
        "the new night is the snapshot now"
    );
}

/// A nightly pipeline file (`[snapshot] mode = "incremental"`) of two accounts into a lake
/// folder partitioned by `{date}`: the first run reads everything and keeps each account's
/// snapshot at the destination, the next builds on it for both accounts (only account 1
/// changed) and replaces the day's partitions with contacts equal to a full export's but for
/// silent edits.
#[test]
fn a_nightly_pipeline_into_a_dated_lake_builds_on_each_accounts_snapshot() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 450,
        accounts: 2,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    let file = dir.path().join("nightly.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccounts = [1, 2]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\
             [sink]\nformat = \"parquet\"\ndestination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}/dt={{date}}\"\n\
             [snapshot]\nmode = \"incremental\"\n",
            fake.base_url(),
            lake.display()
        ),
    )
    .expect("write the pipeline");
    let cache = tempfile::tempdir().expect("temp dir");
    let env = [
        ("CHATWOOT_API_TOKEN", TOKEN),
        ("XDG_CACHE_HOME", cache.path().to_str().expect("utf-8")),
    ];
    let night = || {
        let run = run_with_env(&["run", file.to_str().expect("utf-8"), "--json"], &env);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_no_token_in(&crate::harness::all_file_bytes(&lake));
        let report: Value = serde_json::from_str(&run.stdout).expect("the run report");
        (run, report)
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let partition = |table: &str, account: u64| {
        lake.join(format!(
            "{table}/account_id={account}/dt={today}/{table}.parquet"
        ))
    };
    let manifest_of = |account: u64| -> Value {
        let path = lake.join(format!(
            "_chatwoot_export/contacts/account_id={account}/dt={today}/manifest.json"
        ));
        serde_json::from_slice(&std::fs::read(path).expect("the partition's manifest"))
            .expect("JSON")
    };

    let (first, _) = night();
    assert_eq!(
        first.stderr.matches("no snapshot to build on").count(),
        2,
        "{}",
        first.stderr
    );
    let full_requests = manifest_of(1)["requests"].as_u64().expect("requests");
    for account in [1, 2] {
        assert_eq!(manifest_of(account)["mode"], "full", "account {account}");
    }

    fake.simulate_day(a_day(1));
    let (second, report) = night();
    for account in [1, 2] {
        let manifest = manifest_of(account);
        assert_eq!(
            manifest["mode"], "incremental",
            "account {account}: {}",
            second.stderr
        );
        assert!(manifest["requests"].as_u64().expect("requests") < full_requests / 2);
    }
    for entry in report["accounts"].as_array().expect("accounts") {
        assert_eq!(entry["status"], "complete", "{entry}");
    }
    // Account 1 changed: its partition is the night's truth but for silent edits.
    let (_reference, theirs, _) = reference(&fake);
    let ours = by_id(&rows("parquet", &partition("contacts", 1)));
    assert_matches_but_silent_edits(&fake, 1, &ours, &by_id(&theirs));
    let changes = rows("parquet", &partition("contact_changes", 1));
    assert!(!changes.is_empty(), "account 1's change feed");
    // Account 2 did not: its feed is empty and its contacts are the server's.
    assert!(rows("parquet", &partition("contact_changes", 2)).is_empty());
    let ids_2: BTreeSet<i64> = rows("parquet", &partition("contacts", 2))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let truth_2: BTreeSet<i64> = fake
        .truth_of(2)
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids_2, truth_2);
    assert!(downloaded_snapshots_left(cache.path()).is_empty());
}
