//! Column names and types of one output table, learned over the whole run.
//!
//! Receives every (column name, value) the flattener meets; emits a stable column id per name
//! and, at the end, the final `TableSchema`: columns in their contract order (the declared API
//! fields first, then the rest grouped by prefix and sorted by name) with one type each.
//! Invariant: a column's type only widens (null -> bool/int/timestamp -> float -> string), so
//! every value seen can be written losslessly in the final type: an int column that met an
//! integer beyond 2^53 (`LargeInt`) becomes text rather than float64, and floats are only ever
//! floats whose shortest form is the number sent (`number::number_cell`). A column can also
//! start from a floor that a custom attribute's definition sets (`declare`); `Number`
//! (Decimal128(38, 18) that also takes numbers written as text) and `DateText` (a timestamp from
//! text only) exist only as such floors. A value that does not fit a declared floor widens its
//! column to text and is counted (`kept_as_text`), for the manifest.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::number::{PRECISION, SCALE, decimal_of_cell};
use super::{Cell, CellRef};

/// The type of an output column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Only nulls seen so far; written as string.
    Null,
    Bool,
    Int,
    /// int64 holding an integer beyond ±2^53, which float64 cannot hold: a float makes the
    /// column text instead of float64.
    #[serde(rename = "largeint")]
    LargeInt,
    Float,
    /// Unix seconds or RFC 3339 text; UTC timestamps in Parquet, ISO 8601 text elsewhere.
    Timestamp,
    /// Decimal128(38, 18) for a custom attribute defined as number, currency or percent: JSON
    /// numbers and text that holds one (`"1234.56"`, as the dashboard saves currency and
    /// percent; blank text is null), each exactly. A fixed type whatever the values, so the
    /// schema is the same every night. Only a definition starts a column here; anything it
    /// cannot hold exactly (other text, 21 digits before the point, 19 after it) widens it to
    /// String.
    Number,
    /// A timestamp for a custom attribute defined as date: RFC 3339 text only, as the
    /// dashboard saves it. A number is not guessed at (seconds? milliseconds? 20250301?) and
    /// widens the column to String. Only a definition starts a column here.
    DateText,
    /// Text; values of other kinds are written as their JSON text.
    String,
}

impl ColumnType {
    /// The narrowest type that holds both the current type's values and `cell`.
    pub fn widen(self, cell: &Cell) -> ColumnType {
        self.widen_ref(cell.borrowed())
    }

    /// `widen` for a borrowed cell.
    pub fn widen_ref(self, cell: CellRef<'_>) -> ColumnType {
        use CellRef as C;
        use ColumnType as T;
        match (self, cell) {
            (T::String, _) => T::String,
            (T::Timestamp, C::Int(secs)) if secs_to_micros(secs).is_some() => T::Timestamp,
            (T::Timestamp, C::Str(text)) if parse_timestamp(text).is_some() => T::Timestamp,
            (T::Timestamp, _) => T::String,
            (T::Number, cell) if decimal_of_cell(cell).is_some() => T::Number,
            (T::Number, _) => T::String,
            (T::DateText, C::Str(text)) if parse_timestamp(text).is_some() => T::DateText,
            (T::DateText, _) => T::String,
            (T::Null | T::Bool, C::Bool(_)) => T::Bool,
            (T::Null | T::Int, C::Int(int)) if f64_holds(int) => T::Int,
            (T::Null | T::Int | T::LargeInt, C::Int(_)) => T::LargeInt,
            (T::Null | T::Int | T::Float, C::Float(_)) => T::Float,
            (T::Float, C::Int(int)) if f64_holds(int) => T::Float,
            _ => T::String,
        }
    }

