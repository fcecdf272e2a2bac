//! Staged (object store) exports keep their work (issue 15): Ctrl-C mid-walk of an S3 export
//! through moto keeps the staged pages in the job's fixed staging place, a rerun without
//! `--resume` refuses to discard them (exit 2), `--resume` ends exact without fetching the
//! finished pages again and keeps the drift proof (the ledger travels in the checkpoint),
//! `--restart` starts over, a second run of the same job refuses on its lock, and
//! `run FILE --resume` does the same for every account of a pipeline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatwoot_export::fake::FakeServerConfig;
use serde_json::Value;

use crate::expected;
use crate::harness::{Fake, TOKEN, interrupt, run_with_env};
use crate::lake::{Moto, contacts_to, download, objects};
use crate::readers::{assert_same, read};

/// A fake whose walk takes a few seconds: room to interrupt it mid-walk.
fn slow_fake(accounts: u64) -> Fake {
    Fake::start(FakeServerConfig {
        contacts: 3000,
        accounts,
        latency: Duration::from_millis(15),
        ..FakeServerConfig::default()
    })
}

/// Moto, a slow fake with `accounts` accounts, and a cache folder of the test's own, where
/// the staging places go (no test leaves kept work in the real `~/.cache`).
fn s3_job(accounts: u64) -> (Moto, Fake, tempfile::TempDir) {
    let cache = tempfile::tempdir().expect("temp dir");
    (Moto::start(), slow_fake(accounts), cache)
}

/// Moto's environment, with the staging places under `cache`.
fn job_env<'a>(moto: &'a Moto, cache: &'a Path) -> Vec<(&'a str, &'a str)> {
    let mut env = moto.env();
    env.push(("XDG_CACHE_HOME", cache.to_str().expect("utf-8")));
    env
}

/// The staging places' root under the test's own cache folder.
fn staging_root(cache: &Path) -> PathBuf {
    cache.join("chatwoot-export").join("staging")
}

/// The checkpoints of every staging place under `cache`, parsed.
fn staged_checkpoints(cache: &Path) -> Vec<(PathBuf, Value)> {
    let Ok(entries) = std::fs::read_dir(staging_root(cache)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let folder = entry.path();
            let bytes =
                std::fs::read(folder.join(".chatwoot-export.partial/checkpoint.json")).ok()?;
            Some((folder, serde_json::from_slice(&bytes).ok()?))
        })
        .collect()
}

