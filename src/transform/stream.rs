//! Flatten's fast path: one contact's JSON text to spill-encoded rows in one pass.
//!
//! Receives a contact as JSON text (cut from its page by a scan that checks only strings and
//! brackets: serde_json checks the rest here, and any error sends the contact to the general
//! path, which reports it) and the two tables' shapes; emits the contact's row and one row per inbox link into `RowBuffer`s,
//! registering columns and widening types exactly as `Flattener::flatten` does for the parsed
//! `Value`. There is no `Value` in between: serde's visitors walk the text once, each key is
//! looked up in a small map of its object level (a column name is built only the first time its
//! path is met), and each text value is copied once, from the page into the row buffer. Keys
//! come in the same order contact after contact, so each key is first compared with the one
//! that followed the previous key last time, and hashed only when that guess is wrong.
//!
//! It covers what Chatwoot sends, and gives up (`Fallback`) on anything else, so that the output
//! never depends on which path ran: a key twice in one object or two keys that flatten to one
//! column (where `Value` would keep only the last), a contact that is not an object or has no
//! integer id (the general path reports the error), and a `contact_inboxes` item beyond the
//! documented `{source_id, inbox: {id, avatar_url, channel_id, name, channel_type, provider}}`
//! with scalar values. Links with any other field go through `Flattener::inbox_row`, so that
//! every rule about link fields lives in that one place. The caller rolls the shapes back and
//! runs the general path on a fallback.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde::de::value::SeqAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::CellRef;
use super::number::number_cell;
// The documented fields of a `contact_inboxes` item and of its `inbox`: the ones the secret
// filter always keeps, so a link with only these needs no filtering.
use super::inbox_secrets::{INBOX_FIELDS as INBOX_KEYS, LINK_FIELDS as LINK_KEYS};
use super::schema::{TableShape, created_at_secs};
use super::spill::RowBuffer;

/// The fast path gave up on a contact; the general path must flatten it.
#[derive(Debug)]
pub struct Fallback;

/// A node's column before its first use as a leaf.
const NO_COLUMN: u32 = u32::MAX;
/// The contact object itself.
const ROOT: u32 = 0;
/// No node (no guess yet).
const NO_NODE: u32 = u32::MAX;
/// What `KeySeed` returns for serde_json's number marker: with `arbitrary_precision`, a number
/// that is not an i64 or u64 reaches a visitor as a map of this one key to the number's text.
const NUMBER_KEY: u32 = u32::MAX - 1;
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// How a path's value is flattened (see `flatten.rs` for the rules).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// The contact object.
    Root,
    /// Top-level `id`: an integer or a numeric string.
    Id,
    /// Top-level `additional_attributes`: an object is flattened recursively.
    Additional,
    /// Top-level `custom_attributes`: an object's keys become columns, one level deep.
    Custom,
    /// Top-level `contact_inboxes`: an array of links, one `contact_inboxes` row each.
    Inboxes,
    /// A column whose objects and arrays are kept as JSON text.
    Field,
    /// Inside `additional_attributes`: objects recurse, arrays are JSON text.
    Nested,
}

/// One path of the contact tree (`email`, `additional_attributes`,
/// `additional_attributes__social_profiles__github`...).
#[derive(Debug)]
struct Node {
    kind: Kind,
    /// The key, as in the JSON.
    key: Box<str>,
    /// The column name the path flattens to.
    name: Box<str>,
    /// Its `contacts` column once it was a leaf, else `NO_COLUMN`.
    column: u32,
    /// Children by key, for kinds that have them.
    children: FxHashMap<Box<str>, u32>,
    /// The child met first in this object last time, and the sibling that followed this node
    /// last time: the guesses for the next key.
    first: u32,
    next: u32,
    /// The row serial this key was last met in: meeting it again in that row is a duplicate.
    seen: u32,
    /// A key `Value` treats specially (serde_json's private raw-value marker): always fall back.
    odd: bool,
}

