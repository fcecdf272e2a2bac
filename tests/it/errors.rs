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

#[test]
fn a_full_disk_fails_cleanly() {
    // A 600 KiB tmpfs, mounted in a private user and mount namespace so no privilege is needed;
    // the export and the look at its folder both run inside it.
    let fake = Fake::with_contacts(3000);
    let mount = tempfile::tempdir().expect("temp dir");
    let mount_path = mount.path().to_str().expect("path");
    let script = format!(
        "mount -t tmpfs -o size=600k tmpfs '{mount_path}' || exit 99; \
         '{bin}' contacts --base-url {url} --account-id 1 --out '{mount_path}/out' --no-progress; \
         echo \"exit=$?\" >&2; \
         if [ -e '{mount_path}/out' ]; then ls -A '{mount_path}/out' >&2; else echo 'no folder' >&2; fi",
        bin = env!("CARGO_BIN_EXE_chatwoot-export"),
        url = fake.base_url(),
    );
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env("CHATWOOT_API_TOKEN", crate::harness::TOKEN)
        .output()
        .expect("unshare (util-linux) runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(99),
        "cannot mount a tmpfs here: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.contains(&"exit=1"), "{stderr}");
    let error = lines
        .iter()
        .find(|l| l.starts_with("chatwoot-export: error: "))
        .expect("an error line");
    assert!(
        error.contains("No space left on device") && error.contains("the disk is full"),
        "{error}"
    );
    let listing: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("exit="))
        .skip(1)
        .copied()
        .collect();
    // The run made the folder and had nothing to keep, so it is gone.
    assert_eq!(listing, ["no folder"], "nothing is left behind");
    assert!(!stderr.contains(crate::harness::TOKEN));
}