/// Waits until `places` staging places have checkpointed more than `pages` pages each.
fn wait_for_staged_pages(cache: &Path, places: usize, pages: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let past = staged_checkpoints(cache)
            .iter()
            .filter(|(_, c)| c["walk"]["next_page"].as_u64().is_some_and(|n| n > pages))
            .count();
        if past >= places {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {places} staged checkpoints past page {pages} within 60 s");
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatwoot-export"));
    command
        .args(args)
        .env_remove("CHATWOOT_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("the binary starts")
}

/// Asserts that the partition holds account `account_id`'s contacts and inbox links exactly
/// as the fake serves them (in the schema of a job of `accounts` accounts), and returns the
/// contacts partition's manifest.
fn assert_partitions_exact(
    moto: &Moto,
    fake: &Fake,
    (account_id, accounts): (u64, u64),
    partition: &dyn Fn(&str) -> String,
) -> Value {
    let listed = objects(&moto.store(), "");
    // The job's accounts (1 to `accounts`) wrote one schema per table, the union of theirs.
    let (contacts, inboxes) = if accounts > 1 {
        let all: Vec<(Vec<Value>, Value)> = (1..=accounts)
            .map(|id| (fake.truth_of(id), fake.definitions_of(id)))
            .collect();
        expected::run_tables(&all).swap_remove(account_id as usize - 1)
    } else {
        expected::tables(&fake.truth_of(account_id), &fake.definitions_of(account_id))
    };
    let mut manifests = Vec::new();
    for (name, table) in [("contacts", &contacts), ("contact_inboxes", &inboxes)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = download(&listed, &partition(name), dir.path());
        assert_eq!(manifest["complete"], true, "{manifest}");
        assert_same(
            name,
            "parquet",
            table,
            &read(dir.path(), name, "parquet", table),
        );
        manifests.push(manifest);
    }
    for (name, bytes) in &listed {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "token in {name}"
        );
    }
    manifests.swap_remove(0)
}

#[test]
fn ctrl_c_mid_s3_export_keeps_the_work_a_rerun_refuses_and_resume_ends_exact() {
    let (moto, fake, cache) = s3_job(1);
    let env = job_env(&moto, cache.path());
    let base = fake.base_url();
    let args = contacts_to(&base, "s3://lake/resumed", &["--concurrency", "2"]);

    let child = spawn(&args, &env);
    wait_for_staged_pages(cache.path(), 1, 40);
    let stopped = interrupt(child);
    assert_eq!(stopped.code, 130, "{}", stopped.stderr);
    let kept = staged_checkpoints(cache.path());
    assert_eq!(kept.len(), 1, "one staging place");
    let (place, checkpoint) = &kept[0];
    let place_text = place.display().to_string();
    assert!(
        stopped.stderr.contains(&place_text) && stopped.stderr.contains("--resume"),
        "the message says where the work is and how to go on: {}",
        stopped.stderr
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for folder in [place.as_path(), &staging_root(cache.path())] {
            let mode = std::fs::metadata(folder)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{}", folder.display());
        }
    }
    // 3,000 contacts is a large account: the ledger was taken and is in the checkpoint.
    assert!(
        checkpoint["ledger"]["parts"].is_array(),
        "the drift ledger is kept: {checkpoint}"
    );
    assert!(
        objects(&moto.store(), "resumed").is_empty(),
        "nothing was published"
    );

    // A rerun without --resume refuses to throw the work away, in one line with both choices.
    let refused = run_with_env(&args, &env);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(
        refused.stderr.trim_end(),
        format!(
            "chatwoot-export: error: an interrupted export of account 1 is kept in {place_text}: \
             run the same command with --resume to continue it, or with --restart to discard it and start over"
        )
    );
    assert!(place.exists(), "the refusal keeps the work");

    let done_pages = checkpoint["walk"]["next_page"].as_u64().expect("next_page") - 1;
    let planned = checkpoint["walk"]["planned_pages"]
        .as_u64()
        .expect("planned");
    let before = fake.requests();
    let mut resume_args = args.clone();
    resume_args.push("--resume");
    let resumed = run_with_env(&resume_args, &env);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(!resumed.stderr.contains(TOKEN));
    let manifest = assert_partitions_exact(&moto, &fake, (1, 1), &|_| "resumed".into());
    assert_eq!(manifest["resumes"], 1);
    // The drift proof survives the resume: proven complete from the kept ledger.
    let drift = &manifest["drift"];
    assert_eq!(drift["unresolved"], 0, "{drift}");
    assert_eq!(drift["stopped"], Value::Null, "{drift}");
    assert_eq!(manifest["count_difference"], 0, "{manifest}");
    assert_eq!(
        manifest["unique_contacts"].as_u64(),
        Some(fake.truth().len() as u64)
    );
    // No finished page fetched again: the pages left, the one past the plan that ends the
    // walk, and the drift check's requests (which count the ledger's, sent by the first run).
    let resumed_requests = fake.requests() - before;
    let remaining = planned + 1 - done_pages;
    let check = drift["requests"].as_u64().expect("drift.requests");
    eprintln!(
        "resumed S3 export: {resumed_requests} requests, {remaining} pages left, {check} drift check requests"
    );
    assert!(
        resumed_requests <= remaining + check,
        "finished pages were fetched again: {resumed_requests} requests for {remaining} pages left and {check} check requests"
    );
    assert!(!place.exists(), "a published export leaves no staging");
}

#[test]
fn a_second_run_of_the_same_job_refuses_on_its_lock_and_restart_starts_over() {
    let (moto, fake, cache) = s3_job(1);
    let env = job_env(&moto, cache.path());
    let base = fake.base_url();
    let args = contacts_to(&base, "s3://lake/locked", &["--concurrency", "2"]);

    let first = spawn(&args, &env);
    wait_for_staged_pages(cache.path(), 1, 10);
    let mut restart_args = args.clone();
    restart_args.push("--restart");
    let second = run_with_env(&restart_args, &env);
    assert_eq!(second.code, 2, "{}", second.stderr);
    let lock = format!("{}.lock", staged_checkpoints(cache.path())[0].0.display());
    assert!(
        second.stderr.starts_with(
            "chatwoot-export: error: another export to the same destination and account is running"
        ) && second.stderr.contains(&lock)
            && second.stderr.contains(&first.id().to_string())
            && second.stderr.trim_end().lines().count() == 1,
        "one line naming the lock and its holder: {}",
        second.stderr
    );
    let stopped = interrupt(first);
    assert_eq!(
        stopped.code, 130,
        "the first run was not disturbed: {}",
        stopped.stderr
    );
    assert!(!Path::new(&lock).exists(), "the lock goes with its run");

    // --restart discards the kept work and exports the whole account again.
    let before = fake.requests();
    let restarted = run_with_env(&restart_args, &env);
    assert_eq!(restarted.code, 0, "{}", restarted.stderr);
    let manifest = assert_partitions_exact(&moto, &fake, (1, 1), &|_| "locked".into());
    assert_eq!(manifest["resumes"], 0);
    assert!(
        fake.requests() - before >= 200,
        "a restart fetches every page again"
    );
    assert!(staged_checkpoints(cache.path()).is_empty());
}

#[test]
fn run_file_with_three_accounts_resumes_every_one_after_ctrl_c() {
    let (moto, fake, cache) = s3_job(3);
    let file = cache.path().join("two.toml");
    std::fs::write(
        &file,
        "[source]\nbase_url = \"${CHATWOOT_BASE_URL}\"\naccounts = [1, 2, 3]\ntoken = \"${CHATWOOT_API_TOKEN}\"\n\
         [fetch]\nconcurrency = 2\n\
         [sink]\nformat = \"parquet\"\ndestination = \"s3://lake/two\"\npath = \"{table}/account_id={account_id}\"\n",
    )
    .expect("pipeline file");
    let base = fake.base_url();
    let mut env = job_env(&moto, cache.path());
    env.push(("CHATWOOT_BASE_URL", &base));
    let file = file.to_str().expect("utf-8");
    let args = ["run", file, "--no-progress"];

    let child = spawn(&args, &env);
    wait_for_staged_pages(cache.path(), 3, 20);
    let stopped = interrupt(child);
    assert_ne!(stopped.code, 0, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("--resume"), "{}", stopped.stderr);
    let kept = staged_checkpoints(cache.path());
    assert_eq!(kept.len(), 3, "one staging place per account");
    // The pages left to each walk: the planned ones not kept, and the one past the plan.
    let remaining: u64 = kept
        .iter()
        .map(|(_, c)| {
            let done = c["walk"]["next_page"].as_u64().expect("next_page") - 1;
            c["walk"]["planned_pages"].as_u64().expect("planned") + 1 - done
        })
        .sum();

    let refused = run_with_env(&args, &env);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(
        refused.stderr.trim_end().lines().count(),
        1,
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("account 1 is kept in")
            && refused.stderr.contains("account 2 is kept in")
            && refused.stderr.contains("account 3 is kept in")
            && refused
                .stderr
                .contains("--resume to continue it, or with --restart to discard it"),
        "{}",
        refused.stderr
    );

    let before = fake.requests();
    let resumed = run_with_env(&["run", file, "--no-progress", "--resume", "--json"], &env);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let report: Value = serde_json::from_str(&resumed.stdout).expect("JSON report");
    let mut check = 0;
    for account_id in [1, 2, 3] {
        let manifest = assert_partitions_exact(&moto, &fake, (account_id, 3), &|table| {
            format!("two/{table}/account_id={account_id}")
        });
        assert_eq!(manifest["resumes"], 1, "account {account_id}");
        let reported = report["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|a| a["account_id"] == account_id)
            .expect("the account in the report");
        assert_eq!(
            reported["resumes"], 1,
            "the report says it resumed: {reported}"
        );
        assert_eq!(manifest["drift"]["unresolved"], 0);
        check += manifest["drift"]["requests"]
            .as_u64()
            .expect("drift.requests");
    }
    assert_eq!(report["status"], "complete");
    // Every walk went on where it stopped: only the pages left and the drift checks.
    let resumed_requests = fake.requests() - before;
    eprintln!(
        "resumed run FILE: {resumed_requests} requests, {remaining} pages left, {check} drift check requests"
    );
    assert!(
        resumed_requests <= remaining + check,
        "finished pages fetched again: {resumed_requests} requests for {remaining} pages left and {check} check requests"
    );
    assert!(staged_checkpoints(cache.path()).is_empty());
}
