//! The fake account's contacts, generated on demand from a seed.
//!
//! Receives a seed, a contact count and an account id; emits contacts shaped exactly like
//! Chatwoot's list API (`_contact.json.jbuilder`), one at a time by index, so that serving a
//! page of a million-contact account costs fifteen contacts of work and no memory.
//! The data is deliberately nasty: Hebrew, emoji, quotes, commas, newlines, leading `=`, nulls,
//! empty objects, omitted `last_activity_at`, custom attribute keys with spaces, dots and
//! Hebrew, a key whose values mix numbers and strings, and a nested value. In legacy mode the
//! inboxes carry the credentials old Chatwoot versions leaked there. The account's labels
//! (`labels`) have titles with spaces, commas, quotes, `&`, `+`, `%`, Hebrew and emoji, and
//! tag each contact with none, one or several of them (`labels_of`, which the list endpoint's
//! `labels[]` filter reads; the list does not render a contact's labels).

use serde_json::{Map, Value, json};

use crate::rng::Rng;

/// Unix time of the first contact's `created_at`.
const FIRST_CREATED_AT: i64 = 1_600_000_000;

/// How a custom attribute's values are written, after Chatwoot's display types.
#[derive(Clone, Copy, Debug)]
enum CustomKind {
    Text,
    Number,
    Currency,
    Percent,
    Link,
    Date,
    List,
    Checkbox,
    /// Numbers from the new sidebar, strings from CSV import: one key, both kinds.
    MixedNumberString,
    /// An object written through the API.
    Nested,
    /// Integers and floats: a float64 column.
    Score,
}

/// Every account has the first ten keys (each display type, the mixed key and the nested
/// one); the seed adds up to five more.
const CUSTOM_KEYS: &[(&str, CustomKind)] = &[
    ("signup source", CustomKind::Text),
    ("seats", CustomKind::Number),
    ("lifetime.value", CustomKind::Currency),
    ("discount_percent", CustomKind::Percent),
    ("website", CustomKind::Link),
    ("renewal_date", CustomKind::Date),
    ("plan", CustomKind::List),
    ("vip", CustomKind::Checkbox),
    ("customer_id", CustomKind::MixedNumberString),
    ("preferences", CustomKind::Nested),
    ("score", CustomKind::Score),
    ("הערות", CustomKind::Text),
    ("opted in", CustomKind::Checkbox),
    ("tier.level", CustomKind::Number),
    ("notes", CustomKind::Text),
];
const MANDATORY_CUSTOM_KEYS: usize = 10;

const NAMES: &[&str] = &[
    "Dana Cohen",
    "דנה כהן",
    "José Müller",
    "O'Brien, Pat",
    "\"Quoted\" Name",
    "Line\nBreak",
    "=HYPERLINK(\"http://example.com\")",
    "😀 Emoji Fan",
    "",
    "+972 starts with plus",
    "@mention",
    "-minus",
    "Tab\tName",
    "Ngozi Okafor",
    "李小龙",
    "Mary-Jane \"MJ\" Watson, Jr.",
];

const CITIES: &[(&str, &str, &str)] = &[
    ("Tel Aviv", "Israel", "IL"),
    ("תל אביב", "ישראל", "IL"),
    ("São Paulo", "Brazil", "BR"),
    ("New York, NY", "United States", "US"),
    ("Zürich", "Switzerland", "CH"),
    ("", "", ""),
];

const TEXTS: &[&str] = &[
    "plain text",
    "comma, separated, words",
    "she said \"hi\"",
    "first line\nsecond line",
    "=1+2",
    "+SUM(A1:A2)",
    "@cmd",
    "emoji 🎉 party",
    "שלום עולם",
    "",
    "trailing space ",
    "cr\r\nlf",
];

const PLANS: &[&str] = &["free", "pro", "enterprise"];

/// The account's inboxes, as `_inbox_slim.json.jbuilder` renders them.
fn inboxes() -> Vec<Value> {
    vec![
        json!({"id": 1, "avatar_url": "", "channel_id": 11, "name": "Website", "channel_type": "Channel::WebWidget", "provider": null}),
        json!({"id": 2, "avatar_url": "https://cdn.example.com/inbox/2.png", "channel_id": 4, "name": "WhatsApp Sales", "channel_type": "Channel::Whatsapp", "provider": "whatsapp_cloud"}),
        json!({"id": 3, "avatar_url": "", "channel_id": 7, "name": "Support, Email", "channel_type": "Channel::Email", "provider": null}),
        json!({"id": 4, "avatar_url": "", "channel_id": 2, "name": "API", "channel_type": "Channel::Api", "provider": null}),
        json!({"id": 5, "avatar_url": "", "channel_id": 9, "name": "תמיכה בטלגרם", "channel_type": "Channel::Telegram", "provider": null}),
    ]
}

