//! Column names and types of one output table, learned over the whole run.
//!
//! Receives every (column name, value) the flattener meets; emits a stable column id per name
//! and, at the end, the final `TableSchema`: columns in their contract order (the declared API
//! fields first, then the rest grouped by prefix and sorted by name) with one type each.
//! Invariant: a column's type only widens (null -> bool/int/timestamp -> float -> string), so
//! every value seen can be written losslessly in the final type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::Cell;

/// The type of an output column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Only nulls seen so far; written as string.
    Null,
    Bool,
    Int,
    Float,
    /// Unix seconds or RFC 3339 text; UTC timestamps in Parquet, ISO 8601 text elsewhere.
    Timestamp,
    /// Text; values of other kinds are written as their JSON text.
    String,
}

impl ColumnType {
    /// The narrowest type that holds both the current type's values and `cell`.
    pub fn widen(self, cell: &Cell) -> ColumnType {
        use ColumnType as T;
        match (self, cell) {
            (T::String, _) => T::String,
            (T::Timestamp, Cell::Int(secs)) if secs_to_micros(*secs).is_some() => T::Timestamp,
            (T::Timestamp, Cell::Str(text)) if parse_timestamp(text).is_some() => T::Timestamp,
            (T::Timestamp, _) => T::String,
            (T::Null | T::Bool, Cell::Bool(_)) => T::Bool,
            (T::Null | T::Int, Cell::Int(_)) => T::Int,
            (T::Null | T::Int | T::Float, Cell::Int(_) | Cell::Float(_)) => T::Float,
            _ => T::String,
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Null | ColumnType::String => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// The name written in the manifest.
    pub fn manifest_name(self) -> &'static str {
        match self {
            ColumnType::Null | ColumnType::String => "string",
            ColumnType::Bool => "boolean",
            ColumnType::Int => "int64",
            ColumnType::Float => "float64",
            ColumnType::Timestamp => "timestamp",
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

/// The columns one table has met so far.
#[derive(Debug)]
pub struct TableShape {
    names: Vec<String>,
    types: Vec<ColumnType>,
    ids: HashMap<String, u32>,
    /// How many leading columns are declared API fields, kept in declared order.
    declared: usize,
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
            ids: HashMap::new(),
            declared: declared.len(),
            group_prefixes,
        };
        for (name, ty) in declared {
            let id = shape.intern(name);
            shape.types[id as usize] = *ty;
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
        self.ids.insert(name.to_owned(), id);
        id
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

    /// The id of `name`, if the column has been met.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// Widens column `id` to hold `cell`.
    pub fn observe(&mut self, id: u32, cell: &Cell) {
        let ty = &mut self.types[id as usize];
        *ty = ty.widen(cell);
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
        ];
        for (from, cell, to) in cases {
            assert_eq!(from.widen(&cell), to, "{from:?} + {cell:?}");
        }
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
    fn position_of_maps_ids_to_output_positions() {
        let mut shape = TableShape::new(&[("id", ColumnType::Int)], &[]);
        let b = shape.intern("b");
        let a = shape.intern("a");
        let schema = shape.finish();
        assert_eq!(schema.position_of[a as usize], 1);
        assert_eq!(schema.position_of[b as usize], 2);
    }
}
