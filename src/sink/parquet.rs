//! Parquet: zstd, 64 Ki-row row groups, typed columns that pyarrow, DuckDB, pandas, Polars and
//! Spark read with no options.

use std::fs::File;
use std::io::BufWriter;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::SinkError;

/// Rows per row group: big enough for good compression and fast scans, small enough that the
/// writer's buffered row group stays a few megabytes.
const ROW_GROUP_ROWS: usize = 64 * 1024;

pub struct ParquetSink {
    writer: ArrowWriter<BufWriter<File>>,
}

impl ParquetSink {
    pub fn create(
        out: BufWriter<File>,
        schema: SchemaRef,
        compression: Compression,
    ) -> Result<Self, SinkError> {
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("chatwoot-export {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(out, schema, Some(properties))?,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        Ok(self.writer.write(batch)?)
    }

    pub fn finish(self) -> Result<BufWriter<File>, SinkError> {
        Ok(self.writer.into_inner()?)
    }
}
