//! The list API's response body: `{"meta": {"count": N, "current_page": "2"}, "payload": [...]}`.
//!
//! Lenient where real servers differ: `current_page` may be a string or an integer (it is not
//! needed), `count` may be a number or a numeric string or missing, extra meta keys (one
//! white-label host sends `contacts_all`) are ignored, and contacts stay raw JSON so unknown
//! fields reach the flattener.
//!
//! Each contact is kept as its JSON text (`RawValue`): parsing the page only checks that it is
//! JSON and finds where each contact starts and ends, and the flattener then reads each contact
//! once, straight into rows. Building a `serde_json::Value` per contact first cost more than
//! everything else the export does with it.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One page of contacts.
#[derive(Debug, Deserialize)]
pub struct ContactsPage {
    #[serde(default)]
    pub meta: Meta,
    /// The contacts, each as the JSON text the server sent (checked to be valid JSON).
    pub payload: Vec<Box<RawValue>>,
}

impl ContactsPage {
    /// Parses a response body. The text is checked to be UTF-8 once for the whole page, so that
    /// the JSON parser need not check each contact's text again; a body that is not UTF-8 goes
    /// to the byte parser, which reports where the bad byte is.
    pub fn from_body(body: &[u8]) -> Result<Self, serde_json::Error> {
        match std::str::from_utf8(body) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(body),
        }
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
            let page: ContactsPage = serde_json::from_str(body).expect(body);
            assert_eq!(page.meta.count, count, "{body}");
        }
    }

    #[test]
    fn contacts_keep_their_text() {
        let page = ContactsPage::from_body(r#"{"payload":[{"id":1, "name":"דנה"}, 7]}"#.as_bytes())
            .expect("a page");
        let texts: Vec<&str> = page.payload.iter().map(|c| c.get()).collect();
        assert_eq!(texts, [r#"{"id":1, "name":"דנה"}"#, "7"]);
    }

    #[test]
    fn a_body_without_payload_is_not_a_page() {
        assert!(serde_json::from_str::<ContactsPage>(r#"{"meta":{"count":1}}"#).is_err());
        assert!(serde_json::from_str::<ContactsPage>("<html>").is_err());
        // Malformed inside a contact: still not a page.
        assert!(ContactsPage::from_body(br#"{"payload":[{"id":1,}]}"#).is_err());
        let not_utf8 = ContactsPage::from_body(b"{\"payload\":[\"\xff\"]}").expect_err("not UTF-8");
        assert!(not_utf8.to_string().contains("column"), "{not_utf8}");
    }
}
