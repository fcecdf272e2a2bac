//! NDJSON: one flattened contact (or inbox link) a line, typed JSON values, nulls written out
//! so every line has every column, timestamps as ISO 8601 text.

use std::fs::File;
use std::io::BufWriter;

use arrow::json::writer::{LineDelimited, Writer, WriterBuilder};
use arrow::record_batch::RecordBatch;

use super::{SinkError, TIMESTAMP_FORMAT, with_offset_timezones};

pub struct NdjsonSink {
    writer: Writer<BufWriter<File>, LineDelimited>,
}

impl NdjsonSink {
    pub fn create(out: BufWriter<File>) -> Self {
        let writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_owned())
            .build::<_, LineDelimited>(out);
        Self { writer }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        Ok(self.writer.write(&with_offset_timezones(batch)?)?)
    }

    pub fn finish(mut self) -> Result<BufWriter<File>, SinkError> {
        self.writer.finish()?;
        Ok(self.writer.into_inner())
    }
}
