//! One API contact -> one `contacts` row and one `contact_inboxes` row per inbox link.
//!
//! Receives a contact as JSON; emits sparse rows whose columns are registered in the two
//! tables' shapes. The rules are the output contract: API fields keep their names;
//! `additional_attributes` is flattened recursively into `additional_attributes__<key>[__<sub>]`;
//! `custom_attributes` becomes `custom_attributes__<key>` with nested values as JSON text; keys
//! are kept verbatim; unknown top-level fields are kept (objects and arrays as JSON text);
//! each `contact_inboxes` item becomes a row keyed by `contact_id`, its `inbox` object
//! flattened as `inbox__<key>`.
//!
//! Two ways in: `flatten` takes a parsed `Value` and is the general path, where the rules are
//! written out; `flatten_json` takes the contact's JSON text and the export uses it: it runs the
//! fast path in `stream` (no `Value`, no allocation per value) and, for any contact that path
//! does not cover, rolls the shapes back and runs `flatten`, so both give the same tables.
//! A contact nested deeper than either path parses has its too-deep values kept as JSON text
//! (`deep`) and goes on; every value kept as text instead of its declared type is counted.

use serde_json::{Map, Value};

use super::deep::keep_deep_values_as_text;
use super::inbox_secrets::InboxSecrets;
use super::number::number_cell;
use super::schema::{ColumnType, TableShape, created_at_secs};
use super::spill::RowBuffer;
use super::stream::{ContactScan, StreamState};
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
pub const CONTACT_GROUPS: &[&str] = &["additional_attributes__", "custom_attributes__"];

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
pub const INBOX_GROUPS: &[&str] = &["inbox__"];

/// Why a contact could not be flattened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlattenError {
    #[error("a contact is not a JSON object")]
    NotAnObject,
    #[error("a contact has no integer `id`")]
    NoId,
    /// Only from `flatten_json`: the contact's text is not JSON (the page scan checks only
    /// strings and brackets; the pipeline reports this as an invalid page).
    #[error("a contact is not valid JSON ({0})")]
    Json(String),
}

/// One contact, flattened.
#[derive(Debug, PartialEq)]
pub struct FlatContact {
    pub id: i64,
    pub contact: Row,
    pub inboxes: Vec<Row>,
}

/// One contact, flattened and encoded for the spill (`flatten_json`'s output, reused).
#[derive(Debug, Default)]
pub struct EncodedContact {
    pub id: i64,
    /// Its `created_at` in unix seconds, when it has a valid one.
    pub created_at: Option<i64>,
    /// The `contacts` row.
    pub contact: RowBuffer,
    /// One `contact_inboxes` row per inbox link.
    pub inboxes: RowBuffer,
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
    /// The fast path's key maps and marks.
    stream: StreamState,
    /// Contacts `flatten_json` handed to the general path.
    general_path_contacts: u64,
    /// Values nested too deep to take apart, kept as text, plus those counted before a resume.
    kept_as_text: u64,
}

impl Default for Flattener {
    fn default() -> Self {
        let mut contacts = TableShape::new(CONTACT_COLUMNS, CONTACT_GROUPS);
        let mut inboxes = TableShape::new(INBOX_COLUMNS, INBOX_GROUPS);
        Self {
            stream: StreamState::new(&mut contacts, &mut inboxes),
            contacts,
            inboxes,
            inbox_secrets: InboxSecrets::default(),
            name: String::new(),
            general_path_contacts: 0,
            kept_as_text: 0,
        }
    }
}

impl EncodedContact {
    /// The contact's rows of each table, in `Flattener::shapes` order.
    pub fn rows(&self) -> [&RowBuffer; 2] {
        [&self.contact, &self.inboxes]
    }
}

impl Flattener {
    /// The shapes of the tables a contact fills, in `crate::table::walk_tables` order.
    pub fn shapes(&self) -> [&TableShape; 2] {
        [&self.contacts, &self.inboxes]
    }

    /// `shapes`, to restore them from a checkpoint.
    pub fn shapes_mut(&mut self) -> [&mut TableShape; 2] {
        [&mut self.contacts, &mut self.inboxes]
    }

