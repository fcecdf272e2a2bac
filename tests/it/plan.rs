//! Plan before spending (issue 18): `--plan` predicts exactly the requests the export then
//! makes (the fake counts them) and writes nothing; `validate --offline` checks a pipeline
//! file without its environment; an unwritable destination fails before any request.

use std::path::Path;

use chatwoot_export::fake::FakeServerConfig;
use serde_json::Value;

use crate::harness::{Fake, TOKEN, manifest, run, run_with_env};

/// `contacts --plan --json` against `fake`, then the export itself: the plan's JSON, and the
/// requests the export made as the fake counted them.
fn plan_then_export(fake: &Fake, out: &Path, extra: &[&str]) -> (Value, u64) {
    let base = fake.base_url();
    let out_text = out.to_str().expect("utf-8 path");
    let mut args = vec![
        "contacts",
        "--base-url",
        &base,
        "--account-id",
        "1",
        "--out",
        out_text,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let mut planning = args.clone();
    planning.extend(["--plan", "--json"]);
    let planned = run(&planning);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    assert!(!planned.stdout.contains(TOKEN) && !planned.stderr.contains(TOKEN));
    let plan: Value = serde_json::from_str(&planned.stdout).expect("--plan --json is JSON");
    // The plan's own requests, as it says and as the fake counted them.
    let plan_requests = fake.requests();
    assert_eq!(plan["accounts"][0]["plan_requests"], plan_requests);
    assert!(!out.exists(), "--plan wrote {}", out.display());

    let exported = run(&args);
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    (plan, fake.requests() - plan_requests)
}

/// The plan's table columns, by name, as the manifest lists columns.
fn planned_columns(plan: &Value, table: &str) -> Vec<String> {
    plan["accounts"][0]["tables"][table]["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no table {table} in the plan: {plan}"))
        .iter()
        .map(|column| column["name"].as_str().expect("a name").to_owned())
        .collect()
}

