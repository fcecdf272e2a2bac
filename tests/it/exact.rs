//! Issue 15: numbers come out exactly as the API sent them, and values the flattener cannot
//! take apart (300 levels deep) or that miss their declared type are kept as text and counted,
//! while a 5 MB value exports intact. A scripted server sends the pages; pyarrow and DuckDB
//! (Parquet), Python's csv module (CSV) and json with decimal parsing (NDJSON) read them back.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::expected::decimal_key;
use crate::harness::{assert_no_token, export, manifest, run_python};
use crate::loopback::{Loopback, Reply};

/// Values of the `policy` (number), `price` (currency) and `rate` (percent) attributes, as the
/// server sends them (JSON text), by contact id.
const NUMBERS: [(i64, &str, &str, &str); 4] = [
    (1, "9007199254740993", r#""1234.50""#, "0.1"),
    (
        2,
        "-9223372036854775808",
        "1234.5678901234",
        r#""0.30000000000000001""#,
    ),
    (
        3,
        "123456789012345678",
        "99999999999999999999.999999999999999999",
        "1e-18",
    ),
    (4, "18446744073709551616", r#"" ""#, "-0.5"),
];
/// Nesting of contact 1's `additional_attributes.deep` (its column holds the value's text).
const DEPTH: usize = 300;

fn deep_value() -> String {
    format!(
        "{}\"bottom\"{}",
        r#"{"a":"#.repeat(DEPTH),
        "}".repeat(DEPTH)
    )
}

fn blob() -> String {
    // 5 MB with quotes, backslashes, newlines and Hebrew, so escaping is exercised too.
    "חשבון \"5\" \\ a\nb ".repeat(5_000_000 / 24)
}

fn account() -> Loopback {
    let deep = deep_value();
    let blob = serde_json::to_string(&blob()).expect("json");
    let contacts: Vec<String> = NUMBERS
        .iter()
        .map(|(id, policy, price, rate)| {
            let (extra_top, extra_custom) = match id {
                1 => (
                    format!(r#","additional_attributes":{{"city":"Haifa","deep":{deep}}}"#),
                    String::new(),
                ),
                2 => (String::new(), format!(r#","blob":{blob}"#)),
                3 => (
                    r#","additional_attributes":{"n":1234.5678901234,"huge":123456789012345678901234}"#.into(),
                    String::new(),
                ),
                _ => (String::new(), r#","renewal":"soon""#.into()),
            };
            format!(
                r#"{{"id":{id},"name":"c{id}","created_at":{},"custom_attributes":{{"policy":{policy},"price":{price},"rate":{rate}{extra_custom}}}{extra_top}}}"#,
                1_700_000_000 + id
            )
        })
        .collect();
    let page = format!(
        r#"{{"meta":{{"count":{},"current_page":"1"}},"payload":[{}]}}"#,
        contacts.len(),
        contacts.join(",")
    );
    Loopback::start(move |target, _| {
        if target.contains("/custom_attribute_definitions") {
            return Reply::json(
                200,
                r#"[{"attribute_key":"policy","attribute_display_type":"number","attribute_model":"contact_attribute"},
                    {"attribute_key":"price","attribute_display_type":"currency","attribute_model":"contact_attribute"},
                    {"attribute_key":"rate","attribute_display_type":"percent","attribute_model":"contact_attribute"},
                    {"attribute_key":"renewal","attribute_display_type":"date","attribute_model":"contact_attribute"},
                    {"attribute_key":"blob","attribute_display_type":"text","attribute_model":"contact_attribute"}]"#,
            );
        }
        if target.contains("page=1&") || target.ends_with("page=1") {
            return Reply::json(200, page.clone());
        }
        Reply::json(200, r#"{"meta":{"count":4},"payload":[]}"#)
    })
}

/// Reads an export back with independent readers: {reader: [{column: value as text}]}.
const READ_BACK: &str = r#"
import csv, json, sys
from decimal import Decimal
fmt, path = sys.argv[1], sys.argv[2]
csv.field_size_limit(sys.maxsize)  # the 5 MB cell
def text(v):
    return None if v is None else str(v)
out = {}
if fmt == "parquet":
    import duckdb, pyarrow.parquet as pq
    table = pq.read_table(path)
    out["types"] = [{f.name: str(f.type) for f in table.schema}]
    out["pyarrow"] = [{k: text(v) for k, v in r.items()} for r in table.to_pylist()]
    rel = duckdb.execute("SELECT * FROM read_parquet(?)", [path])
    names = [d[0] for d in rel.description]
    out["duckdb"] = [{k: text(v) for k, v in zip(names, r)} for r in rel.fetchall()]
elif fmt == "csv":
    with open(path, newline="", encoding="utf-8") as f:
        out["csv"] = [{k: (v or None) for k, v in r.items()} for r in csv.DictReader(f)]
else:
    with open(path, encoding="utf-8") as f:
        out["ndjson"] = [{k: (v if isinstance(v, str) else text(v)) for k, v in
                          json.loads(line, parse_float=Decimal, parse_int=Decimal).items()}
                         for line in f]
print(json.dumps(out))
"#;

/// The number in `json_text` (a JSON number, or a JSON string holding one) as `decimal_key`.
fn source_key(json_text: &str) -> Option<String> {
    match serde_json::from_str::<Value>(json_text).expect("json") {
        Value::String(s) => decimal_key(&s),
        other => decimal_key(&other.to_string()),
    }
}

#[test]
fn numbers_stay_exact_and_bad_values_are_kept_in_every_format() {
    let server = account();
    let work = tempfile::tempdir().expect("temp dir");
    for format in ["parquet", "csv", "ndjson"] {
        let dir = work.path().join(format);
        let run = export(&server.base_url(), format, &dir, &[]);
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        assert_no_token(&run, &dir);
        let manifest = manifest(&dir).expect("manifest");
        assert_eq!(manifest["complete"], true);
        // The 300-level value and "soon" in a date attribute; the 5 MB text is just text.
        assert_eq!(manifest["values_kept_as_text"], 2, "{format}");
        let columns: BTreeMap<String, String> = manifest["tables"]["contacts"]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("name").to_owned(),
                    c["type"].as_str().expect("type").to_owned(),
                )
            })
            .collect();
        for attr in ["policy", "price", "rate"] {
            assert_eq!(
                columns[&format!("custom_attributes__{attr}")],
                "decimal(38,18)"
            );
        }
        // Beyond i64, so no int64 holds it and no float64 may: text with its digits.
        assert_eq!(columns["additional_attributes__huge"], "string");
        assert_eq!(columns["additional_attributes__n"], "float64");
        let path = dir.join(format!("contacts.{format}"));
        let read: BTreeMap<String, Vec<BTreeMap<String, Option<String>>>> = serde_json::from_str(
            &run_python(READ_BACK, &[format, path.to_str().expect("path")]),
        )
        .expect("reader output");
        if let Some(types) = read.get("types") {
            let types = &types[0];
            assert_eq!(
                types["custom_attributes__policy"].as_deref(),
                Some("decimal128(38, 18)")
            );
        }
        for (reader, rows) in read.iter().filter(|(name, _)| *name != "types") {
            assert_eq!(rows.len(), NUMBERS.len(), "{reader}");
            for (row, (id, policy, price, rate)) in rows.iter().zip(NUMBERS) {
                assert_eq!(
                    row["id"].as_deref(),
                    Some(id.to_string().as_str()),
                    "{reader}"
                );
                for (attr, sent) in [("policy", policy), ("price", price), ("rate", rate)] {
                    let got = row[&format!("custom_attributes__{attr}")].as_deref();
                    assert_eq!(
                        got.and_then(decimal_key),
                        source_key(sent),
                        "{reader} contact {id} {attr}: sent {sent}, read {got:?}"
                    );
                }
            }
            let cell = |id: usize, column: &str| rows[id - 1][column].clone();
            assert_eq!(
                cell(1, "additional_attributes__deep"),
                Some(deep_value()),
                "{reader}"
            );
            assert_eq!(
                cell(1, "additional_attributes__city").as_deref(),
                Some("Haifa")
            );
            assert_eq!(
                cell(2, "custom_attributes__blob"),
                Some(blob()),
                "{reader}: 5 MB intact"
            );
            assert_eq!(
                cell(4, "custom_attributes__renewal").as_deref(),
                Some("soon")
            );
            assert_eq!(
                cell(3, "additional_attributes__huge").as_deref(),
                Some("123456789012345678901234"),
                "{reader}"
            );
            assert_eq!(
                cell(3, "additional_attributes__n").and_then(|t| decimal_key(&t)),
                decimal_key("1234.5678901234"),
                "{reader}"
            );
        }
        // Text formats print the digits, not a scale's padding.
        let written = match format {
            "parquet" => continue,
            _ => std::fs::read_to_string(&path).expect("output"),
        };
        if format == "ndjson" {
            assert!(
                written.contains(r#""custom_attributes__policy":9007199254740993,"#),
                "{format}"
            );
            assert!(
                written.contains(r#""custom_attributes__price":1234.5,"#),
                "{format}"
            );
        } else if format == "csv" {
            assert!(
                written.contains(",9007199254740993,1234.5,0.1,"),
                "{format}"
            );
        }
    }
}
