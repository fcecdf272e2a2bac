//! Rows on disk between the fetch and the write.
//!
//! Receives sparse rows as the pages arrive; emits them again, in the same order, once the
//! tables' final schemas are known. This is what keeps memory flat whatever the account's
//! size: no contact stays in memory after its page is flattened.
//!
//! Format: per row a u32 byte length of the rest, a u32 cell count, then per cell a u32 column
//! id, a one-byte tag and the value (bool: 1 byte; int and float: 8 bytes; text: u32 length and
//! UTF-8), all little-endian. The length prefix lets the reader take a row in one read and
//! decode it from memory, borrowing its text instead of allocating a string per cell.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{CellRef, Row};

const TAG_BOOL: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_STR: u8 = 3;
const TAG_JSON: u8 = 4;

/// Rows encoded in the spill format, built cell by cell in a reusable buffer.
#[derive(Debug, Default)]
pub struct RowBuffer {
    bytes: Vec<u8>,
    rows: u64,
    /// Where the open row starts, and how many cells it has so far.
    row_start: usize,
    cells: u32,
}

impl RowBuffer {
    /// Empties the buffer, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows = 0;
    }

    /// Opens a row; cells go to it until `end_row`.
    pub fn begin_row(&mut self) {
        self.row_start = self.bytes.len();
        self.cells = 0;
        // Length and cell count, filled in by `end_row`.
        self.bytes.extend_from_slice(&[0; 8]);
    }

    /// Adds a cell to the open row; returns where its 8-byte value starts when it is an int
    /// or a float, so that the caller can `patch_int` it later.
    pub fn push(&mut self, column: u32, cell: CellRef<'_>) -> usize {
        self.cells += 1;
        self.bytes.extend_from_slice(&column.to_le_bytes());
        match cell {
            CellRef::Bool(b) => self.bytes.extend_from_slice(&[TAG_BOOL, u8::from(b)]),
            CellRef::Int(i) => {
                self.bytes.push(TAG_INT);
                self.bytes.extend_from_slice(&i.to_le_bytes());
            }
            CellRef::Float(f) => {
                self.bytes.push(TAG_FLOAT);
                self.bytes.extend_from_slice(&f.to_le_bytes());
            }
            CellRef::Str(text) => self.push_text(TAG_STR, text),
            CellRef::Json(text) => self.push_text(TAG_JSON, text),
        }
        self.bytes.len() - 8
    }

    fn push_text(&mut self, tag: u8, text: &str) {
        self.bytes.push(tag);
        // A value of 4 GiB or more does not fit an HTTP page anyway; saturate rather than wrap
        // so that the reader reports it instead of reading garbage.
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Overwrites the int written by `push` at `at`.
    pub fn patch_int(&mut self, at: usize, value: i64) {
        self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Closes the open row.
    pub fn end_row(&mut self) {
        let len = (self.bytes.len() - self.row_start - 4) as u32;
        self.bytes[self.row_start..self.row_start + 4].copy_from_slice(&len.to_le_bytes());
        self.bytes[self.row_start + 4..self.row_start + 8]
            .copy_from_slice(&self.cells.to_le_bytes());
        self.rows += 1;
    }

    /// Adds a whole row. Of two cells of one column (the general flatten path can make them
    /// from keys like `a__b` and `a: {b}`) only the later is kept, as a batch would keep it:
    /// a spilled row has at most one cell per column.
    pub fn push_row(&mut self, row: &Row) {
        self.begin_row();
        for (index, (column, cell)) in row.iter().enumerate() {
            if !row[index + 1..].iter().any(|(later, _)| later == column) {
                self.push(*column, cell.borrowed());
            }
        }
        self.end_row();
    }

    /// Closed rows in the buffer.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The closed rows, each in the spill format.
    pub fn rows_iter(&self) -> impl Iterator<Item = EncodedRow<'_>> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let row = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            Some(EncodedRow { bytes: row })
        })
    }
}

/// A spilled cell whose text is still bytes: the batch builder checks a whole column's text
/// at once (one UTF-8 check per column per batch instead of one per value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RawCell<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Json(&'a [u8]),
}

impl<'a> RawCell<'a> {
    /// The cell with its text checked to be UTF-8.
    pub fn checked(self) -> io::Result<CellRef<'a>> {
        let text = |raw| {
            std::str::from_utf8(raw).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
        };
        Ok(match self {
            RawCell::Bool(b) => CellRef::Bool(b),
            RawCell::Int(i) => CellRef::Int(i),
            RawCell::Float(f) => CellRef::Float(f),
            RawCell::Str(raw) => CellRef::Str(text(raw)?),
            RawCell::Json(raw) => CellRef::Json(text(raw)?),
        })
    }
}

