//! Parquet: zstd level 1 (or the codec `SinkOptions::compression` asks for), row groups of at
//! most 64 Ki rows and 4 MiB in the writer's memory, typed columns that pyarrow, DuckDB, pandas, Polars and Spark read with no options.
//!
//! Dictionary encoding is on for every column except those whose first rows are mostly
//! distinct (ids, emails, phone numbers, timestamps): there a dictionary only costs a hash
//! lookup per value before the writer gives up on it. The writer is therefore made when the
//! first batch arrives, from a look at its first rows.

use std::fs::File;
use std::io::BufWriter;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rustc_hash::FxHashSet;

use super::SinkError;

/// Rows per row group: big enough for good compression and fast scans...
const ROW_GROUP_ROWS: usize = 64 * 1024;
/// ...and a row group is closed early once the writer holds this much of it in memory, so
/// memory stays flat however wide the rows are (contacts with large custom attributes): the
/// writer buffers a whole row group before it writes it. Measured on fake contacts (16 Ki-row
/// row groups): peak RSS 31.7 MB at 100,000 contacts and 37.8 MB at 1,000,000, against 43.9
/// and 55.3 MB with 64 Ki-row groups (which grew with the number of row groups), for files
/// 1.7% larger; 8 MiB gave 45.3 and 51.1 MB.
const ROW_GROUP_MAX_BYTES: usize = 4 << 20;

/// Rows of the first batch looked at to tell mostly distinct columns, and the fewest non-null
/// values among them for a verdict (a small table keeps every dictionary).
/// (A fixed cost per table: about 3 million instructions with FxHash.)
const SAMPLE_ROWS: usize = 1024;
const SAMPLE_MIN_VALUES: usize = 512;

pub struct ParquetSink {
    /// Until the first batch: the file and the schema.
    pending: Option<(BufWriter<File>, SchemaRef)>,
    writer: Option<ArrowWriter<BufWriter<File>>>,
    compression: Compression,
}

