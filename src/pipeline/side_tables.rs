//! The tables the contacts walk does not fill: `custom_attribute_definitions` (the definitions
//! the walk read), `labels` (one request) and `contact_labels` (one walk of the list per label).
//!
//! Receives the table selection, the fetcher (the same rate budget, concurrency and retries as
//! the contacts walk) and the definitions the walk kept; emits each selected table's rows in a
//! spill in the work folder with its final schema, and for `contact_labels` the label walk's
//! report. The label walk asks every label's first page, predicts its whole cost from their
//! `meta.count`s and says it before it sends the rest; a label whose walk ends with a number of
//! distinct contacts other than the count its first page announced makes the table, and so the
//! export, incomplete (there is no drift repair for labels: a rerun is the remedy).
//! Nothing here is checkpointed: a resumed run fills these tables again.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::try_join_all;
use serde_json::Value;

use super::write::Filled;
use super::{ExportError, Notice, Notices};
use crate::config::TableSelection;
use crate::manifest::LabelWalkReport;
use crate::progress::Progress;
use crate::source::{ContactsPage, Fetcher};
use crate::store::OutputDir;
use crate::table::{Fill, TABLES, Table};
use crate::transform::flatten::flatten_record;
use crate::transform::schema::TableShape;
use crate::transform::spill::SpillWriter;
use crate::transform::{Cell, Row};

/// What filling the side tables gave.
#[derive(Default)]
pub struct SideTables {
    /// The selected tables, in `TABLES` order.
    pub filled: Vec<Filled>,
    /// `contact_labels`' walk, when it was selected.
    pub label_walk: Option<LabelWalkReport>,
}

/// Fills every selected table that the contacts walk does not.
pub async fn fill(
    fetcher: &Arc<Fetcher>,
    dir: &OutputDir,
    selection: &TableSelection,
    mut definitions: Option<Vec<Value>>,
    progress: &Progress,
    notices: &Notices,
) -> Result<SideTables, ExportError> {
    let selected = |fill: Fill| {
        TABLES
            .iter()
            .any(|table| table.fill == fill && selection.enabled(table.name))
    };
    // One request serves both tables that need the labels.
    let labels = if selected(Fill::Labels) || selected(Fill::LabelWalk) {
        progress.phase("reading the labels");
        fetcher.labels().await?
    } else {
        Vec::new()
    };
    let mut side = SideTables::default();
    for table in TABLES {
        if table.fill == Fill::ContactsWalk || !selection.enabled(table.name) {
            continue;
        }
        let mut shape = TableShape::new(table.columns, table.groups);
        let rows: Vec<Row> = match table.fill {
            Fill::ContactsWalk => continue,
            Fill::Definitions => {
                let records = match definitions.take() {
                    Some(records) => records,
                    // A resumed run, or the walk's request failed: ask (once more).
                    None => fetcher
                        .attribute_definitions()
                        .await?
                        .into_iter()
                        .map(|definition| definition.raw)
                        .collect(),
                };
                records_to_rows(&mut shape, &records)
            }
            Fill::Labels => records_to_rows(&mut shape, &labels),
            Fill::LabelWalk => {
                let titles = label_titles(&labels);
                let (pairs, report) = walk_labels(fetcher, &titles, progress, notices).await?;
                side.label_walk = Some(report);
                pair_rows(&mut shape, &pairs)
            }
        };
        side.filled.push(spill_rows(dir, table, &shape, &rows)?);
    }
    Ok(side)
}

/// One row per JSON object (labels, definitions), in the server's order.
fn records_to_rows(shape: &mut TableShape, records: &[Value]) -> Vec<Row> {
    records
        .iter()
        .filter_map(Value::as_object)
        .map(|object| flatten_record(shape, object))
        .collect()
}

