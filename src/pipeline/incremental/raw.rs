//! The snapshot's raw contacts: every contact of a complete export as the server sent it, one
//! JSON object a line, zstd-compressed, in `DIR/_chatwoot_export/contacts.raw.ndjson.zst`.
//!
//! Receives contacts' JSON text from the collector (new contacts only, in the order they are
//! kept); emits the compressed file, and reads it back line by line for the next run, which
//! merges it with what changed. The folder's leading `_` keeps it out of data globs
//! (`contacts*.parquet`, Spark and Hive skip `_` names). Inbox credentials that the export
//! drops are dropped here too: the raw file never holds what the tables may not.
//! A checkpoint ends the zstd frame being written and records the file's length (`mark`); a
//! resumed run cuts the file back to it and appends new frames (`resume`). A file of several
//! frames decodes as their concatenation, which `RawReader` reads as one stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::transform::inbox_secrets::InboxSecrets;

pub use crate::store::SNAPSHOT_DIR;
/// The raw contacts' file in it.
pub const RAW_FILE: &str = "contacts.raw.ndjson.zst";
/// The raw contacts' file in the run's work folder, until the run commits.
pub const RAW_WORK: &str = "contacts.raw.ndjson.zst";
/// zstd level: the file is written once a run and read once by the next; speed wins (level 1
/// compresses about twice as fast as 3, for a file about a tenth larger).
const LEVEL: i32 = 1;

/// `SNAPSHOT_DIR/RAW_FILE`, relative to the export's folder.
pub fn raw_path() -> String {
    format!("{SNAPSHOT_DIR}/{RAW_FILE}")
}

/// Appends contacts to a compressed NDJSON file.
pub struct RawWriter {
    /// The frame being written; `None` between a checkpoint's `mark` and the next contact.
    encoder: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    /// The file between frames.
    idle: Option<BufWriter<File>>,
    path: PathBuf,
    contacts: u64,
    /// Bytes of the frames ended so far.
    ended: u64,
}

/// Where a raw file stands at a checkpoint: its length after the last frame ended, and the
/// contacts in those frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawMark {
    pub bytes: u64,
    pub contacts: u64,
}

impl std::fmt::Debug for RawWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWriter")
            .field("path", &self.path)
            .field("contacts", &self.contacts)
            .finish()
    }
}

impl RawWriter {
    /// Writes to `file` (created owner-only by the caller) at `path`.
    pub fn new(file: File, path: PathBuf) -> io::Result<Self> {
        Ok(Self {
            encoder: None,
            idle: Some(BufWriter::new(file)),
            path,
            contacts: 0,
            ended: 0,
        })
    }

    /// Goes on with the file at `path` where `mark` left it: what was written after the mark
    /// (by the run a checkpoint outlived) is cut off, and new contacts go in new frames.
    pub fn resume(path: PathBuf, mark: RawMark) -> io::Result<Self> {
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        if file.metadata()?.len() < mark.bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the raw contacts are shorter than their checkpoint",
            ));
        }
        file.set_len(mark.bytes)?;
        io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        Ok(Self {
            encoder: None,
            idle: Some(BufWriter::new(file)),
            path,
            contacts: mark.contacts,
            ended: mark.bytes,
        })
    }

    /// Ends the frame being written and hands it to the OS: the file up to the returned mark
    /// decodes whole, so a checkpoint can vouch for it.
    pub fn mark(&mut self) -> io::Result<RawMark> {
        if let Some(encoder) = self.encoder.take() {
            let mut buffered = encoder.finish()?;
            buffered.flush()?;
            self.ended = io::Seek::stream_position(buffered.get_mut())?;
            self.idle = Some(buffered);
        }
        Ok(RawMark {
            bytes: self.ended,
            contacts: self.contacts,
        })
    }

    /// The frame being written, started if a mark ended the last one.
    fn encoder(
        &mut self,
    ) -> io::Result<&mut zstd::stream::write::Encoder<'static, BufWriter<File>>> {
        if self.encoder.is_none() {
            let idle = self
                .idle
                .take()
                .ok_or_else(|| io::Error::other("the raw contacts' file went missing"))?;
            self.encoder = Some(zstd::stream::write::Encoder::new(idle, LEVEL)?);
        }
        self.encoder
            .as_mut()
            .ok_or_else(|| io::Error::other("the raw contacts' file went missing"))
    }

    /// Appends one contact's JSON text. `scrub`: the flattener dropped inbox credentials from
    /// this contact, so the same fields go here too.
    pub fn write(&mut self, contact: &str, scrub: bool) -> io::Result<()> {
        self.contacts += 1;
        let encoder = self.encoder()?;
        if scrub && let Some(clean) = scrubbed(contact) {
            encoder.write_all(clean.as_bytes())?;
        } else {
            // Pages hold one contact a span, possibly pretty-printed: one line each here.
            if contact.contains('\n') {
                let value: Value = serde_json::from_str(contact).map_err(io::Error::other)?;
                encoder.write_all(value.to_string().as_bytes())?;
            } else {
                encoder.write_all(contact.as_bytes())?;
            }
        }
        encoder.write_all(b"\n")
    }

    /// Contacts written.
    pub fn contacts(&self) -> u64 {
        self.contacts
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends the stream, flushes and syncs; returns the contacts written.
    pub fn finish(mut self) -> io::Result<u64> {
        // An empty run still writes one (empty) frame: a valid zstd file.
        self.encoder()?;
        let buffered = match self.encoder.take() {
            Some(encoder) => encoder.finish()?,
            None => return Err(io::Error::other("the raw contacts' file went missing")),
        };
        let file = buffered.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        Ok(self.contacts)
    }
}