/// The inboxes as Chatwoot before PR #10888 rendered them for admin tokens: the whole inbox
/// (`_inbox.json.jbuilder`), credentials included. Every credential value holds
/// `fake-secret-`, so a test can look for it in the output's bytes.
fn legacy_inboxes() -> Vec<Value> {
    let extras = [
        json!({"website_url": "https://example.com", "widget_color": "#1f93ff",
               "website_token": "fake-secret-website-token-1", "hmac_token": "fake-secret-hmac-1",
               "hmac_mandatory": false, "welcome_title": "Hi there"}),
        json!({"phone_number": "+15550001111", "reauthorization_required": false,
               "provider_config": {"api_key": "fake-secret-wa-api-key-2", "phone_number_id": "1234",
                                   "business_account_id": "5678",
                                   "webhook_verify_token": "fake-secret-wa-verify-2"}}),
        json!({"email": "support@example.com", "forward_to_email": "fwd-3@inbound.example.com",
               "imap_login": "fake-secret-imap-login-3", "imap_password": "fake-secret-imap-password-3",
               "imap_address": "imap.example.com", "imap_port": 993, "imap_enabled": true,
               "smtp_login": "fake-secret-smtp-login-3", "smtp_password": "fake-secret-smtp-password-3",
               "smtp_address": "smtp.example.com", "smtp_port": 587, "smtp_authentication": "login",
               "smtp_enable_starttls_auto": true}),
        json!({"webhook_url": "https://hooks.example.com/fake-secret-webhook-4",
               "inbox_identifier": "Xq9kLm2Np4", "hmac_token": "fake-secret-hmac-4",
               "secret": "fake-secret-api-4", "hmac_mandatory": true}),
        json!({"bot_name": "support_bot", "bot_token": "fake-secret-bot-token-5"}),
    ];
    inboxes()
        .into_iter()
        .zip(extras)
        .map(|(mut inbox, extra)| {
            if let (Value::Object(fields), Value::Object(extra)) = (&mut inbox, extra) {
                fields.insert("greeting_enabled".into(), false.into());
                fields.insert("enable_auto_assignment".into(), true.into());
                fields.insert("timezone".into(), "Asia/Jerusalem".into());
                fields.insert(
                    "working_hours".into(),
                    json!([{"day_of_week": 0, "open_all_day": true}]),
                );
                fields.extend(extra);
            }
            inbox
        })
        .collect()
}

/// The account's labels: title, description, color, show_on_sidebar, and the percent of
/// contacts each tags (the last tags none; the first spans several pages of a label walk).
const LABELS: &[(&str, Option<&str>, &str, bool, u64)] = &[
    ("vip", Some("paying customers"), "#1f93ff", true, 45),
    ("lead-2025", None, "#ff0000", true, 20),
    (
        "kunde_ü",
        Some("Ümlaut, \"quoted\"\nnewline"),
        "",
        false,
        15,
    ),
    ("לקוח", Some("עברית"), "#00ff00", true, 10),
    (
        "a&b=c+d %20",
        Some("=cmd|' /C calc'!A0"),
        "#000000",
        false,
        10,
    ),
    ("with space, comma", None, "#abcdef", true, 8),
    ("emoji 🎉", Some("🎉"), "#123456", false, 5),
    ("unused", Some("tags nobody"), "#ffffff", true, 0),
];

/// One fake Chatwoot account: its contacts are a pure function of (seed, index).
#[derive(Clone, Debug)]
pub struct FakeAccount {
    seed: u64,
    contacts: u64,
    custom_keys: Vec<(&'static str, CustomKind)>,
    inboxes: Vec<Value>,
}

impl FakeAccount {
    pub fn new(seed: u64, contacts: u64) -> Self {
        let mut rng = Rng::new(seed, u64::MAX);
        let extra = rng.below((CUSTOM_KEYS.len() - MANDATORY_CUSTOM_KEYS) as u64 + 1) as usize;
        let custom_keys = CUSTOM_KEYS[..MANDATORY_CUSTOM_KEYS + extra].to_vec();
        Self {
            seed,
            contacts,
            custom_keys,
            inboxes: inboxes(),
        }
    }

    /// Renders inboxes as Chatwoot before PR #10888 did for admin tokens, credentials
    /// included (`--legacy-inbox-secrets`).
    pub fn with_legacy_inbox_secrets(mut self, legacy: bool) -> Self {
        if legacy {
            self.inboxes = legacy_inboxes();
        }
        self
    }