/// One row in the spill format (cell count and cells, without the length prefix).
#[derive(Clone, Copy, Debug)]
pub struct EncodedRow<'a> {
    bytes: &'a [u8],
}

impl<'a> EncodedRow<'a> {
    /// Each cell's column and the offset at which `cell_at` decodes it.
    pub fn cell_offsets(self) -> impl Iterator<Item = io::Result<(u32, usize)>> + 'a {
        let count = self
            .bytes
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        let bytes = self.bytes;
        let mut at = 4;
        (0..count).map(move |_| {
            let column = read_u32(bytes, at)?;
            let tag = *bytes.get(at + 4).ok_or_else(truncated)?;
            let value_len = match tag {
                TAG_BOOL => 1,
                TAG_INT | TAG_FLOAT => 8,
                TAG_STR | TAG_JSON => 4 + read_u32(bytes, at + 5)? as usize,
                other => return Err(bad_tag(other)),
            };
            let cell = at + 4;
            at = cell + 1 + value_len;
            if at > bytes.len() {
                return Err(truncated());
            }
            Ok((column, cell))
        })
    }

    /// The cell whose tag is at `offset` (from `cell_offsets`).
    pub fn cell_at(self, offset: usize) -> io::Result<CellRef<'a>> {
        self.raw_cell_at(offset)?.checked()
    }

    /// The cell whose tag is at `offset`, its text not yet checked to be UTF-8.
    pub fn raw_cell_at(self, offset: usize) -> io::Result<RawCell<'a>> {
        let bytes = self.bytes;
        let value = offset + 1;
        let eight = || -> io::Result<[u8; 8]> {
            let slice = bytes.get(value..value + 8).ok_or_else(truncated)?;
            Ok(slice.try_into().unwrap_or_default())
        };
        Ok(match *bytes.get(offset).ok_or_else(truncated)? {
            TAG_BOOL => RawCell::Bool(*bytes.get(value).ok_or_else(truncated)? != 0),
            TAG_INT => RawCell::Int(i64::from_le_bytes(eight()?)),
            TAG_FLOAT => RawCell::Float(f64::from_le_bytes(eight()?)),
            tag @ (TAG_STR | TAG_JSON) => {
                let len = read_u32(bytes, value)? as usize;
                let raw = bytes
                    .get(value + 4..value + 4 + len)
                    .ok_or_else(truncated)?;
                if tag == TAG_STR {
                    RawCell::Str(raw)
                } else {
                    RawCell::Json(raw)
                }
            }
            other => return Err(bad_tag(other)),
        })
    }

    /// The row's cells, their text not yet checked to be UTF-8.
    pub fn raw_cells(self) -> impl Iterator<Item = io::Result<(u32, RawCell<'a>)>> + 'a {
        self.cell_offsets()
            .map(move |item| item.and_then(|(column, at)| Ok((column, self.raw_cell_at(at)?))))
    }
    /// The row's cells, decoded.
    pub fn cells(self) -> impl Iterator<Item = io::Result<(u32, CellRef<'a>)>> + 'a {
        self.cell_offsets()
            .map(move |item| item.and_then(|(column, at)| Ok((column, self.cell_at(at)?))))
    }

    /// The row as owned cells.
    pub fn to_row(self) -> io::Result<Row> {
        self.cells()
            .map(|item| item.map(|(column, cell)| (column, cell.into_cell())))
            .collect()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> io::Result<u32> {
    let slice = bytes.get(at..at + 4).ok_or_else(truncated)?;
    Ok(u32::from_le_bytes(slice.try_into().unwrap_or_default()))
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a spilled row is cut short")
}

fn bad_tag(tag: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unknown spill tag {tag}"),
    )
}

/// Appends rows to a spill file.
pub struct SpillWriter {
    out: BufWriter<File>,
    rows: u64,
    /// Bytes written so far (a checkpoint's position in the file).
    bytes: u64,
    /// For `write_row`.
    scratch: RowBuffer,
}

impl SpillWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self::new(File::create(path)?))
    }

    /// Writes to a file the caller created (owner-only, in the output's work folder).
    pub fn new(file: File) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
            rows: 0,
            bytes: 0,
            scratch: RowBuffer::default(),
        }
    }

    /// Reopens a spill to go on after a checkpoint: cuts whatever was written after it (an
    /// interrupted run may have written more) and appends from there.
    pub fn resume(path: &Path, bytes: u64, rows: u64) -> io::Result<Self> {
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() < bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spill is shorter than its checkpoint",
            ));
        }
        file.set_len(bytes)?;
        io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            rows,
            bytes,
            scratch: RowBuffer::default(),
        })
    }

    /// Bytes written so far (a checkpoint's position in the file).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hands everything written so far to the OS, so a checkpoint can vouch for it.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Appends every row of `rows`.
    pub fn write(&mut self, rows: &RowBuffer) -> io::Result<()> {
        self.out.write_all(&rows.bytes)?;
        self.rows += rows.rows;
        self.bytes += rows.bytes.len() as u64;
        Ok(())
    }

    /// Appends one row.
    pub fn write_row(&mut self, row: &Row) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push_row(row);
        let written = self.write(&scratch);
        self.scratch = scratch;
        written
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes to the OS and returns how many rows were written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.out.flush()?;
        Ok(self.rows)
    }
}