/// The contact without the inbox fields `InboxSecrets` drops; `None` if it has none (then the
/// text stays as the server sent it, keys in their order).
fn scrubbed(contact: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(contact).ok()?;
    let links = value.get_mut("contact_inboxes")?.as_array_mut()?;
    let mut secrets = InboxSecrets::default();
    for link in links.iter_mut() {
        let clean = secrets.scrub_link(link).into_owned();
        *link = clean;
    }
    if secrets.dropped().values().sum::<u64>() == 0 {
        return None;
    }
    Some(value.to_string())
}

/// Reads a raw file back, one contact's JSON text at a time.
pub struct RawReader {
    lines: io::Lines<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>,
}

impl RawReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        let decoder = zstd::stream::read::Decoder::new(File::open(path)?)?;
        Ok(Self {
            lines: BufReader::new(decoder).lines(),
        })
    }
}

impl Iterator for RawReader {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.lines.next()? {
                Ok(line) if line.trim().is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}

/// What the merge and the checks need of one contact: its id, and its `created_at` and
/// `last_activity_at` in unix seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Key {
    pub id: i64,
    pub created_at: Option<i64>,
    pub last_activity_at: Option<i64>,
}

impl Key {
    /// Reads the key fields of a contact's JSON text (numbers, or RFC 3339 text in forks).
    ///
    /// It stops reading once it has all three: the rest of the contact (its inboxes, most of
    /// its text) is not scanned, which halves what an incremental run spends on keys. serde_json
    /// then reports the unread rest as an error, which is expected and ignored: the fields are
    /// taken from what the visitor kept. A text that is no JSON object, or lacks an integer
    /// `id` before any syntax error, gives `None`.
    pub fn of(contact: &str) -> Option<Self> {
        let mut found = Found::default();
        let mut reader = serde_json::Deserializer::from_str(contact);
        let _ = serde::Deserializer::deserialize_map(&mut reader, KeyVisitor(&mut found));
        Some(Self {
            id: found.id?,
            created_at: found.created_at.as_ref().and_then(seconds),
            last_activity_at: found.last_activity_at.as_ref().and_then(seconds),
        })
    }

    /// The `created_at` day (days since the epoch, UTC).
    pub fn day(&self) -> Option<i64> {
        self.created_at.map(|secs| secs.div_euclid(86_400))
    }
}

/// The key fields as they are read.
#[derive(Default)]
struct Found {
    id: Option<i64>,
    created_at: Option<Value>,
    last_activity_at: Option<Value>,
    /// Key fields seen (present, null or not).
    seen: u8,
}

/// Reads a contact's top-level keys until the three key fields are in `Found`.
struct KeyVisitor<'a>(&'a mut Found);

impl<'de> serde::de::Visitor<'de> for KeyVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a contact object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::IgnoredAny;
        let found = self.0;
        while let Some(name) = map.next_key::<KeyName>()? {
            match name {
                KeyName::Id => found.id = map.next_value::<Option<i64>>()?,
                KeyName::CreatedAt => found.created_at = map.next_value()?,
                KeyName::LastActivityAt => found.last_activity_at = map.next_value()?,
                KeyName::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            }
            found.seen += 1;
            if found.seen == 3 {
                break;
            }
        }
        Ok(())
    }
}

/// A top-level key: one of the key fields, or another.
enum KeyName {
    Id,
    CreatedAt,
    LastActivityAt,
    Other,
}