    /// How many contacts the account holds.
    pub fn len(&self) -> u64 {
        self.contacts
    }

    pub fn is_empty(&self) -> bool {
        self.contacts == 0
    }

    /// Every page of the listing in `created_at` order, `page_size` contacts each, as the
    /// fake server renders them: the export's input without the network, for benchmarks.
    pub fn page_bodies(&self, page_size: u64) -> Vec<Vec<u8>> {
        (0..self.contacts.div_ceil(page_size))
            .map(|page| {
                let payload: Vec<Value> = (page * page_size
                    ..self.contacts.min((page + 1) * page_size))
                    .map(|index| self.contact(index))
                    .collect();
                let meta = json!({"count": self.contacts, "current_page": (page + 1).to_string()});
                json!({"meta": meta, "payload": payload})
                    .to_string()
                    .into_bytes()
            })
            .collect()
    }

    /// The contact id of the contact at `index`: ascending, with gaps (ids are global in
    /// Chatwoot, so an account's ids are sparse).
    pub fn id_of(index: u64) -> i64 {
        100 + 7 * index as i64
    }

    /// `created_at` never decreases with the index; every fortieth contact shares its
    /// timestamp with the one before, as a CSV import does.
    pub fn created_at_of(index: u64) -> i64 {
        let tie = i64::from(index % 40 == 1);
        FIRST_CREATED_AT + 600 * (index as i64 - tie)
    }

    /// The contact at `index` (0-based, in `created_at` order), as the list API renders it.
    pub fn contact(&self, index: u64) -> Value {
        let mut rng = Rng::new(self.seed, index);
        let id = Self::id_of(index);
        let created_at = Self::created_at_of(index);

        let name: Value = if rng.chance(3) {
            Value::Null
        } else {
            let base = *rng.pick(NAMES);
            if base.is_empty() || rng.chance(30) {
                Value::from(base)
            } else {
                Value::from(format!("{base} {id}"))
            }
        };
        let mut email = (!rng.chance(15)).then(|| format!("user{id}@example.com"));
        let phone_number = (!rng.chance(30)).then(|| format!("+9725{:08}", rng.below(100_000_000)));
        let identifier = rng.chance(20).then(|| format!("crm-{id}"));
        if email.is_none() && phone_number.is_none() && identifier.is_none() {
            // The list API returns only "resolved" contacts: one of the three is always set.
            email = Some(format!("user{id}@example.com"));
        }
        let thumbnail = if rng.chance(70) {
            String::new()
        } else {
            format!("https://cdn.example.com/avatars/{id}.png")
        };

        let mut contact = Map::new();
        contact.insert(
            "additional_attributes".into(),
            self.additional_attributes(&mut rng),
        );
        contact.insert(
            "availability_status".into(),
            Value::from(if rng.chance(10) { "online" } else { "offline" }),
        );
        contact.insert("email".into(), email.into());
        contact.insert("id".into(), id.into());
        contact.insert("name".into(), name);
        contact.insert("phone_number".into(), phone_number.into());
        contact.insert("blocked".into(), rng.chance(5).into());
        contact.insert("identifier".into(), identifier.into());
        contact.insert("thumbnail".into(), thumbnail.into());
        contact.insert(
            "custom_attributes".into(),
            self.custom_attributes(&mut rng, id),
        );
        if !rng.chance(25) {
            // Omitted, not null, when the contact never wrote (the jbuilder skips nil).
            let seen = created_at + rng.below(90 * 86_400) as i64;
            contact.insert("last_activity_at".into(), seen.into());
        }
        contact.insert("created_at".into(), created_at.into());
        contact.insert("contact_inboxes".into(), self.contact_inboxes(&mut rng, id));
        Value::Object(contact)
    }

