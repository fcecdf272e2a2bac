//! Whatever a server sends, the transform never panics and never loses a value: a page is
//! parsed (`ContactsPage`) or refused, each contact flattened or refused, and every row
//! flattened comes back from the spill exactly as it went in, fills one Arrow batch with one
//! non-null value per cell, and is written by every sink.
//!
//! Inputs: arbitrary JSON, contact-shaped JSON with arbitrary parts, and real pages of the
//! fake server (legacy inbox credentials included) mutated byte by byte and node by node.
//! `PROPTEST_CASES` sets the cases per property (64 by default, to keep the suite fast); a
//! long run: `PROPTEST_CASES=200000 cargo test --release --test it robustness`.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::Array;
use chatwoot_export::fake::FakeAccount;
use chatwoot_export::sink::{Format, SinkOptions, TableWriter, neutralise};
use chatwoot_export::source::ContactsPage;
use chatwoot_export::transform::Row;
use chatwoot_export::transform::batch::BatchBuilder;
use chatwoot_export::transform::flatten::{EncodedContact, Flattener};
use chatwoot_export::transform::inbox_secrets::{
    INBOX_FIELDS, InboxSecrets, LINK_FIELDS, looks_secret,
};
use chatwoot_export::transform::schema::{TableSchema, TableShape};
use chatwoot_export::transform::spill::{RowBuffer, SpillReader, SpillWriter};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde_json::{Map, Value, json};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Keys that steer into the flattener's and the secret filter's branches.
const KEYS: &[&str] = &[
    "id",
    "name",
    "email",
    "blocked",
    "created_at",
    "last_activity_at",
    "conversations_count",
    "additional_attributes",
    "custom_attributes",
    "contact_inboxes",
    "inbox",
    "source_id",
    "channel_type",
    "imap_password",
    "hmac_token",
    "hmac_mandatory",
    "provider_config",
    "api_key",
    "inbox__id",
    "__",
    "",
    "=cmd",
    "שם",
];

