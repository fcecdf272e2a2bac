//! NDJSON: one flattened contact (or inbox link) a line, typed JSON values, nulls written out
//! so every line has every column, timestamps as ISO 8601 text, decimals as JSON numbers with
//! the digits they have (`1234.5`, `9007199254740993`: not padded to the column's scale).

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use arrow::array::{Array, AsArray, PrimitiveArray};
use arrow::datatypes::{DataType, Decimal128Type, FieldRef};
use arrow::error::ArrowError;
use arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder, Writer, WriterBuilder,
};
use arrow::record_batch::RecordBatch;

use crate::transform::number::write_decimal;

use super::{SinkError, TIMESTAMP_FORMAT, with_offset_timezones};

pub struct NdjsonSink {
    writer: Writer<BufWriter<File>, LineDelimited>,
}

impl NdjsonSink {
    pub fn create(out: BufWriter<File>) -> Self {
        let writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_owned())
            .with_encoder_factory(Arc::new(TrimmedDecimals))
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

/// Writes Decimal128 values as JSON numbers without the padding zeros Arrow's encoder adds.
#[derive(Debug)]
struct TrimmedDecimals;

impl EncoderFactory for TrimmedDecimals {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        match array.data_type() {
            DataType::Decimal128(_, scale) if *scale == crate::transform::number::SCALE => {
                let decimals = array.as_primitive::<Decimal128Type>();
                let encoder = DecimalEncoder {
                    decimals,
                    text: String::new(),
                };
                Ok(Some(NullableEncoder::new(
                    Box::new(encoder),
                    decimals.nulls().cloned(),
                )))
            }
            _ => Ok(None),
        }
    }
}

struct DecimalEncoder<'a> {
    decimals: &'a PrimitiveArray<Decimal128Type>,
    text: String,
}

impl Encoder for DecimalEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        self.text.clear();
        write_decimal(self.decimals.value(idx), &mut self.text);
        out.extend_from_slice(self.text.as_bytes());
    }
}
