//! The list API's response body: `{"meta": {"count": N, "current_page": "2"}, "payload": [...]}`.
//!
//! Lenient where real servers differ: `current_page` may be a string or an integer (it is not
//! needed), `count` may be a number or a numeric string or missing, extra meta keys (one
//! white-label host sends `contacts_all`) are ignored, and contacts stay raw JSON so unknown
//! fields reach the flattener.
//!
//! Each contact is kept as its JSON text: the flattener reads each contact once, straight into
//! rows, and checks it fully as it goes (serde_json, contact by contact). The page itself is
//! split by a structural scan that tracks only strings and brackets: checking every contact's
//! grammar here too, as `RawValue` does, cost a fifth of the whole export's CPU. What the scan
//! does not check is checked when the contact is flattened, and reported the same way (`page N
//! is not a valid contacts page`). Anything unusual at the page level (an escaped or repeated
//! top-level key, a missing `payload`, unbalanced brackets, trailing text) goes to serde_json,
//! whose verdict and error message then stand.

use std::ops::Range;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One page of contacts.
#[derive(Debug)]
pub struct ContactsPage {
    pub meta: Meta,
    /// The contacts, each as the JSON text the server sent.
    pub payload: Contacts,
}

/// The contacts of a page, each as its JSON text.
#[derive(Debug, Default)]
pub struct Contacts {
    text: String,
    spans: Vec<Range<usize>>,
}

impl Contacts {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each contact's JSON text, in page order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|span| &self.text[span.clone()])
    }
}

impl<'a> IntoIterator for &'a Contacts {
    type Item = &'a str;
    type IntoIter = Box<dyn Iterator<Item = &'a str> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// The page as serde_json reads it: the reference for anything the scan leaves to it.
#[derive(Deserialize)]
struct SerdePage {
    #[serde(default)]
    meta: Meta,
    payload: Vec<Box<RawValue>>,
}

impl ContactsPage {
    /// Parses a response body.
    pub fn from_body(body: &[u8]) -> Result<Self, serde_json::Error> {
        let Ok(text) = std::str::from_utf8(body) else {
            // serde_json reports where the bad byte is.
            return serde_json::from_slice::<SerdePage>(body).map(Self::from_serde);
        };
        match scan(text) {
            Some(page) => Ok(page),
            None => serde_json::from_str::<SerdePage>(text).map(Self::from_serde),
        }
    }

