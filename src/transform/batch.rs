//! Sparse rows -> Arrow record batches in a table's final schema.
//!
//! Receives rows (encoded, straight from the spill, or as `Row`s) and the table's final
//! `TableSchema`; emits record batches of at most `BATCH_ROWS` rows. Each cell is converted to
//! its column's final type without loss:
//! ints into float columns as floats (only ints float64 holds reach one), numbers into a
//! `number` attribute's Decimal128 column exactly, unix seconds into timestamps, and any value
//! into a string column as its JSON text (strings as themselves, numbers with the digits sent).

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Decimal128Builder, Float64Builder, Int64Builder,
    StringArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::number::{PRECISION, SCALE, decimal_of_cell};
use super::schema::{ColumnType, TableSchema, parse_timestamp, secs_to_micros};
use super::spill::{EncodedRow, RawCell, RowBuffer};
use super::{CellRef, Row};

/// Rows per record batch: large enough for fast columnar encoding, small enough to keep
/// memory flat.
pub const BATCH_ROWS: usize = 8192;

enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Decimal(Decimal128Builder),
    Timestamp(TimestampMicrosecondBuilder),
    /// Text collected as bytes and checked to be UTF-8 once, in `finish`: the spill's text
    /// came from `&str`s, and one check over the column is far cheaper than one per value.
    Str(BinaryBuilder),
}

impl ColumnBuilder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Bool => Self::Bool(BooleanBuilder::with_capacity(BATCH_ROWS)),
            ColumnType::Int | ColumnType::LargeInt => {
                Self::Int(Int64Builder::with_capacity(BATCH_ROWS))
            }
            ColumnType::Float => Self::Float(Float64Builder::with_capacity(BATCH_ROWS)),
            ColumnType::Number => Self::Decimal(
                Decimal128Builder::with_capacity(BATCH_ROWS)
                    .with_data_type(DataType::Decimal128(PRECISION, SCALE)),
            ),
            ColumnType::Timestamp | ColumnType::DateText => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            ),
            ColumnType::Null | ColumnType::String => {
                Self::Str(BinaryBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 16))
            }
        }
    }

    /// Appends `cell` (or a null). The shape's widening guarantees the cell fits; a cell that
    /// does not (a bug) is written as null rather than crash the export.
    fn append(&mut self, cell: Option<RawCell<'_>>, text: &mut String) {
        match (self, cell) {
            (Self::Bool(b), Some(RawCell::Bool(v))) => b.append_value(v),
            (Self::Int(b), Some(RawCell::Int(v))) => b.append_value(v),
            (Self::Float(b), Some(RawCell::Float(v))) => b.append_value(v),
            // Only ints float64 holds exactly reach a float column (`ColumnType::widen`).
            (Self::Float(b), Some(RawCell::Int(v))) => b.append_value(v as f64),
            // Numbers, and the text that holds one, that `decimal_of_cell` read when it typed
            // the column; blank text is null.
            (Self::Decimal(b), Some(cell)) => {
                b.append_option(cell.checked().ok().and_then(decimal_of_cell).flatten())
            }
            (Self::Timestamp(b), Some(RawCell::Int(secs))) => b.append_option(secs_to_micros(secs)),
            (Self::Timestamp(b), Some(RawCell::Str(s))) => {
                b.append_option(std::str::from_utf8(s).ok().and_then(parse_timestamp))
            }
            (Self::Str(b), Some(RawCell::Str(s) | RawCell::Json(s))) => b.append_value(s),
            (Self::Str(b), Some(RawCell::Bool(v))) => {
                b.append_value(json_text(CellRef::Bool(v), text))
            }
            (Self::Str(b), Some(RawCell::Int(v))) => {
                b.append_value(json_text(CellRef::Int(v), text))
            }
            (Self::Str(b), Some(RawCell::Float(v))) => {
                b.append_value(json_text(CellRef::Float(v), text))
            }
            (Self::Bool(b), _) => b.append_null(),
            (Self::Int(b), _) => b.append_null(),
            (Self::Float(b), _) => b.append_null(),
            (Self::Decimal(b), None) => b.append_null(),
            (Self::Timestamp(b), _) => b.append_null(),
            (Self::Str(b), None) => b.append_null(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Self::Bool(b) => b.append_nulls(n),
            Self::Int(b) => b.append_nulls(n),
            Self::Float(b) => b.append_nulls(n),
            Self::Decimal(b) => b.append_nulls(n),
            Self::Timestamp(b) => b.append_nulls(n),
            Self::Str(b) => b.append_nulls(n),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Decimal(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(StringArray::try_from_binary(b.finish())?),
        })
    }
}

/// A cell as it goes in a string column: text as itself, anything else as its JSON text.
fn json_text<'a>(cell: CellRef<'a>, buffer: &'a mut String) -> &'a str {
    buffer.clear();
    match cell {
        CellRef::Str(s) | CellRef::Json(s) => return s,
        CellRef::Bool(b) => buffer.push_str(if b { "true" } else { "false" }),
        // Writing into the reused buffer: no allocation per value.
        CellRef::Int(i) => {
            let _ = write!(buffer, "{i}");
        }
        // serde_json's float text (`5.0`, `null` for a non-finite value), as `Value` prints it.
        CellRef::Float(f) => buffer.push_str(&serde_json::Value::from(f).to_string()),
    }
    buffer
}

/// Collects rows of one table into record batches.
///
/// Rows are sparse (a contact has values in about half the columns), so a row costs only its
/// cells: a column that gets a value first catches up on the nulls of the rows it missed, in
/// one `append_nulls`, and `finish` pads every column to the batch's length.
pub struct BatchBuilder {
    schema: TableSchema,
    columns: Vec<ColumnBuilder>,
    /// Per output column, how many rows of the batch it holds (values and nulls).
    filled: Vec<usize>,
    /// For `push`.
    scratch: RowBuffer,
    text: String,
    rows: usize,
}

