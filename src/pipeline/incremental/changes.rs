//! The change feed: what changed since the base snapshot, as the `contact_changes` table.
//!
//! Receives pairs of a contact's base and new JSON text (either may be missing); emits one
//! row per contact that was added, removed, or whose flattened values differ (`updated`, with
//! the names of the differing `contacts` columns, and `contact_inboxes` when its links differ),
//! and writes them in the run's format: `id`, `change`, `run_id`, `run_time`, `columns` (a
//! JSON array of column names as text, so that every format holds it the same way; null for
//! added and removed). Values are compared after flattening, the way the tables hold them, so
//! a change of key order or number spelling in the server's JSON is no change.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::super::ExportError;
use crate::manifest::{ChangeCounts, ColumnEntry, TableEntry};
use crate::sink::{Format, SinkError, SinkOptions, TableWriter};
use crate::store::{OutputDir, StoreError};
use crate::transform::Cell;
use crate::transform::flatten::{EncodedContact, Flattener};
use crate::transform::inbox_secrets::InboxSecrets;

/// The table's name.
pub const TABLE: &str = "contact_changes";

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    /// `added`, `removed` or `updated`.
    pub change: &'static str,
    /// For `updated`: the columns whose values differ, in column order.
    pub columns: Vec<String>,
}

/// Compares contacts by their flattened values.
pub struct Feed {
    flattener: Flattener,
    old: EncodedContact,
    new: EncodedContact,
    pub changes: Vec<Change>,
}

impl Feed {
    /// `keep_inbox_secrets`: as the run, so both sides flatten alike.
    pub fn new(keep_inbox_secrets: bool) -> Self {
        let mut flattener = Flattener::default();
        if keep_inbox_secrets {
            flattener.inbox_secrets = InboxSecrets::keep_all();
        }
        Self {
            flattener,
            old: EncodedContact::default(),
            new: EncodedContact::default(),
            changes: Vec::new(),
        }
    }

    pub fn added(&mut self, id: i64) {
        self.push(id, "added", Vec::new());
    }

    pub fn removed(&mut self, id: i64) {
        self.push(id, "removed", Vec::new());
    }

    /// Records `updated` if the two versions of contact `id` differ once flattened. Text the
    /// flattener refuses is compared as text.
    pub fn compare(&mut self, id: i64, old: &str, new: &str) {
        if old == new {
            return;
        }
        let columns = self
            .differing(old, new)
            .unwrap_or_else(|| vec!["contact".to_owned()]);
        if !columns.is_empty() {
            self.push(id, "updated", columns);
        }
    }

    fn push(&mut self, id: i64, change: &'static str, columns: Vec<String>) {
        self.changes.push(Change {
            id,
            change,
            columns,
        });
    }

    fn differing(&mut self, old: &str, new: &str) -> Option<Vec<String>> {
        self.flattener.flatten_json(old, &mut self.old).ok()?;
        self.flattener.flatten_json(new, &mut self.new).ok()?;
        let cells = |row: &EncodedContact| -> Option<BTreeMap<u32, Cell>> {
            let mut cells = BTreeMap::new();
            for row in row.contact.rows_iter() {
                for (column, cell) in row.to_row().ok()? {
                    cells.insert(column, cell);
                }
            }
            Some(cells)
        };
        let (before, after) = (cells(&self.old)?, cells(&self.new)?);
        let mut ids: Vec<u32> = before.keys().chain(after.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let names = self.flattener.contacts.columns();
        let mut columns: Vec<String> = ids
            .into_iter()
            .filter(|id| before.get(id) != after.get(id))
            .filter_map(|id| names.get(id as usize).map(|c| c.name.clone()))
            .collect();
        let links = |row: &EncodedContact| -> Option<Vec<Vec<(u32, Cell)>>> {
            row.inboxes.rows_iter().map(|r| r.to_row().ok()).collect()
        };
        if links(&self.old)? != links(&self.new)? {
            columns.push("contact_inboxes".to_owned());
        }
        Some(columns)
    }

    /// The counts by kind.
    pub fn counts(&self) -> ChangeCounts {
        let mut counts = ChangeCounts::default();
        for change in &self.changes {
            match change.change {
                "added" => counts.added += 1,
                "removed" => counts.removed += 1,
                _ => counts.updated += 1,
            }
        }
        counts
    }
}

/// Writes the feed as `contact_changes.<ext>` (through a temporary name; renamed with the
/// run's other files) and returns its manifest entry and path. Rows are in id order.
pub fn write(
    dir: &OutputDir,
    format: Format,
    options: SinkOptions,
    mut changes: Vec<Change>,
    run_id: &str,
    run_time_secs: i64,
) -> Result<(TableEntry, std::path::PathBuf), ExportError> {
    changes.sort_by(|a, b| a.id.cmp(&b.id).then(a.change.cmp(b.change)));
    let sink_error = |source: SinkError| ExportError::Sink {
        table: TABLE,
        source,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("change", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "run_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("columns", DataType::Utf8, true),
    ]));
    let rows = changes.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.id))),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.change),
        )),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            run_id, rows,
        ))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
                run_time_secs.saturating_mul(1_000_000),
                rows,
            ))
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(changes.iter().map(|c| {
            (c.change == "updated").then(|| serde_json::to_string(&c.columns).unwrap_or_default())
        }))),
    ];
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| sink_error(e.into()))?;
    let name = format!("{TABLE}.{}", format.extension());
    let (file, temp) = dir.create_temp(&name)?;
    let mut writer = TableWriter::create(format, file, schema, options).map_err(sink_error)?;
    writer.write(&batch).map_err(sink_error)?;
    writer.finish().map_err(|source| match source {
        SinkError::Io(source) => ExportError::Store(StoreError::Write {
            path: temp.clone(),
            source,
        }),
        other => sink_error(other),
    })?;
    let path = dir.commit(&temp, &name)?;
    let entry = TableEntry {
        files: vec![name],
        rows: rows as u64,
        columns: [
            ("id", "int64"),
            ("change", "string"),
            ("run_id", "string"),
            ("run_time", "timestamp"),
            ("columns", "string"),
        ]
        .into_iter()
        .map(|(name, ty)| ColumnEntry {
            name: name.into(),
            ty: ty.into(),
            source_name: None,
        })
        .collect(),
    };
    Ok((entry, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_name_the_columns_that_differ() {
        let mut feed = Feed::new(false);
        let old = r#"{"id":1,"name":"A","email":"a@x","custom_attributes":{"plan":"pro"},"created_at":5,"contact_inboxes":[]}"#;
        // Key order and spelling do not count; the name and the plan do.
        let new = r#"{"email":"a@x","id":1,"name":"B","custom_attributes":{"plan":"free"},"created_at":5,"contact_inboxes":[]}"#;
        feed.compare(1, old, new);
        let same = r#"{"created_at":5,"id":1,"name":"A","email":"a@x","custom_attributes":{"plan":"pro"},"contact_inboxes":[]}"#;
        feed.compare(1, old, same);
        feed.added(2);
        feed.removed(3);
        assert_eq!(
            feed.changes,
            vec![
                Change {
                    id: 1,
                    change: "updated",
                    columns: vec!["name".into(), "custom_attributes__plan".into()],
                },
                Change {
                    id: 2,
                    change: "added",
                    columns: vec![],
                },
                Change {
                    id: 3,
                    change: "removed",
                    columns: vec![],
                },
            ]
        );
        assert_eq!(
            feed.counts(),
            ChangeCounts {
                added: 1,
                removed: 1,
                updated: 1
            }
        );
    }
}