    /// Types the `custom_attributes__<key>` columns from the account's attribute definitions
    /// (key, display type) before any contact is seen, so a column's type follows what the
    /// attribute is, not which values tonight's contacts happen to hold, and a defined
    /// attribute nobody has set yet is still a column. Values that do not fit widen the column
    /// as usual (a date attribute holding "soon" becomes text). Returns how many definitions
    /// typed a column (an unknown display type is left to the values).
    pub fn declare_custom_attributes<'a>(
        &mut self,
        definitions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> u64 {
        let mut declared = 0;
        for (key, display_type) in definitions {
            let floor = match display_type {
                "number" | "currency" | "percent" => ColumnType::Number,
                "checkbox" => ColumnType::Bool,
                "date" => ColumnType::DateText,
                "text" | "link" | "list" => ColumnType::String,
                _ => continue,
            };
            self.name.clear();
            self.name.push_str("custom_attributes__");
            self.name.push_str(key);
            self.contacts.declare(&self.name, floor);
            declared += 1;
        }
        declared
    }

    /// Flattens one contact's JSON text into `out` (cleared first): the same rows, columns and
    /// types as `flatten` on the parsed text, without building the `Value`.
    pub fn flatten_json(
        &mut self,
        contact: &str,
        out: &mut EncodedContact,
    ) -> Result<(), FlattenError> {
        out.contact.clear();
        out.inboxes.clear();
        self.contacts.mark();
        self.inboxes.mark();
        let fast = ContactScan::new(
            &mut self.stream,
            &mut self.contacts,
            &mut self.inboxes,
            &mut out.contact,
            &mut out.inboxes,
        )
        .contact(contact);
        if let Ok((id, created_at)) = fast {
            out.id = id;
            out.created_at = created_at;
            return Ok(());
        }
        // Not a shape the fast path covers: undo what it registered and take the general path.
        self.general_path_contacts += 1;
        self.contacts.rollback();
        self.inboxes.rollback();
        self.stream.forget_columns(self.contacts.len());
        out.contact.clear();
        out.inboxes.clear();
        // Too deep for serde_json (and so for both paths): keep the deep values as text.
        let shallow = keep_deep_values_as_text(contact);
        let text = shallow
            .as_ref()
            .map_or(contact, |shallow| shallow.text.as_str());
        let value: Value =
            serde_json::from_str(text).map_err(|err| FlattenError::Json(err.to_string()))?;
        let flat = self.flatten(&value)?;
        if let Some(shallow) = &shallow {
            // A value in a column with a declared type was counted there already.
            let counted = |column: &Option<String>| {
                column
                    .as_deref()
                    .is_some_and(|name| self.contacts.has_typed_floor(name))
            };
            self.kept_as_text += shallow.columns.iter().filter(|c| !counted(c)).count() as u64;
        }
        out.id = flat.id;
        out.created_at = value
            .get("created_at")
            .and_then(cell_of)
            .and_then(|cell| created_at_secs(cell.borrowed()));
        out.contact.push_row(&flat.contact);
        for row in &flat.inboxes {
            out.inboxes.push_row(row);
        }
        Ok(())
    }

    /// Values kept as JSON text instead of being taken apart or typed: nested too deep, or not
    /// valid as their column's declared type (the manifest's `values_kept_as_text`).
    pub fn values_kept_as_text(&self) -> u64 {
        self.kept_as_text + self.contacts.kept_as_text() + self.inboxes.kept_as_text()
    }

    /// Adds what a checkpoint counted before an interruption.
    pub fn restore_values_kept_as_text(&mut self, count: u64) {
        self.kept_as_text += count;
    }

    /// How many contacts `flatten_json` passed to the general path (for tests and benchmarks:
    /// Chatwoot's own output should never need it).
    pub fn general_path_contacts(&self) -> u64 {
        self.general_path_contacts
    }

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
        // serde_json keeps the number's text (`arbitrary_precision`): the cell holds it exactly.
        Value::Number(n) => number_cell(n.as_str()).into_cell(),
        Value::String(s) => Cell::Str(s.clone()),
        Value::Array(_) | Value::Object(_) => Cell::Json(value.to_string()),
    })
}