/// What the fast path keeps between contacts: the key maps, and per column the serial of the
/// last row that had it.
#[derive(Debug)]
pub struct StreamState {
    nodes: Vec<Node>,
    contact_marks: Vec<u32>,
    inbox_marks: Vec<u32>,
    serial: u32,
    /// `contact_inboxes` columns: `contact_id`, `source_id`, then `inbox__<INBOX_KEYS[i]>`.
    contact_id: u32,
    source_id: u32,
    inbox_fields: [u32; INBOX_KEYS.len()],
    /// Where each link row's `contact_id` value is, to fill in once the id is known (it may
    /// come after `contact_inboxes` in the object).
    contact_id_slots: Vec<usize>,
    /// The `contacts` column of `created_at`, whose value the scan also hands back.
    created_at: u32,
}

impl StreamState {
    pub fn new(contacts: &mut TableShape, inboxes: &mut TableShape) -> Self {
        let root = Node {
            kind: Kind::Root,
            key: "".into(),
            name: "".into(),
            column: NO_COLUMN,
            children: FxHashMap::default(),
            first: NO_NODE,
            next: NO_NODE,
            seen: 0,
            odd: false,
        };
        Self {
            nodes: vec![root],
            contact_marks: Vec::new(),
            inbox_marks: Vec::new(),
            serial: 0,
            contact_id: inboxes.intern("contact_id"),
            source_id: inboxes.intern("source_id"),
            inbox_fields: INBOX_KEYS.map(|key| inboxes.intern(&format!("inbox__{key}"))),
            contact_id_slots: Vec::new(),
            created_at: contacts.intern("created_at"),
        }
    }

    /// Forgets cached columns at or past `contacts_len`, which a rollback freed.
    pub fn forget_columns(&mut self, contacts_len: usize) {
        for node in &mut self.nodes {
            if node.column != NO_COLUMN && node.column as usize >= contacts_len {
                node.column = NO_COLUMN;
            }
        }
    }

    fn next_serial(&mut self) -> u32 {
        // Wrapping is harmless: a stale mark that happens to match only causes a fallback.
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// The child of `parent` for `key` met after sibling `previous` (`NO_NODE` for the first
    /// key of the object).
    fn next_child(&mut self, parent: u32, previous: u32, key: &str) -> u32 {
        let guess = match previous {
            NO_NODE => self.nodes[parent as usize].first,
            previous => self.nodes[previous as usize].next,
        };
        let node = match self.nodes.get(guess as usize) {
            Some(node) if *node.key == *key => guess,
            _ => self.child(parent, key),
        };
        match previous {
            NO_NODE => self.nodes[parent as usize].first = node,
            previous => self.nodes[previous as usize].next = node,
        }
        node
    }

    /// The child of `parent` for `key`, created on first sight.
    fn child(&mut self, parent: u32, key: &str) -> u32 {
        if let Some(&node) = self.nodes[parent as usize].children.get(key) {
            return node;
        }
        let parent_node = &self.nodes[parent as usize];
        let (kind, name) = match parent_node.kind {
            Kind::Root => {
                let kind = match key {
                    "id" => Kind::Id,
                    "additional_attributes" => Kind::Additional,
                    "custom_attributes" => Kind::Custom,
                    "contact_inboxes" => Kind::Inboxes,
                    _ => Kind::Field,
                };
                (kind, key.to_owned())
            }
            Kind::Custom => (Kind::Field, format!("{}__{key}", parent_node.name)),
            _ => (Kind::Nested, format!("{}__{key}", parent_node.name)),
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind,
            key: key.into(),
            name: name.into(),
            column: NO_COLUMN,
            children: FxHashMap::default(),
            first: NO_NODE,
            next: NO_NODE,
            seen: 0,
            odd: key.starts_with("$serde_json::private::"),
        });
        self.nodes[parent as usize].children.insert(key.into(), id);
        id
    }
}

/// One contact's scan: the state, the shapes and the output rows.
pub struct ContactScan<'a> {
    pub state: &'a mut StreamState,
    pub contacts: &'a mut TableShape,
    pub inboxes: &'a mut TableShape,
    pub contact: &'a mut RowBuffer,
    pub links: &'a mut RowBuffer,
    /// The contact's row serial.
    serial: u32,
    id: Option<i64>,
    created_at: Option<i64>,
}

