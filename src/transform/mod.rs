//! From API contacts to typed columnar batches.
//!
//! `flatten` turns one contact into a sparse `Row` for `contacts` and one per inbox link for
//! `contact_inboxes` (without the credentials old servers embed there: `inbox_secrets`),
//! registering every column it meets in a `TableShape` (`schema`), which
//! widens each column's type over the whole run. Rows go to disk (`spill`) during the fetch;
//! once the walk is over the shapes are final, and `batch` reads the rows back into Arrow
//! record batches with one schema per table.

pub mod batch;
pub mod flatten;
pub mod inbox_secrets;
pub mod schema;
pub mod spill;

/// One value of a flattened row. A null is the absence of a cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// An object, an array or a number outside i64, kept as its JSON text.
    Json(String),
}

/// A sparse row: (column id in its table's shape, value). Columns absent from it are null.
pub type Row = Vec<(u32, Cell)>;
