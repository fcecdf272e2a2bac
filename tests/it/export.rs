//! Whole exports compared value by value with the fake server's ground truth.

use std::collections::HashSet;

use chatwoot_export::fake::FakeServerConfig;
use serde_json::Value;

use crate::expected;
use crate::harness::{Fake, assert_no_token, export, manifest};
use crate::loopback::Reply;
use crate::readers::{assert_same, read};

/// Checks both tables in `dir` against `truth`, in `format`.
pub fn assert_export_matches(
    dir: &std::path::Path,
    format: &str,
    truth: &[Value],
    definitions: &Value,
) {
    let (contacts, inboxes) = expected::tables(truth, definitions);
    for (name, table) in [("contacts", &contacts), ("contact_inboxes", &inboxes)] {
        let got = read(dir, name, format, table);
        assert_same(name, format, table, &got);
    }
    let manifest = manifest(dir).expect("manifest written");
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["format"], format);
    assert_eq!(
        manifest["tables"]["contacts"]["rows"],
        contacts.rows.len() as u64
    );
    assert_eq!(
        manifest["tables"]["contact_inboxes"]["rows"],
        inboxes.rows.len() as u64
    );
    assert_eq!(
        manifest["tables"]["contacts"]["files"],
        serde_json::json!([format!("contacts.{format}")])
    );
    let names: Vec<&str> = manifest["tables"]["contacts"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    let want: Vec<&str> = contacts.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "manifest columns");
}