/// The `contact_labels` rows: `contact_id`, `label`.
fn pair_rows(shape: &mut TableShape, pairs: &[(i64, String)]) -> Vec<Row> {
    let (id_column, label_column) = (shape.intern("contact_id"), shape.intern("label"));
    pairs
        .iter()
        .map(|(id, label)| {
            let row = vec![
                (id_column, Cell::Int(*id)),
                (label_column, Cell::Str(label.clone())),
            ];
            for (column, cell) in &row {
                shape.observe(*column, cell);
            }
            row
        })
        .collect()
}

/// The labels' titles, in the server's order (a label without a text title has no walk).
fn label_titles(labels: &[Value]) -> Vec<String> {
    labels
        .iter()
        .filter_map(|label| label.get("title")?.as_str().map(str::to_owned))
        .collect()
}

/// Writes `rows` to the table's spill, `<table>.rows` in the work folder.
fn spill_rows(
    dir: &OutputDir,
    table: &'static Table,
    shape: &TableShape,
    rows: &[Row],
) -> Result<Filled, ExportError> {
    let name = format!("{}.rows", table.name);
    let path = dir.work_path(&name);
    let spill_error = |source| ExportError::Spill {
        path: path.clone(),
        source,
    };
    // Left by an earlier attempt of a resumed run: these tables are filled again from scratch.
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(spill_error(err)),
        _ => {}
    }
    let (file, _) = dir.create_work_file(&name).map_err(spill_error)?;
    let mut spill = SpillWriter::new(file);
    for row in rows {
        spill.write_row(row).map_err(spill_error)?;
    }
    spill.finish().map_err(spill_error)?;
    Ok(Filled {
        table,
        schema: shape.finish(),
        spill: path,
    })
}

/// Pages of a label's walk, from its first page: `meta.count` over the page size. One when
/// the first page holds everything, or says too little to plan by.
pub(super) fn planned_pages(first: &ContactsPage) -> u64 {
    let size = first.payload.len() as u64;
    match first.meta.count {
        Some(count) if size > 0 => count.div_ceil(size).max(1),
        _ => 1,
    }
}

/// Walks the list once per label: every label's first page, then (cost said) the rest.
/// Returns the (contact id, label) pairs, by contact id and then in the labels' order, and
/// the report.
async fn walk_labels(
    fetcher: &Arc<Fetcher>,
    titles: &[String],
    progress: &Progress,
    notices: &Notices,
) -> Result<(Vec<(i64, String)>, LabelWalkReport), ExportError> {
    let sent_before = fetcher.status().governor.sent;
    progress.phase("contact_labels: the first page of each label");
    let firsts = try_join_all(titles.iter().map(|title| fetcher.label_page(title, 1))).await?;
    let plans: Vec<u64> = firsts.iter().map(planned_pages).collect();
    let predicted: u64 = plans.iter().sum();
    let tagged: u64 = firsts.iter().filter_map(|page| page.meta.count).sum();
    let message = format!(
        "contact_labels: {} labels tag {tagged} contacts: {predicted} requests ({} sent, {} to go)",
        titles.len(),
        titles.len(),
        predicted - titles.len() as u64
    );
    notices.tell(Notice::LabelWalkCost {
        labels: titles.len() as u64,
        tagged,
        requests: predicted,
        sent: titles.len() as u64,
    });
    progress.phase(&message);
    let rest = titles
        .iter()
        .zip(&plans)
        .enumerate()
        .flat_map(|(label, (title, &pages))| {
            (2..=pages).map(move |page| async move {
                fetcher
                    .label_page(title, page)
                    .await
                    .map(|fetched| (label, fetched))
            })
        });
    let rest = try_join_all(rest).await?;

    let mut pairs = Vec::new();
    let mut incomplete_labels = Vec::new();
    let mut rest = rest.into_iter().peekable();
    for (label, (title, first)) in titles.iter().zip(&firsts).enumerate() {
        let mut seen = HashSet::new();
        let mut add = |page: &ContactsPage| {
            for contact in &page.payload {
                match contact_id(contact) {
                    Some(id) if seen.insert(id) => pairs.push((id, label)),
                    _ => {}
                }
            }
        };
        add(first);
        while let Some((_, page)) = rest.next_if(|(of, _)| *of == label) {
            add(&page);
        }
        // The completeness rule of the contacts walk: the walk must end with the count the
        // list announced.
        if first.meta.count != Some(seen.len() as u64) {
            incomplete_labels.push(title.clone());
        }
    }
    pairs.sort_unstable();
    let pairs: Vec<(i64, String)> = pairs
        .into_iter()
        .map(|(id, label)| (id, titles[label].clone()))
        .collect();
    let report = LabelWalkReport {
        labels: titles.len() as u64,
        predicted_requests: predicted,
        requests: fetcher.status().governor.sent - sent_before,
        pairs: pairs.len() as u64,
        complete: incomplete_labels.is_empty(),
        incomplete_labels,
    };
    Ok((pairs, report))
}

