//! Rows on disk between the fetch and the write.
//!
//! Receives sparse rows as the pages arrive; emits them again, in the same order, once the
//! tables' final schemas are known. This is what keeps memory flat whatever the account's
//! size: no contact stays in memory after its page is flattened.
//!
//! Format: per row a u32 cell count, then per cell a u32 column id, a one-byte tag and the
//! value (bool: 1 byte; int and float: 8 bytes little-endian; text: u32 length and UTF-8).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{Cell, Row};

const TAG_BOOL: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_STR: u8 = 3;
const TAG_JSON: u8 = 4;

/// Appends rows to a spill file.
pub struct SpillWriter {
    out: BufWriter<File>,
    rows: u64,
    bytes: u64,
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

    pub fn write_row(&mut self, row: &Row) -> io::Result<()> {
        self.bytes += 4 + row
            .iter()
            .map(|(_, cell)| 5 + encoded_len(cell))
            .sum::<u64>();
        self.out.write_all(&(row.len() as u32).to_le_bytes())?;
        for (column, cell) in row {
            self.out.write_all(&column.to_le_bytes())?;
            match cell {
                Cell::Bool(b) => self.out.write_all(&[TAG_BOOL, u8::from(*b)])?,
                Cell::Int(i) => {
                    self.out.write_all(&[TAG_INT])?;
                    self.out.write_all(&i.to_le_bytes())?;
                }
                Cell::Float(f) => {
                    self.out.write_all(&[TAG_FLOAT])?;
                    self.out.write_all(&f.to_le_bytes())?;
                }
                Cell::Str(text) => self.write_text(TAG_STR, text)?,
                Cell::Json(text) => self.write_text(TAG_JSON, text)?,
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn write_text(&mut self, tag: u8, text: &str) -> io::Result<()> {
        let len =
            u32::try_from(text.len()).map_err(|_| io::Error::other("a value longer than 4 GiB"))?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(text.as_bytes())
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

/// Bytes a cell's value takes after its column id and tag.
fn encoded_len(cell: &Cell) -> u64 {
    match cell {
        Cell::Bool(_) => 1,
        Cell::Int(_) | Cell::Float(_) => 8,
        Cell::Str(text) | Cell::Json(text) => 4 + text.len() as u64,
    }
}

/// Reads back the rows of a spill file, in order.
pub struct SpillReader {
    input: BufReader<File>,
}

impl SpillReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            input: BufReader::with_capacity(1 << 20, File::open(path)?),
        })
    }

    /// Reads the next row into `row`; false at the end of the file.
    pub fn next_row(&mut self, row: &mut Row) -> io::Result<bool> {
        row.clear();
        let mut count = [0u8; 4];
        match self.input.read_exact(&mut count) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(err) => return Err(err),
        }
        for _ in 0..u32::from_le_bytes(count) {
            let column = self.read_u32()?;
            let mut tag = [0u8; 1];
            self.input.read_exact(&mut tag)?;
            let cell = match tag[0] {
                TAG_BOOL => {
                    self.input.read_exact(&mut tag)?;
                    Cell::Bool(tag[0] != 0)
                }
                TAG_INT => Cell::Int(i64::from_le_bytes(self.read_8()?)),
                TAG_FLOAT => Cell::Float(f64::from_le_bytes(self.read_8()?)),
                TAG_STR => Cell::Str(self.read_text()?),
                TAG_JSON => Cell::Json(self.read_text()?),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown spill tag {other}"),
                    ));
                }
            };
            row.push((column, cell));
        }
        Ok(true)
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let mut bytes = [0u8; 4];
        self.input.read_exact(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn read_8(&mut self) -> io::Result<[u8; 8]> {
        let mut bytes = [0u8; 8];
        self.input.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    fn read_text(&mut self) -> io::Result<String> {
        let len = self.read_u32()? as usize;
        let mut bytes = vec![0u8; len];
        self.input.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ],
        ];
        let mut writer = SpillWriter::create(&path).expect("create");
        for row in &rows {
            writer.write_row(row).expect("write");
        }
        let bytes = writer.bytes();
        assert_eq!(writer.finish().expect("finish"), 3);
        assert_eq!(std::fs::metadata(&path).expect("spill").len(), bytes);
        let mut reader = SpillReader::open(&path).expect("open");
        let mut back = Vec::new();
        let mut row = Row::new();
        while reader.next_row(&mut row).expect("read") {
            back.push(row.clone());
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
        let mut row = Row::new();
        let mut ids = Vec::new();
        while reader.next_row(&mut row).expect("read") {
            ids.push(row[0].1.clone());
        }
        assert_eq!(ids, [Cell::Int(1), Cell::Int(3)]);
    }
}
