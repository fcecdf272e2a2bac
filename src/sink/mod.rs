//! Record batches -> one file in the chosen format.
//!
//! Receives a table's Arrow schema, a file and its record batches; emits the file's bytes.
//! One file per format (`parquet`, `csv`, `ndjson`) behind the `TableWriter` enum: a new format
//! is one new file, one variant and one round-trip test.

mod csv;
mod ndjson;
mod parquet;

pub use csv::neutralise;

use std::fs::File;
use std::io::BufWriter;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// Output file format.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet, typed columns (UTC timestamps), zstd-compressed unless told otherwise.
    Parquet,
    /// RFC 4180 CSV with a header, UTF-8, empty field for null.
    Csv,
    /// One JSON object a line, nulls written explicitly.
    Ndjson,
    /// A Delta Lake table: the Parquet files of `parquet`, committed with delta-rs
    /// (store/delta.rs), one commit per run and table.
    Delta,
}

impl Format {
    /// The file name extension (Delta tables hold Parquet files).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet | Format::Delta => "parquet",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

/// Timestamps in CSV and NDJSON: ISO 8601 in UTC, fractional seconds only when present.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";

/// The batch with its UTC timestamp columns relabelled `+00:00`: the same instants, but a
/// zone the CSV and JSON formatters can print without the time zone database.
fn with_offset_timezones(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow::array::{Array, ArrayRef, AsArray};
    use arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
    use std::sync::Arc;

    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, Some(_))))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match column.data_type() {
            DataType::Timestamp(_, Some(_)) => {
                let relabelled = column
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone("+00:00");
                fields.push(Field::new(
                    field.name(),
                    relabelled.data_type().clone(),
                    true,
                ));
                columns.push(Arc::new(relabelled));
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The zstd level of Parquet files when none is asked for (`zstd`), the one place to change it.
/// Level 1: a tenth less CPU for the whole write than level 3 (callgrind, 3,000 fake
/// contacts), for files a few percent larger. The dictionary encoding of repetitive columns
/// does most of the shrinking before zstd sees the pages.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// The codec of Parquet pages (`sink.compression`, `--compression`). Written as in the
/// pipeline file and the manifest: `zstd`, `zstd:LEVEL` (1 to 22), `snappy` or `none`. Only
/// the codecs the pinned parquet crate is built with (its `zstd` and `snap` features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Compression {
    Zstd { level: i32 },
    Snappy,
    None,
}

impl Compression {
    /// What `sink.compression` and `--compression` accept, for messages.
    pub const ALLOWED: &'static str = "zstd, zstd:LEVEL (1 to 22), snappy or none";

    /// Reads `zstd`, `zstd:LEVEL`, `snappy` or `none`; the error lists what is allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let unknown = || format!("must be {}, not {text:?}", Self::ALLOWED);
        match text.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(Self::default()),
            "snappy" => Ok(Self::Snappy),
            "none" | "uncompressed" => Ok(Self::None),
            other => match other.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(level)) if (1..=22).contains(&level) => Ok(Self::Zstd { level }),
                Some(_) => Err(format!(
                    "{text:?}: the zstd level must be a whole number from 1 to 22"
                )),
                None => Err(unknown()),
            },
        }
    }

    /// The parquet crate's codec.
    fn codec(self) -> Result<::parquet::basic::Compression, SinkError> {
        use ::parquet::basic::{Compression as Codec, ZstdLevel};
        Ok(match self {
            Self::Zstd { level } => Codec::ZSTD(ZstdLevel::try_new(level)?),
            Self::Snappy => Codec::SNAPPY,
            Self::None => Codec::UNCOMPRESSED,
        })
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Zstd { level } => write!(f, "zstd:{level}"),
            Self::Snappy => f.write_str("snappy"),
            Self::None => f.write_str("none"),
        }
    }
}

impl From<Compression> for String {
    fn from(compression: Compression) -> Self {
        compression.to_string()
    }
}

impl TryFrom<String> for Compression {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

/// How the sinks write, beyond the format.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkOptions {
    /// CSV: neutralise text cells that a spreadsheet would run as a formula (`--csv-safe`).
    pub csv_safe: bool,
    /// CSV: a UTF-8 byte-order mark and CRLF line ends, for spreadsheets (`--csv-excel`).
    pub csv_excel: bool,
    /// Parquet: the pages' codec.
    pub compression: Compression,
    /// The columns' names as the server's keys make them, or snake case for SQL engines.
    pub column_names: ColumnNames,
}

/// How columns are named in the files (`--column-names`, `sink.column_names`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ColumnNames {
    /// As the attribute keys make them (`custom_attributes__Plan Name`).
    #[default]
    Verbatim,
    /// Lowercase ASCII letters, digits and `_` (`custom_attributes__plan_name`), as Athena,
    /// Glue and unquoted SQL want; the manifest keeps each column's original name.
    Snake,
}

/// A failure while encoding or writing a table file.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes one table to one file.
pub enum TableWriter {
    Parquet(parquet::ParquetSink),
    Csv(csv::CsvSink),
    Ndjson(ndjson::NdjsonSink),
}

impl TableWriter {
    pub fn create(
        format: Format,
        file: File,
        schema: SchemaRef,
        options: SinkOptions,
    ) -> Result<Self, SinkError> {
        let out = BufWriter::with_capacity(1 << 20, file);
        Ok(match format {
            Format::Parquet | Format::Delta => Self::Parquet(parquet::ParquetSink::create(
                out,
                schema,
                options.compression.codec()?,
            )?),
            Format::Csv => Self::Csv(csv::CsvSink::create(
                out,
                options.csv_safe,
                options.csv_excel,
            )?),
            Format::Ndjson => Self::Ndjson(ndjson::NdjsonSink::create(out)),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        match self {
            Self::Parquet(sink) => sink.write(batch),
            Self::Csv(sink) => sink.write(batch),
            Self::Ndjson(sink) => sink.write(batch),
        }
    }

    /// Completes the file (footer, flush) and returns it, synced to disk.
    pub fn finish(self) -> Result<File, SinkError> {
        let out = match self {
            Self::Parquet(sink) => sink.finish()?,
            Self::Csv(sink) => sink.finish()?,
            Self::Ndjson(sink) => sink.finish()?,
        };
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_reads_what_it_writes() {
        for text in ["zstd:1", "zstd:22", "snappy", "none"] {
            let compression = Compression::parse(text).expect(text);
            assert_eq!(compression.to_string(), text);
            let json = serde_json::to_string(&compression).expect("json");
            assert_eq!(
                serde_json::from_str::<Compression>(&json).ok(),
                Some(compression)
            );
        }
        assert_eq!(
            Compression::parse("ZSTD").map(|c| c.to_string()),
            Ok(format!("zstd:{DEFAULT_ZSTD_LEVEL}"))
        );
        for bad in ["gzip", "zstd:0", "zstd:23", "zstd:", ""] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
    }
}
