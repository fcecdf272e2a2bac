//! One API contact -> one `contacts` row and one `contact_inboxes` row per inbox link.
//!
//! Receives a contact as JSON; emits sparse rows whose columns are registered in the two
//! tables' shapes. The rules are the output contract: API fields keep their names;
//! `additional_attributes` is flattened recursively into `additional_attributes__<key>[__<sub>]`;
//! `custom_attributes` becomes `custom_attributes__<key>` with nested values as JSON text; keys
//! are kept verbatim; unknown top-level fields are kept (objects and arrays as JSON text);
//! each `contact_inboxes` item becomes a row keyed by `contact_id`, its `inbox` object
//! flattened as `inbox__<key>`.

use serde_json::{Map, Value};

use super::inbox_secrets::InboxSecrets;
use super::schema::{ColumnType, TableShape};
use super::{Cell, Row};

/// The `contacts` columns of the contract, in output order.
pub const CONTACT_COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Int),
    ("name", ColumnType::String),
    ("email", ColumnType::String),
    ("phone_number", ColumnType::String),
    ("identifier", ColumnType::String),
    ("thumbnail", ColumnType::String),
    ("availability_status", ColumnType::String),
    ("blocked", ColumnType::Bool),
    ("conversations_count", ColumnType::Int),
    ("created_at", ColumnType::Timestamp),
    ("last_activity_at", ColumnType::Timestamp),
];
const CONTACT_GROUPS: &[&str] = &["additional_attributes__", "custom_attributes__"];

/// The `contact_inboxes` columns of the contract, in output order.
pub const INBOX_COLUMNS: &[(&str, ColumnType)] = &[
    ("contact_id", ColumnType::Int),
    ("source_id", ColumnType::String),
    ("inbox__id", ColumnType::Int),
    ("inbox__avatar_url", ColumnType::String),
    ("inbox__channel_id", ColumnType::Int),
    ("inbox__name", ColumnType::String),
    ("inbox__channel_type", ColumnType::String),
    ("inbox__provider", ColumnType::String),
];
const INBOX_GROUPS: &[&str] = &["inbox__"];

/// Why a contact could not be flattened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlattenError {
    #[error("a contact is not a JSON object")]
    NotAnObject,
    #[error("a contact has no integer `id`")]
    NoId,
}

/// One contact, flattened.
#[derive(Debug, PartialEq)]
pub struct FlatContact {
    pub id: i64,
    pub contact: Row,
    pub inboxes: Vec<Row>,
}

/// Flattens contacts and learns both tables' shapes as it goes.
#[derive(Debug)]
pub struct Flattener {
    pub contacts: TableShape,
    pub inboxes: TableShape,
    /// Drops credentials from inbox links before they become cells (`inbox_secrets`).
    pub inbox_secrets: InboxSecrets,
    /// Reused buffer for building column names.
    name: String,
}

impl Default for Flattener {
    fn default() -> Self {
        Self {
            contacts: TableShape::new(CONTACT_COLUMNS, CONTACT_GROUPS),
            inboxes: TableShape::new(INBOX_COLUMNS, INBOX_GROUPS),
            inbox_secrets: InboxSecrets::default(),
            name: String::new(),
        }
    }
}

impl Flattener {
    pub fn flatten(&mut self, contact: &Value) -> Result<FlatContact, FlattenError> {
        let fields = contact.as_object().ok_or(FlattenError::NotAnObject)?;
        let id = fields
            .get("id")
            .and_then(integer_id)
            .ok_or(FlattenError::NoId)?;
        let mut row = Row::with_capacity(fields.len() + 16);
        let mut inboxes = Vec::new();
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("id", _) => push(&mut self.contacts, &mut row, "id", Some(Cell::Int(id))),
                ("additional_attributes", Value::Object(attrs)) => {
                    self.name.clear();
                    self.name.push_str(key);
                    flatten_object(&mut self.contacts, &mut row, &mut self.name, attrs);
                }
                ("custom_attributes", Value::Object(attrs)) => {
                    for (attr, value) in attrs {
                        self.name.clear();
                        self.name.push_str("custom_attributes__");
                        self.name.push_str(attr);
                        push(&mut self.contacts, &mut row, &self.name, cell_of(value));
                    }
                }
                ("contact_inboxes", Value::Array(links)) => {
                    for link in links {
                        inboxes.push(self.inbox_row(id, link));
                    }
                }
                _ => push(&mut self.contacts, &mut row, key, cell_of(value)),
            }
        }
        Ok(FlatContact {
            id,
            contact: row,
            inboxes,
        })
    }

    fn inbox_row(&mut self, contact_id: i64, link: &Value) -> Row {
        let link = self.inbox_secrets.scrub_link(link);
        let link: &Value = &link;
        let mut row = Row::with_capacity(10);
        push(
            &mut self.inboxes,
            &mut row,
            "contact_id",
            Some(Cell::Int(contact_id)),
        );
        match link {
            Value::Object(fields) => {
                for (key, value) in fields {
                    if let (true, Value::Object(inbox)) = (key == "inbox", value) {
                        self.name.clear();
                        self.name.push_str("inbox");
                        flatten_object(&mut self.inboxes, &mut row, &mut self.name, inbox);
                    } else {
                        push(&mut self.inboxes, &mut row, key, cell_of(value));
                    }
                }
            }
            // Not the documented shape: keep it whole rather than lose it.
            other => push(&mut self.inboxes, &mut row, "contact_inbox", cell_of(other)),
        }
        row
    }
}

