//! Inbox credentials that old Chatwoot versions embed in contacts: left out by default (and
//! counted), kept with `--keep-inbox-secrets`.

use std::collections::BTreeMap;

use chatwoot_export::fake::FakeServerConfig;
use serde_json::Value;

use crate::export::assert_export_matches;
use crate::harness::{Fake, all_file_bytes, assert_no_token, export, manifest};

/// The legacy inbox fields docs/security.md's rule leaves out: every credential the fake server
/// plants, plus `smtp_authentication`, harmless but named like one.
const DROPPED: &[&str] = &[
    "website_token",
    "hmac_token",
    "provider_config",
    "imap_login",
    "imap_password",
    "smtp_login",
    "smtp_password",
    "smtp_authentication",
    "webhook_url",
    "secret",
    "bot_token",
];

/// Every credential value the fake server plants holds this.
const MARKER: &[u8] = b"fake-secret-";

fn legacy_fake(contacts: u64) -> Fake {
    Fake::start(FakeServerConfig {
        contacts,
        legacy_inbox_secrets: true,
        ..FakeServerConfig::default()
    })
}

/// The truth without the dropped fields, and how many values of each column were dropped.
fn without_dropped(truth: &[Value]) -> (Vec<Value>, BTreeMap<String, u64>) {
    let mut counts = BTreeMap::new();
    let mut scrubbed = truth.to_vec();
    for contact in &mut scrubbed {
        for link in contact["contact_inboxes"].as_array_mut().expect("links") {
            let inbox = link["inbox"].as_object_mut().expect("inbox");
            for key in DROPPED {
                if inbox.remove(*key).is_some() {
                    *counts.entry(format!("inbox__{key}")).or_insert(0) += 1;
                }
            }
        }
    }
    (scrubbed, counts)
}

fn holds_marker(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|w| w == MARKER)
}

#[test]
fn legacy_inbox_credentials_are_left_out_and_counted() {
    let fake = legacy_fake(200);
    let truth = fake.truth();
    assert!(
        holds_marker(Value::Array(truth.clone()).to_string().as_bytes()),
        "the server plants credentials"
    );
    let (scrubbed, counts) = without_dropped(&truth);
    assert_eq!(counts.len(), DROPPED.len(), "every planted field is served");
    for format in ["csv", "ndjson", "parquet"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = export(&fake.base_url(), format, dir.path(), &[]);
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        // Exactly the truth minus the dropped fields: the non-secret legacy fields
        // (imap_port, hmac_mandatory, inbox_identifier, working_hours...) are kept.
        assert_export_matches(dir.path(), format, &scrubbed, &fake.definitions());
        for (path, bytes) in all_file_bytes(dir.path()) {
            assert!(!holds_marker(&bytes), "{format}: a credential in {path}");
        }
        assert!(!holds_marker(run.stderr.as_bytes()), "{}", run.stderr);
        let manifest = manifest(dir.path()).expect("manifest");
        assert_eq!(manifest["keep_inbox_secrets"], false);
        let reported: BTreeMap<String, u64> =
            serde_json::from_value(manifest["inbox_fields_dropped"].clone()).expect("counts");
        assert_eq!(reported, counts, "{format}");
        let total: u64 = counts.values().sum();
        assert!(
            run.stderr.contains(&format!("left out {total} values")),
            "{}",
            run.stderr
        );
        assert_no_token(&run, dir.path());
    }
}

#[test]
fn keep_inbox_secrets_keeps_every_field() {
    let fake = legacy_fake(60);
    let truth = fake.truth();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "csv",
        dir.path(),
        &["--keep-inbox-secrets"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_export_matches(dir.path(), "csv", &truth, &fake.definitions());
    let inboxes = std::fs::read(dir.path().join("contact_inboxes.csv")).expect("csv");
    assert!(
        holds_marker(&inboxes),
        "the credentials are kept on request"
    );
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["keep_inbox_secrets"], true);
    assert_eq!(manifest["inbox_fields_dropped"], serde_json::json!({}));
    assert!(!run.stderr.contains("left out"), "{}", run.stderr);
}