    fn additional_attributes(&self, rng: &mut Rng) -> Value {
        let mut attrs = Map::new();
        if rng.chance(10) {
            return Value::Object(attrs);
        }
        let (city, country, code) = *rng.pick(CITIES);
        attrs.insert("city".into(), city.into());
        attrs.insert("country".into(), country.into());
        attrs.insert("country_code".into(), code.into());
        if rng.chance(60) {
            attrs.insert("company_name".into(), (*rng.pick(TEXTS)).into());
        }
        if rng.chance(40) {
            attrs.insert("description".into(), (*rng.pick(TEXTS)).into());
        }
        if rng.chance(50) {
            let mut profiles = Map::new();
            if rng.chance(80) {
                for network in [
                    "facebook",
                    "github",
                    "instagram",
                    "linkedin",
                    "tiktok",
                    "twitter",
                ] {
                    let handle = if rng.chance(70) {
                        String::new()
                    } else {
                        format!("{network}.example.com/u{}", rng.below(1000))
                    };
                    profiles.insert(network.into(), handle.into());
                }
            }
            attrs.insert("social_profiles".into(), Value::Object(profiles));
        }
        if rng.chance(20) {
            attrs.insert(
                "social_telegram_user_id".into(),
                (rng.below(9_000_000_000) as i64).into(),
            );
            attrs.insert(
                "language_code".into(),
                (*rng.pick(&["he", "en", "pt-BR"])).into(),
            );
        }
        if rng.chance(30) {
            attrs.insert(
                "created_at_ip".into(),
                format!("203.0.113.{}", rng.below(255)).into(),
            );
        }
        Value::Object(attrs)
    }

    fn custom_attributes(&self, rng: &mut Rng, id: i64) -> Value {
        let mut attrs = Map::new();
        for &(key, kind) in &self.custom_keys {
            if !rng.chance(60) {
                continue;
            }
            let value = match kind {
                CustomKind::Text => (*rng.pick(TEXTS)).into(),
                CustomKind::Number => (rng.below(500) as i64).into(),
                CustomKind::Currency => {
                    format!("{}.{:02}", rng.below(10_000), rng.below(100)).into()
                }
                CustomKind::Percent => rng.below(101).to_string().into(),
                CustomKind::Link => format!("https://example.com/c/{id}?a=1,b=2").into(),
                CustomKind::Date => format!(
                    "2025-{:02}-{:02}T00:00:00.000Z",
                    1 + rng.below(12),
                    1 + rng.below(28)
                )
                .into(),
                CustomKind::List => (*rng.pick(PLANS)).into(),
                CustomKind::Checkbox => rng.chance(50).into(),
                CustomKind::MixedNumberString => {
                    if rng.chance(50) {
                        (rng.below(100_000) as i64).into()
                    } else {
                        format!("A-{}", rng.below(100_000)).into()
                    }
                }
                CustomKind::Nested => {
                    json!({"lang": rng.pick(&["he", "en"]), "channels": ["email", "sms"]})
                }
                CustomKind::Score => {
                    if rng.chance(50) {
                        (rng.below(10) as i64).into()
                    } else {
                        (rng.below(100) as f64 / 8.0).into()
                    }
                }
            };
            attrs.insert(key.into(), value);
        }
        if rng.chance(5) {
            attrs.insert("legacy".into(), Value::Null);
        }
        Value::Object(attrs)
    }

    fn contact_inboxes(&self, rng: &mut Rng, id: i64) -> Value {
        let links = rng.below(4) as usize;
        let first = rng.below(self.inboxes.len() as u64) as usize;
        let items = (0..links)
            .map(|k| {
                let inbox = &self.inboxes[(first + k) % self.inboxes.len()];
                let source_id = match inbox["channel_type"].as_str() {
                    Some("Channel::Whatsapp") => format!("9725{:08}", rng.below(100_000_000)),
                    Some("Channel::Email") => format!("user{id}@example.com"),
                    _ => format!("{:016x}-{id}", rng.next_u64()),
                };
                json!({"source_id": source_id, "inbox": inbox})
            })
            .collect();
        Value::Array(items)
    }

    /// The account's labels, as `GET /labels` renders them in its `payload`.
    pub fn labels(&self) -> Value {
        let items = LABELS
            .iter()
            .enumerate()
            .map(|(n, (title, description, color, sidebar, _))| {
                json!({
                    "id": n + 1, "title": title, "description": description, "color": color,
                    "show_on_sidebar": sidebar, "allow_auto_assign": n % 2 == 0
                })
            })
            .collect();
        Value::Array(items)
    }

    /// The titles of the labels that tag the contact at `index`, in label order (a stream of
    /// its own: the contact's fields do not change with the labels).
    pub fn labels_of(&self, index: u64) -> Vec<&'static str> {
        let mut rng = Rng::new(self.seed ^ 0x001a_be15, index);
        LABELS
            .iter()
            .filter(|(.., percent)| rng.chance(*percent))
            .map(|(title, ..)| *title)
            .collect()
    }

