//! The token never shows: not in output, files, errors, whatever the server sends back; and it
//! can come from a file.

use std::path::Path;

use crate::harness::{Fake, Run, TOKEN, assert_no_token, run_with_env};
use crate::loopback::{Loopback, Reply};

/// `contacts` against `base_url` with the token in the environment and every logging and
/// backtrace switch a user might try turned on.
fn export_loudly(base_url: &str, out: &std::path::Path) -> crate::harness::Run {
    run_with_env(
        &[
            "contacts",
            "--base-url",
            base_url,
            "--account-id",
            "1",
            "--out",
            out.to_str().expect("path"),
            // One retry shows the retry path too, without the long backoff of eight.
            "--max-retries",
            "1",
        ],
        &[
            ("CHATWOOT_API_TOKEN", TOKEN),
            ("RUST_LOG", "trace"),
            ("RUST_BACKTRACE", "full"),
        ],
    )
}

#[test]
fn a_token_file_works_and_the_token_shows_nowhere() {
    let fake = Fake::with_contacts(45);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let out = dir.path().join("out");
    let run = export_with_token_file(
        &fake,
        &token_file,
        &out,
        &[("RUST_LOG", "trace"), ("RUST_BACKTRACE", "full")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_token(&run, &out);
}

fn export_with_token_file(fake: &Fake, token_file: &Path, out: &Path, env: &[(&str, &str)]) -> Run {
    run_with_env(
        &[
            "contacts",
            "--base-url",
            &fake.base_url(),
            "--account-id",
            "1",
            "--token-file",
            token_file.to_str().expect("path"),
            "--out",
            out.to_str().expect("path"),
            "--no-progress",
        ],
        env,
    )
}

#[test]
fn a_token_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let fake = Fake::with_contacts(15);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        let out = dir.path().join(format!("out-{mode:o}"));
        let run = export_with_token_file(&fake, &token_file, &out, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            run.stderr.contains("can be read by other users") && run.stderr.contains("chmod 600"),
            warned,
            "mode {mode:o}: {}",
            run.stderr
        );
        assert_no_token(&run, &out);
    }
}

#[test]
fn a_server_echoing_the_token_never_gets_it_printed() {
    // Each server quotes the request it received, token header included, back at the tool.
    let echo = |head: &str| head.replace(['\r', '\n'], " ").replace('"', "'");
    let cases: Vec<(&str, Loopback, Option<&str>)> = vec![
        (
            "401 quoting the request",
            Loopback::start(move |_, head| {
                Reply::json(401, format!(r#"{{"error":"{}"}}"#, echo(head)))
            }),
            Some("****"),
        ),
        (
            "403 quoting the request",
            Loopback::start(move |_, head| {
                Reply::json(403, format!(r#"{{"errors":["{}"]}}"#, echo(head)))
            }),
            Some("****"),
        ),
        (
            "500 with the request as text",
            Loopback::start(|_, head| Reply::json(500, head.to_owned())),
            Some("****"),
        ),
        (
            "a page that is not JSON",
            Loopback::start(|_, head| Reply::json(200, head.to_owned())),
            None,
        ),
        (
            "a redirect to another origin carrying the token",
            Loopback::start(|_, _| {
                Reply::redirect(
                    302,
                    format!(
                        "http://{TOKEN}:{TOKEN}@127.0.0.1:9/{TOKEN}/x?api_access_token={TOKEN}"
                    ),
                )
            }),
            Some("(http://127.0.0.1:9/****/x)"),
        ),
    ];
    for (what, server, shows) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = export_loudly(&server.base_url(), dir.path());
        assert_ne!(run.code, 0, "{what}: {}", run.stderr);
        assert!(
            server.heads().iter().any(|h| h.contains(TOKEN)),
            "{what}: the server had the token to echo"
        );
        if let Some(shows) = shows {
            assert!(
                run.stderr.contains(shows),
                "{what}: the echo is quoted, scrubbed: {}",
                run.stderr
            );
        }
        assert_eq!(run.stderr.lines().count(), 1, "{what}: {}", run.stderr);
        assert_no_token(&run, dir.path());
    }
}

#[test]
fn a_token_that_cannot_be_sent_is_refused_without_being_shown() {
    let fake = Fake::with_contacts(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\u{1}\n")).expect("write token");
    let out = dir.path().join("out");
    let run = export_with_token_file(&fake, &token_file, &out, &[("RUST_LOG", "trace")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot go in an HTTP header"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.requests(), 0);
    assert!(!run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN));
}

#[test]
fn attribute_definitions_echoing_the_token_never_get_it_printed() {
    // The definitions answer with the request as a JSON string, which the parser's message
    // would quote; the pages are fine, so the export completes with a warning.
    let server = Loopback::start(|target, head| {
        if target.contains("/custom_attribute_definitions") {
            return Reply::json(200, serde_json::Value::from(head).to_string());
        }
        if target.contains("page=1&") {
            return Reply::json(
                200,
                r#"{"meta":{"count":1},"payload":[{"id":1,"created_at":1700000000}]}"#,
            );
        }
        Reply::json(200, r#"{"meta":{"count":1},"payload":[]}"#)
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export_loudly(&server.base_url(), dir.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot read the custom attribute definitions (not the expected JSON: invalid type: string \"GET /api/v1/accounts/1/custom_attribute_definitions"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("****"), "{}", run.stderr);
    assert!(
        server.heads().iter().any(|h| h.contains(TOKEN)),
        "the server had the token to echo"
    );
    assert_no_token(&run, dir.path());
}