/// Strings that steer into type widening and the CSV rule.
const TEXTS: &[&str] = &[
    "2024-01-01T00:00:00Z",
    "2024-01-01T00:00:00.5+02:00",
    "=1+2",
    "-5",
    "123",
    "true",
    "",
    "\r\n",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        (-10_000i64..4_000_000_000).prop_map(Value::from),
        prop::sample::select(TEXTS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn object_with(required: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let extra = prop::collection::vec((key(), json()), 0..4);
    let picked: Vec<BoxedStrategy<Option<(&'static str, Value)>>> = required
        .into_iter()
        .map(|(name, strategy)| {
            prop::option::weighted(0.8, strategy.prop_map(move |v| (name, v))).boxed()
        })
        .collect();
    (picked, extra)
        .prop_map(|(picked, extra)| {
            let mut fields: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in picked.into_iter().flatten() {
                fields.insert(name.to_owned(), value);
            }
            Value::Object(fields)
        })
        .boxed()
}

fn link() -> BoxedStrategy<Value> {
    let inbox = object_with(vec![
        ("id", leaf().boxed()),
        ("name", leaf().boxed()),
        ("imap_password", leaf().boxed()),
        ("provider_config", json().boxed()),
        (
            "hmac_mandatory",
            any::<bool>().prop_map(Value::from).boxed(),
        ),
    ]);
    prop_oneof![
        4 => object_with(vec![
            ("source_id", leaf().boxed()),
            ("inbox", prop_oneof![3 => inbox, 1 => json()].boxed()),
        ]),
        1 => json(),
    ]
    .boxed()
}

fn contact() -> BoxedStrategy<Value> {
    let id = prop_oneof![
        4 => any::<i64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(|n| Value::from(format!(" {n}"))),
        1 => leaf(),
    ];
    object_with(vec![
        ("id", id.boxed()),
        ("created_at", leaf().boxed()),
        ("last_activity_at", leaf().boxed()),
        ("additional_attributes", json().boxed()),
        ("custom_attributes", json().boxed()),
        (
            "contact_inboxes",
            prop_oneof![
                3 => prop::collection::vec(link(), 0..4).prop_map(Value::Array),
                1 => json(),
            ]
            .boxed(),
        ),
    ])
}

fn page_of(contacts: Vec<Value>, meta: Value) -> Vec<u8> {
    json!({"meta": meta, "payload": contacts})
        .to_string()
        .into_bytes()
}

/// Page `page` (15 contacts) of a fake account, as the server sends it.
fn real_page(seed: u64, page: u64, legacy: bool) -> Value {
    let account = FakeAccount::new(seed, 100).with_legacy_inbox_secrets(legacy);
    let contacts: Vec<Value> = (page * 15..(page * 15 + 15).min(100))
        .map(|i| account.contact(i))
        .collect();
    json!({"meta": {"count": 100, "current_page": page.to_string()}, "payload": contacts})
}

/// One byte-level edit: (kind, position, byte, length).
type ByteEdit = (u8, usize, u8, usize);

fn edit_bytes(bytes: &mut Vec<u8>, edits: &[ByteEdit]) {
    for &(kind, position, byte, len) in edits {
        if bytes.is_empty() {
            return;
        }
        let at = position % bytes.len();
        match kind % 5 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 => {
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => {
                let end = (at + len).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => bytes.truncate(at),
        }
    }
}

/// Replaces node number `target` (pre-order) of `value` with `replacement`.
fn replace_node(value: &mut Value, target: &mut usize, replacement: &Value) -> bool {
    if *target == 0 {
        *value = replacement.clone();
        return true;
    }
    *target -= 1;
    match value {
        Value::Array(items) => items
            .iter_mut()
            .any(|item| replace_node(item, target, replacement)),
        Value::Object(fields) => fields
            .values_mut()
            .any(|item| replace_node(item, target, replacement)),
        _ => false,
    }
}

/// The whole path from bytes to files, checking nothing is lost on the way.
fn check_page(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(page) = ContactsPage::from_body(bytes) else {
        return Ok(());
    };
    // The export's path (the contact's text, fast path with fallback) against the general
    // path on the parsed value: the same rows, by column name, whichever ran.
    let mut flattener = Flattener::default();
    let mut general = Flattener::default();
    let mut flat = EncodedContact::default();
    let mut tables: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
    for contact in &page.payload {
        let parsed = serde_json::from_str::<Value>(contact)
            .ok()
            .map(|value| general.flatten(&value));
        let fast = flattener.flatten_json(contact, &mut flat);
        match (&fast, parsed) {
            (Ok(()), Some(Ok(expected))) => {
                let contact_row = decoded(&flat.contact)?;
                prop_assert_eq!(
                    named(&flattener.contacts, &contact_row),
                    named(&general.contacts, std::slice::from_ref(&expected.contact)),
                );
                let links = decoded(&flat.inboxes)?;
                prop_assert_eq!(links.len(), expected.inboxes.len());
                for (link, want) in links.iter().zip(&expected.inboxes) {
                    prop_assert_eq!(
                        named(&flattener.inboxes, std::slice::from_ref(link)),
                        named(&general.inboxes, std::slice::from_ref(want))
                    );
                }
                tables[0].extend(contact_row);
                tables[1].extend(links);
            }
            (Err(_), Some(Err(_)) | None) => {}
            (fast, general) => {
                return Err(TestCaseError::fail(format!(
                    "the paths disagree on {contact}: fast {fast:?}, general {general:?}"
                )));
            }
        }
    }
    let schemas = [flattener.contacts.finish(), flattener.inboxes.finish()];
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (rows, schema) in tables.iter().zip(schemas) {
        let back = spill_round_trip(dir.path(), rows)?;
        prop_assert_eq!(&back, rows, "the spill gives back what it was given");
        check_batch_and_sinks(dir.path(), &back, schema)?;
    }
    Ok(())
}

/// The rows of a spill-encoded buffer.
fn decoded(rows: &RowBuffer) -> Result<Vec<Row>, TestCaseError> {
    rows.rows_iter()
        .map(|row| row.to_row())
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Rows with column names instead of ids (ids differ between two flatteners), cells sorted
/// by name (the fast path keeps the text's key order), the last of two cells of one column
/// kept as the batch keeps it (two keys that flatten to one name, a known limit).
fn named(shape: &TableShape, rows: &[Row]) -> Vec<BTreeMap<String, String>> {
    rows.iter()
        .map(|row| {
            row.iter()
                .map(|(id, cell)| (shape.name(*id).to_owned(), format!("{cell:?}")))
                .collect()
        })
        .collect()
}

fn spill_round_trip(dir: &Path, rows: &[Row]) -> Result<Vec<Row>, TestCaseError> {
    let fail = |e: std::io::Error| TestCaseError::fail(e.to_string());
    let path = dir.join("rows");
    let _ = std::fs::remove_file(&path);
    let mut writer = SpillWriter::create(&path).map_err(fail)?;
    for row in rows {
        writer.write_row(row).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    let mut reader = SpillReader::open(&path).map_err(fail)?;
    let mut back = Vec::new();
    while let Some(row) = reader.next_row().map_err(fail)? {
        back.push(row.to_row().map_err(fail)?);
    }
    Ok(back)
}

fn check_batch_and_sinks(
    dir: &Path,
    rows: &[Row],
    schema: TableSchema,
) -> Result<(), TestCaseError> {
    // Rows with a cell in each output column: each must give one non-null value. Two keys
    // that flatten to one name (`{"a__b": 1, "a": {"b": 2}}`) give one row two cells of one
    // column, of which the last is written (a known limit of the naming rule).
    let mut cells = vec![0usize; schema.columns.len()];
    for row in rows {
        let mut positions: Vec<u32> = row
            .iter()
            .map(|(id, _)| schema.position_of[*id as usize])
            .collect();
        positions.sort_unstable();
        positions.dedup();
        for position in positions {
            cells[position as usize] += 1;
        }
    }
    let mut builder = BatchBuilder::new(schema.clone());
    rows.iter().for_each(|row| builder.push(row));
    let batch = builder
        .finish()
        .map_err(|e| TestCaseError::fail(format!("batch: {e}")))?;
    prop_assert_eq!(batch.num_rows(), rows.len());
    for (position, column) in batch.columns().iter().enumerate() {
        prop_assert_eq!(
            column.len() - column.null_count(),
            cells[position],
            "column {} ({:?}) lost values",
            &schema.columns[position].name,
            schema.columns[position].ty
        );
    }
    for (format, csv_safe) in [
        (Format::Parquet, false),
        (Format::Csv, false),
        (Format::Csv, true),
        (Format::Ndjson, false),
    ] {
        let file = std::fs::File::create(dir.join("table"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let written = TableWriter::create(
            format,
            file,
            std::sync::Arc::clone(&schema.arrow),
            SinkOptions {
                csv_safe,
                ..SinkOptions::default()
            },
        )
        .and_then(|mut writer| {
            writer.write(&batch)?;
            writer.finish()
        });
        prop_assert!(written.is_ok(), "{:?}: {:?}", format, written.err());
    }
    Ok(())
}

/// Walks a scrubbed link: no field outside the documented ones may look secret unless it is
/// a boolean.
fn assert_no_secret(value: &Value, at_link: bool, in_inbox: bool) -> Result<(), TestCaseError> {
    // The documented fields the filter keeps whatever their names look like.
    const LINK: &[&str] = LINK_FIELDS;
    const INBOX: &[&str] = &INBOX_FIELDS;
    match value {
        Value::Object(fields) => {
            for (key, inner) in fields {
                let documented = (at_link && LINK.contains(&key.as_str()))
                    || (in_inbox && INBOX.contains(&key.as_str()));
                prop_assert!(
                    documented || inner.is_boolean() || !looks_secret(key),
                    "{key} survived"
                );
                assert_no_secret(inner, false, at_link && key == "inbox")?;
            }
        }
        Value::Array(items) => {
            for item in items {
                assert_no_secret(item, false, false)?;
            }
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_json_never_panics(value in json()) {
        check_page(value.to_string().as_bytes())?;
        check_page(&page_of(vec![value.clone()], json!({"count": 1})))?;
        check_page(&page_of(vec![], value))?;
    }

    #[test]
    fn contact_shaped_pages_lose_nothing(
        contacts in prop::collection::vec(contact(), 0..16),
        meta in prop_oneof![
            3 => leaf().prop_map(|count| json!({"count": count, "current_page": "2"})),
            1 => json(),
        ],
    ) {
        check_page(&page_of(contacts, meta))?;
    }

    #[test]
    fn real_pages_mutated_byte_by_byte(
        seed in 0u64..1000,
        page in 0u64..7,
        legacy in any::<bool>(),
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>(), 0usize..64), 1..6),
    ) {
        let mut bytes = real_page(seed, page, legacy).to_string().into_bytes();
        edit_bytes(&mut bytes, &edits);
        check_page(&bytes)?;
    }

    #[test]
    fn real_pages_mutated_node_by_node(
        seed in 0u64..1000,
        page in 0u64..7,
        legacy in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), json()), 1..5),
    ) {
        let mut value = real_page(seed, page, legacy);
        for (target, replacement) in &edits {
            let mut target = target % 3000;
            replace_node(&mut value, &mut target, replacement);
        }
        check_page(value.to_string().as_bytes())?;
    }

    #[test]
    fn no_secret_looking_field_survives_the_filter(link in link()) {
        let mut secrets = InboxSecrets::default();
        let scrubbed = secrets.scrub_link(&link).into_owned();
        assert_no_secret(&scrubbed, link.is_object(), false)?;
        if secrets.dropped().is_empty() {
            prop_assert_eq!(&scrubbed, &link);
        }
        let mut again = InboxSecrets::default();
        prop_assert_eq!(again.scrub_link(&scrubbed).into_owned(), scrubbed.clone());
        prop_assert!(again.dropped().is_empty());
        prop_assert_eq!(InboxSecrets::keep_all().scrub_link(&link).into_owned(), link);
    }

    #[test]
    fn csv_safe_cells_never_start_a_formula(text in ".{0,8}|[=+\\-@\t\r].{0,8}") {
        let safe = neutralise(&text);
        prop_assert!(!safe.starts_with(['=', '+', '-', '@', '\t', '\r']));
        if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            prop_assert_eq!(safe.as_ref(), format!("'{text}"));
        } else {
            prop_assert_eq!(safe.as_ref(), text.as_str());
        }
    }
}

/// Cases the properties found or that pin a rule, kept as plain tests.
#[test]
fn regression_cases() {
    for page in [
        // A contact with no payload array, an id beyond i64, a float id.
        r#"{"payload":{}}"#,
        r#"{"payload":[{"id":18446744073709551615},{"id":1.0},{"id":"  7  "}]}"#,
        // Keys that collide once flattened, and an empty key.
        r#"{"payload":[{"id":1,"a__b":1,"a":{"b":"x"},"":2,"additional_attributes":{"":{"":null}}}]}"#,
        // Inbox links that are not objects, and an inbox that is not one.
        r#"{"payload":[{"id":2,"contact_inboxes":[1,null,"x",{"inbox":[{"bot_token":"t"}]}]}]}"#,
        // Unix seconds beyond what a timestamp holds (written as null before), and beyond
        // what chrono can print (-285,000 years).
        r#"{"payload":[{"id":6,"last_activity_at":9223372036854775807}]}"#,
        r#"{"payload":[{"id":7,"created_at":-9000000000000}]}"#,
        // Created_at as text, as a huge number, as an object.
        r#"{"payload":[{"id":3,"created_at":"2024-01-01T00:00:00Z"},{"id":4,"created_at":9223372036854775807},{"id":5,"created_at":{}}]}"#,
    ] {
        if let Err(err) = check_page(page.as_bytes()) {
            panic!("{page}: {err}");
        }
    }
}