    /// The narrowest type that holds the values of both types: how one column of several
    /// accounts gets one type in a run. Commutative and associative, so every account of a
    /// run arrives at the same types whatever the order.
    pub fn join(self, other: ColumnType) -> ColumnType {
        use ColumnType as T;
        match (self, other) {
            (a, b) if a == b => a,
            (T::Null, other) | (other, T::Null) => other,
            (T::Int, T::LargeInt) | (T::LargeInt, T::Int) => T::LargeInt,
            (T::Int, T::Float) | (T::Float, T::Int) => T::Float,
            // A decimal holds every int64 exactly; a timestamp column takes RFC 3339 text.
            (T::Number, T::Int | T::LargeInt) | (T::Int | T::LargeInt, T::Number) => T::Number,
            (T::Timestamp, T::DateText) | (T::DateText, T::Timestamp) => T::Timestamp,
            _ => T::String,
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Null | ColumnType::String => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int | ColumnType::LargeInt => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Number => DataType::Decimal128(PRECISION, SCALE),
            ColumnType::Timestamp | ColumnType::DateText => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }

    /// The name written in the manifest.
    pub fn manifest_name(self) -> &'static str {
        match self {
            ColumnType::Null | ColumnType::String => "string",
            ColumnType::Bool => "boolean",
            ColumnType::Int | ColumnType::LargeInt => "int64",
            ColumnType::Float => "float64",
            ColumnType::Number => "decimal(38,18)",
            ColumnType::Timestamp | ColumnType::DateText => "timestamp",
        }
    }
}

/// Microseconds since the epoch of unix seconds, if that is a time every writer can print
/// (chrono's range, about ±262,000 years); a bigger number stays a number, in a string column.
pub fn secs_to_micros(secs: i64) -> Option<i64> {
    secs.checked_mul(1_000_000)
        .filter(|micros| chrono::DateTime::from_timestamp_micros(*micros).is_some())
}

/// Microseconds since the epoch of an RFC 3339 timestamp, as some Chatwoot forks send.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// A `created_at` cell in unix seconds: a number, or RFC 3339 text as some forks send.
pub fn created_at_secs(cell: CellRef<'_>) -> Option<i64> {
    match cell {
        CellRef::Int(secs) => Some(secs),
        CellRef::Str(text) => parse_timestamp(text).map(|micros| micros.div_euclid(1_000_000)),
        _ => None,
    }
}

/// Whether float64 holds `int` exactly (|int| <= 2^53), so an int column may become float64.
fn f64_holds(int: i64) -> bool {
    int.unsigned_abs() <= 1 << 53
}

/// The columns one table has met so far.
#[derive(Clone, Debug)]
pub struct TableShape {
    names: Vec<String>,
    types: Vec<ColumnType>,
    /// The type each column was declared with (`Null`: none); a value that does not fit it is
    /// counted in `kept_as_text`.
    floors: Vec<ColumnType>,
    /// Values that did not fit their column's declared type, so were kept as text.
    kept_as_text: u64,
    ids: HashMap<String, u32>,
    /// How many leading columns are declared API fields, kept in declared order.
    declared: usize,
    /// The state `rollback` returns to: the column count and the types at `mark`.
    marked_len: usize,
    marked_types: Vec<ColumnType>,
    marked_kept_as_text: u64,
    /// Name prefixes that group the other columns, in output order; a name matching none
    /// comes before all groups.
    group_prefixes: &'static [&'static str],
}

