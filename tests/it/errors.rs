//! Each failure: a one-line error naming the cause, the page and what to do; the right exit
//! code; no complete manifest and no data file under a final name; never the token.

use std::net::TcpListener;

use chatwoot_export::fake::FakeServerConfig;

use crate::harness::{Fake, Run, assert_no_token, export, manifest, run_with_env};

/// Asserts a failed run: exit code, one stderr line containing every needle, nothing that
/// looks complete in `dir`.
fn assert_failed(run: &Run, dir: &std::path::Path, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", run.stderr);
    assert!(
        lines[0].starts_with("chatwoot-export: error: "),
        "{}",
        lines[0]
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} not in {:?}",
            lines[0]
        );
    }
    assert!(manifest(dir).is_none(), "no manifest after a failure");
    for table in ["contacts", "contact_inboxes"] {
        for ext in ["parquet", "csv", "ndjson"] {
            assert!(
                !dir.join(format!("{table}.{ext}")).exists(),
                "{table}.{ext} left behind"
            );
        }
    }
    assert_no_token(run, dir);
}

#[test]
fn authentication_failures_say_which() {
    let fake = Fake::with_contacts(30);
    let url = fake.base_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("path");
    let with_token = |token: &str, account: &str| {
        run_with_env(
            &[
                "contacts",
                "--base-url",
                &url,
                "--account-id",
                account,
                "--out",
                out,
                "--no-progress",
            ],
            &[("CHATWOOT_API_TOKEN", token)],
        )
    };
    assert_failed(
        &with_token("wrong-token", "1"),
        dir.path(),
        3,
        &["HTTP 401", "page 1", "token is not valid"],
    );
    assert_failed(
        &with_token("fake-bot-token", "1"),
        dir.path(),
        3,
        &["HTTP 401", "bot"],
    );
    assert!(dir.path().is_dir(), "a folder the run did not make stays");
    let not_member = crate::harness::export(&url, "parquet", dir.path(), &[]);
    assert_eq!(
        not_member.code, 0,
        "account 1 is readable: {}",
        not_member.stderr
    );
    std::fs::remove_dir_all(dir.path()).expect("clean");
    let run = crate::harness::run(&[
        "contacts",
        "--base-url",
        &url,
        "--account-id",
        "2",
        "--out",
        out,
        "--no-progress",
    ]);
    assert_failed(
        &run,
        dir.path(),
        3,
        &["HTTP 401", "not a member of account 2", "--account-id"],
    );
}

#[test]
fn an_unknown_account_is_a_404_with_exit_code_4() {
    let fake = Fake::with_contacts(10);
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("contacts");
    let out = dir.to_str().expect("path");
    let run = crate::harness::run(&[
        "contacts",
        "--base-url",
        &fake.base_url(),
        "--account-id",
        "999",
        "--out",
        out,
        "--no-progress",
    ]);
    assert_failed(&run, &dir, 4, &["account 999 not found", "HTTP 404"]);
    assert!(
        !dir.exists(),
        "a failed run with nothing to keep removes the folder it made"
    );
}

#[test]
fn a_refused_connection_names_the_server() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("http://127.0.0.1:{port}");
    let run = export(&url, "csv", dir.path(), &[]);
    assert_failed(
        &run,
        dir.path(),
        1,
        &[
            "cannot connect",
            &format!("127.0.0.1:{port}"),
            "connection refused",
            "page 1",
        ],
    );
}

#[test]
fn a_tls_failure_is_reported_as_tls() {
    // https to a plain-HTTP server on loopback: the handshake fails.
    let fake = Fake::with_contacts(10);
    let url = fake.base_url().replace("http://", "https://");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&url, "csv", dir.path(), &[]);
    assert_failed(&run, dir.path(), 1, &["TLS", "page 1"]);
}

