//! Reads each output format back into rows normalized like `expected::Table::normalized_row`,
//! and compares them with the contract's expectation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Decimal128Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::expected::{Kind, Table, decimal_key};

/// A table as read back: column names in file order and normalized rows.
pub struct ReadBack {
    pub columns: Vec<String>,
    pub rows: Vec<BTreeMap<String, Value>>,
}

/// Reads `DIR/<table>.<format>`; `expected` gives the kinds needed to interpret text formats.
pub fn read(dir: &Path, table: &str, format: &str, expected: &Table) -> ReadBack {
    read_file(&dir.join(format!("{table}.{format}")), format, expected)
}

/// Reads one file of a table.
pub fn read_file(path: &Path, format: &str, expected: &Table) -> ReadBack {
    match format {
        "parquet" => read_parquet(path, expected),
        "csv" => read_csv(path, expected),
        "ndjson" => read_ndjson(path, expected),
        other => panic!("unknown format {other}"),
    }
}

/// Reads a table written as several files (`names`, in order, under `dir`) into one, checking
/// that every file has the same columns; also returns each file's row count.
pub fn read_files(
    dir: &Path,
    names: &[String],
    format: &str,
    expected: &Table,
) -> (ReadBack, Vec<usize>) {
    let mut all = ReadBack {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    let mut counts = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let part = read_file(&dir.join(name), format, expected);
        if index == 0 {
            all.columns = part.columns;
        } else {
            assert_eq!(part.columns, all.columns, "{name}: the table's one schema");
        }
        counts.push(part.rows.len());
        all.rows.extend(part.rows);
    }
    (all, counts)
}

fn read_parquet(path: &Path, expected: &Table) -> ReadBack {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("parquet file"))
        .expect("valid parquet")
        .build()
        .expect("reader");
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let schema = batch.schema();
        columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            let want = match expected.kind(field.name()) {
                Kind::Bool => DataType::Boolean,
                Kind::Int => DataType::Int64,
                Kind::Float => DataType::Float64,
                Kind::Decimal => DataType::Decimal128(38, 18),
                Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                Kind::Str => DataType::Utf8,
            };
            assert_eq!(field.data_type(), &want, "type of column {}", field.name());
            let _ = array;
        }
        for row in 0..batch.num_rows() {
            let mut values = BTreeMap::new();
            for (field, array) in schema.fields().iter().zip(batch.columns()) {
                let value = if array.is_null(row) {
                    Value::Null
                } else {
                    match field.data_type() {
                        DataType::Boolean => Value::from(array.as_boolean().value(row)),
                        DataType::Int64 => {
                            Value::from(array.as_primitive::<Int64Type>().value(row))
                        }
                        DataType::Float64 => {
                            Value::from(array.as_primitive::<Float64Type>().value(row))
                        }
                        DataType::Decimal128(_, scale) => {
                            let units = array.as_primitive::<Decimal128Type>().value(row);
                            let text = format!("{units}e-{scale}");
                            Value::from(decimal_key(&text).expect("a decimal"))
                        }
                        DataType::Timestamp(..) => {
                            let micros =
                                array.as_primitive::<TimestampMicrosecondType>().value(row);
                            assert_eq!(micros % 1_000_000, 0, "whole seconds");
                            Value::from(micros / 1_000_000)
                        }
                        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
                        other => panic!("unexpected type {other}"),
                    }
                };
                values.insert(field.name().clone(), value);
            }
            rows.push(values);
        }
    }
    ReadBack { columns, rows }
}

/// Unix seconds of `YYYY-MM-DDTHH:MM:SSZ`.
fn iso_seconds(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("timestamp {text:?}: {err}"))
        .timestamp()
}

/// A text cell interpreted in the column's kind.
fn from_text(text: &str, kind: Kind) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    match kind {
        Kind::Bool => Value::from(match text {
            "true" => true,
            "false" => false,
            other => panic!("boolean {other:?}"),
        }),
        Kind::Int => Value::from(text.parse::<i64>().expect("int")),
        Kind::Float => Value::from(text.parse::<f64>().expect("float")),
        Kind::Decimal => Value::from(decimal_key(text).expect("decimal text")),
        Kind::Timestamp => Value::from(iso_seconds(text)),
        Kind::Str => Value::from(text),
    }
}

fn read_csv(path: &Path, expected: &Table) -> ReadBack {
    let mut reader = csv::Reader::from_path(path).expect("csv file");
    let columns: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|record| {
            let record = record.expect("RFC 4180 record");
            assert_eq!(record.len(), columns.len(), "every record has every column");
            columns
                .iter()
                .zip(record.iter())
                .map(|(name, text)| (name.clone(), from_text(text, expected.kind(name))))
                .collect()
        })
        .collect();
    ReadBack { columns, rows }
}

fn read_ndjson(path: &Path, expected: &Table) -> ReadBack {
    let text = std::fs::read_to_string(path).expect("ndjson file");
    let mut columns = Vec::new();
    let rows = text
        .lines()
        .map(|line| {
            let object: serde_json::Map<String, Value> =
                serde_json::from_str(line).expect("a JSON object a line");
            columns = object.keys().cloned().collect();
            object
                .into_iter()
                .map(|(name, value)| {
                    let value = match (expected.kind(&name), value) {
                        (Kind::Timestamp, Value::String(s)) => Value::from(iso_seconds(&s)),
                        (Kind::Float, Value::Number(n)) => Value::from(n.as_f64().expect("number")),
                        (Kind::Decimal, Value::Number(n)) => {
                            Value::from(decimal_key(n.as_str()).expect("a decimal"))
                        }
                        (_, value) => value,
                    };
                    (name, value)
                })
                .collect()
        })
        .collect();
    ReadBack { columns, rows }
}

/// Asserts the read-back table equals the expectation: columns in order (NDJSON objects are
/// unordered, so only the set), then every value of every row.
pub fn assert_same(table: &str, format: &str, expected: &Table, got: &ReadBack) {
    let want: Vec<String> = expected.columns.iter().map(|(n, _)| n.clone()).collect();
    if format == "ndjson" && !got.rows.is_empty() {
        let (mut a, mut b) = (want.clone(), got.columns.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{table}.{format}: columns");
    } else {
        assert_eq!(
            got.columns, want,
            "{table}.{format}: columns in contract order"
        );
    }
    assert_eq!(
        got.rows.len(),
        expected.rows.len(),
        "{table}.{format}: row count"
    );
    let mut differences = Vec::new();
    for (index, row) in got.rows.iter().enumerate() {
        let mut want = expected.normalized_row(index);
        if format == "csv" {
            // CSV has one spelling for null and "": the empty field.
            for value in want.values_mut() {
                if value.as_str() == Some("") {
                    *value = Value::Null;
                }
            }
        }
        for (column, want_value) in &want {
            let got_value = row.get(column).unwrap_or(&Value::Null);
            if got_value != want_value {
                differences.push(format!(
                    "row {index} {column}: want {want_value}, got {got_value}"
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{table}.{format}: {} differences, first: {:#?}",
        differences.len(),
        &differences[..differences.len().min(10)]
    );
}
