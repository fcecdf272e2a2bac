//! What the export must contain, computed from the ground truth by a second, independent
//! reading of the output contract (not the tool's own flattener).

use std::collections::BTreeMap;

use serde_json::Value;

/// The type a column must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Bool,
    Int,
    Float,
    Timestamp,
    Str,
}

/// One table as the contract says it must come out.
#[derive(Debug)]
pub struct Table {
    /// Names and kinds in contract order.
    pub columns: Vec<(String, Kind)>,
    /// Raw JSON leaf values by column; absent = null.
    pub rows: Vec<BTreeMap<String, Value>>,
}

impl Table {
    pub fn kind(&self, column: &str) -> Kind {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map_or_else(|| panic!("no column {column}"), |(_, kind)| *kind)
    }

    /// Row `index` normalized for comparison: every column present, values in the column's
    /// kind (strings hold JSON text for non-strings, timestamps are unix seconds).
    pub fn normalized_row(&self, index: usize) -> BTreeMap<String, Value> {
        self.columns
            .iter()
            .map(|(name, kind)| {
                let raw = self.rows[index].get(name).unwrap_or(&Value::Null);
                (name.clone(), normalize(raw, *kind))
            })
            .collect()
    }
}

fn normalize(raw: &Value, kind: Kind) -> Value {
    match (raw, kind) {
        (Value::Null, _) => Value::Null,
        (Value::String(s), Kind::Str) => Value::String(s.clone()),
        (other, Kind::Str) => Value::String(other.to_string()),
        (Value::Number(n), Kind::Float) => Value::from(n.as_f64().expect("number")),
        (other, _) => other.clone(),
    }
}

const CONTACT_COLUMNS: [(&str, Kind); 11] = [
    ("id", Kind::Int),
    ("name", Kind::Str),
    ("email", Kind::Str),
    ("phone_number", Kind::Str),
    ("identifier", Kind::Str),
    ("thumbnail", Kind::Str),
    ("availability_status", Kind::Str),
    ("blocked", Kind::Bool),
    ("conversations_count", Kind::Int),
    ("created_at", Kind::Timestamp),
    ("last_activity_at", Kind::Timestamp),
];

const INBOX_COLUMNS: [(&str, Kind); 8] = [
    ("contact_id", Kind::Int),
    ("source_id", Kind::Str),
    ("inbox__id", Kind::Int),
    ("inbox__avatar_url", Kind::Str),
    ("inbox__channel_id", Kind::Int),
    ("inbox__name", Kind::Str),
    ("inbox__channel_type", Kind::Str),
    ("inbox__provider", Kind::Str),
];

/// The `contacts` and `contact_inboxes` tables the contract derives from `truth`.
pub fn tables(truth: &[Value]) -> (Table, Table) {
    let mut contacts = Vec::new();
    let mut inboxes = Vec::new();
    for contact in truth {
        let mut row = BTreeMap::new();
        for (key, value) in contact.as_object().expect("object") {
            match key.as_str() {
                "additional_attributes" => leaves("additional_attributes", value, &mut row),
                "custom_attributes" => {
                    for (attr, v) in value.as_object().expect("object") {
                        row.insert(format!("custom_attributes__{attr}"), v.clone());
                    }
                }
                "contact_inboxes" => {
                    for link in value.as_array().expect("array") {
                        let mut child = BTreeMap::new();
                        child.insert("contact_id".to_owned(), contact["id"].clone());
                        child.insert("source_id".to_owned(), link["source_id"].clone());
                        leaves("inbox", &link["inbox"], &mut child);
                        inboxes.push(child);
                    }
                }
                _ => {
                    row.insert(key.clone(), value.clone());
                }
            }
        }
        contacts.push(row);
    }
    (
        table(
            &CONTACT_COLUMNS,
            &["additional_attributes__", "custom_attributes__"],
            contacts,
        ),
        table(&INBOX_COLUMNS, &["inbox__"], inboxes),
    )
}

fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                leaves(&format!("{prefix}__{key}"), inner, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn table(declared: &[(&str, Kind)], groups: &[&str], rows: Vec<BTreeMap<String, Value>>) -> Table {
    let mut kinds: BTreeMap<String, Option<Kind>> = BTreeMap::new();
    for row in &rows {
        for (name, value) in row {
            let seen = kinds.entry(name.clone()).or_insert(None);
            let this = match value {
                Value::Null => continue,
                Value::Bool(_) => Kind::Bool,
                Value::Number(n) if n.is_i64() => Kind::Int,
                Value::Number(_) => Kind::Float,
                _ => Kind::Str,
            };
            *seen = Some(match (*seen, this) {
                (None, k) => k,
                (Some(a), b) if a == b => a,
                (Some(Kind::Int | Kind::Float), Kind::Int | Kind::Float) => Kind::Float,
                _ => Kind::Str,
            });
        }
    }
    let mut columns: Vec<(String, Kind)> = declared
        .iter()
        .map(|(n, k)| ((*n).to_owned(), *k))
        .collect();
    let mut rest: Vec<(usize, String, Kind)> = kinds
        .into_iter()
        .filter(|(name, _)| !declared.iter().any(|(d, _)| d == name))
        .map(|(name, kind)| {
            let group = groups
                .iter()
                .position(|g| name.starts_with(g))
                .map_or(0, |p| p + 1);
            (group, name, kind.unwrap_or(Kind::Str))
        })
        .collect();
    rest.sort();
    columns.extend(rest.into_iter().map(|(_, name, kind)| (name, kind)));
    Table { columns, rows }
}