#[test]
fn a_failed_rerun_leaves_the_previous_export_whole() {
    // The usual failure comes before any new file is ready (here a revoked token): last
    // night's export, manifest included, must stay exactly as it was.
    let fake = Fake::with_contacts(100);
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(export(&fake.base_url(), "parquet", dir.path(), &[]).code, 0);
    let before = folder_contents(dir.path());
    assert!(before.contains_key("manifest.json"));
    let out = dir.path().to_str().expect("path");
    let run = run_with_env(
        &[
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
            "--out",
            out,
            "--no-progress",
        ],
        &[("CHATWOOT_API_TOKEN", "revoked-token")],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        folder_contents(dir.path()),
        before,
        "the previous export changed"
    );
    assert_no_token(&run, dir.path());
}

/// Every file of `dir` (not its subfolders) by name, with its bytes.
fn folder_contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect()
}

#[test]
fn retries_give_up_with_a_clear_error_and_keep_the_work() {
    // Every request after the first few fails: the export stops, names the page, and keeps
    // what it fetched for --resume.
    let fake = Fake::start(FakeServerConfig {
        contacts: 200,
        faults: chatwoot_export::fake::FaultConfig {
            fail_rate: 1.0,
            ..Default::default()
        },
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "csv", dir.path(), &["--max-retries", "2"]);
    assert_failed(
        &run,
        dir.path(),
        1,
        &["gave up on page 1 after 3 attempts", "HTTP 5"],
    );
}

#[test]
fn usage_errors_exit_2_before_any_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("path");
    let fake = Fake::with_contacts(10);
    let url = fake.base_url();
    let no_token = run_with_env(
        &[
            "contacts",
            "--base-url",
            &url,
            "--account-id",
            "1",
            "--out",
            out,
        ],
        &[],
    );
    assert_failed(
        &no_token,
        dir.path(),
        2,
        &["no API token", "CHATWOOT_API_TOKEN"],
    );
    let insecure = crate::harness::run(&[
        "contacts",
        "--base-url",
        "http://chat.example.com",
        "--account-id",
        "1",
        "--out",
        out,
    ]);
    assert_failed(
        &insecure,
        dir.path(),
        2,
        &["plain http", "--allow-insecure-http"],
    );
    std::fs::write(dir.path().join("thesis.docx"), b"precious").expect("write");
    let occupied = export(&url, "csv", dir.path(), &[]);
    assert_eq!(occupied.code, 2, "{}", occupied.stderr);
    assert!(
        occupied.stderr.contains("--overwrite"),
        "{}",
        occupied.stderr
    );
    assert_eq!(
        std::fs::read(dir.path().join("thesis.docx")).expect("kept"),
        b"precious"
    );
    assert_eq!(fake.requests(), 0, "no request was sent");
}

/// Free bytes left on the private tmpfs for the second run of `a_full_disk_keeps_the_work`: room
/// for part of the walk's spilled rows, not for the whole export. Measured: the fake's pages
/// spill about 10 KB each (6.2 KB of contacts and 3.6 KB of inbox links for page 1), so the
/// 200 pages take about 2 MB and this room about 120 pages; at 20 ms a page and two in flight
/// that is over a second, so a checkpoint past page 1 is saved before the disk fills.
const ROOM_FOR_PART_OF_THE_WALK: u64 = 1200 * 1024;