impl<'a> ContactScan<'a> {
    pub fn new(
        state: &'a mut StreamState,
        contacts: &'a mut TableShape,
        inboxes: &'a mut TableShape,
        contact: &'a mut RowBuffer,
        links: &'a mut RowBuffer,
    ) -> Self {
        Self {
            state,
            contacts,
            inboxes,
            contact,
            links,
            serial: 0,
            id: None,
            created_at: None,
        }
    }

    /// Flattens one contact into `contact` (one row) and `links` (one row per inbox link);
    /// returns its id and its `created_at` in unix seconds.
    pub fn contact(&mut self, text: &str) -> Result<(i64, Option<i64>), Fallback> {
        self.serial = self.state.next_serial();
        self.id = None;
        self.created_at = None;
        self.state.contact_id_slots.clear();
        let mut json = serde_json::Deserializer::from_str(text);
        ValueSeed {
            scan: self,
            node: ROOT,
        }
        .deserialize(&mut json)
        .map_err(|_| Fallback)?;
        json.end().map_err(|_| Fallback)?;
        let id = self.id.ok_or(Fallback)?;
        for &at in &self.state.contact_id_slots {
            self.links.patch_int(at, id);
        }
        Ok((id, self.created_at))
    }

    /// A value (or a null, `None`) for node `node`'s column in the contact's row.
    fn leaf<E: de::Error>(&mut self, node: u32, cell: Option<CellRef<'_>>) -> Result<(), E> {
        let column = match self.state.nodes[node as usize].column {
            NO_COLUMN => {
                let column = self.contacts.intern(&self.state.nodes[node as usize].name);
                self.state.nodes[node as usize].column = column;
                column
            }
            column => column,
        };
        mark(&mut self.state.contact_marks, column, self.serial)?;
        if let Some(cell) = cell {
            if column == self.state.created_at {
                self.created_at = created_at_secs(cell);
            }
            self.contacts.observe_ref(column, cell);
            self.contact.push(column, cell);
        }
        Ok(())
    }

    /// A value for a `contact_inboxes` column in the open link row `serial`.
    fn link_leaf<E: de::Error>(
        &mut self,
        column: u32,
        serial: u32,
        cell: Option<CellRef<'_>>,
    ) -> Result<(), E> {
        mark(&mut self.state.inbox_marks, column, serial)?;
        if let Some(cell) = cell {
            self.inboxes.observe_ref(column, cell);
            self.links.push(column, cell);
        }
        Ok(())
    }
}

/// Records that row `serial` has a value in `column`; a second one is a fallback, since the
/// general path would keep only one of them.
fn mark<E: de::Error>(marks: &mut Vec<u32>, column: u32, serial: u32) -> Result<(), E> {
    let column = column as usize;
    if column >= marks.len() {
        marks.resize(column + 1, 0);
    }
    if marks[column] == serial {
        return Err(fallback("two values for one column"));
    }
    marks[column] = serial;
    Ok(())
}

fn fallback<E: de::Error>(why: &'static str) -> E {
    E::custom(why)
}

/// The value of node `node`.
struct ValueSeed<'w, 'a> {
    scan: &'w mut ContactScan<'a>,
    node: u32,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_, '_> {
    fn kind(&self) -> Kind {
        self.scan.state.nodes[self.node as usize].kind
    }

    fn int<E: de::Error>(self, value: i64) -> Result<(), E> {
        if self.kind() == Kind::Id {
            if self.scan.id.is_some() {
                return Err(fallback("two ids"));
            }
            self.scan.id = Some(value);
        }
        self.scalar(Some(CellRef::Int(value)))
    }

    /// A number other than an i64 or u64, as its text: the cell that holds it exactly.
    fn number<E: de::Error>(self, text: &str) -> Result<(), E> {
        match (self.kind(), number_cell(text)) {
            (Kind::Id, CellRef::Int(id)) => self.int(id),
            (Kind::Id, _) => Err(fallback("an id that is not an i64")),
            (_, cell) => self.scalar(Some(cell)),
        }
    }

    fn scalar<E: de::Error>(self, cell: Option<CellRef<'_>>) -> Result<(), E> {
        match self.kind() {
            Kind::Root => Err(fallback("a contact that is not an object")),
            _ => self.scan.leaf(self.node, cell),
        }
    }