/// One JSON object of a table filled from a plain list (a label, an attribute definition) ->
/// one row of `shape`: each field its column, named as the server names it, objects and
/// arrays as their JSON text, nulls as no cell.
pub fn flatten_record(shape: &mut TableShape, object: &Map<String, Value>) -> Row {
    let mut row = Row::with_capacity(object.len());
    for (key, value) in object {
        push(shape, &mut row, key, cell_of(value));
    }
    row
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

    /// A row as (column name, cell) pairs sorted by name, for comparing rows whose column ids
    /// differ (the two paths meet keys in different orders). Of two cells of one column only
    /// the later counts, as in a batch.
    fn by_name(shape: &TableShape, row: &Row) -> Vec<(String, Cell)> {
        let mut pairs: Vec<(String, Cell)> = row
            .iter()
            .enumerate()
            .filter(|(index, (id, _))| !row[index + 1..].iter().any(|(later, _)| later == id))
            .map(|(_, (id, cell))| (shape.name(*id).to_owned(), cell.clone()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    type Named = (i64, Vec<(String, Cell)>, Vec<Vec<(String, Cell)>>);

    /// Runs `texts` through `flatten_json` and through `flatten` on the parsed `Value`, and
    /// checks that both give the same rows, errors and final schemas.
    fn assert_paths_agree(texts: &[String]) -> Flattener {
        let (mut fast, mut general) = (Flattener::default(), Flattener::default());
        let mut out = EncodedContact::default();
        for text in texts {
            let got: Result<Named, FlattenError> = fast.flatten_json(text, &mut out).map(|()| {
                let rows = |buffer: &RowBuffer, shape: &TableShape| -> Vec<_> {
                    buffer
                        .rows_iter()
                        .map(|row| by_name(shape, &row.to_row().expect("decodes")))
                        .collect()
                };
                let contact = rows(&out.contact, &fast.contacts).remove(0);
                (out.id, contact, rows(&out.inboxes, &fast.inboxes))
            });
            let want: Result<Named, FlattenError> = serde_json::from_str::<Value>(text)
                .map_err(|err| FlattenError::Json(err.to_string()))
                .and_then(|value| general.flatten(&value))
                .map(|flat| {
                    let inboxes = flat
                        .inboxes
                        .iter()
                        .map(|row| by_name(&general.inboxes, row))
                        .collect();
                    (flat.id, by_name(&general.contacts, &flat.contact), inboxes)
                });
            match (got, want) {
                (Err(FlattenError::Json(_)), Err(FlattenError::Json(_))) => {}
                (got, want) => assert_eq!(got, want, "{text}"),
            }
        }
        for (a, b) in [
            (&fast.contacts, &general.contacts),
            (&fast.inboxes, &general.inboxes),
        ] {
            assert_eq!(a.finish().columns, b.finish().columns, "final schemas");
        }
        fast
    }

    #[test]
    fn the_fast_path_matches_the_general_path_on_fake_accounts() {
        for seed in [1, 7, 42] {
            let account = crate::fake::FakeAccount::new(seed, 1500);
            let texts: Vec<String> = (0..account.len())
                .map(|index| account.contact(index).to_string())
                .collect();
            let fast = assert_paths_agree(&texts);
            assert_eq!(
                fast.general_path_contacts(),
                0,
                "the fake account's contacts all take the fast path"
            );
        }
    }

    #[test]
    fn odd_contacts_give_the_same_rows_whichever_path_flattens_them() {
        let texts: Vec<String> = [
            // Chatwoot's own key order, and a numeric-string id.
            r#"{"additional_attributes":{"city":"Haifa"},"availability_status":"offline","email":"a@x","id":"7","name":"A","phone_number":null,"blocked":false,"identifier":null,"thumbnail":"","custom_attributes":{"plan":"gold"},"last_activity_at":1731608270,"created_at":1731586271,"contact_inboxes":[{"source_id":"2f0c","inbox":{"id":3,"avatar_url":"","channel_id":1,"name":"Website","channel_type":"Channel::WebWidget","provider":null}}]}"#,
            r#"{"id":" 8 ","name":"a","name":"b"}"#,
            r#"{"id":1,"additional_attributes":{"a":1,"x":2},"additional_attributes":{"b":2}}"#,
            r#"{"id":2,"additional_attributes":{"s":{"a":1},"s":{"b":2}}}"#,
            r#"{"id":3,"additional_attributes":{"a__b":1,"a":{"b":2}}}"#,
            r#"{"id":4,"additional_attributes__city":"x","additional_attributes":{"city":"y"}}"#,
            r#"{"id":5,"custom_attributes__k":1,"custom_attributes":{"k":"y"}}"#,
            r#"{"id":1.5}"#,
            r#"{"name":"no id"}"#,
            r#"{"id":null}"#,
            r#"{"id":true}"#,
            r#"{"id":18446744073709551615}"#,
            r#"{"id":{"a":1}}"#,
            r#"{"id":[1]}"#,
            r#"{"id":9,"id":10}"#,
            "[1]",
            "7",
            r#""text""#,
            r#"{"id":11,"contact_inboxes":[{"source_id":"a","inbox":{"id":3,"name":"W","provider":null}},{"source_id":"b","inbox":{"id":4},"hmac_verified":true}]}"#,
            r#"{"id":12,"contact_inboxes":[1,"x",null]}"#,
            r#"{"id":13,"contact_inboxes":{"a":1}}"#,
            r#"{"id":14,"contact_inboxes":"none"}"#,
            r#"{"id":15,"contact_inboxes":[{"source_id":"a","inbox":{}},{"source_id":"b","inbox":{"id":1},"inbox":{}}]}"#,
            r#"{"id":16,"contact_inboxes":[{"source_id":{"x":1},"inbox":{"id":1}}]}"#,
            r#"{"id":17,"contact_inboxes":[{"source_id":"s","inbox":{"id":"3","channel_id":2.5,"name":["x"]}}]}"#,
            r#"{"id":18,"contact_inboxes":[{"source_id":"s","inbox":null}]}"#,
            r#"{"id":19,"contact_inboxes":[{"source_id":"s","source_id":"t","inbox":{"id":1,"id":2}}]}"#,
            r#"{"id":20,"contact_inboxes":[{"inbox":{"id":1,"provider":"p","provider":null}}],"contact_inboxes":[]}"#,
            r#"{"id":21,"contact_inboxes":[{"inbox":{"id":18446744073709551615,"name":1e3,"provider":true}}]}"#,
            r#"{"id":22,"additional_attributes":null,"custom_attributes":"x","stage":{"b":1,"a":[1,2.5,"x"]},"tags":["a"],"n":18446744073709551615,"f":1e5,"neg":-3,"z":-0,"zf":-0.0}"#,
            r#"{"id":23,"esc":"a\"b\\n\u00e9\ud83d\ude00\/","e\u0301":1,"additional_attributes":{"k\"ey":{"in\ner":"v\u0000"}}}"#,
            r#"{"id":24,"custom_attributes":{"k":{"b":1,"a":2},"k2":[],"k3":{},"n":null,"k.dot":{"x":{"y":[{"z":null}]}}}}"#,
            r#"{"id":25,"additional_attributes":{"deep":{"deeper":{"deepest":true},"list":[{"a":1}]},"empty":{}}}"#,
            r#"{"id":26,"created_at":"2024-01-02T03:04:05Z","last_activity_at":"not a date","blocked":"yes"}"#,
            r#"{"id":27,"$serde_json::private::RawValue":1}"#,
            r#"{"id":28,"big":1e400}"#,
            r#"{"id":29,"s":"\ud800"}"#,
            r#"{"id":-30,"additional_attributes":{"social_profiles":{"github":"x"},"social_profiles__github":"y"}}"#,
            r#"{"id":31,"contact_inboxes":[],"additional_attributes":{},"custom_attributes":{}}"#,
            r#"{"id":32,"contact_inboxes":[{"source_id":"x","inbox":{"id":1}}],"contact_id":5}"#,
            r#"  {"id":33}  "#,
            r#"{"id":34,"n0":-0,"n1":1E2,"n2":0.5e-3,"n3":-9223372036854775808,"n4":-9223372036854775809,"n5":18446744073709551616,"n6":-1.5E+3}"#,
            r#"{"id":35,"q":"\u0022quoted\u0022 \ud83d\ude00 \uD83D\uDE00 \u00E9","k\ud83d\ude00":"\\\/\b\f\n\r\t"}"#,
            r#"{"id":36,"s":"\ud83dx","t":1}"#,
            r#"{"id":37,"s":"\udc00"}"#,
            r#"{ "id" : 38 , "contact_inboxes" : [ { "source_id" : "a" , "inbox" : { "id" : 1 , "name" : "x" } } ] , "additional_attributes" : { "a" : { "b" : [ 1 , { "c" : "d" } ] } } }"#,
            "{\"id\":39,\"name\":\"tab\\tand\\u0000nul\"}",
        ]
        .iter()
        .map(|text| text.to_string())
        .collect();
        let fast = assert_paths_agree(&texts);
        assert!(fast.general_path_contacts() > 10);
    }

    #[test]
    fn pretty_printed_and_deeply_nested_contacts() {
        let account = crate::fake::FakeAccount::new(3, 200);
        let mut texts: Vec<String> = (0..account.len())
            .map(|index| serde_json::to_string_pretty(&account.contact(index)).expect("json"))
            .collect();
        let fast = assert_paths_agree(&texts);
        assert_eq!(
            fast.general_path_contacts(),
            0,
            "whitespace is no reason to fall back"
        );
        // Nesting up to what both parsers take: the same rows either way.
        for depth in [90, 101, 124, 125] {
            texts.push(format!(
                r#"{{"id":1,"additional_attributes":{}{}}}"#,
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            ));
        }
        assert_paths_agree(&texts);
    }

    /// Issue 15: a contact nested 200 levels deep ended the export with `recursion limit
    /// exceeded`. Its deep value is kept, as the text sent, in its column, and counted.
    #[test]
    fn values_nested_too_deep_are_kept_as_text_and_counted() {
        let mut flattener = Flattener::default();
        flattener.declare_custom_attributes([("score", "number")]);
        let mut out = EncodedContact::default();
        for depth in [126, 300, 100_000] {
            let deep = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            let text = format!(
                r#"{{"id":1,"name":"n","additional_attributes":{{"city":"x","deep":{deep}}},"custom_attributes":{{"score":[{deep}]}}}}"#
            );
            let before = flattener.values_kept_as_text();
            fast_cells(&mut flattener, &text, &mut out, |cells| {
                let cell = |name: &str| cells.iter().find(|(n, _)| n == name).map(|(_, c)| c);
                assert_eq!(cell("name"), Some(&Cell::Str("n".into())));
                assert_eq!(
                    cell("additional_attributes__city"),
                    Some(&Cell::Str("x".into()))
                );
                assert_eq!(
                    cell("additional_attributes__deep"),
                    Some(&Cell::Str(deep.clone())),
                    "{depth}"
                );
                assert_eq!(
                    cell("custom_attributes__score"),
                    Some(&Cell::Str(format!("[{deep}]")))
                );
            });
            assert_eq!(
                flattener.values_kept_as_text() - before,
                2,
                "each deep value counted once, the typed one included"
            );
        }
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

    /// Issue 15: `9007199254740993` was written as `9007199254740992.0` and
    /// `123456789012345678.5` lost its last digits; the text the server sent is kept.
    #[test]
    fn numbers_no_f64_holds_keep_their_digits_on_both_paths() {
        let parsed = |text: &str| cell_of(&serde_json::from_str(text).expect("json"));
        assert_eq!(
            parsed("9007199254740993"),
            Some(Cell::Int(9_007_199_254_740_993))
        );
        for text in [
            "123456789012345678.5",
            "18446744073709551616",
            "0.30000000000000001",
        ] {
            assert_eq!(parsed(text), Some(Cell::Json(text.into())), "{text}");
        }
        let texts: Vec<String> = [
            r#"{"id":1,"custom_attributes":{"a":123456789012345678.5,"b":0.1,"c":{"n":1.00000000000000000001}},"additional_attributes":{"x":18446744073709551616,"y":[9007199254740993.0]},"top":-1.5e-400}"#,
            r#"{"id":2,"id2":1,"custom_attributes":{"a":1,"a":2.5}}"#,
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let fast = assert_paths_agree(&texts);
        let mut out = EncodedContact::default();
        fast_cells(&mut Flattener::default(), &texts[0], &mut out, |cells| {
            assert!(cells.contains(&(
                "custom_attributes__a".into(),
                Cell::Json("123456789012345678.5".into())
            )));
            assert!(cells.contains(&(
                "custom_attributes__c".into(),
                Cell::Json(r#"{"n":1.00000000000000000001}"#.into())
            )));
            assert!(cells.contains(&(
                "additional_attributes__y".into(),
                Cell::Json("[9007199254740993.0]".into())
            )));
            assert!(cells.contains(&("custom_attributes__b".into(), Cell::Float(0.1))));
        });
        assert_eq!(
            fast.general_path_contacts(),
            1,
            "only the duplicate key falls back"
        );
    }

    /// Runs `text` through the fast path and hands its contact row, by column name, to `check`.
    fn fast_cells(
        flattener: &mut Flattener,
        text: &str,
        out: &mut EncodedContact,
        check: impl FnOnce(&[(String, Cell)]),
    ) {
        flattener.flatten_json(text, out).expect("flattens");
        let row = out
            .contact
            .rows_iter()
            .next()
            .expect("a row")
            .to_row()
            .expect("decodes");
        check(&by_name(&flattener.contacts, &row));
    }
}