impl ParquetSink {
    pub fn create(
        out: BufWriter<File>,
        schema: SchemaRef,
        compression: Compression,
    ) -> Result<Self, SinkError> {
        Ok(Self {
            pending: Some((out, schema)),
            writer: None,
            compression,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let writer = match (&mut self.writer, self.pending.take()) {
            (Some(writer), _) => writer,
            (None, Some((out, schema))) => {
                let writer = open(out, schema, self.compression, Some(batch))?;
                self.writer.insert(writer)
            }
            (None, None) => unreachable_writer()?,
        };
        writer.write(batch)?;
        if writer.memory_size() >= ROW_GROUP_MAX_BYTES {
            writer.flush()?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<BufWriter<File>, SinkError> {
        let writer = match (self.writer.take(), self.pending.take()) {
            (Some(writer), _) => writer,
            (None, Some((out, schema))) => open(out, schema, self.compression, None)?,
            (None, None) => unreachable_writer()?,
        };
        Ok(writer.into_inner()?)
    }
}

/// The sink always holds either the file or the writer; an error rather than a panic if not.
fn unreachable_writer<T>() -> Result<T, SinkError> {
    Err(SinkError::Io(std::io::Error::other(
        "internal error: the Parquet writer is gone; please report this",
    )))
}

fn open(
    out: BufWriter<File>,
    schema: SchemaRef,
    compression: Compression,
    first: Option<&RecordBatch>,
) -> Result<ArrowWriter<BufWriter<File>>, SinkError> {
    let mut properties = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("chatwoot-export {}", env!("CARGO_PKG_VERSION")));
    for (index, field) in schema.fields().iter().enumerate() {
        if matches!(field.data_type(), DataType::Decimal128(..)) {
            // parquet 60 keeps a decimal column's min/max as slices of the whole batch it
            // converted to fixed-length bytes, so every row group's statistics hold its buffers
            // to the end: 1M contacts peaked at 68 MB instead of 40. No statistics for these
            // columns keeps memory flat; engines then scan them instead of skipping row groups.
            properties = properties.set_column_statistics_enabled(
                ColumnPath::from(field.name().as_str()),
                EnabledStatistics::None,
            );
        }
        let column = first.map(|batch| batch.column(index));
        if column.is_some_and(|column| mostly_distinct(column.as_ref())) {
            properties = properties
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    Ok(ArrowWriter::try_new(out, schema, Some(properties.build()))?)
}

/// Whether more than half of the first non-null values of `column` are distinct.
fn mostly_distinct(column: &dyn Array) -> bool {
    let rows = column.len().min(SAMPLE_ROWS);
    let column = column.slice(0, rows);
    let values = rows - column.null_count();
    if values < SAMPLE_MIN_VALUES {
        return false;
    }
    let valid = |row: &usize| column.is_valid(*row);
    let distinct = match column.data_type() {
        DataType::Utf8 => {
            let strings = column.as_string::<i32>();
            (0..rows)
                .filter(valid)
                .map(|row| strings.value(row))
                .collect::<FxHashSet<_>>()
                .len()
        }
        DataType::Int64 => {
            let ints = column.as_primitive::<Int64Type>();
            (0..rows)
                .filter(valid)
                .map(|row| ints.value(row))
                .collect::<FxHashSet<_>>()
                .len()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let stamps = column.as_primitive::<TimestampMicrosecondType>();
            (0..rows)
                .filter(valid)
                .map(|row| stamps.value(row))
                .collect::<FxHashSet<_>>()
                .len()
        }
        DataType::Float64 => {
            let floats = column.as_primitive::<Float64Type>();
            (0..rows)
                .filter(valid)
                .map(|row| floats.value(row).to_bits())
                .collect::<FxHashSet<_>>()
                .len()
        }
        _ => return false,
    };
    distinct * 2 > values
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn only_mostly_distinct_columns_lose_their_dictionary() {
        let ids = Int64Array::from_iter_values(0..5000);
        let statuses =
            StringArray::from_iter_values((0..5000).map(|i| ["online", "offline"][i % 2]));
        let emails: StringArray = (0..5000)
            .map(|i| (i % 3 != 0).then(|| format!("user{i}@example.com")))
            .collect();
        let few = Int64Array::from_iter_values(0..100);
        let cases: [(&dyn Array, bool); 4] = [
            (&ids, true),
            (&statuses, false),
            (&emails, true),
            (&few, false),
        ];
        for (column, distinct) in cases {
            assert_eq!(
                mostly_distinct(column),
                distinct,
                "{:?}",
                column.data_type()
            );
        }
    }

    #[test]
    fn wide_rows_close_row_groups_by_memory_and_every_row_reads_back() {
        use arrow::datatypes::{DataType, Field, Schema};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::RowAccessor;
        use std::sync::Arc;

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("notes", DataType::Utf8, true),
        ]));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wide.parquet");
        let out = BufWriter::new(File::create(&path).expect("create"));
        let mut sink =
            ParquetSink::create(out, Arc::clone(&schema), Compression::UNCOMPRESSED).expect("sink");
        // 8 batches of 1,000 rows of 2 KB of distinct text: 16 MB, far under 64 Ki rows.
        for batch in 0..8i64 {
            let ids = Int64Array::from_iter_values(batch * 1000..(batch + 1) * 1000);
            let notes = StringArray::from_iter_values(
                (batch * 1000..(batch + 1) * 1000).map(|i| format!("{i:>2000}")),
            );
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ids), Arc::new(notes)])
                    .expect("batch");
            sink.write(&batch).expect("write");
        }
        sink.finish().expect("finish");
        let reader = SerializedFileReader::new(File::open(&path).expect("open")).expect("parquet");
        let metadata = reader.metadata();
        let groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        assert!(
            groups.len() >= 3,
            "16 MB of rows in 4 MiB row groups: {groups:?}"
        );
        assert_eq!(groups.iter().sum::<i64>(), 8000);
        let ids: Vec<i64> = reader
            .get_row_iter(None)
            .expect("rows")
            .map(|row| row.expect("row").get_long(0).expect("id"))
            .collect();
        assert_eq!(ids, (0..8000).collect::<Vec<_>>());
    }
}