impl BatchBuilder {
    pub fn new(schema: TableSchema) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.ty))
            .collect();
        let filled = vec![0; schema.columns.len()];
        Self {
            schema,
            columns,
            filled,
            scratch: RowBuffer::default(),
            text: String::new(),
            rows: 0,
        }
    }

    /// Appends a row. When it holds two cells of one column the later one wins.
    pub fn push(&mut self, row: &Row) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push_row(row);
        for encoded in scratch.rows_iter() {
            // A row this buffer just encoded always decodes.
            let _ = self.push_encoded(encoded);
        }
        self.scratch = scratch;
    }

    /// Appends a row as the spill encodes it, decoding each cell once and borrowing its text.
    /// The spill holds at most one cell per column in a row (`RowBuffer::push_row` and the
    /// fast flatten path see to it); should a damaged file hold two, the first is kept.
    pub fn push_encoded(&mut self, row: EncodedRow<'_>) -> io::Result<()> {
        let this_row = self.rows;
        for cell in row.raw_cells() {
            let (column, cell) = cell?;
            let Some(&position) = self.schema.position_of.get(column as usize) else {
                continue;
            };
            let (builder, filled) = (
                &mut self.columns[position as usize],
                &mut self.filled[position as usize],
            );
            if *filled > this_row {
                continue;
            }
            if *filled < this_row {
                builder.append_nulls(this_row - *filled);
            }
            builder.append(Some(cell), &mut self.text);
            *filled = this_row + 1;
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows pushed since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn is_full(&self) -> bool {
        self.rows >= BATCH_ROWS
    }

    /// The rows pushed so far as a batch (possibly empty); the builder starts over.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        for (builder, filled) in self.columns.iter_mut().zip(&mut self.filled) {
            if *filled < self.rows {
                builder.append_nulls(self.rows - *filled);
            }
            *filled = 0;
        }
        self.rows = 0;
        let arrays = self
            .columns
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect::<Result<_, _>>()?;
        RecordBatch::try_new(Arc::clone(&self.schema.arrow), arrays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Cell;
    use crate::transform::schema::TableShape;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Float64Type, Int64Type, TimestampMicrosecondType};

    #[test]
    fn cells_become_values_of_the_final_type() {
        let mut shape = TableShape::new(
            &[("id", ColumnType::Int), ("at", ColumnType::Timestamp)],
            &[],
        );
        let (mixed, score) = (shape.intern("mixed"), shape.intern("score"));
        let big = shape.intern("big");
        shape.declare("price", ColumnType::Number);
        let price = shape.id_of("price").expect("declared");
        let rows: Vec<Row> = vec![
            vec![
                (0, Cell::Int(1)),
                (1, Cell::Int(1_700_000_000)),
                (mixed, Cell::Int(5)),
                (score, Cell::Int(2)),
                (price, Cell::Str("1234.56".into())),
            ],
            vec![
                (0, Cell::Int(2)),
                (mixed, Cell::Str("A-1".into())),
                (score, Cell::Float(2.5)),
                (price, Cell::Int(7)),
            ],
            vec![
                (0, Cell::Int(3)),
                (1, Cell::Str("2024-01-01T00:00:00.5Z".into())),
                (mixed, Cell::Bool(true)),
                (price, Cell::Str(" ".into())),
            ],
            vec![
                (0, Cell::Int(4)),
                (big, Cell::Int(i64::MIN)),
                (price, Cell::Json("18446744073709551616".into())),
            ],
            vec![(0, Cell::Int(5)), (price, Cell::Float(0.1))],
        ];
        for row in &rows {
            for (id, cell) in row {
                shape.observe(*id, cell);
            }
        }
        let mut builder = BatchBuilder::new(shape.finish());
        rows.iter().for_each(|row| builder.push(row));
        let batch = builder.finish().expect("valid batch");
        // The same rows through the spill encoding give the same batch.
        let mut encoded = RowBuffer::default();
        rows.iter().for_each(|row| encoded.push_row(row));
        for row in encoded.rows_iter() {
            builder.push_encoded(row).expect("decodes");
        }
        assert_eq!(builder.finish().expect("valid batch"), batch);
        assert_eq!(batch.num_rows(), 5);
        let at = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 1_700_000_000_000_000);
        assert!(at.is_null(1));
        assert_eq!(at.value(2), 1_704_067_200_500_000);
        let mixed = batch.column(3).as_string::<i32>();
        assert_eq!(
            (mixed.value(0), mixed.value(1), mixed.value(2)),
            ("5", "A-1", "true")
        );
        // Output order: declared, then by name (big, mixed, price, score).
        let big = batch.column(2).as_primitive::<Int64Type>();
        assert_eq!(big.value(3), i64::MIN, "an int beyond 2^53 stays exact");
        let score = batch.column(5).as_primitive::<Float64Type>();
        assert_eq!((score.value(0), score.value(1)), (2.0, 2.5));
        assert!(score.is_null(2));
        let price = batch.column(4).as_primitive::<Decimal128Type>();
        let unit = 10i128.pow(18);
        assert_eq!(
            (price.value(0), price.value(1)),
            (123_456 * unit / 100, 7 * unit)
        );
        assert!(price.is_null(2), "blank text in a number column is null");
        assert_eq!(
            (price.value(3), price.value(4)),
            (18_446_744_073_709_551_616 * unit, unit / 10)
        );
        assert_eq!(
            batch
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            [1, 2, 3, 4, 5]
        );
    }
}
