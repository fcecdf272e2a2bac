//! The spills -> the output tables, once the schemas are final.
//!
//! Receives the final table shapes and the spill files; emits `DIR/<table>.<ext>` through a
//! temporary name, and the tables' manifest entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ExportError;
use crate::config::{ColumnFilter, TableSelection};
use crate::manifest::TableEntry;
use crate::progress::Progress;
use crate::sink::{Format, SinkError, SinkOptions, TableWriter};
use crate::store::{OutputDir, StoreError};
use crate::transform::batch::BatchBuilder;
use crate::transform::flatten::Flattener;
use crate::transform::schema::TableSchema;
use crate::transform::spill::SpillReader;

/// The two output tables, in the order they are written.
pub const TABLES: [&str; 2] = ["contacts", "contact_inboxes"];

/// Writes the selected tables with their selected columns; returns their manifest entries
/// and the final paths.
pub fn write_tables(
    format: Format,
    options: SinkOptions,
    selection: &TableSelection,
    dir: &OutputDir,
    flattener: &Flattener,
    spills: &[PathBuf; 2],
    progress: &Progress,
) -> Result<(BTreeMap<String, TableEntry>, Vec<PathBuf>), ExportError> {
    let schemas = [flattener.contacts.finish(), flattener.inboxes.finish()];
    let mut tables = BTreeMap::new();
    let mut written = Vec::new();
    for ((table, schema), spill) in TABLES.into_iter().zip(schemas).zip(spills) {
        let filter = selection.of(table);
        if !filter.enabled {
            continue;
        }
        progress.phase(&format!("writing {table}"));
        let file_name = format!("{table}.{}", format.extension());
        let keep = kept_columns(&schema, filter);
        let rows = write_table(
            format, options, dir, table, &file_name, &schema, &keep, spill,
        )?;
        let mut entry = TableEntry::new(vec![file_name.clone()], rows, &schema);
        entry.columns = keep.iter().map(|&i| entry.columns[i].clone()).collect();
        tables.insert(table.to_owned(), entry);
        written.push(dir.root().join(&file_name));
    }
    Ok((tables, written))
}

/// The positions of the columns the filter keeps. Filtering happens on the final schema, at
/// write time, so inference and the spill files do not need to know about it.
fn kept_columns(schema: &TableSchema, filter: &ColumnFilter) -> Vec<usize> {
    (0..schema.columns.len())
        .filter(|&i| filter.keeps(&schema.columns[i].name))
        .collect()
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument is distinct"
)]
fn write_table(
    format: Format,
    options: SinkOptions,
    dir: &OutputDir,
    table: &'static str,
    file_name: &str,
    schema: &TableSchema,
    keep: &[usize],
    spill: &Path,
) -> Result<u64, ExportError> {
    let sink_error = |source: SinkError| ExportError::Sink { table, source };
    let spill_error = |source| ExportError::Spill {
        path: spill.to_owned(),
        source,
    };
    let (file, temp) = dir.create_temp(file_name)?;
    let projected = Arc::new(
        schema
            .arrow
            .project(keep)
            .map_err(|e| sink_error(e.into()))?,
    );
    let mut writer = TableWriter::create(format, file, projected, options).map_err(sink_error)?;
    let mut reader = SpillReader::open(spill).map_err(spill_error)?;
    let mut batch = BatchBuilder::new(schema.clone());
    let mut rows = 0u64;
    let mut flush = |batch: &mut BatchBuilder| -> Result<(), SinkError> {
        writer.write(&batch.finish()?.project(keep)?)
    };
    while let Some(row) = reader.next_row().map_err(spill_error)? {
        batch.push_encoded(row).map_err(spill_error)?;
        rows += 1;
        if batch.is_full() {
            flush(&mut batch).map_err(sink_error)?;
        }
    }
    // The last partial batch, or an empty one so an empty table still gets a CSV header.
    if !batch.is_empty() || rows == 0 {
        flush(&mut batch).map_err(sink_error)?;
    }
    writer.finish().map_err(|source| match source {
        SinkError::Io(source) => ExportError::Store(StoreError::Write {
            path: temp.clone(),
            source,
        }),
        other => sink_error(other),
    })?;
    dir.commit(&temp, file_name)?;
    Ok(rows)
}