impl TableShape {
    /// A shape that starts with the table's declared columns and their types.
    pub fn new(declared: &[(&str, ColumnType)], group_prefixes: &'static [&'static str]) -> Self {
        let mut shape = Self {
            names: Vec::new(),
            types: Vec::new(),
            floors: Vec::new(),
            kept_as_text: 0,
            ids: HashMap::new(),
            declared: declared.len(),
            marked_len: 0,
            marked_types: Vec::new(),
            marked_kept_as_text: 0,
            group_prefixes,
        };
        for (name, ty) in declared {
            let id = shape.intern(name);
            shape.types[id as usize] = *ty;
            shape.floors[id as usize] = *ty;
        }
        shape
    }

    /// The id of `name`, registering it (as an all-null column) when new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.types.push(ColumnType::Null);
        self.floors.push(ColumnType::Null);
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// Registers column `name` with type `floor` if it is new (a definition says what the
    /// column holds before any value does); a column already met (or restored from a
    /// checkpoint) keeps its type. Either way values that miss `floor` are counted from now on.
    pub fn declare(&mut self, name: &str, floor: ColumnType) {
        let id = match self.id_of(name) {
            Some(id) => id,
            None => {
                let id = self.intern(name);
                self.types[id as usize] = floor;
                id
            }
        };
        self.floors[id as usize] = floor;
    }

    /// The columns met so far, in id order (what a checkpoint saves).
    pub fn columns(&self) -> Vec<ColumnDef> {
        self.names
            .iter()
            .zip(&self.types)
            .map(|(name, ty)| ColumnDef {
                name: name.clone(),
                ty: *ty,
            })
            .collect()
    }

    /// Puts back columns saved by `columns`, so ids in spilled rows keep their meaning.
    pub fn restore(&mut self, columns: &[ColumnDef]) {
        for column in columns {
            let id = self.intern(&column.name);
            self.types[id as usize] = column.ty;
        }
    }

    /// Adds the columns of the same table in other accounts of the run: new names as new
    /// columns (after every id of this shape, so spilled rows keep their meaning), types joined.
    pub fn merge(&mut self, columns: &[ColumnDef]) {
        for column in columns {
            let id = self.intern(&column.name) as usize;
            self.types[id] = self.types[id].join(column.ty);
        }
    }

    /// The id of `name`, if the column has been met.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// Widens column `id` to hold `cell`.
    pub fn observe(&mut self, id: u32, cell: &Cell) {
        self.observe_ref(id, cell.borrowed());
    }

    /// `observe` for a borrowed cell.
    pub fn observe_ref(&mut self, id: u32, cell: CellRef<'_>) {
        let ty = &mut self.types[id as usize];
        *ty = ty.widen_ref(cell);
        if *ty == ColumnType::String {
            let floor = self.floors[id as usize];
            if !matches!(floor, ColumnType::Null | ColumnType::String)
                && floor.widen_ref(cell) == ColumnType::String
            {
                self.kept_as_text += 1;
            }
        }
    }

    /// Whether column `name` has a declared type other than text, so that `observe` counts a
    /// value kept as text there.
    pub fn has_typed_floor(&self, name: &str) -> bool {
        self.id_of(name).is_some_and(|id| {
            !matches!(
                self.floors[id as usize],
                ColumnType::Null | ColumnType::String
            )
        })
    }

    /// Values met so far that did not fit their column's declared type (a definition's, or the
    /// contract's for API fields), so were kept as text.
    pub fn kept_as_text(&self) -> u64 {
        self.kept_as_text
    }

    /// Remembers the columns and types as they are now, for `rollback`.
    pub fn mark(&mut self) {
        self.marked_len = self.names.len();
        self.marked_types.clone_from(&self.types);
        self.marked_kept_as_text = self.kept_as_text;
    }

    /// Forgets every column registered and every widening done since `mark`: flatten's fast
    /// path gives up on a contact this way before the general path redoes it, so that a
    /// contact leaves the same shape whichever path flattened it.
    pub fn rollback(&mut self) {
        for name in self.names.drain(self.marked_len..) {
            self.ids.remove(&name);
        }
        self.floors.truncate(self.marked_len);
        self.types.clone_from(&self.marked_types);
        self.kept_as_text = self.marked_kept_as_text;
    }

    /// The name of column `id`.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The final schema: declared columns first, then each group sorted by name.
    pub fn finish(&self) -> TableSchema {
        let mut order: Vec<usize> = (0..self.names.len()).collect();
        let group = |name: &str| {
            self.group_prefixes
                .iter()
                .position(|prefix| name.starts_with(prefix))
                .map_or(0, |p| p + 1)
        };
        order[self.declared..].sort_by(|&a, &b| {
            let (a, b) = (&self.names[a], &self.names[b]);
            (group(a), a).cmp(&(group(b), b))
        });
        let mut position_of = vec![0u32; self.names.len()];
        for (position, &id) in order.iter().enumerate() {
            position_of[id] = position as u32;
        }
        let columns: Vec<ColumnDef> = order
            .iter()
            .map(|&id| ColumnDef {
                name: self.names[id].clone(),
                ty: self.types[id],
            })
            .collect();
        let arrow = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow_type(), true))
                .collect::<Vec<_>>(),
        ));
        TableSchema {
            columns,
            position_of,
            arrow,
        }
    }
}

