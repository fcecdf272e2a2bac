//! The tables beyond contacts (`labels`, `custom_attribute_definitions`, `contact_labels`):
//! each in every format, locally and in S3, compared value by value with the fake server's
//! truth, read back by pyarrow and DuckDB; the label walk's predicted cost against the
//! requests the server saw.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use chatwoot_export::fake::{DriftRound, FakeServerConfig};

use crate::expected::{self, Kind, Table};
use crate::harness::{Fake, assert_no_token, export, manifest, run_python, run_with_env};
use crate::lake::{Moto, contacts_to, download, objects};
use crate::readers::{assert_same, read};

const NEW_TABLES: [&str; 3] = ["labels", "custom_attribute_definitions", "contact_labels"];

/// `--table NAME` for each new table.
fn all_new_tables() -> Vec<&'static str> {
    NEW_TABLES
        .iter()
        .flat_map(|name| ["--table", name])
        .collect()
}

/// A table of JSON objects as the contract says it comes out: `columns` first, with their
/// kinds, each object's fields as its values.
fn records_table(columns: &[(&str, Kind)], records: &Value) -> Table {
    Table {
        columns: columns
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), *kind))
            .collect(),
        rows: records
            .as_array()
            .expect("an array")
            .iter()
            .map(|record| {
                record
                    .as_object()
                    .expect("an object")
                    .iter()
                    .filter(|(_, value)| !value.is_null())
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            })
            .collect(),
    }
}

/// The three tables as they must come out of `fake`, by name.
fn expected_tables(fake: &Fake) -> BTreeMap<&'static str, Table> {
    let labels = records_table(
        &[
            ("id", Kind::Int),
            ("title", Kind::Str),
            ("description", Kind::Str),
            ("color", Kind::Str),
            ("show_on_sidebar", Kind::Bool),
            // Not declared: the fake's servers send it, and it is kept, typed from its values.
            ("allow_auto_assign", Kind::Bool),
        ],
        &fake.labels(),
    );
    let definitions = records_table(
        &[
            ("id", Kind::Int),
            ("attribute_key", Kind::Str),
            ("attribute_display_name", Kind::Str),
            ("attribute_display_type", Kind::Str),
            ("attribute_model", Kind::Str),
            // A list attribute's values: the JSON array as text.
            ("attribute_values", Kind::Str),
            ("attribute_description", Kind::Str),
            ("default_value", Kind::Str),
            ("regex_pattern", Kind::Str),
            ("regex_cue", Kind::Str),
            ("created_at", Kind::Str),
            ("updated_at", Kind::Str),
        ],
        &fake.definitions(),
    );
    let pairs: Vec<Value> = fake
        .contact_labels()
        .into_iter()
        .map(|(id, label)| json!({"contact_id": id, "label": label}))
        .collect();
    let contact_labels = records_table(
        &[("contact_id", Kind::Int), ("label", Kind::Str)],
        &Value::Array(pairs),
    );
    BTreeMap::from([
        ("labels", labels),
        ("custom_attribute_definitions", definitions),
        ("contact_labels", contact_labels),
    ])
}

/// Requests a label walk over `fake`'s labels takes: one page per 15 contacts a label tags,
/// at least one (computed from the truth, not from the tool's own planning).
fn label_walk_cost(fake: &Fake) -> u64 {
    let pairs = fake.contact_labels();
    fake.labels()
        .as_array()
        .expect("labels")
        .iter()
        .map(|label| {
            let title = label["title"].as_str().expect("a title");
            let tagged = pairs.iter().filter(|(_, l)| l == title).count() as u64;
            tagged.div_ceil(15).max(1)
        })
        .sum()
}

