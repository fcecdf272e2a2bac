//! The spills -> the output tables, once the schemas are final.
//!
//! Receives each filled table (its description, final schema and spill file); emits `DIR/<table>.<ext>`, or with
//! `rows_per_file` and a table bigger than that, `DIR/<table>-00000.<ext>`,
//! `DIR/<table>-00001.<ext>`, ... (each a whole file in the table's one schema, every one but
//! the last holding exactly `rows_per_file` rows), each through a temporary name; and the
//! tables' manifest entries, which list every file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::ExportError;
use super::shared_schema::TableColumns;
use crate::config::{ColumnFilter, TableSelection};
use crate::manifest::TableEntry;
use crate::progress::Progress;
use crate::sink::{ColumnNames, Format, SinkError, SinkOptions, TableWriter};
use crate::store::{OutputDir, StoreError};
use crate::table::Table;
use crate::transform::batch::BatchBuilder;
use crate::transform::column_names::snake_names;
use crate::transform::flatten::Flattener;
use crate::transform::schema::{ColumnDef, TableSchema, TableShape};
use crate::transform::spill::SpillReader;

/// A table whose rows are all in its spill: ready to write.
pub struct Filled {
    pub table: &'static Table,
    /// The final schema (the shape's, once every row is in).
    pub schema: TableSchema,
    pub spill: PathBuf,
}

/// Writes the selected tables of `filled` (in its order) with their selected columns; returns
/// their manifest entries and the final paths.
pub fn write_tables(
    format: Format,
    options: SinkOptions,
    rows_per_file: Option<u64>,
    selection: &TableSelection,
    dir: &OutputDir,
    filled: &[Filled],
    progress: &Progress,
) -> Result<(BTreeMap<String, TableEntry>, Vec<PathBuf>), ExportError> {
    let mut tables = BTreeMap::new();
    let mut written = Vec::new();
    for Filled {
        table,
        schema,
        spill,
    } in filled
    {
        let table = table.name;
        let filter = selection.of(table);
        if !filter.enabled {
            continue;
        }
        progress.phase(&format!("writing {table}"));
        let keep = kept_columns(schema, filter);
        let files = TableFiles {
            format,
            options,
            rows_per_file,
            dir,
            table,
            parts: Vec::new(),
            current: None,
        };
        let names = output_names(schema, &keep, options.column_names);
        let (file_names, rows) = write_table(files, schema, &keep, &names, spill)?;
        written.extend(file_names.iter().map(|name| dir.root().join(name)));
        let mut entry = TableEntry::new(file_names, rows, schema);
        entry.columns = keep.iter().map(|&i| entry.columns[i].clone()).collect();
        for (column, name) in entry.columns.iter_mut().zip(names) {
            if column.name != name {
                column.source_name = Some(std::mem::replace(&mut column.name, name));
            }
        }
        tables.insert(table.to_owned(), entry);
    }
    Ok((tables, written))
}

/// The columns this export met in the tables the contacts walk fills, to agree on with the
/// run's other accounts.
pub fn columns_of(flattener: &Flattener) -> TableColumns {
    crate::table::walk_tables()
        .zip(flattener.shapes())
        .map(|(table, shape)| (table.name.to_owned(), shape.columns()))
        .collect()
}

/// The tables the contacts walk filled, ready to write: each with its final schema (the
/// shape's, with the run's other accounts' columns merged in when `union` is given) and its
/// spill.
pub fn walk_filled(
    flattener: &Flattener,
    spills: Vec<PathBuf>,
    union: Option<&TableColumns>,
) -> Vec<Filled> {
    crate::table::walk_tables()
        .zip(flattener.shapes())
        .zip(spills)
        .map(|((table, shape), spill)| Filled {
            table,
            schema: final_schema(shape, union.and_then(|u| u.get(table.name))),
            spill,
        })
        .collect()
}

/// A table's final schema: its shape's, with `others`' columns merged in.
fn final_schema(shape: &TableShape, others: Option<&Vec<ColumnDef>>) -> TableSchema {
    match others {
        Some(others) => {
            let mut shape = shape.clone();
            shape.merge(others);
            shape.finish()
        }
        None => shape.finish(),
    }
}

/// The names the kept columns get in the files.
fn output_names(schema: &TableSchema, keep: &[usize], naming: ColumnNames) -> Vec<String> {
    let kept: Vec<&str> = keep
        .iter()
        .map(|&i| schema.columns[i].name.as_str())
        .collect();
    match naming {
        ColumnNames::Verbatim => kept.iter().map(|name| (*name).to_owned()).collect(),
        ColumnNames::Snake => snake_names(&kept),
    }
}

/// The positions of the columns the filter keeps. Filtering happens on the final schema, at
/// write time, so inference and the spill files do not need to know about it.
fn kept_columns(schema: &TableSchema, filter: &ColumnFilter) -> Vec<usize> {
    (0..schema.columns.len())
        .filter(|&i| filter.keeps(&schema.columns[i].name))
        .collect()
}