#[test]
fn every_format_matches_the_ground_truth() {
    let fake = Fake::with_contacts(700);
    let truth = fake.truth();
    for format in ["parquet", "csv", "ndjson"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = export(
            &fake.base_url(),
            format,
            dir.path(),
            &["--concurrency", "4"],
        );
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        assert_export_matches(dir.path(), format, &truth, &fake.definitions());
        let manifest = manifest(dir.path()).expect("manifest");
        assert_eq!(manifest["expected_count"], 700);
        assert_eq!(manifest["unique_contacts"], 700);
        assert_eq!(manifest["duplicates_dropped"], 0);
        assert_eq!(manifest["count_difference"], 0);
        assert_eq!(manifest["page_size"], 15);
        // 47 planned pages and one empty page past the plan.
        assert_eq!(manifest["pages_fetched"], 48);
        assert_eq!(manifest["inbox_fields_dropped"], serde_json::json!({}));
        assert_eq!(manifest["keep_inbox_secrets"], false);
        assert_eq!(manifest["csv_safe"], false);
        assert!(
            run.stderr.contains("exported 700 contacts"),
            "{}",
            run.stderr
        );
        assert_no_token(&run, dir.path());
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

#[test]
fn an_empty_account_gives_empty_tables_with_headers() {
    let fake = Fake::with_contacts(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "csv", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let header = std::fs::read_to_string(dir.path().join("contacts.csv")).expect("csv");
    assert!(
        header.starts_with("id,name,email,phone_number,identifier,"),
        "{header}"
    );
    assert_eq!(header.lines().count(), 1);
    assert_export_matches(dir.path(), "csv", &[], &fake.definitions());
}

#[test]
fn a_rerun_in_another_format_replaces_the_previous_export() {
    let fake = Fake::with_contacts(40);
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(export(&fake.base_url(), "csv", dir.path(), &[]).code, 0);
    let run = export(&fake.base_url(), "parquet", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !dir.path().join("contacts.csv").exists(),
        "the old format's files are removed"
    );
    assert_export_matches(dir.path(), "parquet", &fake.truth(), &fake.definitions());
}

#[test]
fn contacts_created_during_the_export_are_not_cut_off() {
    // A new contact every 4 requests lands at the end of the created_at walk.
    let fake = Fake::start(FakeServerConfig {
        contacts: 300,
        grow_every: Some(4),
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--concurrency", "3"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let truth = fake.truth();
    assert_export_matches(dir.path(), "ndjson", &truth, &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    // Page 1 is usually the first contact request the server reads, so the plan says 300;
    // when its connection is accepted after others it can see the account grown already.
    // Either way the account grew after the plan was made, which the walk must not cut off.
    let planned = manifest["expected_count"].as_u64().expect("expected_count");
    assert!(planned >= 300, "planned from page 1: {planned}");
    assert!(
        truth.len() as u64 > planned,
        "the account grew after the plan"
    );
    assert_eq!(manifest["final_count"], truth.len() as u64);
    assert_eq!(manifest["count_difference"], 0);
}

#[test]
fn duplicates_from_page_drift_are_dropped_and_the_missed_are_recovered() {
    // Newest first while contacts are created: every insert shifts later pages forward by
    // one, so the walk sees some contacts twice and misses the new ones at the front; the
    // drift repair finds those.
    let fake = Fake::start(FakeServerConfig {
        contacts: 300,
        grow_every: Some(3),
        ..FakeServerConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--sort", "-created_at", "--concurrency", "1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ids = crate::harness::ndjson_ids(dir.path());
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "every contact at most once");
    let truth = fake.truth();
    let live: HashSet<i64> = truth
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(unique, live, "every contact the account lists, once");
    // The rows that were written are the contacts as the server has them.
    let by_id: std::collections::HashMap<i64, &Value> = truth
        .iter()
        .map(|c| (c["id"].as_i64().expect("id"), c))
        .collect();
    let exported: Vec<Value> = ids.iter().map(|id| by_id[id].clone()).collect();
    assert_export_matches(dir.path(), "ndjson", &exported, &fake.definitions());
    let manifest = manifest(dir.path()).expect("manifest");
    let dropped = manifest["duplicates_dropped"].as_u64().expect("count");
    assert!(dropped > 0, "drift produced duplicates: {manifest}");
    assert_eq!(manifest["unique_contacts"], ids.len() as u64);
    assert_eq!(manifest["count_difference"], 0);
    assert!(
        manifest["drift"]["recovered"].as_u64().expect("recovered") > 0,
        "{manifest}"
    );
    assert_eq!(manifest["drift"]["unresolved"], 0);
    assert!(
        run.stderr
            .contains(&format!("{dropped} duplicates dropped")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the repair recovered"),
        "{}",
        run.stderr
    );
}

#[test]
fn other_sort_keys_export_every_contact_once() {
    let fake = Fake::with_contacts(120);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "parquet",
        dir.path(),
        &["--sort", "email"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["unique_contacts"], 120);
    assert_eq!(manifest["source"]["sort"], "email");
}

#[test]
fn pages_asked_for_before_the_count_was_known_do_not_matter_once_unneeded() {
    // A one-page account on a server that answers 404 past page 2. The walk asks for pages
    // 2 to 8 together with page 1, before it knows the count; only page 2 (the empty one that
    // ends the walk) is needed, so the 404s of the others must not fail the export.
    let server = crate::loopback::Loopback::start(|target, _| {
        use crate::loopback::Reply;
        let page = target
            .split("page=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(1);
        match page {
            1 => Reply::json(
                200,
                r#"{"meta":{"count":2,"current_page":"1"},"payload":[
                    {"id":1,"name":"Dana","created_at":1700000000},
                    {"id":2,"name":"Noa","created_at":1700000600}]}"#,
            ),
            2 => Reply::json(200, r#"{"meta":{"count":2},"payload":[]}"#),
            _ => Reply::json(404, r#"{"error":"Resource could not be found"}"#),
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&server.base_url(), "ndjson", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["unique_contacts"], 2);
    assert_eq!(manifest["complete"], true);
    let ids: Vec<i64> = std::fs::read_to_string(dir.path().join("contacts.ndjson"))
        .expect("contacts")
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["id"]
                .as_i64()
                .expect("id")
        })
        .collect();
    assert_eq!(ids, [1, 2]);
    assert_no_token(&run, dir.path());
}

/// A two-contact account whose custom attribute definitions answer `definitions`.
fn account_with_definitions(definitions: Reply) -> crate::loopback::Loopback {
    let definitions = std::sync::Mutex::new(Some(definitions));
    crate::loopback::Loopback::start(move |target, _| {
        if target.contains("/custom_attribute_definitions") {
            let taken = definitions.lock().expect("lock").take();
            return taken.unwrap_or_else(|| Reply::json(500, "asked twice"));
        }
        if target.contains("page=1&") {
            return Reply::json(
                200,
                r#"{"meta":{"count":2,"current_page":"1"},"payload":[
                {"id":1,"created_at":1700000000,"custom_attributes":{"seats":3,"price":"1234.50",
                 "renewal":"2025-03-01T00:00:00.000Z","vip":true,"odd":"soon","priority":2,
                 "since":20250301}},
                {"id":2,"created_at":1700000600,"custom_attributes":{"seats":4,"price":" ",
                 "vip":false,"odd":"2025-01-01T00:00:00Z"}}]}"#,
            );
        }
        Reply::json(200, r#"{"meta":{"count":2},"payload":[]}"#)
    })
}

/// The contacts Parquet file's custom attribute columns: name, type and values as JSON
/// (timestamps as RFC 3339 text).
fn custom_columns(dir: &std::path::Path) -> Vec<(String, String, Vec<Value>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
    let file = std::fs::File::open(dir.join("contacts.parquet")).expect("contacts.parquet");
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .next()
        .expect("one batch")
        .expect("batch");
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name().starts_with("custom_attributes__"))
        .map(|(f, column)| {
            let values = (0..column.len())
                .map(|row| match f.data_type() {
                    _ if column.is_null(row) => Value::Null,
                    DataType::Float64 => column.as_primitive::<Float64Type>().value(row).into(),
                    // Exact, as the decimal's text (`decimal_key`).
                    DataType::Decimal128(_, scale) => {
                        let units = column.as_primitive::<arrow::datatypes::Decimal128Type>();
                        crate::expected::decimal_key(&format!("{}e-{scale}", units.value(row)))
                            .expect("a decimal")
                            .into()
                    }
                    DataType::Int64 => column.as_primitive::<Int64Type>().value(row).into(),
                    DataType::Boolean => column.as_boolean().value(row).into(),
                    DataType::Utf8 => column.as_string::<i32>().value(row).into(),
                    DataType::Timestamp(..) => {
                        let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
                        chrono::DateTime::from_timestamp_micros(micros)
                            .expect("in range")
                            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                            .into()
                    }
                    other => panic!("unexpected type {other}"),
                })
                .collect();
            (f.name().clone(), f.data_type().to_string(), values)
        })
        .collect()
}

#[test]
fn custom_attributes_are_typed_by_their_definitions() {
    let server = account_with_definitions(Reply::json(
        200,
        r#"[{"attribute_key":"seats","attribute_display_type":"number","attribute_model":"contact_attribute"},
            {"attribute_key":"price","attribute_display_type":"currency","attribute_model":"contact_attribute"},
            {"attribute_key":"renewal","attribute_display_type":"date","attribute_model":"contact_attribute"},
            {"attribute_key":"vip","attribute_display_type":"checkbox","attribute_model":"contact_attribute"},
            {"attribute_key":"unset yet","attribute_display_type":"percent","attribute_model":"contact_attribute"},
            {"attribute_key":"odd","attribute_display_type":"date","attribute_model":"contact_attribute"},
            {"attribute_key":"since","attribute_display_type":"date","attribute_model":"contact_attribute"},
            {"attribute_key":"priority","attribute_display_type":"text","attribute_model":"conversation_attribute"}]"#,
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&server.base_url(), "parquet", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let ts = "Timestamp(µs, \"UTC\")";
    const DEC: &str = "Decimal128(38, 18)";
    let got = custom_columns(dir.path());
    let want: Vec<(String, String, Vec<Value>)> = [
        // "soon" is not a date: the column falls back to text and keeps both values.
        (
            "odd",
            "Utf8",
            vec!["soon".into(), "2025-01-01T00:00:00Z".into()],
        ),
        // Text that holds a number is a number, exactly; blank text is null.
        ("price", DEC, vec!["12345e-1".into(), Value::Null]),
        // A conversation attribute's definition does not type the contact's key.
        ("priority", "Int64", vec![2.into(), Value::Null]),
        (
            "renewal",
            ts,
            vec!["2025-03-01T00:00:00Z".into(), Value::Null],
        ),
        // All integers tonight, decimal all the same: the type does not depend on the values.
        ("seats", DEC, vec!["3e0".into(), "4e0".into()]),
        // A number in a date attribute is not taken for unix seconds: the column is text.
        ("since", "Utf8", vec!["20250301".into(), Value::Null]),
        // Defined, set on no contact yet: still a column.
        ("unset yet", DEC, vec![Value::Null, Value::Null]),
        ("vip", "Boolean", vec![true.into(), false.into()]),
    ]
    .into_iter()
    .map(|(name, ty, values)| (format!("custom_attributes__{name}"), ty.to_owned(), values))
    .collect();
    assert_eq!(got, want);
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["custom_attribute_definitions"], 7);
    // "soon" and 20250301 in date attributes: kept as text, and counted.
    assert_eq!(manifest["values_kept_as_text"], 2);
}

#[test]
fn without_definitions_custom_attributes_are_typed_from_values_and_the_run_says_so() {
    let server = account_with_definitions(Reply::json(
        404,
        r#"{"error":"Resource could not be found"}"#,
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&server.base_url(), "parquet", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(
        warnings,
        [
            "chatwoot-export: warning: cannot read the custom attribute definitions (HTTP 404); custom_attributes columns are typed from their values alone"
        ]
    );
    let types: Vec<(String, String)> = custom_columns(dir.path())
        .into_iter()
        .map(|(name, ty, _)| {
            (
                name.trim_start_matches("custom_attributes__").to_owned(),
                ty,
            )
        })
        .collect();
    let want = [
        ("odd", "Utf8"),
        ("price", "Utf8"),
        ("priority", "Int64"),
        ("renewal", "Utf8"),
        ("seats", "Int64"),
        ("since", "Int64"),
        ("vip", "Boolean"),
    ];
    assert_eq!(types, want.map(|(n, t)| (n.to_owned(), t.to_owned())));
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["custom_attribute_definitions"], Value::Null);
    assert_no_token(&run, dir.path());
}