#[test]
fn new_tables_match_the_truth_in_every_format_and_the_label_walk_costs_what_it_said() {
    for format in ["parquet", "csv", "ndjson"] {
        // A fresh server per run, so its request count is this run's.
        let fake = Fake::with_contacts(200);
        let expected = expected_tables(&fake);
        assert!(
            expected["contact_labels"].rows.len() > 100,
            "labels span several pages"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let result = export(&fake.base_url(), format, &out, &all_new_tables());
        assert_eq!(result.code, 0, "{format}: {}", result.stderr);
        assert_no_token(&result, dir.path());
        for (name, table) in &expected {
            assert_same(name, format, table, &read(&out, name, format, table));
        }
        // The contacts are what they were without the new tables.
        let (contacts, _) = expected::tables(&fake.truth(), &fake.definitions());
        assert_same(
            "contacts",
            format,
            &contacts,
            &read(&out, "contacts", format, &contacts),
        );

        let manifest = manifest(&out).expect("a manifest");
        assert_eq!(manifest["complete"], true, "{manifest:#}");
        for name in NEW_TABLES {
            assert_eq!(
                manifest["tables"][name]["rows"],
                expected[name].rows.len(),
                "{name}"
            );
            assert_eq!(
                manifest["tables"][name]["files"],
                json!([format!("{name}.{format}")])
            );
        }
        let walk = &manifest["label_walk"];
        let cost = label_walk_cost(&fake);
        assert_eq!(walk["predicted_requests"], cost, "{walk:#}");
        assert_eq!(walk["requests"], cost, "{walk:#}");
        assert_eq!(walk["complete"], true);
        assert_eq!(walk["labels"], 8);
        // Said before it was spent.
        assert!(
            result.stderr.contains(&format!(
                "8 labels tag {} contacts: {cost} requests",
                expected["contact_labels"].rows.len()
            )),
            "{}",
            result.stderr
        );
        // Every request the server saw is one the manifest counts: the walk's, the labels',
        // the contacts walk's and the definitions'.
        assert_eq!(manifest["requests"], fake.requests(), "{manifest:#}");
    }
}

#[test]
fn without_the_flags_an_export_writes_and_asks_for_nothing_new() {
    let fake = Fake::with_contacts(40);
    let dir = tempfile::tempdir().expect("temp dir");
    let result = export(&fake.base_url(), "csv", dir.path(), &[]);
    assert_eq!(result.code, 0, "{}", result.stderr);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("listing")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["contact_inboxes.csv", "contacts.csv", "manifest.json"]
    );
    let manifest = manifest(dir.path()).expect("a manifest");
    assert!(manifest.get("label_walk").is_none());
    assert_eq!(manifest["requests"], fake.requests());
    // Page 1, the pages asked with it, the empty page after and the definitions: no labels.
    assert!(
        !result.stderr.contains("contact_labels"),
        "{}",
        result.stderr
    );
}

/// Reads the three Parquet files with pyarrow and with DuckDB: {reader: {table: rows}}, each
/// value as JSON (text for anything JSON does not hold).
const READ_BACK: &str = r#"
import json, sys
import duckdb, pyarrow.parquet as pq
folder, names = sys.argv[1], sys.argv[2:]
out = {"pyarrow": {}, "duckdb": {}}
for name in names:
    path = f"{folder}/{name}.parquet"
    out["pyarrow"][name] = pq.read_table(path).to_pylist()
    rel = duckdb.execute("SELECT * FROM read_parquet(?)", [path])
    columns = [d[0] for d in rel.description]
    out["duckdb"][name] = [dict(zip(columns, row)) for row in rel.fetchall()]
print(json.dumps(out, default=str))
"#;

#[test]
fn pyarrow_and_duckdb_read_the_new_tables_as_the_server_gave_them() {
    let fake = Fake::with_contacts(120);
    let dir = tempfile::tempdir().expect("temp dir");
    let result = export(&fake.base_url(), "parquet", dir.path(), &all_new_tables());
    assert_eq!(result.code, 0, "{}", result.stderr);
    let folder = dir.path().to_str().expect("utf-8");
    let mut args = vec![folder];
    args.extend(NEW_TABLES);
    let read: Value = serde_json::from_str(&run_python(READ_BACK, &args)).expect("JSON");

    let labels = fake.labels();
    let pairs: Vec<Value> = fake
        .contact_labels()
        .into_iter()
        .map(|(id, label)| json!({"contact_id": id, "label": label}))
        .collect();
    let definitions: Vec<Value> = fake
        .definitions()
        .as_array()
        .expect("definitions")
        .iter()
        .map(|d| {
            // What the table keeps of a definition, with its list values as JSON text.
            let mut d = d.clone();
            d["attribute_values"] = Value::from(d["attribute_values"].to_string());
            d
        })
        .collect();
    for reader in ["pyarrow", "duckdb"] {
        assert_eq!(read[reader]["labels"], labels, "{reader}: labels");
        assert_eq!(
            read[reader]["contact_labels"],
            Value::Array(pairs.clone()),
            "{reader}: contact_labels"
        );
        assert_eq!(
            read[reader]["custom_attribute_definitions"],
            Value::Array(definitions.clone()),
            "{reader}: custom_attribute_definitions"
        );
    }
}