/// One output column.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// A table's final columns.
#[derive(Clone, Debug)]
pub struct TableSchema {
    pub columns: Vec<ColumnDef>,
    /// Output position of each column id of the shape.
    pub position_of: Vec<u32>,
    pub arrow: SchemaRef,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_types_hold_both_and_do_not_depend_on_order() {
        use ColumnType as T;
        let all = [
            T::Null,
            T::Bool,
            T::Int,
            T::LargeInt,
            T::Float,
            T::Timestamp,
            T::Number,
            T::DateText,
            T::String,
        ];
        for a in all {
            assert_eq!(a.join(T::Null), a);
            assert_eq!(a.join(T::String), T::String);
            for b in all {
                assert_eq!(a.join(b), b.join(a), "{a:?} {b:?}");
                for c in all {
                    assert_eq!(a.join(b).join(c), a.join(b.join(c)), "{a:?} {b:?} {c:?}");
                }
            }
        }
        assert_eq!(T::Int.join(T::Float), T::Float);
        assert_eq!(
            T::LargeInt.join(T::Float),
            T::String,
            "a float64 loses big ints"
        );
        assert_eq!(T::Number.join(T::Int), T::Number);
        assert_eq!(T::Number.join(T::Float), T::String);
        assert_eq!(T::Bool.join(T::Int), T::String);
        assert_eq!(T::Timestamp.join(T::DateText), T::Timestamp);
    }