/// A contact's integer `id` (as a number or a numeric string, as the contacts walk reads it).
fn contact_id(contact: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Value,
    }
    match serde_json::from_str::<Id>(contact).ok()?.id {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(body: &str) -> ContactsPage {
        ContactsPage::from_body(body.as_bytes()).expect("a page")
    }

    #[test]
    fn a_label_walk_is_planned_from_its_first_page() {
        let ids = |n: usize| {
            (0..n)
                .map(|i| format!(r#"{{"id":{i}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        let full = |count: u64| {
            page(&format!(
                r#"{{"meta":{{"count":{count}}},"payload":[{}]}}"#,
                ids(15)
            ))
        };
        assert_eq!(planned_pages(&full(15)), 1);
        assert_eq!(planned_pages(&full(16)), 2);
        assert_eq!(planned_pages(&full(45)), 3);
        assert_eq!(
            planned_pages(&page(r#"{"meta":{"count":0},"payload":[]}"#)),
            1
        );
        // No count, or an empty page that announces contacts: one page, and the count check
        // then calls the label incomplete.
        assert_eq!(
            planned_pages(&page(r#"{"meta":{},"payload":[{"id":1}]}"#)),
            1
        );
        assert_eq!(
            planned_pages(&page(r#"{"meta":{"count":9},"payload":[]}"#)),
            1
        );
    }

    #[test]
    fn contact_ids_are_read_like_the_walk_reads_them() {
        assert_eq!(contact_id(r#"{"id":7,"name":"x"}"#), Some(7));
        assert_eq!(contact_id(r#"{"name":"x","id":"8"}"#), Some(8));
        assert_eq!(contact_id(r#"{"id":null}"#), None);
        assert_eq!(contact_id(r#"{"id":1.5}"#), None);
    }

    #[test]
    fn labels_and_definitions_become_rows_with_every_field() {
        let table = crate::table::find("labels").expect("described");
        let mut shape = TableShape::new(table.columns, table.groups);
        let labels = serde_json::json!([
            {"id": 1, "title": "vip", "description": null, "color": "#1f93ff", "show_on_sidebar": true, "allow_auto_assign": false},
            "not an object",
            {"id": 2, "title": "a,b \"c\"", "description": "x", "color": "", "show_on_sidebar": false, "extra": {"k": [1]}}
        ]);
        let rows = records_to_rows(&mut shape, labels.as_array().expect("array"));
        assert_eq!(rows.len(), 2);
        let schema = shape.finish();
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "title",
                "description",
                "color",
                "show_on_sidebar",
                "allow_auto_assign",
                "extra"
            ]
        );
        let extra = shape.id_of("extra").expect("a column");
        assert!(rows[1].contains(&(extra, Cell::Json(r#"{"k":[1]}"#.into()))));
        let description = shape.id_of("description").expect("a column");
        assert!(
            !rows[0].iter().any(|(column, _)| *column == description),
            "null: no cell"
        );
        assert_eq!(
            label_titles(&labels.as_array().expect("array")[..]),
            ["vip", "a,b \"c\""]
        );
    }
}
