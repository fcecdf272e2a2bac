//! Pages -> deduplicated, flattened rows on disk.
//!
//! Receives pages in page order (and contacts recovered by the drift repair); emits rows into
//! the two spills, and keeps only what later stages need in memory: the ids seen (to drop
//! duplicates when pages drift), a count of contacts per `created_at` day (for the repair) and
//! the tables' column shapes. It can save itself into a checkpoint and come back from one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ExportError;
use super::checkpoint::{Checkpoint, SpillMark};
use super::incremental::raw::{RAW_WORK, RawMark, RawWriter};
use crate::idset::IdSet;
use crate::source::{ContactsPage, FetchError};
use crate::store::OutputDir;
use crate::transform::CellRef;
use crate::transform::flatten::{EncodedContact, FlattenError, Flattener};
use crate::transform::inbox_secrets::InboxSecrets;
use crate::transform::schema::created_at_secs;
use crate::transform::spill::{EncodedRow, SpillReader, SpillWriter};

/// The spill of each table the contacts walk fills (`crate::table::walk_tables`), in order:
/// `<table>.rows` in the work folder.
fn spill_names() -> Vec<String> {
    crate::table::walk_tables()
        .map(|table| format!("{}.rows", table.name))
        .collect()
}

/// A checkpoint's view of the collector: the spills' lengths, the tables' shapes and the raw
/// contacts' length.
pub type Mark = (
    Vec<SpillMark>,
    Vec<Vec<crate::transform::schema::ColumnDef>>,
    Option<RawMark>,
);

/// Flattens, deduplicates and spills.
pub struct Collector {
    pub flattener: Flattener,
    /// The contact being added, reused so that the walk allocates nothing per contact.
    flat: EncodedContact,
    seen: IdSet,
    /// Distinct contacts per `created_at` day (days since the epoch, UTC).
    days: BTreeMap<i64, u64>,
    /// One per walk table, in order (the flattener's shapes are in the same order).
    spills: Vec<SpillWriter>,
    paths: Vec<PathBuf>,
    pub duplicates: u64,
    pub pages: u64,
    /// The custom attribute definitions the walk read, as the server sent them, for the
    /// `custom_attribute_definitions` table (not checkpointed: a resumed run asks again).
    pub definitions: Option<Vec<serde_json::Value>>,
    /// Every kept contact as the server sent it, for the next incremental run
    /// (`incremental::raw`); checkpointed with the spills, so a resumed run keeps it too.
    pub raw: Option<RawWriter>,
}

impl Collector {
    pub fn create(dir: &OutputDir, inbox_secrets: InboxSecrets) -> Result<Self, ExportError> {
        let names = spill_names();
        let paths = names.iter().map(|name| dir.work_path(name)).collect();
        // Owner-only and create-new: the rows are personal data.
        let open = |name: &str| {
            dir.create_work_file(name)
                .map(|(file, _)| SpillWriter::new(file))
                .map_err(|source| spill_error(&dir.work_path(name), source))
        };
        let mut flattener = Flattener::default();
        flattener.inbox_secrets = inbox_secrets;
        Ok(Self {
            flattener,
            flat: EncodedContact::default(),
            seen: IdSet::default(),
            days: BTreeMap::new(),
            spills: names
                .iter()
                .map(|name| open(name))
                .collect::<Result<_, _>>()?,
            paths,
            duplicates: 0,
            pages: 0,
            definitions: None,
            raw: None,
        })
    }

    /// Comes back from `checkpoint`: restores the shapes, cuts the spills (and the raw
    /// contacts, if the run keeps them) back to their saved length and reads the ids and days
    /// back from the contacts spill.
    pub fn resume(
        dir: &OutputDir,
        checkpoint: &Checkpoint,
        mut inbox_secrets: InboxSecrets,
    ) -> Result<Self, ExportError> {
        let paths: Vec<PathBuf> = spill_names()
            .iter()
            .map(|name| dir.work_path(name))
            .collect();
        let mut flattener = Flattener::default();
        inbox_secrets.restore_dropped(checkpoint.inbox_fields_dropped.clone());
        flattener.inbox_secrets = inbox_secrets;
        flattener.restore_values_kept_as_text(checkpoint.values_kept_as_text);
        for (shape, columns) in flattener.shapes_mut().into_iter().zip(&checkpoint.shapes) {
            shape.restore(columns);
        }
        let open = |index: usize| {
            let mark = checkpoint.spills.get(index).copied().unwrap_or_default();
            SpillWriter::resume(&paths[index], mark.bytes, mark.rows)
                .map_err(|source| spill_error(&paths[index], source))
        };
        let spills = (0..paths.len()).map(open).collect::<Result<_, _>>()?;
        let mut collector = Self {
            flattener,
            flat: EncodedContact::default(),
            seen: IdSet::default(),
            days: BTreeMap::new(),
            spills,
            paths,
            duplicates: checkpoint.duplicates,
            pages: checkpoint.pages_fetched,
            definitions: None,
            raw: match checkpoint.raw {
                Some(mark) => {
                    let path = dir.work_path(RAW_WORK);
                    Some(
                        RawWriter::resume(path.clone(), mark)
                            .map_err(|source| spill_error(&path, source))?,
                    )
                }
                None => None,
            },
        };
        collector.reread_contacts()?;
        Ok(collector)
    }