    fn from_serde(page: SerdePage) -> Self {
        let mut payload = Contacts::default();
        for contact in &page.payload {
            let start = payload.text.len();
            payload.text.push_str(contact.get());
            payload.spans.push(start..payload.text.len());
        }
        Self {
            meta: page.meta,
            payload,
        }
    }
}

/// Splits a page whose top level is plain `{"meta": {...}, "payload": [...], ...}`; `None`
/// for anything else, which serde_json then judges.
fn scan(text: &str) -> Option<ContactsPage> {
    let bytes = text.as_bytes();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    let (mut meta, mut spans) = (None, None);
    if bytes.get(at) == Some(&b'}') {
        return None;
    }
    loop {
        let key_start = at + 1;
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = find(bytes, key_start, &IN_STRING)?;
        if bytes[key_end] != b'"' {
            return None;
        }
        let key = &text[key_start..key_end];
        at = skip_ws(bytes, key_end + 1);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(bytes, at + 1);
        match key {
            "payload" if spans.is_none() => {
                if bytes.get(at) != Some(&b'[') {
                    return None;
                }
                let mut found = Vec::new();
                at = skip_ws(bytes, at + 1);
                if bytes.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    loop {
                        let end = skip_value(bytes, at)?;
                        if end == at {
                            return None;
                        }
                        found.push(at..end);
                        at = skip_ws(bytes, end);
                        match bytes.get(at) {
                            Some(b',') => at = skip_ws(bytes, at + 1),
                            Some(b']') => {
                                at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                spans = Some(found);
            }
            "meta" if meta.is_none() => {
                let end = skip_value(bytes, at)?;
                meta = Some(serde_json::from_str::<Meta>(&text[at..end]).ok()?);
                at = end;
            }
            "payload" | "meta" => return None,
            _ => {
                // Ignored, as serde ignores unknown fields, but still checked to be JSON.
                let end = skip_value(bytes, at)?;
                serde_json::from_str::<IgnoredAny>(&text[at..end]).ok()?;
                at = end;
            }
        }
        at = skip_ws(bytes, at);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_ws(bytes, at + 1) != bytes.len() {
        return None;
    }
    let spans = spans?;
    let start = spans.first().map_or(0, |span| span.start);
    let end = spans.last().map_or(0, |span| span.end);
    Some(ContactsPage {
        meta: meta.unwrap_or_default(),
        payload: Contacts {
            text: text[start..end].to_owned(),
            spans: spans
                .into_iter()
                .map(|span| span.start - start..span.end - start)
                .collect(),
        },
    })
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Bytes the scan stops at: inside a value only quotes and brackets matter, and inside a
/// string only its closing quote and backslashes. A table lookup per byte is cheaper than a
/// `memchr` call per string for strings as short as a contact's (measured).
const STRUCTURE: [bool; 256] = byte_set(b"\"{}[]");
const IN_STRING: [bool; 256] = byte_set(b"\"\\");
/// Where a top-level scalar ends.
const SCALAR_END: [bool; 256] = byte_set(b",}] \n\r\t");

const fn byte_set(members: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < members.len() {
        set[members[i] as usize] = true;
        i += 1;
    }
    set
}

/// The first index from `at` whose byte is in `set`, or `None`.
fn find(bytes: &[u8], mut at: usize, set: &[bool; 256]) -> Option<usize> {
    while let Some(&b) = bytes.get(at) {
        if set[usize::from(b)] {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// The end of the value starting at `at`, tracking only strings and brackets; `None` if the
/// text ends first.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    let first = *bytes.get(at)?;
    if !matches!(first, b'{' | b'[' | b'"') {
        // A scalar: up to the next separator.
        return Some(find(bytes, at, &SCALAR_END).unwrap_or(bytes.len()));
    }
    let mut depth = 0usize;
    let mut at = at;
    loop {
        match bytes[at] {
            b'"' => {
                at += 1;
                loop {
                    at = find(bytes, at, &IN_STRING)?;
                    if bytes[at] == b'"' {
                        break;
                    }
                    at += 2;
                }
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => depth += 1,
        }
        at += 1;
        if depth == 0 {
            return Some(at);
        }
        at = find(bytes, at, &STRUCTURE)?;
    }
}

/// The page's `meta` object.
#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    /// How many contacts the account lists, at the time of this request.
    #[serde(default, deserialize_with = "lenient_count")]
    pub count: Option<u64>,
}

fn lenient_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_shapes_servers_send() {
        for (body, count) in [
            (
                r#"{"meta":{"count":31,"current_page":"2"},"payload":[{"id":1}]}"#,
                Some(31),
            ),
            (
                r#"{"meta":{"count":31,"current_page":2,"contacts_all":40},"payload":[]}"#,
                Some(31),
            ),
            (r#"{"meta":{"count":"31"},"payload":[]}"#, Some(31)),
            (r#"{"payload":[]}"#, None),
        ] {
            let page = ContactsPage::from_body(body.as_bytes()).expect(body);
            assert_eq!(page.meta.count, count, "{body}");
        }
    }

    #[test]
    fn contacts_keep_their_text() {
        let page = ContactsPage::from_body(r#"{"payload":[{"id":1, "name":"דנה"}, 7]}"#.as_bytes())
            .expect("a page");
        let texts: Vec<&str> = page.payload.iter().collect();
        assert_eq!(texts, [r#"{"id":1, "name":"דנה"}"#, "7"]);
    }

    /// What serde_json makes of a body, as (count, contact texts), or None for an error.
    fn by_serde(body: &str) -> Option<(Option<u64>, Vec<String>)> {
        let page: SerdePage = serde_json::from_str(body).ok()?;
        let texts = page.payload.iter().map(|c| c.get().to_owned()).collect();
        Some((page.meta.count, texts))
    }

    #[test]
    fn the_scan_splits_pages_as_serde_json_does() {
        let account = crate::fake::FakeAccount::new(42, 60);
        let contacts: Vec<String> = (0..60).map(|i| account.contact(i).to_string()).collect();
        let mut bodies: Vec<String> = vec![
            format!(
                r#"{{"meta":{{"count":60,"current_page":"1"}},"payload":[{}]}}"#,
                contacts.join(",")
            ),
            format!(
                r#"{{"payload":[{}],"meta":{{"count":"60"}}}}"#,
                contacts[..15].join(" ,\n ")
            ),
            format!(
                "{{ \"meta\" : {{ \"count\" : 3 }} ,\n \"payload\" : [ {} ] }}\n",
                contacts[..3].join(" , ")
            ),
            r#"{"meta":{"count":0},"payload":[]}"#.into(),
            r#"{"meta":{"count":0},"payload":[ ]}"#.into(),
            r#"{"payload":[1,"x",null,true,[1,[2]],{"a":"]}\"{["}]}"#.into(),
            r#"{"meta":{"count":1,"contacts_all":4},"extra":{"x":[1,2]},"payload":[{"id":1}]}"#
                .into(),
            r#"{"meta":{"count":1},"payload":[{"id":1,"s":"a\\\"b\u00e9"}]}"#.into(),
            // For serde_json to judge.
            r#"{"payl\u006fad":[{"id":1}]}"#.into(),
            r#"{"payload":[{"id":1}],"payload":[]}"#.into(),
            r#"{"meta":{"count":1},"meta":{"count":2},"payload":[]}"#.into(),
            r#"{"meta":null,"payload":[]}"#.into(),
            r#"{"payload":{"id":1}}"#.into(),
            r#"{"payload":[{"id":1}]} x"#.into(),
            r#"{"payload":[{"id":1},]}"#.into(),
            r#"{"payload":[,{"id":1}]}"#.into(),
            r#"{"payload":[{"id":1}"#.into(),
            r#"{"payload":[{"id":1}],"extra":tru}"#.into(),
            r#"{"meta": {"count": 1}, "payload": [{"id":1}] "#.into(),
            r#"{}"#.into(),
            r#"[]"#.into(),
            "".into(),
            r#"{"meta": {"count": 1, "current_page": "1"}, "payl"#.into(),
        ];
        // Broken inside a contact only: the scan lets it through and the flattener refuses it.
        let late = [
            r#"{"payload":[{"id":1,"s":"a\qb"}]}"#,
            r#"{"payload":[{"id":tru}]}"#,
            r#"{"payload":[{"id":01}]}"#,
            r#"{"payload":[{"id":1,}]}"#,
        ];
        bodies.extend(late.iter().map(|b| b.to_string()));
        for body in &bodies {
            let scanned = ContactsPage::from_body(body.as_bytes()).ok().map(|page| {
                (
                    page.meta.count,
                    page.payload.iter().map(str::to_owned).collect::<Vec<_>>(),
                )
            });
            let reference = by_serde(body);
            if late.contains(&body.as_str()) {
                let (_, texts) = scanned.expect("the scan splits it");
                assert!(reference.is_none());
                assert!(
                    texts
                        .iter()
                        .any(|t| serde_json::from_str::<Value>(t).is_err()),
                    "{body}"
                );
            } else {
                assert_eq!(scanned, reference, "{body}");
            }
        }
    }

    #[test]
    fn a_body_without_payload_is_not_a_page() {
        assert!(ContactsPage::from_body(br#"{"meta":{"count":1}}"#).is_err());
        assert!(ContactsPage::from_body(b"<html>").is_err());
        let not_utf8 = ContactsPage::from_body(b"{\"payload\":[\"\xff\"]}").expect_err("not UTF-8");
        assert!(not_utf8.to_string().contains("column"), "{not_utf8}");
    }
}