/// An id sent as a number or, by some forks, as a numeric string.
fn integer_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The cell for a JSON value; `None` for null.
pub fn cell_of(value: &Value) -> Option<Cell> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => Cell::Int(i),
            (None, true) => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
            // An integer beyond i64: exact only as text.
            (None, false) => Cell::Json(n.to_string()),
        },
        Value::String(s) => Cell::Str(s.clone()),
        Value::Array(_) | Value::Object(_) => Cell::Json(value.to_string()),
    })
}

/// Adds `prefix__key` for each key of `object`, recursing into nested objects.
fn flatten_object(
    shape: &mut TableShape,
    row: &mut Row,
    prefix: &mut String,
    object: &Map<String, Value>,
) {
    for (key, value) in object {
        let len = prefix.len();
        prefix.push_str("__");
        prefix.push_str(key);
        match value {
            Value::Object(inner) => flatten_object(shape, row, prefix, inner),
            other => push(shape, row, prefix, cell_of(other)),
        }
        prefix.truncate(len);
    }
}

/// Registers column `name` and, for a non-null value, widens its type and adds the cell.
fn push(shape: &mut TableShape, row: &mut Row, name: &str, cell: Option<Cell>) {
    let id = shape.intern(name);
    if let Some(cell) = cell {
        shape.observe(id, &cell);
        row.push((id, cell));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The row as (column name, cell) pairs, for readable assertions.
    fn named(shape: &TableShape, row: &Row) -> Vec<(String, Cell)> {
        let schema = shape.finish();
        let mut pairs: Vec<(String, Cell)> = row
            .iter()
            .map(|(id, cell)| {
                (
                    schema.columns[schema.position_of[*id as usize] as usize]
                        .name
                        .clone(),
                    cell.clone(),
                )
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    #[test]
    fn flattens_nested_attributes_and_keeps_keys_verbatim() {
        let mut flattener = Flattener::default();
        let flat = flattener
            .flatten(&json!({
                "id": 42, "name": "Dana", "email": null, "blocked": false, "created_at": 1700000000,
                "additional_attributes": {"city": "תל אביב", "social_profiles": {"github": "dana"}, "tags": ["a"]},
                "custom_attributes": {"plan.tier": "gold", "my key": 3, "prefs": {"lang": "he"}},
                "stage": {"name": "lead"}
            }))
            .expect("flattens");
        assert_eq!(flat.id, 42);
        let s = |t: &str| Cell::Str(t.into());
        assert_eq!(
            named(&flattener.contacts, &flat.contact),
            vec![
                ("additional_attributes__city".into(), s("תל אביב")),
                (
                    "additional_attributes__social_profiles__github".into(),
                    s("dana")
                ),
                (
                    "additional_attributes__tags".into(),
                    Cell::Json("[\"a\"]".into())
                ),
                ("blocked".into(), Cell::Bool(false)),
                ("created_at".into(), Cell::Int(1_700_000_000)),
                ("custom_attributes__my key".into(), Cell::Int(3)),
                ("custom_attributes__plan.tier".into(), s("gold")),
                (
                    "custom_attributes__prefs".into(),
                    Cell::Json("{\"lang\":\"he\"}".into())
                ),
                ("id".into(), Cell::Int(42)),
                ("name".into(), s("Dana")),
                ("stage".into(), Cell::Json("{\"name\":\"lead\"}".into())),
            ]
        );
        // A null registers its column without a cell.
        let names: Vec<String> = flattener
            .contacts
            .finish()
            .columns
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(names.contains(&"email".to_string()));
    }

    #[test]
    fn inbox_links_become_child_rows() {
        let mut flattener = Flattener::default();
        let flat = flattener
            .flatten(&json!({"id": "7", "contact_inboxes": [
                {"source_id": "abc", "inbox": {"id": 3, "name": "Web", "provider": null}},
                {"source_id": "def", "inbox": {"id": 4, "name": "Mail"}, "hmac_verified": true}
            ]}))
            .expect("flattens");
        assert_eq!(flat.id, 7);
        assert_eq!(flat.inboxes.len(), 2);
        assert_eq!(
            named(&flattener.inboxes, &flat.inboxes[1]),
            vec![
                ("contact_id".into(), Cell::Int(7)),
                ("hmac_verified".into(), Cell::Bool(true)),
                ("inbox__id".into(), Cell::Int(4)),
                ("inbox__name".into(), Cell::Str("Mail".into())),
                ("source_id".into(), Cell::Str("def".into())),
            ]
        );
    }

    #[test]
    fn rejects_contacts_without_an_integer_id() {
        let mut flattener = Flattener::default();
        assert_eq!(
            flattener.flatten(&json!([1])),
            Err(FlattenError::NotAnObject)
        );
        assert_eq!(
            flattener.flatten(&json!({"name": "x"})),
            Err(FlattenError::NoId)
        );
        assert_eq!(
            flattener.flatten(&json!({"id": 1.5})),
            Err(FlattenError::NoId)
        );
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(cell_of(&json!(3)), Some(Cell::Int(3)));
        assert_eq!(cell_of(&json!(2.5)), Some(Cell::Float(2.5)));
        assert_eq!(
            cell_of(&json!(18446744073709551615u64)),
            Some(Cell::Json("18446744073709551615".into()))
        );
        assert_eq!(cell_of(&json!(null)), None);
    }
}
