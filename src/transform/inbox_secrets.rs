//! Credentials that old Chatwoot versions embed in `contact_inboxes[].inbox`, removed before
//! they reach a column or the spill.
//!
//! Receives one `contact_inboxes` item as the server sent it; emits it without the fields that
//! look like credentials, and counts what it removed per field (names only, never values).
//! Chatwoot before PR #10888 rendered the whole inbox there for admin tokens: `imap_password`,
//! `smtp_password`, `hmac_token`, `provider_config` (WhatsApp API keys), `bot_token`,
//! `page_access_token` and more. Today's servers send only the documented fields.
//!
//! The rule, at any depth of the item:
//! - the documented fields are always kept: `source_id` and `inbox` of the item, and `id`,
//!   `avatar_url`, `channel_id`, `name`, `channel_type` and `provider` of the inbox;
//! - any other field is dropped when its name looks secret and its value is not a boolean
//!   (`true`/`false` carries no secret: `hmac_mandatory` stays). A name looks secret when,
//!   lower-cased and with everything but letters and digits removed, it contains one of
//!   [`SECRET_NAME_PARTS`] (`imap_password`, `smtp_login`, `api_key`, `webhook_url`,
//!   `provider_config`, `smtp_authentication`...);
//! - objects and arrays that are kept are scrubbed the same way inside.
//!
//! The rule goes by name, not by value, and errs towards dropping: a harmless field such as
//! `smtp_authentication` (`"login"`) goes too. `InboxSecrets::keep_all` turns it off
//! (`--keep-inbox-secrets`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Fragments of field names that mark a credential (matched in the name lower-cased, with
/// separators removed, so `api-key`, `apiKey` and `API_KEY` all match `apikey`... and `key`).
pub const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "key",
    "hmac",
    "credential",
    "auth",
    "login",
    "private",
    "signature",
    "cert",
    "cookie",
    "session",
    "webhook",
    "providerconfig",
];

/// Fields of a `contact_inboxes` item that are always kept.
pub const LINK_FIELDS: &[&str] = &["source_id", "inbox"];
/// Fields of the inbox that are always kept (`_inbox_slim.json.jbuilder`).
pub const INBOX_FIELDS: [&str; 6] = [
    "id",
    "avatar_url",
    "channel_id",
    "name",
    "channel_type",
    "provider",
];

/// Whether a field name looks like it holds a credential.
pub fn looks_secret(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_NAME_PARTS.iter().any(|part| folded.contains(part))
}

/// Removes secret-looking fields from inbox links and counts them.
#[derive(Debug, Default)]
pub struct InboxSecrets {
    keep_all: bool,
    dropped: BTreeMap<String, u64>,
}

impl InboxSecrets {
    /// Keeps every field, credentials included (`--keep-inbox-secrets`).
    pub fn keep_all() -> Self {
        Self {
            keep_all: true,
            dropped: BTreeMap::new(),
        }
    }

    /// Takes back counts saved by an interrupted run (`--resume`).
    pub fn restore_dropped(&mut self, dropped: BTreeMap<String, u64>) {
        self.dropped = dropped;
    }

    /// Whether this policy keeps everything.
    pub fn keeps_all(&self) -> bool {
        self.keep_all
    }

    /// How many values were dropped, by the column name they would have had
    /// (`inbox__imap_password`, `inbox__provider_config`).
    pub fn dropped(&self) -> &BTreeMap<String, u64> {
        &self.dropped
    }