    /// The custom attribute definitions of this account's contact attributes, as
    /// `GET /custom_attribute_definitions` renders them.
    pub fn custom_attribute_definitions(&self) -> Value {
        let items = self
            .custom_keys
            .iter()
            .enumerate()
            .map(|(n, (key, kind))| {
                let display_type = match kind {
                    CustomKind::Text | CustomKind::Nested | CustomKind::MixedNumberString => "text",
                    CustomKind::Number | CustomKind::Score => "number",
                    CustomKind::Currency => "currency",
                    CustomKind::Percent => "percent",
                    CustomKind::Link => "link",
                    CustomKind::Date => "date",
                    CustomKind::List => "list",
                    CustomKind::Checkbox => "checkbox",
                };
                let values: Vec<&str> = if matches!(kind, CustomKind::List) { PLANS.to_vec() } else { vec![] };
                json!({
                    "id": n + 1, "attribute_display_name": key, "attribute_display_type": display_type,
                    "attribute_description": null, "attribute_key": key, "regex_pattern": null,
                    "regex_cue": null, "attribute_values": values, "attribute_model": "contact_attribute",
                    "default_value": null, "created_at": "2024-01-01T00:00:00.000Z",
                    "updated_at": "2024-01-01T00:00:00.000Z"
                })
            })
            .collect();
        Value::Array(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_deterministic_and_resolved() {
        let account = FakeAccount::new(42, 200);
        for index in 0..200 {
            let contact = account.contact(index);
            assert_eq!(contact, account.contact(index));
            let resolved = ["email", "phone_number", "identifier"]
                .iter()
                .any(|key| contact[key].is_string());
            assert!(
                resolved,
                "contact {index} has no email, phone or identifier"
            );
        }
        assert_ne!(
            FakeAccount::new(1, 5).contact(3),
            FakeAccount::new(2, 5).contact(3)
        );
    }

    #[test]
    fn labels_tag_some_contacts_with_none_some_with_several_and_one_label_never() {
        let account = FakeAccount::new(42, 300);
        let sets: Vec<Vec<&str>> = (0..300).map(|i| account.labels_of(i)).collect();
        assert!(sets.iter().any(Vec::is_empty));
        assert!(sets.iter().any(|set| set.len() >= 3));
        assert!(sets.iter().all(|set| !set.contains(&"unused")));
        let vip = sets.iter().filter(|set| set.contains(&"vip")).count();
        assert!(vip > 30, "vip spans several pages of a label walk: {vip}");
        assert_eq!(account.labels_of(7), account.labels_of(7));
        assert_eq!(
            account.labels().as_array().map(Vec::len),
            Some(LABELS.len())
        );
    }

    #[test]
    fn created_at_never_decreases_and_has_ties() {
        let stamps: Vec<i64> = (0..100).map(FakeAccount::created_at_of).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
        assert!(stamps.windows(2).any(|w| w[0] == w[1]));
    }

    #[test]
    fn data_holds_the_nasty_cases() {
        let account = FakeAccount::new(42, 300);
        let all: Vec<Value> = (0..300).map(|i| account.contact(i)).collect();
        let text = serde_json::to_string(&all).expect("serializable");
        for needle in [
            "\\n",
            "\\\"",
            "דנה",
            "😀",
            "\"=",
            "\"customer_id\":\"A-",
            "\"preferences\":{",
        ] {
            assert!(text.contains(needle), "no {needle:?} in 300 contacts");
        }
        assert!(all.iter().any(|c| c.get("last_activity_at").is_none()));
        assert!(
            all.iter()
                .any(|c| c["additional_attributes"] == serde_json::json!({}))
        );
        assert!(
            all.iter()
                .any(|c| c["custom_attributes"]["customer_id"].is_number())
        );
    }

    #[test]
    fn legacy_mode_only_adds_inbox_fields() {
        let plain = FakeAccount::new(42, 50);
        let legacy = FakeAccount::new(42, 50).with_legacy_inbox_secrets(true);
        let mut secrets = 0;
        for index in 0..50 {
            let (mut a, b) = (plain.contact(index), legacy.contact(index));
            let links_b = b["contact_inboxes"].as_array().expect("links");
            secrets += links_b
                .iter()
                .filter(|l| l.to_string().contains("fake-secret-"))
                .count();
            // Same contact once the legacy inbox is put in place of the slim one.
            for (link, legacy_link) in a["contact_inboxes"]
                .as_array_mut()
                .expect("links")
                .iter_mut()
                .zip(links_b)
            {
                for (key, value) in link["inbox"].as_object().expect("inbox") {
                    assert_eq!(&legacy_link["inbox"][key], value);
                }
                link["inbox"] = legacy_link["inbox"].clone();
            }
            assert_eq!(a, b);
        }
        assert!(secrets > 10, "legacy inboxes carry credentials");
    }
}
