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
    /// A number attribute's Decimal128(38, 18); values are compared as `decimal_key` text.
    Decimal,
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
        // Text in a number or date attribute's column (only a definition allows it).
        (Value::String(s), Kind::Decimal) => decimal_key(s).map_or(Value::Null, Value::from),
        (Value::Number(n), Kind::Decimal) => Value::from(decimal_key(n.as_str()).expect("fits")),
        (Value::String(s), Kind::Timestamp) => Value::from(rfc3339_seconds(s).expect("a date")),
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

/// The kind a custom attribute's display type gives its column before any value is seen.
fn defined_kind(display_type: &str) -> Option<Kind> {
    Some(match display_type {
        "number" | "currency" | "percent" => Kind::Decimal,
        "checkbox" => Kind::Bool,
        "date" => Kind::Timestamp,
        "text" | "link" | "list" => Kind::Str,
        _ => return None,
    })
}

/// Whether `value` can be written in a column that a definition gave `kind`; one value that
/// cannot makes the column text.
fn fits(kind: Kind, value: &Value) -> bool {
    match (kind, value) {
        (_, Value::Null) | (Kind::Str, _) | (Kind::Bool, Value::Bool(_)) => true,
        (Kind::Decimal, Value::Number(n)) => decimal_key(n.as_str()).is_some(),
        (Kind::Decimal, Value::String(s)) => s.trim().is_empty() || decimal_key(s).is_some(),
        (Kind::Timestamp, Value::String(s)) => rfc3339_seconds(s).is_some(),
        _ => false,
    }
}

/// A decimal number's exact value as comparable text, `[-]DIGITSeEXP` with no leading or
/// trailing zeros in DIGITS (`"1234.50"` -> `"12345e-1"`, `"0"` -> `"0"`), when Decimal128(38, 18)
/// holds it (at most 20 digits before the point and 18 after); blank text and anything else:
/// None. Works on the text, never through a float.
pub fn decimal_key(text: &str) -> Option<String> {
    let text = text.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{whole}{fraction}");
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut exponent = exponent - fraction.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    let significant = trimmed.trim_end_matches('0');
    exponent += (trimmed.len() - significant.len()) as i64;
    if -exponent > 18 || significant.len() as i64 + exponent > 20 {
        return None;
    }
    let sign = if negative { "-" } else { "" };
    Some(format!("{sign}{significant}e{exponent}"))
}

fn rfc3339_seconds(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp())
}

/// The `contacts` and `contact_inboxes` tables the contract derives from `truth` and the
/// account's custom attribute `definitions` (the JSON array the API serves).
pub fn tables(truth: &[Value], definitions: &Value) -> (Table, Table) {
    let defined: BTreeMap<String, Kind> = definitions
        .as_array()
        .expect("an array")
        .iter()
        .filter(|d| d["attribute_model"] == "contact_attribute")
        .filter_map(|d| {
            let kind = defined_kind(d["attribute_display_type"].as_str()?)?;
            Some((
                format!("custom_attributes__{}", d["attribute_key"].as_str()?),
                kind,
            ))
        })
        .collect();
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
            &defined,
            contacts,
        ),
        table(&INBOX_COLUMNS, &["inbox__"], &BTreeMap::new(), inboxes),
    )
}

/// The tables of several accounts exported by one `run`: each account's rows in the run's one
/// schema per table, the union of every account's columns, kinds joined as the contract joins
/// types (an account's rows are null in the columns only others have).
pub fn run_tables(accounts: &[(Vec<Value>, Value)]) -> Vec<(Table, Table)> {
    let mut each: Vec<(Table, Table)> = accounts
        .iter()
        .map(|(truth, definitions)| tables(truth, definitions))
        .collect();
    let contacts = union_columns(
        each.iter().map(|t| &t.0),
        CONTACT_COLUMNS.len(),
        &["additional_attributes__", "custom_attributes__"],
    );
    let inboxes = union_columns(each.iter().map(|t| &t.1), INBOX_COLUMNS.len(), &["inbox__"]);
    for (c, i) in &mut each {
        c.columns.clone_from(&contacts);
        i.columns.clone_from(&inboxes);
    }
    each
}

/// The columns of `tables` (one table of several accounts): the declared ones first, then the
/// rest by group and name, each kind joined over the accounts.
fn union_columns<'a>(
    tables: impl Iterator<Item = &'a Table>,
    declared: usize,
    groups: &[&str],
) -> Vec<(String, Kind)> {
    let mut head: Vec<(String, Kind)> = Vec::new();
    let mut rest: BTreeMap<(usize, String), Kind> = BTreeMap::new();
    for table in tables {
        head.clone_from(&table.columns[..declared].to_vec());
        for (name, kind) in &table.columns[declared..] {
            let group = groups
                .iter()
                .position(|g| name.starts_with(g))
                .map_or(0, |p| p + 1);
            rest.entry((group, name.clone()))
                .and_modify(|known| {
                    *known = match (*known, *kind) {
                        (a, b) if a == b => a,
                        (Kind::Int | Kind::Float, Kind::Int | Kind::Float) => Kind::Float,
                        (Kind::Decimal | Kind::Int, Kind::Decimal | Kind::Int) => Kind::Decimal,
                        _ => Kind::Str,
                    }
                })
                .or_insert(*kind);
        }
    }
    head.extend(rest.into_iter().map(|((_, name), kind)| (name, kind)));
    head
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

fn table(
    declared: &[(&str, Kind)],
    groups: &[&str],
    defined: &BTreeMap<String, Kind>,
    rows: Vec<BTreeMap<String, Value>>,
) -> Table {
    let mut kinds: BTreeMap<String, Option<Kind>> = BTreeMap::new();
    for (name, kind) in defined {
        let fit = rows
            .iter()
            .all(|row| row.get(name).is_none_or(|v| fits(*kind, v)));
        kinds.insert(name.clone(), Some(if fit { *kind } else { Kind::Str }));
    }
    for row in &rows {
        for (name, value) in row {
            if defined.contains_key(name) {
                continue;
            }
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
