//! From API contacts to typed columnar batches.
//!
//! `flatten` turns one contact into a sparse `Row` for `contacts` and one per inbox link for
//! `contact_inboxes` (without the credentials old servers embed there: `inbox_secrets`),
//! registering every column it meets in a `TableShape` (`schema`), which
//! widens each column's type over the whole run. Rows go to disk (`spill`) during the fetch;
//! once the walk is over the shapes are final, and `batch` reads the rows back into Arrow
//! record batches with one schema per table. `stream` is flatten's fast path: a contact's JSON
//! text straight to spill-encoded rows, with no `serde_json::Value` in between.

pub mod batch;
pub mod column_names;
pub mod deep;
pub mod flatten;
pub mod inbox_secrets;
pub mod number;
pub mod schema;
pub mod spill;
mod stream;

/// One value of a flattened row. A null is the absence of a cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// An object, an array, or a number that neither i64 nor f64 holds exactly, kept as its
    /// JSON text (for a number: the digits the server sent).
    Json(String),
}

impl Cell {
    /// The cell as a borrowed value.
    pub fn borrowed(&self) -> CellRef<'_> {
        match self {
            Cell::Bool(b) => CellRef::Bool(*b),
            Cell::Int(i) => CellRef::Int(*i),
            Cell::Float(f) => CellRef::Float(*f),
            Cell::Str(s) => CellRef::Str(s),
            Cell::Json(s) => CellRef::Json(s),
        }
    }
}

/// A `Cell` whose text is borrowed (from a page's JSON text or a spill buffer), so that the hot
/// path allocates nothing per value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellRef<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Json(&'a str),
}

impl CellRef<'_> {
    /// The cell as an owned value.
    pub fn into_cell(self) -> Cell {
        match self {
            CellRef::Bool(b) => Cell::Bool(b),
            CellRef::Int(i) => Cell::Int(i),
            CellRef::Float(f) => Cell::Float(f),
            CellRef::Str(s) => Cell::Str(s.to_owned()),
            CellRef::Json(s) => Cell::Json(s.to_owned()),
        }
    }
}

/// A sparse row: (column id in its table's shape, value). Columns absent from it are null.
pub type Row = Vec<(u32, Cell)>;
