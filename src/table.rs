//! The output tables, described once: what every stage loops over instead of naming tables.
//!
//! Receives nothing; emits `TABLES`, each table's name, declared columns (the output
//! contract's leading columns and their types), the key that joins it to its parent, what
//! fills it and whether a run writes it when nothing selects it. Collection, checkpoints,
//! writing, the pipeline file's `[tables.<name>]` sections, the manifest and both stores read
//! this list, so a new table is one entry here plus what fills it (see
//! docs/architecture.md, "Adding a table").

use crate::transform::flatten::{CONTACT_COLUMNS, CONTACT_GROUPS, INBOX_COLUMNS, INBOX_GROUPS};
use crate::transform::schema::ColumnType;

/// What fills a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// The contacts walk: every contact flattened (`transform::flatten`), spilled as pages
    /// come and checkpointed with them.
    ContactsWalk,
    /// The custom attribute definitions the walk asks for with page 1 (no extra request; one
    /// on a resumed run, which did not keep them).
    Definitions,
    /// One request: `GET /api/v1/accounts/{id}/labels`.
    Labels,
    /// One walk of the contact list per label (`labels[]=TITLE`), after the contacts walk:
    /// its cost in requests is known from each label's first page before the rest is spent.
    LabelWalk,
}

/// One output table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The table's name: file stem, manifest key, `[tables.<name>]` section, `{table}`.
    pub name: &'static str,
    /// The leading columns, in output order, with their types. Other fields the server sends
    /// become columns after them, typed from their values.
    pub columns: &'static [(&'static str, ColumnType)],
    /// Name prefixes that group the other columns, in output order.
    pub groups: &'static [&'static str],
    /// The column that joins a row to its contact (`contacts.id`), if the table has a parent;
    /// a column selection must keep it.
    pub parent_key: Option<&'static str>,
    pub fill: Fill,
    /// Written when a run selects nothing: the tables that cost no request beyond the walk's
    /// and whose files existing exports already had.
    pub default_enabled: bool,
    /// Always written, with its first column (the contacts themselves).
    pub required: bool,
}

/// `custom_attribute_definitions`: the data dictionary of the `custom_attributes__*` columns,
/// one row per contact attribute definition, as the API renders it.
pub const DEFINITION_COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Int),
    ("attribute_key", ColumnType::String),
    ("attribute_display_name", ColumnType::String),
    ("attribute_display_type", ColumnType::String),
    ("attribute_model", ColumnType::String),
    ("attribute_values", ColumnType::String),
    ("attribute_description", ColumnType::String),
    ("default_value", ColumnType::String),
    ("regex_pattern", ColumnType::String),
    ("regex_cue", ColumnType::String),
    ("created_at", ColumnType::String),
    ("updated_at", ColumnType::String),
];

/// `labels`: the account's labels, as `GET /labels` renders them.
pub const LABEL_COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Int),
    ("title", ColumnType::String),
    ("description", ColumnType::String),
    ("color", ColumnType::String),
    ("show_on_sidebar", ColumnType::Bool),
];

/// `contact_labels`: one row per (contact, label) pair.
pub const CONTACT_LABEL_COLUMNS: &[(&str, ColumnType)] = &[
    ("contact_id", ColumnType::Int),
    ("label", ColumnType::String),
];

/// Every table, in the order they are written.
pub const TABLES: &[Table] = &[
    Table {
        name: "contacts",
        columns: CONTACT_COLUMNS,
        groups: CONTACT_GROUPS,
        parent_key: None,
        fill: Fill::ContactsWalk,
        default_enabled: true,
        required: true,
    },
    Table {
        name: "contact_inboxes",
        columns: INBOX_COLUMNS,
        groups: INBOX_GROUPS,
        parent_key: Some("contact_id"),
        fill: Fill::ContactsWalk,
        default_enabled: true,
        required: false,
    },
    Table {
        name: "custom_attribute_definitions",
        columns: DEFINITION_COLUMNS,
        groups: &[],
        parent_key: None,
        fill: Fill::Definitions,
        default_enabled: false,
        required: false,
    },
    Table {
        name: "labels",
        columns: LABEL_COLUMNS,
        groups: &[],
        parent_key: None,
        fill: Fill::Labels,
        default_enabled: false,
        required: false,
    },
    Table {
        name: "contact_labels",
        columns: CONTACT_LABEL_COLUMNS,
        groups: &[],
        parent_key: Some("contact_id"),
        fill: Fill::LabelWalk,
        default_enabled: false,
        required: false,
    },
];

/// The table called `name`.
pub fn find(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|table| table.name == name)
}

/// The tables' names, in order (for messages: "one of ...").
pub fn names() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|table| table.name)
}

/// The tables the contacts walk fills, in order: the ones whose rows are spilled and
/// checkpointed page by page.
pub fn walk_tables() -> impl Iterator<Item = &'static Table> {
    TABLES
        .iter()
        .filter(|table| table.fill == Fill::ContactsWalk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_none_is_a_prefix_of_another_with_a_dash() {
        // The stores recognise their files by `<table>.<ext>` and `<table>-<...>`: a table
        // named like another plus `-...` would make one table's files look like the other's.
        let names: Vec<&str> = names().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
                assert!(!a.starts_with(&format!("{b}-")) && !b.starts_with(&format!("{a}-")));
            }
        }
    }

    #[test]
    fn the_walk_tables_come_first_and_keep_the_order_of_existing_exports() {
        let walk: Vec<&str> = walk_tables().map(|t| t.name).collect();
        assert_eq!(walk, ["contacts", "contact_inboxes"]);
        assert!(TABLES[..2].iter().all(|t| t.fill == Fill::ContactsWalk));
    }

    #[test]
    fn a_parent_key_is_a_declared_column_and_only_existing_tables_are_on_by_default() {
        for table in TABLES {
            if let Some(key) = table.parent_key {
                assert!(
                    table.columns.iter().any(|(name, _)| *name == key),
                    "{}",
                    table.name
                );
            }
            // A new table that costs requests or adds files must be asked for.
            assert_eq!(
                table.default_enabled,
                table.fill == Fill::ContactsWalk,
                "{}",
                table.name
            );
        }
        assert_eq!(
            find("contact_labels").map(|t| t.fill),
            Some(Fill::LabelWalk)
        );
        assert!(find("nope").is_none());
    }
}