    fn reread_contacts(&mut self) -> Result<(), ExportError> {
        let path = self.paths[0].clone();
        let columns = self.id_and_created_columns();
        self.spills[0]
            .flush()
            .map_err(|source| spill_error(&path, source))?;
        let mut reader = SpillReader::open(&path).map_err(|source| spill_error(&path, source))?;
        while let Some(row) = reader
            .next_row()
            .map_err(|source| spill_error(&path, source))?
        {
            let (id, created_at) =
                id_and_created_at(row, columns).map_err(|source| spill_error(&path, source))?;
            if let Some(id) = id {
                self.seen.insert(id);
            }
            if let Some(secs) = created_at {
                *self.days.entry(secs.div_euclid(86_400)).or_default() += 1;
            }
        }
        Ok(())
    }

    /// The `contacts` column ids of `id` and `created_at` (declared columns: always there).
    fn id_and_created_columns(&self) -> (Option<u32>, Option<u32>) {
        let shape = &self.flattener.contacts;
        (shape.id_of("id"), shape.id_of("created_at"))
    }

    /// Adds the contacts of page `number`, dropping ids already seen.
    pub fn add_page(&mut self, number: u64, page: &ContactsPage) -> Result<(), ExportError> {
        self.pages += 1;
        for contact in &page.payload {
            let (new, _) = self.add(number, contact)?;
            self.duplicates += u64::from(!new);
        }
        Ok(())
    }

    /// Adds one contact (its JSON text, as the page holds it); returns whether it was new
    /// (false: its id was already there, and it was dropped) and its `created_at` in unix
    /// seconds. Only the walk counts what it drops as `duplicates`: the repair fetches known
    /// contacts on purpose.
    pub fn add(&mut self, page: u64, contact: &str) -> Result<(bool, Option<i64>), ExportError> {
        let dropped =
            |flattener: &Flattener| -> u64 { flattener.inbox_secrets.dropped().values().sum() };
        let dropped_before = dropped(&self.flattener);
        self.flattener
            .flatten_json(contact, &mut self.flat)
            .map_err(|source| match source {
                // Text the page scan let through but that is not JSON after all.
                FlattenError::Json(detail) => {
                    ExportError::Fetch(FetchError::InvalidPage { page, detail })
                }
                source => ExportError::Contact { page, source },
            })?;
        let created_at = self.flat.created_at;
        if !self.seen.insert(self.flat.id) {
            return Ok((false, created_at));
        }
        if let Some(secs) = created_at {
            *self.days.entry(secs.div_euclid(86_400)).or_default() += 1;
        }
        for table in 0..self.spills.len() {
            self.spill(table)?;
        }
        if let Some(raw) = &mut self.raw {
            let scrub = dropped(&self.flattener) > dropped_before;
            raw.write(contact, scrub)
                .map_err(|source| spill_error(raw.path(), source))?;
        }
        Ok((true, created_at))
    }

    /// Appends the current contact's rows of walk table `table` (in `walk_tables` order).
    fn spill(&mut self, table: usize) -> Result<(), ExportError> {
        let rows = self.flat.rows()[table];
        if rows.is_empty() {
            return Ok(());
        }
        self.spills[table]
            .write(rows)
            .map_err(|source| spill_error(&self.paths[table], source))
    }

    /// Whether contact `id` is held already (the repair skips those before flattening, so
    /// what flattening counts, such as dropped inbox fields, counts each contact once).
    pub fn holds(&self, id: i64) -> bool {
        self.seen.contains(id)
    }

    /// Distinct contacts so far.
    pub fn unique(&self) -> u64 {
        self.seen.len()
    }

    /// Distinct contacts per `created_at` day.
    pub fn days(&self) -> &BTreeMap<i64, u64> {
        &self.days
    }

    /// Flushes the spills and returns their lengths and the shapes, for a checkpoint, and ends
    /// the raw contacts' frame, if the run keeps them.
    pub fn mark(&mut self) -> Result<Mark, ExportError> {
        for (spill, path) in self.spills.iter_mut().zip(&self.paths) {
            spill.flush().map_err(|source| spill_error(path, source))?;
        }
        let raw = match &mut self.raw {
            Some(raw) => {
                let path = raw.path().to_owned();
                Some(raw.mark().map_err(|source| spill_error(&path, source))?)
            }
            None => None,
        };
        let marks = self
            .spills
            .iter()
            .map(|spill| SpillMark {
                bytes: spill.bytes(),
                rows: spill.rows(),
            })
            .collect();
        let shapes = self
            .flattener
            .shapes()
            .into_iter()
            .map(|shape| shape.columns())
            .collect();
        Ok((marks, shapes, raw))
    }

    /// Closes the spills: returns the flattener (the final shapes), the spill paths and their
    /// row counts.
    pub fn finish(self) -> Result<(Flattener, Vec<PathBuf>, Vec<u64>), ExportError> {
        let Collector {
            flattener,
            spills,
            paths,
            ..
        } = self;
        let mut rows = vec![0u64; paths.len()];
        for (index, spill) in spills.into_iter().enumerate() {
            rows[index] = spill
                .finish()
                .map_err(|source| spill_error(&paths[index], source))?;
        }
        Ok((flattener, paths, rows))
    }
}

/// A `contacts` row's id and `created_at` (unix seconds; a number, or RFC 3339 text from
/// some forks), given their column ids.
fn id_and_created_at(
    row: EncodedRow<'_>,
    (id_column, created_column): (Option<u32>, Option<u32>),
) -> std::io::Result<(Option<i64>, Option<i64>)> {
    let (mut id, mut created_at) = (None, None);
    for cell in row.cells() {
        let (column, cell) = cell?;
        if Some(column) == id_column {
            if let CellRef::Int(value) = cell {
                id = Some(value);
            }
        } else if Some(column) == created_column {
            created_at = created_at_secs(cell);
        }
    }
    Ok((id, created_at))
}

fn spill_error(path: &std::path::Path, source: std::io::Error) -> ExportError {
    ExportError::Spill {
        path: path.to_owned(),
        source,
    }
}