#[test]
fn the_new_tables_go_to_s3_with_the_contacts() {
    let moto = Moto::start();
    let fake = Fake::with_contacts(60);
    let base = fake.base_url();
    let mut extra = vec!["--format", "csv"];
    extra.extend(all_new_tables());
    let args = contacts_to(&base, "s3://lake/side", &extra);
    let result = run_with_env(&args, &moto.env());
    assert_eq!(result.code, 0, "{}", result.stderr);
    let listed = objects(&moto.store(), "side");
    assert_eq!(
        listed.len(),
        6,
        "five tables and the manifest: {:?}",
        listed.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = download(&listed, "side", dir.path());
    assert_eq!(manifest["complete"], true);
    for (name, table) in &expected_tables(&fake) {
        assert_same(name, "csv", table, &read(dir.path(), name, "csv", table));
    }
    for (name, bytes) in &listed {
        let token = crate::harness::TOKEN.as_bytes();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token),
            "token in {name}"
        );
    }
}

#[test]
fn a_pipeline_file_selects_the_new_tables_and_their_columns() {
    let fake = Fake::with_contacts(30);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &file,
        format!(
            r#"
[source]
base_url = "{}"
account_id = 1
token = "${{CHATWOOT_API_TOKEN}}"

[tables.labels]
include = ["title", "color"]

[tables.contact_labels]

[sink]
format = "ndjson"
destination = "{}"
"#,
            fake.base_url(),
            out.display()
        ),
    )
    .expect("write");
    let result = run_with_env(
        &["run", file.to_str().expect("utf-8"), "--no-progress"],
        &[("CHATWOOT_API_TOKEN", crate::harness::TOKEN)],
    );
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert!(!out.join("custom_attribute_definitions.ndjson").exists());
    let labels = std::fs::read_to_string(out.join("labels.ndjson")).expect("labels");
    let titles: Vec<Value> = labels
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let want: Vec<Value> = fake
        .labels()
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| json!({"title": l["title"], "color": l["color"]}))
        .collect();
    assert_eq!(titles, want);
    let pairs = std::fs::read_to_string(out.join("contact_labels.ndjson")).expect("pairs");
    assert_eq!(pairs.lines().count(), fake.contact_labels().len());
    assert!(dir_holds_no_token(&out));
}

fn dir_holds_no_token(dir: &Path) -> bool {
    let token = crate::harness::TOKEN.as_bytes();
    crate::harness::all_file_bytes(dir)
        .iter()
        .all(|(_, bytes)| !bytes.windows(token.len()).any(|w| w == token))
}

#[test]
fn contacts_deleted_during_the_label_walk_make_the_export_incomplete() {
    // A clean run on the same account says where the label walk's pages past the first start:
    // every request but the definitions', the labels' and the walk's is a contact request.
    let clean = Fake::with_contacts(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let first = export(&clean.base_url(), "csv", dir.path(), &all_new_tables());
    assert_eq!(first.code, 0, "{}", first.stderr);
    let clean_manifest = manifest(dir.path()).expect("a manifest");
    let total = clean_manifest["requests"].as_u64().expect("requests");
    let walk = clean_manifest["label_walk"]["requests"]
        .as_u64()
        .expect("walk");
    let labels = clean_manifest["label_walk"]["labels"]
        .as_u64()
        .expect("labels");
    let first_later_page = total - walk - 2 + labels + 1;

    // Twenty contacts go between the labels' first pages and the rest: the first pages
    // announced counts that the later pages no longer reach.
    let fake = Fake::start(FakeServerConfig {
        contacts: 200,
        drift_rounds: vec![DriftRound {
            at_request: first_later_page,
            delete_behind: 20,
            ..DriftRound::default()
        }],
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "csv", dir.path(), &all_new_tables());
    assert_eq!(fake.deleted_ids().len(), 20, "the drift happened");
    assert_eq!(run.code, 5, "incomplete: {}", run.stderr);
    assert!(
        run.stderr.contains("the labels changed during the export"),
        "{}",
        run.stderr
    );
    let manifest = manifest(dir.path()).expect("a manifest");
    assert_eq!(manifest["complete"], false);
    assert_eq!(manifest["label_walk"]["complete"], false);
    let incomplete = manifest["label_walk"]["incomplete_labels"]
        .as_array()
        .expect("a list");
    assert!(incomplete.contains(&json!("vip")), "{incomplete:?}");
    // The contacts walk itself was over and proven before: its drift check is clean.
    assert_eq!(manifest["drift"]["unresolved"], 0);
}
