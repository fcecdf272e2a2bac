//! CSV: a header line, RFC 4180 quoting (fields with commas, quotes or newlines are quoted,
//! quotes doubled), UTF-8, an empty field for null. Lossless: a cell is written as it came.

use std::fs::File;
use std::io::BufWriter;

use arrow::csv::{Writer, WriterBuilder};
use arrow::record_batch::RecordBatch;

use super::{SinkError, TIMESTAMP_FORMAT, with_offset_timezones};

pub struct CsvSink {
    writer: Writer<BufWriter<File>>,
}

impl CsvSink {
    pub fn create(out: BufWriter<File>) -> Self {
        let writer = WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_owned())
            .build(out);
        Self { writer }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        Ok(self.writer.write(&with_offset_timezones(batch)?)?)
    }

    pub fn finish(self) -> Result<BufWriter<File>, SinkError> {
        Ok(self.writer.into_inner())
    }
}