fn written_columns(manifest: &Value, table: &str) -> Vec<String> {
    manifest["tables"][table]["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no table {table} in the manifest"))
        .iter()
        .map(|column| column["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[test]
fn the_plan_predicts_the_requests_of_a_plain_export_and_writes_nothing() {
    // 300 contacts, 20 pages: more than are sent with page 1, so the export takes the drift
    // check's ledger and walks again: every stage of a large account's cost is in play.
    let fake = Fake::with_contacts(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let (plan, sent) = plan_then_export(&fake, &out, &["--format", "ndjson"]);
    let account = &plan["accounts"][0];
    assert_eq!(account["contacts"], 300);
    assert_eq!(account["pages"], 20);
    assert_eq!(account["requests"]["labels"], 0);
    assert!(account["requests"]["ledger"].as_u64() > Some(0), "{plan}");
    assert_eq!(account["requests"]["total"], sent, "{plan}");
    assert_eq!(account["requests"]["at_most"], sent, "{plan}");
    assert_eq!(plan["requests"], sent);
    let manifest = manifest(&out).expect("the export's manifest");
    assert_eq!(
        manifest["requests"], sent,
        "the export counts its requests too"
    );
    assert_eq!(manifest["unique_contacts"], 300);
    // Only the tables the export writes, and every column the plan names is written, in order
    // (the plan is a lower bound: attributes not on the pages it read come on top).
    let tables: Vec<&String> = account["tables"]
        .as_object()
        .expect("tables")
        .keys()
        .collect();
    assert_eq!(tables, ["contact_inboxes", "contacts"]);
    for table in ["contacts", "contact_inboxes"] {
        let planned = planned_columns(&plan, table);
        let written = written_columns(&manifest, table);
        assert!(planned.len() > 5, "{table}: {planned:?}");
        let mut rest = written.iter();
        for name in &planned {
            assert!(
                rest.any(|w| w == name),
                "{table}: planned {name} not written in order: {written:?}"
            );
        }
        assert_eq!(account["tables"][table]["at_least"], true);
    }
    // Every defined custom attribute is a planned column, whether page 1 holds it or not.
    for definition in fake.definitions().as_array().expect("definitions") {
        let key = definition["attribute_key"].as_str().expect("a key");
        let column = format!("custom_attributes__{key}");
        assert!(
            planned_columns(&plan, "contacts").contains(&column),
            "{column}"
        );
    }
}

#[test]
fn the_plan_predicts_the_label_walk_too() {
    let fake = Fake::with_contacts(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let (plan, sent) = plan_then_export(
        &fake,
        &out,
        &[
            "--format",
            "csv",
            "--table",
            "contact_labels",
            "--table",
            "labels",
        ],
    );
    let requests = &plan["accounts"][0]["requests"];
    let labels = fake.labels().as_array().expect("labels").len() as u64;
    assert!(labels > 1);
    assert_eq!(requests["labels"], 1);
    // Each label's first page at least, and more for the labels that tag many contacts.
    assert!(requests["label_pages"].as_u64() > Some(labels), "{plan}");
    assert_eq!(requests["total"], sent, "{plan}");
    let manifest = manifest(&out).expect("the export's manifest");
    assert_eq!(
        manifest["label_walk"]["requests"], requests["label_pages"],
        "the label walk's own count"
    );
    assert_eq!(
        planned_columns(&plan, "contact_labels"),
        written_columns(&manifest, "contact_labels")
    );
    assert_eq!(
        planned_columns(&plan, "labels"),
        written_columns(&manifest, "labels")
    );
}

#[test]
fn run_plan_predicts_every_account_of_a_pipeline() {
    // Two small accounts in one run: no pages sent ahead of page 1 (they share one budget),
    // so page 1, the pages after it and the empty one past the end, and the definitions.
    let fake = Fake::start(FakeServerConfig {
        contacts: 40,
        accounts: 2,
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let file = dir.path().join("two.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccounts = [1, 2]\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\n\
             [sink]\nformat = \"ndjson\"\ndestination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}\"\n",
            fake.base_url(),
            out.display()
        ),
    )
    .expect("write the pipeline");
    let file = file.to_str().expect("utf-8 path");
    let planned = run(&["run", file, "--plan", "--json"]);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    let plan: Value = serde_json::from_str(&planned.stdout).expect("run --plan --json is JSON");
    let plan_requests = fake.requests();
    assert!(!out.exists(), "--plan wrote {}", out.display());
    let accounts = plan["accounts"].as_array().expect("accounts");
    assert_eq!(accounts.len(), 2);
    for account in accounts {
        // 40 contacts: pages 1 to 3 and the empty 4th, and the definitions.
        assert_eq!(account["pages"], 3);
        assert_eq!(account["requests"]["total"], 5, "{account}");
        assert_eq!(account["requests"]["at_most"], 5, "{account}");
    }
    assert_eq!(plan["requests"], 10);
    // The default rate: 3000 a minute, 90% of it.
    assert_eq!(plan["requests_per_minute"], 2700.0);
    assert_eq!(plan["min_secs"], 0.2);

    let exported = run(&["run", file, "--no-progress"]);
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    assert_eq!(fake.requests() - plan_requests, 10);
}

#[test]
fn the_plan_for_people_names_the_cost_and_the_columns() {
    let fake = Fake::with_contacts(40);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let planned = run(&[
        "contacts",
        "--base-url",
        &fake.base_url(),
        "--account-id",
        "1",
        "--out",
        out.to_str().expect("utf-8"),
        "--plan",
        "--rate-limit",
        "60",
        "--rate-share",
        "0.5",
    ]);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    assert!(planned.stdout.is_empty(), "{}", planned.stdout);
    let lines: Vec<&str> = planned.stderr.lines().collect();
    let base = fake.base_url();
    assert_eq!(
        lines[0],
        format!(
            "chatwoot-export: plan: account 1 at {}: 40 contacts, 3 pages of 15",
            base.trim_end_matches('/')
        )
    );
    // Pages 1 to 3 with contacts, the empty 4th and the definitions: 5 requests, at 30 a
    // minute at least 10 s; pages 5 to 8 are asked for with page 1, and go out only if the
    // pace lets them before the walk ends.
    assert_eq!(
        lines[1],
        "chatwoot-export: plan: account 1: 5 requests (4 list pages + 1 definitions; up to 4 more pages past the end sent ahead with page 1), more if the account changes during the export"
    );
    assert!(lines[2].starts_with("chatwoot-export: plan: account 1: table contact_inboxes: "));
    assert!(lines[3].starts_with("chatwoot-export: plan: account 1: table contacts: "));
    assert!(lines[3].contains(" columns (at least, "), "{}", lines[3]);
    assert_eq!(
        lines[4],
        "chatwoot-export: plan: 5 requests in all, at least 10.0 s at the rate limit's 30 requests a minute (--rate-limit x --rate-share); nothing was written"
    );
    assert_eq!(lines.len(), 5);
    assert!(!out.exists());
}

#[test]
fn a_small_account_sends_what_the_plan_says_give_or_take_the_pages_sent_ahead() {
    // 40 contacts: the 4 pages the walk needs and the definitions for certain; of the pages
    // asked for with page 1 past the end, those the pace lets out before the walk ends.
    let fake = Fake::with_contacts(40);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let (plan, sent) = plan_then_export(&fake, &out, &["--format", "ndjson"]);
    let requests = &plan["accounts"][0]["requests"];
    assert_eq!(
        (requests["total"].as_u64(), requests["at_most"].as_u64()),
        (Some(5), Some(9))
    );
    assert!((5..=9).contains(&sent), "{sent} requests: {plan}");
    assert_eq!(plan["requests"], 5);
    assert_eq!(plan["requests_at_most"], 9);
    assert_eq!(manifest(&out).expect("manifest")["unique_contacts"], 40);
}

/// A pipeline file that needs its environment: the token and a destination from variables.
const NEEDS_ENV: &str = r#"[source]
base_url = "https://chat.example.com"
account_id = 3
token = "${CHATWOOT_API_TOKEN}"

[sink]
format = "parquet"
destination = "${CHATWOOT_EXPORT_IT_UNSET_LAKE}/chatwoot"
path = "{table}/account_id={account_id}"
"#;

#[test]
fn validate_offline_passes_without_the_environment_and_still_finds_real_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("nightly.toml");
    std::fs::write(&file, NEEDS_ENV).expect("write the pipeline");
    let file_text = file.to_str().expect("utf-8 path");
    // No token variable (the harness removes it), no lake variable.
    let online = run_with_env(&["validate", file_text], &[]);
    assert_eq!(online.code, 2, "{}", online.stderr);
    assert!(online.stderr.contains("CHATWOOT_API_TOKEN is not set"));
    let offline = run_with_env(&["validate", "--offline", file_text], &[]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert_eq!(
        offline.stderr,
        format!(
            "chatwoot-export: {file_text} is valid offline (${{CHATWOOT_API_TOKEN}}, ${{CHATWOOT_EXPORT_IT_UNSET_LAKE}} set at run time)\n"
        )
    );
    // Offline reads no variable, even one that is set.
    let set = run_with_env(
        &["validate", "--offline", file_text],
        &[("CHATWOOT_API_TOKEN", TOKEN)],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert_eq!(set.stderr, offline.stderr);

    // A real mistake is still one, with its key and line, and exit 2.
    let broken = NEEDS_ENV.replace("format = \"parquet\"", "format = \"xlsx\"");
    std::fs::write(&file, broken).expect("write the pipeline");
    let offline = run_with_env(&["validate", "--offline", file_text], &[]);
    assert_eq!(offline.code, 2, "{}", offline.stderr);
    let lines: Vec<&str> = offline.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", offline.stderr);
    assert!(
        lines[0].starts_with(&format!("{file_text}: sink.format (line 7): ")),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        format!("chatwoot-export: error: {file_text} has 1 problem(s), listed above")
    );

    // Every shipped pipeline file checks offline, without its secrets.
    for entry in std::fs::read_dir("pipelines").expect("pipelines/") {
        let path = entry.expect("an entry").path();
        let checked = run_with_env(
            &["validate", "--offline", path.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(checked.code, 0, "{}: {}", path.display(), checked.stderr);
    }
}

/// The one line an S3 destination on a closed loopback port fails with.
const UNREACHABLE: &str = "cannot write to destination s3://lake/one (Connection refused (os error 111)): \
     check that it exists, that it is reachable and that the credentials in the environment \
     (AWS_*, GOOGLE_*, AZURE_*) may write there; nothing was fetched";

/// S3 credentials for an endpoint on a closed loopback port (nobody listens there).
fn unreachable_s3_env(cache: &Path) -> Vec<(&'static str, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    vec![
        ("CHATWOOT_API_TOKEN", TOKEN.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("XDG_CACHE_HOME", cache.to_str().expect("utf-8").to_owned()),
    ]
}

#[test]
fn run_to_an_unreachable_s3_fails_before_any_request_to_chatwoot() {
    let fake = Fake::with_contacts(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("s3.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccount_id = 1\ntoken = \"${{CHATWOOT_API_TOKEN}}\"\n\n\
             [sink]\nformat = \"parquet\"\ndestination = \"s3://lake/one\"\npath = \"{{table}}\"\n",
            fake.base_url()
        ),
    )
    .expect("write the pipeline");
    let env = unreachable_s3_env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--no-progress"],
        &env,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!("chatwoot-export: error: {UNREACHABLE}\n")
    );
    assert_eq!(fake.requests(), 0, "a request reached Chatwoot");
    // --plan writes nothing, so it does not need the destination.
    let planned = run_with_env(&["run", file.to_str().expect("utf-8"), "--plan"], &env);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
}

#[test]
fn an_unreachable_s3_fails_before_any_request_to_chatwoot() {
    let fake = Fake::with_contacts(20);
    let base = fake.base_url();
    let cache = tempfile::tempdir().expect("temp dir");
    let env = unreachable_s3_env(cache.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = run_with_env(
        &[
            "contacts",
            "--base-url",
            &base,
            "--account-id",
            "1",
            "--out",
            "s3://lake/one",
            "--no-progress",
        ],
        &env,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!("chatwoot-export: error: {UNREACHABLE}\n")
    );
    assert_eq!(fake.requests(), 0, "a request reached Chatwoot");
}