    /// An object or array kept whole, as `Value` prints it (keys sorted, compact).
    fn json_text<E: de::Error>(self, value: &Value) -> Result<(), E> {
        match self.kind() {
            Kind::Root | Kind::Id => Err(fallback("a contact or id that is not a scalar")),
            _ => self
                .scan
                .leaf(self.node, Some(CellRef::Json(&value.to_string()))),
        }
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a contact field")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        match self.kind() {
            Kind::Id => Err(fallback("an id that is not an integer")),
            _ => self.scalar(Some(CellRef::Bool(value))),
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.int(value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        match i64::try_from(value) {
            Ok(value) => self.int(value),
            Err(_) if self.kind() == Kind::Id => Err(fallback("an id beyond i64")),
            // Beyond i64: exact only as text, as `cell_of` keeps it.
            Err(_) => self.scalar(Some(CellRef::Json(&value.to_string()))),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        match self.kind() {
            Kind::Id => Err(fallback("an id that is not an integer")),
            // `Value` has no non-finite numbers (serde_json refuses them anyway).
            _ if !value.is_finite() => Err(fallback("a non-finite number")),
            _ => self.scalar(Some(CellRef::Float(value))),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        if self.kind() == Kind::Id {
            // Some forks send the id as a numeric string; the cell is the integer.
            let id = value
                .trim()
                .parse()
                .map_err(|_| fallback("a non-numeric id"))?;
            return self.int(id);
        }
        self.scalar(Some(CellRef::Str(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.kind() {
            Kind::Id => Err(fallback("a null id")),
            _ => self.scalar(None),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.kind() {
            Kind::Root | Kind::Additional | Kind::Nested | Kind::Custom | Kind::Id => {
                let first = map.next_key_seed(KeySeed {
                    scan: &mut *self.scan,
                    parent: self.node,
                    previous: NO_NODE,
                })?;
                if first == Some(NUMBER_KEY) {
                    let text: String = map.next_value()?;
                    return self.number(&text);
                }
                match self.kind() {
                    Kind::Root => {
                        self.scan.contact.begin_row();
                        entries(self.scan, ROOT, first, &mut map)?;
                        self.scan.contact.end_row();
                        Ok(())
                    }
                    Kind::Id => Err(fallback("an id that is an object")),
                    _ => entries(self.scan, self.node, first, &mut map),
                }
            }
            Kind::Field | Kind::Inboxes => {
                // Read as `Value` reads a map (the last of two equal keys wins), so that the
                // text is the one the general path prints; a number comes as the marker map.
                let Some(first) = map.next_key::<String>()? else {
                    return self.json_text(&Value::Object(serde_json::Map::new()));
                };
                if first == NUMBER_TOKEN {
                    let text: String = map.next_value()?;
                    return self.number(&text);
                }
                if first.starts_with("$serde_json::private::") {
                    return Err(fallback("a key serde_json treats specially"));
                }
                let mut object = serde_json::Map::new();
                object.insert(first, map.next_value()?);
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    object.insert(key, value);
                }
                self.json_text(&Value::Object(object))
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.kind() {
            Kind::Inboxes => {
                while seq.next_element_seed(LinkSeed(&mut *self.scan))?.is_some() {}
                Ok(())
            }
            _ => {
                let value = Value::deserialize(SeqAccessDeserializer::new(seq))?;
                self.json_text(&value)
            }
        }
    }
}

/// The entries of an object whose keys are children of `parent`, its first key (`first`)
/// already read.
fn entries<'de, A: MapAccess<'de>>(
    scan: &mut ContactScan<'_>,
    parent: u32,
    first: Option<u32>,
    map: &mut A,
) -> Result<(), A::Error> {
    let mut key = first;
    while let Some(node) = key {
        map.next_value_seed(ValueSeed {
            scan: &mut *scan,
            node,
        })?;
        key = map.next_key_seed(KeySeed {
            scan: &mut *scan,
            parent,
            previous: node,
        })?;
    }
    Ok(())
}

/// A key: the child node of `parent`, checked to be new in this object.
struct KeySeed<'w, 'a> {
    scan: &'w mut ContactScan<'a>,
    parent: u32,
    /// The key before it in the object, or `NO_NODE`.
    previous: u32,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<u32, E> {
        if self.previous == NO_NODE && key == NUMBER_TOKEN {
            return Ok(NUMBER_KEY);
        }
        let state = &mut *self.scan.state;
        let node = state.next_child(self.parent, self.previous, key);
        let node_ref = &mut state.nodes[node as usize];
        if node_ref.odd {
            return Err(fallback("a key serde_json treats specially"));
        }
        if node_ref.seen == self.scan.serial {
            return Err(fallback("a key twice in one object"));
        }
        node_ref.seen = self.scan.serial;
        Ok(node)
    }
}

/// One key out of a fixed list: its index.
struct FixedKey(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FixedKey {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FixedKey {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "one of {:?}", self.0)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|known| *known == key)
            .ok_or_else(|| fallback("an undocumented contact_inboxes field"))
    }
}

/// One `contact_inboxes` item: a row of `contact_inboxes`.
struct LinkSeed<'w, 'a>(&'w mut ContactScan<'a>);

impl<'de> DeserializeSeed<'de> for LinkSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LinkSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a contact_inboxes item")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let scan = self.0;
        let serial = scan.state.next_serial();
        scan.links.begin_row();
        // The id is filled in at the end of the contact.
        let contact_id = scan.state.contact_id;
        mark(&mut scan.state.inbox_marks, contact_id, serial)?;
        scan.inboxes.observe_ref(contact_id, CellRef::Int(0));
        let at = scan.links.push(contact_id, CellRef::Int(0));
        scan.state.contact_id_slots.push(at);
        // Each field once: `Value` would keep only the last of two (and an empty second
        // `inbox` would leave no mark to catch it by).
        let mut seen = [false; LINK_KEYS.len()];
        while let Some(key) = map.next_key_seed(FixedKey(LINK_KEYS))? {
            if std::mem::replace(&mut seen[key], true) {
                return Err(fallback("a contact_inboxes field twice"));
            }
            if LINK_KEYS[key] == "inbox" {
                map.next_value_seed(InboxSeed {
                    scan: &mut *scan,
                    serial,
                })?;
            } else {
                let column = scan.state.source_id;
                map.next_value_seed(ScalarSeed {
                    scan: &mut *scan,
                    column,
                    serial,
                })?;
            }
        }
        scan.links.end_row();
        Ok(())
    }
}

/// The `inbox` object of a link.
struct InboxSeed<'w, 'a> {
    scan: &'w mut ContactScan<'a>,
    serial: u32,
}

impl<'de> DeserializeSeed<'de> for InboxSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InboxSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inbox object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(FixedKey(&INBOX_KEYS))? {
            let column = self.scan.state.inbox_fields[key];
            map.next_value_seed(ScalarSeed {
                scan: &mut *self.scan,
                column,
                serial: self.serial,
            })?;
        }
        Ok(())
    }
}

/// A scalar of a link row; objects and arrays there are the general path's business.
struct ScalarSeed<'w, 'a> {
    scan: &'w mut ContactScan<'a>,
    column: u32,
    serial: u32,
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ScalarSeed<'_, '_> {
    fn cell<E: de::Error>(self, cell: Option<CellRef<'_>>) -> Result<(), E> {
        self.scan.link_leaf(self.column, self.serial, cell)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.cell(Some(CellRef::Bool(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.cell(Some(CellRef::Int(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        match i64::try_from(value) {
            Ok(value) => self.cell(Some(CellRef::Int(value))),
            Err(_) => self.cell(Some(CellRef::Json(&value.to_string()))),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        if !value.is_finite() {
            return Err(fallback("a non-finite number"));
        }
        self.cell(Some(CellRef::Float(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.cell(Some(CellRef::Str(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.cell(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.cell(None)
    }

    /// Only a number other than an i64 or u64 (serde_json's marker map); a real object in a
    /// link field is the general path's business.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if map.next_key::<String>()?.as_deref() != Some(NUMBER_TOKEN) {
            return Err(fallback("an object in a contact_inboxes field"));
        }
        let text: String = map.next_value()?;
        self.cell(Some(number_cell(&text)))
    }
}