#[test]
fn a_full_disk_keeps_the_work_and_resume_ends_exact() {
    // Regression (issue 15, finding 3): after "No space left on device" the work folder was
    // deleted, so --resume found nothing. A private 8 MiB tmpfs, mounted in a user and mount
    // namespace so no privilege is needed, is filled up with a file: first completely, then
    // all but a part of what the export needs, then emptied for --resume. Everything runs in
    // one shell inside the namespace; it waits for the test between the failure and the
    // resume, so the requests of the resumed run alone can be counted.
    let fake = Fake::start(FakeServerConfig {
        contacts: 3000,
        latency: std::time::Duration::from_millis(20),
        ..FakeServerConfig::default()
    });
    let mount = tempfile::tempdir().expect("temp dir");
    let host = tempfile::tempdir().expect("temp dir");
    let (m, h) = (
        mount.path().to_str().expect("path"),
        host.path().to_str().expect("path"),
    );
    let size: u64 = 8 << 20;
    let run = format!(
        "'{bin}' contacts --base-url {url} --account-id 1 --out '{m}/out' --no-progress --concurrency 2",
        bin = env!("CARGO_BIN_EXE_chatwoot-export"),
        url = fake.base_url(),
    );
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs '{m}' || exit 99; \
         head -c {size} /dev/zero > '{m}/filler' 2>/dev/null; \
         {run}; echo \"full=$?\" >&2; \
         if [ -e '{m}/out' ]; then echo 'a folder' >&2; else echo 'no folder' >&2; fi; \
         rm '{m}/filler'; head -c {fill} /dev/zero > '{m}/filler'; \
         {run}; echo \"part=$?\" >&2; \
         cp '{m}/out/.chatwoot-export.partial/checkpoint.json' '{h}/checkpoint.json'; \
         touch '{h}/failed'; while [ ! -e '{h}/go' ]; do sleep 0.05; done; \
         rm '{m}/filler'; \
         {run} --resume; echo \"resumed=$?\" >&2; \
         cp -a '{m}/out' '{h}/out'",
        fill = size - ROOM_FOR_PART_OF_THE_WALK,
    );
    let child = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env("CHATWOOT_API_TOKEN", crate::harness::TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !host.path().join("failed").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before_resume = fake.requests();
    std::fs::write(host.path().join("go"), b"").expect("write");
    let output = child.wait_with_output().expect("the shell ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(99),
        "cannot mount a tmpfs here: {stderr}"
    );
    assert!(!stderr.contains(crate::harness::TOKEN));
    let lines: Vec<&str> = stderr.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("chatwoot-export: error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{stderr}");

    // 1. A disk full before anything could be saved: nothing to keep, nothing left behind.
    assert!(lines.contains(&"full=1"), "{stderr}");
    assert!(lines.contains(&"no folder"), "{stderr}");
    assert!(errors[0].contains("the disk is full"), "{}", errors[0]);
    assert!(!errors[0].contains("--resume"), "{}", errors[0]);

    // 2. A disk full in the middle of the walk: the work is kept, and the line says how to go on.
    assert!(lines.contains(&"part=1"), "{stderr}");
    assert!(
        errors[1].contains("No space left on device")
            && errors[1].contains("pages done are kept in")
            && errors[1].contains(
                "once there is room again, run the same command with --resume to continue"
            ),
        "{}",
        errors[1]
    );
    let checkpoint: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.path().join("checkpoint.json")).expect("the checkpoint was kept"),
    )
    .expect("json");
    let saved_pages = checkpoint["walk"]["next_page"].as_u64().expect("next_page") - 1;
    let planned = checkpoint["walk"]["planned_pages"]
        .as_u64()
        .expect("planned");
    assert!(
        saved_pages > 1 && saved_pages < planned,
        "a checkpoint from the middle of the walk: {saved_pages} of {planned} pages saved"
    );

    // 3. Space freed, --resume: exactly the uninterrupted export, the saved pages not fetched
    // again (the rest, the empty page that ends the walk, the attribute definitions and at
    // most the 8 pages the walk requests ahead at --concurrency 2).
    assert!(lines.contains(&"resumed=0"), "{stderr}");
    let out = host.path().join("out");
    crate::faults::assert_exact(&out, "parquet", &fake.truth(), &fake.definitions());
    let manifest = manifest(&out).expect("manifest");
    assert_eq!(manifest["resumes"], 1);
    let resumed_requests = fake.requests() - before_resume;
    let left = planned - saved_pages;
    assert!(
        resumed_requests >= left && resumed_requests <= left + 2 + 8,
        "{resumed_requests} requests to fetch {left} pages"
    );
    assert!(
        !out.join(".chatwoot-export.partial").exists(),
        "the work folder goes once the export is complete"
    );
    assert_no_token(
        &Run {
            code: 0,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: stderr.clone().into_owned(),
        },
        &out,
    );
}
