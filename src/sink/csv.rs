//! CSV: a header line, RFC 4180 quoting (fields with commas, quotes or newlines are quoted,
//! quotes doubled), UTF-8, an empty field for null. Lossless by default: a cell is written as
//! it came, and a decimal with the digits it has (`1234.5`, not Arrow's `1234.500000000000000000`).
//!
//! With `safe` (`--csv-safe`), text cells and header names that a spreadsheet would run as a
//! formula (starting with `=`, `+`, `-`, `@`, tab or carriage return: the OWASP CSV injection
//! rule) get a leading `'`. Only text (`Utf8`) columns: typed numbers, booleans and timestamps
//! are never touched, so a `-5` in an int64 column stays `-5`, while `-5` in a text column
//! becomes `'-5`. Not lossless: a cell that really started with `'=` reads the same as an
//! escaped `=`.
//!
//! With `excel` (`--csv-excel`, which sets `safe` too), each file starts with a UTF-8
//! byte-order mark (without it Excel reads UTF-8 as the system's code page: Hebrew becomes
//! mojibake) and lines end with CRLF, as RFC 4180 and Excel's own CSV have them.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::csv::{Writer, WriterBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::{SinkError, TIMESTAMP_FORMAT, with_offset_timezones};

/// The UTF-8 byte-order mark that tells a spreadsheet the file is UTF-8.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// First characters that make a spreadsheet read a cell as a formula (OWASP).
const FORMULA_STARTS: &[char] = &['=', '+', '-', '@', '\t', '\r'];

pub struct CsvSink {
    writer: Writer<BufWriter<File>>,
    safe: bool,
}

impl CsvSink {
    /// A sink writing to `out`; `safe` neutralises formula-like text cells, `excel` starts the
    /// file with a byte-order mark and ends lines with CRLF.
    pub fn create(mut out: BufWriter<File>, safe: bool, excel: bool) -> Result<Self, SinkError> {
        let mut builder = WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_owned());
        if excel {
            out.write_all(UTF8_BOM)?;
            builder = builder.with_line_terminator(arrow::csv::writer::Terminator::CRLF);
        }
        Ok(Self {
            writer: builder.build(out),
            safe,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let batch = with_offset_timezones(batch)?;
        let batch = if self.safe {
            neutralise_batch(&batch)?
        } else {
            batch
        };
        // After neutralising: a number is never a formula, whatever its sign.
        Ok(self.writer.write(&decimals_as_text(&batch)?)?)
    }

    pub fn finish(self) -> Result<BufWriter<File>, SinkError> {
        Ok(self.writer.into_inner())
    }
}

/// `text` as a spreadsheet shows it literally: with a leading `'` when it starts like a formula.
pub fn neutralise(text: &str) -> Cow<'_, str> {
    if text.starts_with(FORMULA_STARTS) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The batch with its Decimal128 columns as text with the digits each value has: CSV has no
/// types, and Arrow's writer pads every value to the column's scale.
fn decimals_as_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow::datatypes::Decimal128Type;
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Decimal128(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    let mut text = String::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match column.data_type() {
            DataType::Decimal128(_, scale) if *scale == crate::transform::number::SCALE => {
                let decimals = column.as_primitive::<Decimal128Type>();
                // Each value printed into one reused buffer and copied once, into the array.
                let mut printed = StringBuilder::with_capacity(decimals.len(), decimals.len() * 8);
                for units in decimals.iter() {
                    match units {
                        Some(units) => {
                            text.clear();
                            crate::transform::number::write_decimal(units, &mut text);
                            printed.append_value(&text);
                        }
                        None => printed.append_null(),
                    }
                }
                fields.push(Field::new(field.name(), DataType::Utf8, true));
                columns.push(Arc::new(printed.finish()));
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The batch with its text cells and column names neutralised; other columns as they are.
fn neutralise_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let name = neutralise(field.name());
        fields.push(Field::new(
            name.as_ref(),
            field.data_type().clone(),
            field.is_nullable(),
        ));
        let needs_change = |text: &StringArray| {
            text.iter()
                .flatten()
                .any(|cell| cell.starts_with(FORMULA_STARTS))
        };
        match column.data_type() {
            DataType::Utf8 if needs_change(column.as_string::<i32>()) => {
                let text: StringArray = column
                    .as_string::<i32>()
                    .iter()
                    .map(|cell| cell.map(neutralise))
                    .collect();
                columns.push(Arc::new(text));
            }
            _ => columns.push(Arc::clone(column)),
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn neutralises_the_owasp_formula_starts_only() {
        for (cell, want) in [
            ("=1+2", "'=1+2"),
            ("+972 50", "'+972 50"),
            ("-5", "'-5"),
            ("@cmd", "'@cmd"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=b", "a=b"),
            (" =x", " =x"),
            ("", ""),
            ("'already", "'already"),
            ("שלום", "שלום"),
        ] {
            assert_eq!(neutralise(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn only_text_columns_and_names_change() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Utf8, true),
            Field::new("=evil", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(StringArray::from(vec![Some("-5"), None])),
                Arc::new(StringArray::from(vec![Some("ok"), Some("@x")])),
            ],
        )
        .expect("batch");
        let written = |excel| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("t.csv");
            let file = File::create(&path).expect("create");
            let mut sink = CsvSink::create(BufWriter::new(file), true, excel).expect("sink");
            sink.write(&batch).expect("write");
            drop(sink.finish().expect("finish").into_inner().expect("flush"));
            std::fs::read(&path).expect("read")
        };
        assert_eq!(written(false), b"n,t,'=evil\n-5,'-5,ok\n,,'@x\n");
        // For spreadsheets: the byte-order mark first, CRLF line ends, the same cells.
        assert_eq!(
            written(true),
            b"\xEF\xBB\xBFn,t,'=evil\r\n-5,'-5,ok\r\n,,'@x\r\n"
        );
    }

    #[test]
    fn decimals_print_their_digits_and_are_never_neutralised() {
        use crate::transform::number::{PRECISION, SCALE, decimal_in_text};
        use arrow::array::Decimal128Array;
        let units = |text| decimal_in_text(text).flatten().expect("a decimal");
        let decimals = Decimal128Array::from(vec![
            Some(units("-9223372036854775808")),
            Some(units("1234.50")),
            None,
            Some(units("0.1")),
        ])
        .with_precision_and_scale(PRECISION, SCALE)
        .expect("valid");
        let schema = Arc::new(Schema::new(vec![
            Field::new("d", decimals.data_type().clone(), true),
            Field::new("n", DataType::Int64, true),
        ]));
        let ids = Int64Array::from(vec![1, 2, 3, 4]);
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(decimals), Arc::new(ids)]).expect("batch");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("d.csv");
        let file = BufWriter::new(File::create(&path).expect("create"));
        let mut sink = CsvSink::create(file, true, false).expect("sink");
        sink.write(&batch).expect("write");
        drop(sink.finish().expect("finish").into_inner().expect("flush"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "d,n\n-9223372036854775808,1\n1234.5,2\n,3\n0.1,4\n");
    }
}