/// Writes one table; returns its files' final names, in order, and its rows.
fn write_table(
    mut writer: TableFiles<'_>,
    schema: &TableSchema,
    keep: &[usize],
    names: &[String],
    spill: &Path,
) -> Result<(Vec<String>, u64), ExportError> {
    let table = writer.table;
    let sink_error = |source: SinkError| ExportError::Sink { table, source };
    let spill_error = |source| ExportError::Spill {
        path: spill.to_owned(),
        source,
    };
    let projected = schema
        .arrow
        .project(keep)
        .map_err(|e| sink_error(e.into()))?;
    let projected: SchemaRef = Arc::new(Schema::new_with_metadata(
        projected
            .fields()
            .iter()
            .zip(names)
            .map(|(field, name)| field.as_ref().clone().with_name(name))
            .collect::<Vec<_>>(),
        projected.metadata().clone(),
    ));
    let mut reader = SpillReader::open(spill).map_err(spill_error)?;
    let mut batch = BatchBuilder::new(schema.clone());
    let mut rows = 0u64;
    let mut flush = |batch: &mut BatchBuilder| -> Result<(), ExportError> {
        let batch = batch
            .finish()
            .and_then(|batch| batch.project(keep))
            .and_then(|batch| {
                RecordBatch::try_new(Arc::clone(&projected), batch.columns().to_vec())
            })
            .map_err(|e| sink_error(e.into()))?;
        writer.write(&projected, &batch)
    };
    while let Some(row) = reader.next_row().map_err(spill_error)? {
        batch.push_encoded(row).map_err(spill_error)?;
        rows += 1;
        if batch.is_full() {
            flush(&mut batch)?;
        }
    }
    // The last partial batch, or an empty one so an empty table still gets a CSV header.
    if !batch.is_empty() || rows == 0 {
        flush(&mut batch)?;
    }
    Ok((writer.commit()?, rows))
}

/// One table's files: a new one whenever the current one holds `rows_per_file` rows and more
/// come, each written under a temporary name and renamed only when the whole table is done.
struct TableFiles<'a> {
    format: Format,
    options: SinkOptions,
    rows_per_file: Option<u64>,
    dir: &'a OutputDir,
    table: &'static str,
    /// Finished files, by temporary path.
    parts: Vec<PathBuf>,
    /// The file being written, its temporary path and its rows so far.
    current: Option<(TableWriter, PathBuf, u64)>,
}

impl TableFiles<'_> {
    /// Appends `batch` (in `schema`), starting new files as they fill up. An empty batch
    /// still opens the first file, so an empty table is one file (with a CSV header).
    fn write(&mut self, schema: &SchemaRef, batch: &RecordBatch) -> Result<(), ExportError> {
        let limit = self.rows_per_file.unwrap_or(u64::MAX);
        let mut offset = 0;
        loop {
            if self.current.as_ref().is_some_and(|c| c.2 >= limit) {
                self.close()?;
            }
            let (writer, _, rows) = match &mut self.current {
                Some(current) => current,
                None => self.current.insert(self.open(schema)?),
            };
            let left = batch.num_rows() - offset;
            let take = left.min(usize::try_from(limit - *rows).unwrap_or(usize::MAX));
            let table = self.table;
            writer
                .write(&batch.slice(offset, take))
                .map_err(|source| ExportError::Sink { table, source })?;
            *rows += take as u64;
            offset += take;
            if offset == batch.num_rows() {
                return Ok(());
            }
        }
    }

    fn open(&self, schema: &SchemaRef) -> Result<(TableWriter, PathBuf, u64), ExportError> {
        let (file, temp) = self.dir.create_temp(&self.name(self.parts.len(), true))?;
        let writer = TableWriter::create(self.format, file, Arc::clone(schema), self.options)
            .map_err(|source| self.sink_error(source))?;
        Ok((writer, temp, 0))
    }

    /// Completes the current file (footer, flush, sync).
    fn close(&mut self) -> Result<(), ExportError> {
        let Some((writer, temp, _)) = self.current.take() else {
            return Ok(());
        };
        writer.finish().map_err(|source| match source {
            SinkError::Io(source) => ExportError::Store(StoreError::Write {
                path: temp.clone(),
                source,
            }),
            other => self.sink_error(other),
        })?;
        self.parts.push(temp);
        Ok(())
    }

    /// Completes the last file and gives every file its final name: `<table>.<ext>` when the
    /// table fits in one, else numbered.
    fn commit(mut self) -> Result<Vec<String>, ExportError> {
        self.close()?;
        let numbered = self.parts.len() > 1;
        let mut names = Vec::with_capacity(self.parts.len());
        for (index, temp) in self.parts.iter().enumerate() {
            let name = self.name(index, numbered);
            self.dir.commit(temp, &name)?;
            names.push(name);
        }
        Ok(names)
    }

    /// `<table>-00003.<ext>` (numbered) or `<table>.<ext>`. Five digits keep the names in
    /// order for a plain sort and a glob up to 100,000 files.
    fn name(&self, index: usize, numbered: bool) -> String {
        let ext = self.format.extension();
        if numbered {
            format!("{}-{index:05}.{ext}", self.table)
        } else {
            format!("{}.{ext}", self.table)
        }
    }

    fn sink_error(&self, source: SinkError) -> ExportError {
        ExportError::Sink {
            table: self.table,
            source,
        }
    }
}