/// Reads back the rows of a spill file, in order.
pub struct SpillReader {
    input: BufReader<File>,
    row: Vec<u8>,
}

impl SpillReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            input: BufReader::with_capacity(1 << 20, File::open(path)?),
            row: Vec::new(),
        })
    }

    /// The next row, or `None` at the end of the file. The row borrows the reader's buffer.
    pub fn next_row(&mut self) -> io::Result<Option<EncodedRow<'_>>> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
        }
        self.row.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(&mut self.row)?;
        Ok(Some(EncodedRow { bytes: &self.row }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Cell;

    #[test]
    fn rows_round_trip_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.spill");
        let rows: Vec<Row> = vec![
            vec![
                (0, Cell::Int(-5)),
                (3, Cell::Str("שלום, \"x\"\n".into())),
                (9, Cell::Bool(true)),
            ],
            vec![],
            vec![
                (1, Cell::Float(2.5)),
                (2, Cell::Json("{\"a\":[1]}".into())),
                (4, Cell::Bool(false)),
                (5, Cell::Str(String::new())),
            ],
        ];
        let mut writer = SpillWriter::create(&path).expect("create");
        writer.write_row(&rows[0]).expect("write");
        let mut buffer = RowBuffer::default();
        buffer.push_row(&rows[1]);
        buffer.push_row(&rows[2]);
        writer.write(&buffer).expect("write");
        let bytes = writer.bytes();
        assert_eq!(writer.finish().expect("finish"), 3);
        assert_eq!(std::fs::metadata(&path).expect("spill").len(), bytes);
        let mut reader = SpillReader::open(&path).expect("open");
        let mut back = Vec::new();
        while let Some(row) = reader.next_row().expect("read") {
            back.push(row.to_row().expect("decodes"));
        }
        assert_eq!(back, rows);
    }

    #[test]
    fn resume_cuts_what_came_after_the_checkpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.spill");
        let mut writer = SpillWriter::create(&path).expect("create");
        writer.write_row(&vec![(0, Cell::Int(1))]).expect("write");
        let (bytes, rows) = (writer.bytes(), writer.rows());
        writer.write_row(&vec![(0, Cell::Int(2))]).expect("write");
        writer.finish().expect("finish");
        let mut writer = SpillWriter::resume(&path, bytes, rows).expect("resume");
        writer.write_row(&vec![(0, Cell::Int(3))]).expect("write");
        writer.finish().expect("finish");
        let mut reader = SpillReader::open(&path).expect("open");
        let mut ids = Vec::new();
        while let Some(row) = reader.next_row().expect("read") {
            ids.push(row.to_row().expect("decodes")[0].1.clone());
        }
        assert_eq!(ids, [Cell::Int(1), Cell::Int(3)]);
    }

    #[test]
    fn a_patched_int_reads_back() {
        let mut buffer = RowBuffer::default();
        buffer.begin_row();
        let at = buffer.push(0, CellRef::Int(0));
        buffer.push(1, CellRef::Str("x"));
        buffer.end_row();
        buffer.patch_int(at, 42);
        let rows: Vec<Row> = buffer
            .rows_iter()
            .map(|row| row.to_row().expect("decodes"))
            .collect();
        assert_eq!(
            rows,
            vec![vec![(0, Cell::Int(42)), (1, Cell::Str("x".into()))]]
        );
    }

    #[test]
    fn a_damaged_row_is_an_error_not_a_panic() {
        let mut buffer = RowBuffer::default();
        buffer.push_row(&vec![(0, Cell::Str("hello".into()))]);
        let row = buffer.rows_iter().next().expect("one row");
        for cut in 0..row.bytes.len() {
            let damaged = EncodedRow {
                bytes: &row.bytes[..cut],
            };
            assert!(damaged.to_row().is_err() || cut < 4, "cut at {cut}");
        }
        let mut bad = row.bytes.to_vec();
        bad[8] = 99;
        assert!(EncodedRow { bytes: &bad }.to_row().is_err());
    }
}