    #[test]
    fn merging_another_accounts_columns_keeps_ids_and_orders_the_union() {
        let mut one = TableShape::new(&[("id", ColumnType::Int)], &["c__"]);
        let a = one.intern("c__b");
        one.observe(a, &Cell::Int(1));
        let mut two = TableShape::new(&[("id", ColumnType::Int)], &["c__"]);
        let b = two.intern("c__b");
        two.observe(b, &Cell::Str("x".into()));
        let z = two.intern("c__a");
        two.observe(z, &Cell::Bool(true));
        let mut merged = one.clone();
        merged.merge(&two.columns());
        assert_eq!(merged.id_of("c__b"), Some(a), "ids of the shape stay");
        let schema = merged.finish();
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "c__a", "c__b"]);
        assert_eq!(
            schema.columns[2].ty,
            ColumnType::String,
            "int and text join to text"
        );
        let mut other = two.clone();
        other.merge(&one.columns());
        assert_eq!(
            other.finish().columns,
            schema.columns,
            "both accounts agree"
        );
    }

    #[test]
    fn types_widen_as_the_contract_says() {
        use ColumnType as T;
        let s = || Cell::Str("x".into());
        let cases: Vec<(T, Cell, T)> = vec![
            (T::Null, Cell::Bool(true), T::Bool),
            (T::Bool, Cell::Bool(false), T::Bool),
            (T::Null, Cell::Int(1), T::Int),
            (T::Int, Cell::Float(1.5), T::Float),
            (T::Float, Cell::Int(2), T::Float),
            (T::Int, s(), T::String),
            (T::Bool, Cell::Int(1), T::String),
            (T::Null, Cell::Json("{}".into()), T::String),
            (T::String, Cell::Int(1), T::String),
            (T::Timestamp, Cell::Int(1_700_000_000), T::Timestamp),
            // Found by tests/it/robustness.rs: written as null before.
            (T::Timestamp, Cell::Int(i64::MAX / 1000), T::String),
            (
                T::Timestamp,
                Cell::Str("2024-01-02T03:04:05Z".into()),
                T::Timestamp,
            ),
            (T::Timestamp, s(), T::String),
            (T::Timestamp, Cell::Float(1.5), T::String),
            (T::Number, Cell::Int(3), T::Number),
            (T::Number, Cell::Int(i64::MIN), T::Number),
            (T::Number, Cell::Float(2.5), T::Number),
            (T::Number, Cell::Str(" 1234.56 ".into()), T::Number),
            (T::Number, Cell::Str("".into()), T::Number),
            (
                T::Number,
                Cell::Json("18446744073709551616".into()),
                T::Number,
            ),
            (T::Number, Cell::Str("1,234".into()), T::String),
            (T::Number, Cell::Str("NaN".into()), T::String),
            (T::Number, Cell::Bool(true), T::String),
            // Held by no Decimal128(38, 18): text rather than rounded.
            (T::Number, Cell::Float(1e25), T::String),
            (
                T::Number,
                Cell::Str("0.1234567890123456789".into()),
                T::String,
            ),
            (T::Number, Cell::Json("{}".into()), T::String),
            // Integers beyond 2^53 never meet a float64 column.
            (T::Null, Cell::Int(9_007_199_254_740_993), T::LargeInt),
            (T::Int, Cell::Int(-9_007_199_254_740_993), T::LargeInt),
            (T::LargeInt, Cell::Int(1), T::LargeInt),
            (T::LargeInt, Cell::Float(1.5), T::String),
            (T::Float, Cell::Int(9_007_199_254_740_992), T::Float),
            (T::Float, Cell::Int(9_007_199_254_740_993), T::String),
            (T::Int, Cell::Json("9223372036854775808".into()), T::String),
            (
                T::DateText,
                Cell::Str("2025-03-01T00:00:00.000Z".into()),
                T::DateText,
            ),
            (T::DateText, Cell::Int(1_700_000_000), T::String),
            (T::DateText, s(), T::String),
        ];
        for (from, cell, to) in cases {
            assert_eq!(from.widen(&cell), to, "{from:?} + {cell:?}");
        }
    }

    #[test]
    fn values_that_miss_a_declared_type_are_counted() {
        let mut shape = TableShape::new(&[("blocked", ColumnType::Bool)], &[]);
        shape.declare("price", ColumnType::Number);
        let (blocked, price) = (0, shape.id_of("price").expect("declared"));
        let free = shape.intern("free");
        shape.observe(blocked, &Cell::Bool(true));
        shape.observe(price, &Cell::Str("12.50".into()));
        shape.observe(free, &Cell::Int(1));
        shape.observe(free, &Cell::Str("x".into()));
        assert_eq!(shape.kept_as_text(), 0, "inferred columns widen silently");
        shape.mark();
        shape.observe(price, &Cell::Str("soon".into()));
        shape.observe(price, &Cell::Int(3));
        shape.observe(price, &Cell::Str("later".into()));
        shape.observe(blocked, &Cell::Str("yes".into()));
        assert_eq!(shape.kept_as_text(), 3);
        shape.rollback();
        assert_eq!(shape.kept_as_text(), 0, "a rollback forgets them");
    }

    #[test]
    fn a_declared_floor_applies_only_to_new_columns() {
        let mut shape = TableShape::new(&[("id", ColumnType::Int)], &[]);
        let seen = shape.intern("seen");
        shape.observe(seen, &Cell::Str("x".into()));
        shape.declare("seen", ColumnType::Number);
        shape.declare("defined", ColumnType::Number);
        let defined = shape.id_of("defined").expect("declared");
        shape.observe(defined, &Cell::Int(4));
        let types: Vec<ColumnType> = shape.columns().into_iter().map(|c| c.ty).collect();
        assert_eq!(
            types,
            [ColumnType::Int, ColumnType::String, ColumnType::Number]
        );
    }

    #[test]
    fn declared_columns_lead_then_groups_sorted_by_name() {
        let mut shape = TableShape::new(
            &[("id", ColumnType::Int), ("name", ColumnType::String)],
            &["a__", "c__"],
        );
        for name in ["c__b", "a__z", "zeta", "a__b", "c__a", "alpha"] {
            shape.intern(name);
        }
        let names: Vec<String> = shape.finish().columns.into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "id", "name", "alpha", "zeta", "a__b", "a__z", "c__a", "c__b"
            ]
        );
    }

    #[test]
    fn rollback_forgets_columns_and_widenings_since_mark() {
        let mut shape = TableShape::new(&[("id", ColumnType::Int)], &[]);
        let a = shape.intern("a");
        shape.observe(a, &Cell::Int(1));
        shape.mark();
        shape.observe(a, &Cell::Str("x".into()));
        let b = shape.intern("b");
        shape.observe(b, &Cell::Bool(true));
        shape.rollback();
        assert_eq!(shape.len(), 2);
        let columns = shape.finish().columns;
        assert_eq!(columns[1].ty, ColumnType::Int);
        assert_eq!(shape.intern("b"), b, "the id is free again");
    }

    #[test]
    fn position_of_maps_ids_to_output_positions() {
        let mut shape = TableShape::new(&[("id", ColumnType::Int)], &[]);
        let b = shape.intern("b");
        let a = shape.intern("a");
        let schema = shape.finish();
        assert_eq!(schema.position_of[a as usize], 1);
        assert_eq!(schema.position_of[b as usize], 2);
    }
}
