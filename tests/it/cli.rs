//! The command line's conventions (issue 18): the measured run time in the manifest, `-o`,
//! case-insensitive values, refused sort keys, scheme-less and dashboard URLs, an empty token
//! file, a file as `--out`, grouped help, and account names in a run's summaries. Human output
//! is compared whole, after `masked` replaces what changes from run to run (ports, folders,
//! seconds).

use std::path::Path;

use chatwoot_export::fake::FakeServerConfig;

use crate::harness::{Fake, Run, TOKEN, manifest, ndjson_ids, run, run_with_env};

/// `text` with the run's folder, the fake server's URL and the seconds of a summary replaced
/// by `<DIR>`, `<URL>` and `<S>`.
fn masked(text: &str, dir: &Path, url: &str) -> String {
    let mut text = text.replace(dir.to_str().expect("utf-8 path"), "<DIR>");
    if !url.is_empty() {
        text = text.replace(url, "<URL>");
    }
    text.lines()
        .map(|line| match line.split_once(" pages in ") {
            Some((head, tail)) => {
                let rest = tail.split_once(" s ").map_or("", |(_, rest)| rest);
                format!("{head} pages in <S> s {rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect()
}

/// Asserts the exit code and the whole of stderr (masked).
fn assert_stderr(run: &Run, dir: &Path, url: &str, code: i32, want: &str) {
    assert_eq!(
        (run.code, masked(&run.stderr, dir, url).as_str()),
        (code, want),
        "stdout: {}",
        run.stdout
    );
    assert!(!run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN));
}

/// The ids of the fake account's contacts, in `created_at` order.
fn truth_ids(fake: &Fake) -> Vec<i64> {
    fake.truth()
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

/// Regression (issue 18, 4): `duration_secs` was always 0.0.
#[test]
fn the_manifest_says_when_the_export_ran_and_how_long_it_took() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 90,
        latency: std::time::Duration::from_millis(20),
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = run(&[
        "contacts",
        "--base-url",
        &fake.base_url(),
        "--account-id",
        "1",
        "--format",
        "ndjson",
        "--out",
        out.to_str().expect("utf-8"),
        "--no-progress",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = manifest(&out).expect("manifest");
    let time = |key: &str| {
        let text = manifest[key].as_str().expect(key);
        assert!(text.ends_with('Z'), "{key} in UTC: {text}");
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let (started, finished) = (time("started_at"), time("finished_at"));
    let duration = manifest["duration_secs"].as_f64().expect("duration_secs");
    // 7 pages and the definitions at 20 ms each, at least one round trip after another.
    assert!(duration >= 0.02, "duration_secs {duration}");
    // The timestamps are whole seconds: the measured time fits between them, give or take one.
    let span = (finished - started).num_milliseconds() as f64 / 1000.0;
    assert!(
        started <= finished && duration <= span + 1.0,
        "{started} .. {finished}: {duration} s"
    );
    // The summary says the same time, to a tenth of a second (it is taken a moment later,
    // once the manifest is written, so it may round up to the next tenth).
    let said: Vec<String> = [-0.05, 0.0, 0.05, 0.1]
        .iter()
        .map(|d| format!("pages in {:.1} s", duration + d))
        .collect();
    assert!(
        said.iter().any(|s| run.stderr.contains(s)),
        "none of {said:?} in {}",
        run.stderr
    );
    assert_eq!(ndjson_ids(&out), truth_ids(&fake));
}

#[test]
fn short_out_and_case_insensitive_values_export_the_account() {
    let fake = Fake::with_contacts(40);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = run(&[
        "--log-format",
        "TEXT",
        "contacts",
        "--base-url",
        &fake.base_url(),
        "--account-id",
        "1",
        "--format",
        "CSV",
        "-o",
        out.to_str().expect("utf-8"),
        "--no-progress",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut reader = csv::Reader::from_path(out.join("contacts.csv")).expect("contacts.csv");
    let headers = reader.headers().expect("header").clone();
    let id = headers.iter().position(|h| h == "id").expect("id column");
    let ids: Vec<i64> = reader
        .records()
        .map(|r| r.expect("record")[id].parse().expect("integer id"))
        .collect();
    assert_eq!(ids, truth_ids(&fake));
    assert_eq!(manifest(&out).expect("manifest")["format"], "csv");
}

/// Regression (issue 18, 8): `--sort nme` was accepted, and Chatwoot lists in no stable order
/// for a key it does not know.
#[test]
fn an_unknown_sort_key_is_refused_with_the_valid_ones() {
    let fake = Fake::with_contacts(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let url = fake.base_url();
    let run = run(&[
        "contacts",
        "--base-url",
        &url,
        "--account-id",
        "1",
        "--out",
        out.to_str().expect("utf-8"),
        "--sort",
        "-nme",
    ]);
    assert_stderr(
        &run,
        dir.path(),
        &url,
        2,
        "chatwoot-export: error: --sort -nme: unknown sort key \"nme\": use created_at, email, name, \
         phone_number, last_activity_at, company, company_name, city, country (a leading - sorts \
         descending; created_at is the only stable one)\n",
    );
    assert!(!out.exists(), "nothing written");
    assert_eq!(fake.requests(), 0, "nothing fetched");
    // A pipeline file's fetch.sort is held to the same keys.
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[source]\nbase_url = \"builtin:fake\"\naccount_id = 1\n\n[fetch]\nsort = \"email,nme\"\n\n\
         [sink]\ndestination = \"out\"\n",
    )
    .expect("pipeline file");
    let run = run_with_env(&["validate", file.to_str().expect("utf-8")], &[]);
    assert_stderr(
        &run,
        dir.path(),
        &url,
        2,
        "<DIR>/p.toml: fetch.sort (line 6): unknown sort key \"nme\": use created_at, email, name, \
         phone_number, last_activity_at, company, company_name, city, country (a leading - sorts \
         descending; created_at is the only stable one)\n\
         chatwoot-export: error: <DIR>/p.toml has 1 problem(s), listed above\n",
    );
}

/// Regression (issue 18, 3): `--base-url host:3000` said "relative URL without a base", and a
/// URL pasted from the dashboard ended in "account 3 not found (HTTP 404)".
#[test]
fn a_url_without_scheme_is_refused_and_a_dashboard_url_is_understood() {
    let fake = Fake::with_contacts(20);
    let url = fake.base_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let out_arg = out.to_str().expect("utf-8");
    let contacts = |base: &str, extra: &[&str]| {
        let mut args = vec![
            "contacts",
            "--base-url",
            base,
            "--out",
            out_arg,
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let host = url.trim_start_matches("http://");
    let refused = contacts(host, &["--account-id", "1"]);
    assert_stderr(
        &refused,
        dir.path(),
        "",
        2,
        &format!(
            "chatwoot-export: error: --base-url {host} has no scheme: write https://{host} \
             (or http://{host} for a server on this machine)\n"
        ),
    );
    let pasted = format!("{url}/app/accounts/1/contacts?page=2");
    let mismatch = contacts(&pasted, &["--account-id", "2"]);
    assert_stderr(
        &mismatch,
        dir.path(),
        &url,
        2,
        "chatwoot-export: error: --base-url is a dashboard URL of account 1 but --account-id is 2: \
         drop one of them\n",
    );
    assert_eq!(fake.requests(), 0, "nothing fetched before the refusals");
    let understood = contacts(&pasted, &["--format", "ndjson"]);
    assert_eq!(understood.code, 0, "{}", understood.stderr);
    let note = understood.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        note.replace(&url, "<URL>"),
        "chatwoot-export: note: --base-url is a dashboard URL: exporting account 1 of <URL>"
    );
    assert_eq!(ndjson_ids(&out), truth_ids(&fake));
    let missing = contacts(&url, &[]);
    assert_stderr(
        &missing,
        dir.path(),
        &url,
        2,
        "chatwoot-export: error: no account: pass --account-id N (the N of /app/accounts/N/ in the \
         dashboard URL)\n",
    );
}

/// Regression (issue 18, 8): an empty `--token-file` said "set CHATWOOT_API_TOKEN or pass
/// --token-file", although it was passed.
#[test]
fn an_empty_token_file_is_named() {
    let fake = Fake::with_contacts(5);
    let url = fake.base_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token.txt");
    std::fs::write(&token_file, "\n").expect("token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let out = dir.path().join("out");
    let run = run_with_env(
        &[
            "contacts",
            "--base-url",
            &url,
            "--account-id",
            "1",
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_stderr(
        &run,
        dir.path(),
        &url,
        2,
        "chatwoot-export: error: --token-file <DIR>/token.txt is empty: put the API token in it \
         (Chatwoot: Profile settings > Access Token)\n",
    );
    assert_eq!(fake.requests(), 0);
}

/// Regression (issue 18, 8): `--out` naming a file said "File exists (os error 17)", exit 1.
#[test]
fn a_file_as_out_is_refused_as_usage() {
    let fake = Fake::with_contacts(5);
    let url = fake.base_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("contacts.csv");
    std::fs::write(&file, "keep me\n").expect("file");
    for command in [
        vec!["contacts", "--base-url", &url, "--account-id", "1"],
        vec!["demo", "--contacts", "5"],
    ] {
        let mut args = command.clone();
        args.extend(["-o", file.to_str().expect("utf-8"), "--no-progress"]);
        let run = run(&args);
        assert_stderr(
            &run,
            dir.path(),
            &url,
            2,
            "chatwoot-export: error: --out <DIR>/contacts.csv is a file: name a folder (it is \
             created if missing)\n",
        );
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            "keep me\n",
            "{command:?}"
        );
    }
    assert_eq!(fake.requests(), 0);
}

#[test]
fn contacts_help_groups_its_flags_and_shows_every_variable() {
    let help = run_with_env(&["contacts", "--help"], &[]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    let headings: Vec<&str> = help
        .stdout
        .lines()
        .filter(|line| line.ends_with(':') && !line.starts_with(' '))
        .collect();
    assert_eq!(
        headings,
        [
            "Options:",
            "Source:",
            "Output:",
            "Fetching:",
            "Safety:",
            "Examples:",
            "Read the result:",
            "Exit codes:"
        ]
    );
    let section = |name: &str| {
        let start = help.stdout.find(&format!("\n{name}:\n")).expect(name);
        let rest = &help.stdout[start + name.len() + 3..];
        rest[..rest.find("\n\n\n").unwrap_or(rest.len())].to_owned()
    };
    for (heading, flags) in [
        (
            "Source",
            &["--base-url", "--account-id", "--token-file"][..],
        ),
        (
            "Output",
            &["--format", "-o, --out", "--compression", "--rows-per-file"],
        ),
        ("Fetching", &["--concurrency", "--sort", "--rate-limit"]),
        (
            "Safety",
            &[
                "--allow-insecure-http",
                "--overwrite",
                "--resume",
                "--csv-safe",
                "--keep-inbox-secrets",
            ],
        ),
    ] {
        let text = section(heading);
        for flag in flags {
            assert!(text.contains(flag), "{flag} not under {heading}:\n{text}");
        }
    }
    for variable in [
        "[env: CHATWOOT_BASE_URL",
        "[env: CHATWOOT_ACCOUNT_ID",
        "[env: CHATWOOT_API_TOKEN]",
    ] {
        assert!(help.stdout.contains(variable), "{variable} not shown");
    }
}

/// Regression (issue 18, 8): a run of several accounts printed summaries that did not say
/// which account each was.
#[test]
fn a_run_of_several_accounts_names_the_account_in_each_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("two.toml");
    let lake = dir.path().join("lake");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"builtin:fake\"\naccounts = [1, 2]\n\n[sink]\nformat = \"ndjson\"\n\
             destination = {:?}\npath = \"account_id={{account_id}}\"\n",
            lake.to_str().expect("utf-8")
        ),
    )
    .expect("pipeline file");
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--no-progress"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut summaries: Vec<String> = masked(&run.stderr, dir.path(), "")
        .lines()
        .filter(|line| line.contains("exported"))
        .map(|line| {
            // Inbox links and the rate note differ by seed and timing: the account and the
            // contacts are what this test is about.
            line.split(" contacts and ")
                .next()
                .unwrap_or(line)
                .to_owned()
        })
        .collect();
    summaries.sort();
    assert_eq!(
        summaries,
        [
            "chatwoot-export: account 1: exported 1,500",
            "chatwoot-export: account 2: exported 1,500"
        ],
        "{}",
        run.stderr
    );
    for account in [1, 2] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("chatwoot-export: account {account}: exported")))
            .expect("summary");
        assert!(line.ends_with(&format!("-> {}", lake.display())), "{line}");
        let partition = lake.join(format!("account_id={account}"));
        let manifest_at = lake.join(format!(
            "_chatwoot_export/account_id={account}/manifest.json"
        ));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest_at).expect("manifest"))
                .expect("json");
        let rows: usize = manifest["tables"]["contacts"]["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|name| {
                let path = partition.join(name.as_str().expect("name"));
                std::fs::read_to_string(path).expect("file").lines().count()
            })
            .sum();
        assert_eq!(rows, 1500, "account {account}");
    }
}