    /// The `contact_inboxes` item without its secret-looking fields; borrowed when it has
    /// none, which is the case for every current Chatwoot.
    pub fn scrub_link<'a>(&mut self, link: &'a Value) -> Cow<'a, Value> {
        if self.keep_all {
            return Cow::Borrowed(link);
        }
        let scrubbed = match link {
            Value::Object(fields) => self
                .scrub_object(fields, &mut String::new(), LINK_FIELDS)
                .map(Value::Object),
            // Not the documented shape; the flattener keeps it whole as `contact_inbox`.
            other => self.scrub_value(other, &mut "contact_inbox".to_owned()),
        };
        scrubbed.map_or(Cow::Borrowed(link), Cow::Owned)
    }

    /// `value` scrubbed inside, or `None` when nothing in it had to go.
    fn scrub_value(&mut self, value: &Value, path: &mut String) -> Option<Value> {
        match value {
            Value::Object(fields) => self.scrub_object(fields, path, &[]).map(Value::Object),
            Value::Array(items) => {
                let mut changed: Option<Vec<Value>> = None;
                for (index, item) in items.iter().enumerate() {
                    if let Some(new) = self.scrub_value(item, path) {
                        changed
                            .get_or_insert_with(|| items[..index].to_vec())
                            .push(new);
                    } else if let Some(out) = &mut changed {
                        out.push(item.clone());
                    }
                }
                changed.map(Value::Array)
            }
            _ => None,
        }
    }

    /// The object without secret-looking fields (except `documented` ones), or `None` when
    /// nothing had to go. `path` is the column-name prefix of the object (empty for the link).
    fn scrub_object(
        &mut self,
        fields: &Map<String, Value>,
        path: &mut String,
        documented: &[&str],
    ) -> Option<Map<String, Value>> {
        let mut changed: Option<Map<String, Value>> = None;
        for (index, (key, value)) in fields.iter().enumerate() {
            let len = path.len();
            if !path.is_empty() {
                path.push_str("__");
            }
            path.push_str(key);
            let is_documented = documented.contains(&key.as_str());
            let outcome = if !is_documented && !value.is_boolean() && looks_secret(key) {
                *self.dropped.entry(path.clone()).or_insert(0) += 1;
                Some(None)
            } else if let (true, Value::Object(inbox)) = (path == "inbox", value) {
                self.scrub_object(inbox, path, &INBOX_FIELDS)
                    .map(|new| Some(Value::Object(new)))
            } else {
                self.scrub_value(value, path).map(Some)
            };
            path.truncate(len);
            match outcome {
                // Unchanged: copied only once an earlier field has changed.
                None => {
                    if let Some(out) = &mut changed {
                        out.insert(key.clone(), value.clone());
                    }
                }
                Some(replacement) => {
                    let out = changed.get_or_insert_with(|| {
                        fields
                            .iter()
                            .take(index)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    });
                    if let Some(new) = replacement {
                        out.insert(key.clone(), new);
                    }
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_names() {
        for name in [
            "imap_password",
            "smtp_password",
            "imap_login",
            "smtp_login",
            "hmac_token",
            "provider_config",
            "page_access_token",
            "bot_token",
            "webhook_url",
            "callback_webhook_url",
            "api_key",
            "apiKey",
            "API-KEY",
            "secret",
            "client_secret",
            "line_channel_secret",
            "auth_token",
            "smtp_authentication",
            "credentials",
            "private_key",
            "website_token",
            "pubsub_token",
            "Passwd",
        ] {
            assert!(looks_secret(name), "{name} should look secret");
        }
        for name in [
            "id",
            "name",
            "email",
            "phone_number",
            "imap_address",
            "imap_port",
            "smtp_enable_starttls_auto",
            "greeting_message",
            "timezone",
            "inbox_identifier",
            "widget_color",
            "bot_name",
            "business_name",
        ] {
            assert!(!looks_secret(name), "{name} should not look secret");
        }
    }

    #[test]
    fn drops_legacy_inbox_credentials_and_counts_them() {
        let mut secrets = InboxSecrets::default();
        let link = json!({
            "source_id": "abc",
            "pubsub_token": "p-123",
            "inbox": {
                "id": 3, "name": "Support", "channel_type": "Channel::Email", "provider": null,
                "email": "support@example.com", "imap_port": 993, "imap_password": "hunter2",
                "smtp_login": "support", "hmac_mandatory": true, "hmac_token": "h-1",
                "provider_config": {"api_key": "k"},
                "additional_attributes": {"api_key": "nested", "color": "red"},
                "working_hours": [{"day": 1, "session_secret": "s"}]
            }
        });
        let scrubbed = secrets.scrub_link(&link);
        assert_eq!(
            *scrubbed,
            json!({
                "source_id": "abc",
                "inbox": {
                    "id": 3, "name": "Support", "channel_type": "Channel::Email", "provider": null,
                    "email": "support@example.com", "imap_port": 993, "hmac_mandatory": true,
                    "additional_attributes": {"color": "red"},
                    "working_hours": [{"day": 1}]
                }
            })
        );
        let dropped: Vec<(&str, u64)> = secrets
            .dropped()
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            dropped,
            [
                ("inbox__additional_attributes__api_key", 1),
                ("inbox__hmac_token", 1),
                ("inbox__imap_password", 1),
                ("inbox__provider_config", 1),
                ("inbox__smtp_login", 1),
                ("inbox__working_hours__session_secret", 1),
                ("pubsub_token", 1),
            ]
        );
    }

    #[test]
    fn a_current_inbox_is_borrowed_untouched() {
        let mut secrets = InboxSecrets::default();
        let link = json!({"source_id": "x", "inbox": {"id": 1, "avatar_url": "", "channel_id": 2,
            "name": "Web", "channel_type": "Channel::WebWidget", "provider": null}});
        assert!(matches!(secrets.scrub_link(&link), Cow::Borrowed(_)));
        assert!(secrets.dropped().is_empty());
    }

    #[test]
    fn counts_add_up_and_keep_all_keeps_everything() {
        let link = json!({"source_id": "x", "inbox": {"id": 1, "bot_token": "t"}});
        let mut secrets = InboxSecrets::default();
        for _ in 0..3 {
            assert_eq!(
                *secrets.scrub_link(&link),
                json!({"source_id": "x", "inbox": {"id": 1}})
            );
        }
        assert_eq!(secrets.dropped().get("inbox__bot_token"), Some(&3));

        let mut keep = InboxSecrets::keep_all();
        assert_eq!(*keep.scrub_link(&link), link);
        assert!(keep.dropped().is_empty());
    }

    #[test]
    fn an_undocumented_link_shape_is_scrubbed_too() {
        let mut secrets = InboxSecrets::default();
        let link = json!([{"inbox": {"imap_password": "x", "id": 1}}]);
        assert_eq!(*secrets.scrub_link(&link), json!([{"inbox": {"id": 1}}]));
        assert_eq!(
            secrets.dropped().get("contact_inbox__inbox__imap_password"),
            Some(&1)
        );
    }

    #[test]
    fn the_flattener_never_makes_a_column_of_a_dropped_field() {
        use crate::transform::flatten::Flattener;
        let contact = json!({"id": 1, "contact_inboxes": [
            {"source_id": "a", "inbox": {"id": 2, "imap_password": "hunter2", "imap_port": 993}}
        ]});
        let mut flattener = Flattener::default();
        let flat = flattener.flatten(&contact).expect("flattens");
        let schema = flattener.inboxes.finish();
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"inbox__imap_port"), "{names:?}");
        assert!(!names.contains(&"inbox__imap_password"), "{names:?}");
        let hunter = crate::transform::Cell::Str("hunter2".into());
        assert!(flat.inboxes[0].iter().all(|(_, cell)| *cell != hunter));

        let mut keeping = Flattener::default();
        keeping.inbox_secrets = InboxSecrets::keep_all();
        let flat = keeping.flatten(&contact).expect("flattens");
        assert!(flat.inboxes[0].iter().any(|(_, cell)| *cell == hunter));
    }
}