impl<'de> serde::Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = KeyName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<KeyName, E> {
                Ok(match name {
                    "id" => KeyName::Id,
                    "created_at" => KeyName::CreatedAt,
                    "last_activity_at" => KeyName::LastActivityAt,
                    _ => KeyName::Other,
                })
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

fn seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64)),
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_round_trip_one_a_line_and_secrets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(RAW_FILE);
        let file = File::create(&path).expect("file");
        let mut writer = RawWriter::new(file, path.clone()).expect("writer");
        writer
            .write("{\"id\": 1,\n \"created_at\": 86400}", false)
            .expect("write");
        let secret = r#"{"id":2,"created_at":"1970-01-03T00:00:00Z","last_activity_at":5,"contact_inboxes":[{"source_id":"s","inbox":{"id":1,"imap_password":"fake-secret-x"}}]}"#;
        writer.write(secret, true).expect("write");
        assert_eq!(writer.finish().expect("finish"), 2);
        let lines: Vec<String> = RawReader::open(&path)
            .expect("open")
            .collect::<io::Result<_>>()
            .expect("read");
        assert_eq!(lines.len(), 2);
        assert_eq!(
            Key::of(&lines[0]),
            Some(Key {
                id: 1,
                created_at: Some(86_400),
                last_activity_at: None
            })
        );
        let second = Key::of(&lines[1]).expect("key");
        assert_eq!(second.day(), Some(2));
        assert_eq!(second.last_activity_at, Some(5));
        assert!(!lines[1].contains("fake-secret"), "{}", lines[1]);
        assert!(lines[1].contains("source_id"));
    }

    #[test]
    fn keys_are_read_wherever_they_stand_and_bad_text_has_none() {
        let key = |text: &str| Key::of(text);
        let expected = Some(Key {
            id: 7,
            created_at: Some(100),
            last_activity_at: Some(200),
        });
        // Key fields first (the rest is not read), last, or among nested objects with ids.
        assert_eq!(
            key(
                r#"{"id":7,"created_at":100,"last_activity_at":200,"contact_inboxes":[{"inbox":{"id":9}}]}"#
            ),
            expected
        );
        assert_eq!(
            key(
                r#"{"contact_inboxes":[{"inbox":{"id":9,"created_at":1}}],"last_activity_at":200,"name":"a\"id\"","created_at":100,"id":7}"#
            ),
            expected
        );
        assert_eq!(
            key(r#"{"id":7,"created_at":"1970-01-01T00:01:40Z","last_activity_at":null}"#),
            Some(Key {
                id: 7,
                created_at: Some(100),
                last_activity_at: None
            })
        );
        assert_eq!(key(r#"{"id":7}"#).map(|k| k.created_at), Some(None));
        assert_eq!(key(r#"{"name":"no id"}"#), None);
        assert_eq!(key(r#"{"id":"7"}"#), None);
        assert_eq!(key("[1,2]"), None);
        assert_eq!(key("not json"), None);
    }

    /// A checkpoint ends a frame; a resumed writer cuts what came after it and appends new
    /// frames; the reader reads every frame, in order.
    #[test]
    fn a_resumed_file_reads_back_as_its_frames_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(RAW_FILE);
        let file = File::create(&path).expect("file");
        let mut writer = RawWriter::new(file, path.clone()).expect("writer");
        writer.write(r#"{"id":1}"#, false).expect("write");
        writer.write(r#"{"id":2}"#, false).expect("write");
        let first = writer.mark().expect("mark");
        assert_eq!(first.contacts, 2);
        writer.write(r#"{"id":3}"#, false).expect("write");
        let second = writer.mark().expect("mark");
        assert!(second.bytes > first.bytes, "{first:?} {second:?}");
        // Written after the last checkpoint by a run that was then killed.
        writer.write(r#"{"id":4}"#, false).expect("write");
        drop(writer);
        let mut resumed = RawWriter::resume(path.clone(), second).expect("resume");
        resumed.write(r#"{"id":5}"#, false).expect("write");
        assert_eq!(resumed.finish().expect("finish"), 4);
        let ids: Vec<i64> = RawReader::open(&path)
            .expect("open")
            .map(|line| Key::of(&line.expect("line")).expect("key").id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 5]);
        // A mark past the file's end is refused, not papered over.
        let beyond = RawMark {
            bytes: std::fs::metadata(&path).expect("meta").len() + 1,
            contacts: 9,
        };
        assert!(RawWriter::resume(path, beyond).is_err());
    }
}
