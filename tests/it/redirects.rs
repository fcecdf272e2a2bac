//! The `api_access_token` header goes only to the `--base-url` origin: a redirect to another
//! origin fails the export before anything is sent there; a redirect within the origin is
//! followed.

use crate::harness::{Fake, TOKEN, assert_no_token, export, manifest};
use crate::loopback::{Loopback, Reply};

/// Whether a raw request head carries the token, under any header name or in the target.
fn carries_token(head: &str) -> bool {
    head.contains(TOKEN) || head.to_ascii_lowercase().contains("api_access_token")
}

#[test]
fn a_redirect_to_another_origin_never_carries_the_token() {
    // The other origin answers like a Chatwoot would, so following the redirect would work.
    let elsewhere = Loopback::start(|_, _| {
        Reply::json(
            200,
            r#"{"meta":{"count":0,"current_page":"1"},"payload":[]}"#,
        )
    });
    let target = format!("{}/api/v1/accounts/1/contacts", elsewhere.base_url());
    let good = Fake::with_contacts(20);
    for status in [301, 302, 303, 307, 308] {
        let location = format!("{target}?page=1&sort=created_at");
        let redirecting = Loopback::start(move |_, _| Reply::redirect(status, location.clone()));
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(export(&good.base_url(), "csv", dir.path(), &[]).code, 0);
        let previous = std::fs::read(dir.path().join("manifest.json")).expect("manifest");

        let run = export(&redirecting.base_url(), "csv", dir.path(), &[]);
        assert_eq!(run.code, 1, "{status}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{:?}", run.stderr);
        let want = format!(
            "chatwoot-export: error: the server redirected page 1 (HTTP {status}) to another origin ({target}), where the token is never sent"
        );
        assert!(lines[0].starts_with(&want), "{}", lines[0]);
        assert_eq!(
            std::fs::read(dir.path().join("manifest.json")).expect("manifest"),
            previous,
            "{status}: the previous export stays whole"
        );
        assert!(
            redirecting.heads().iter().all(|h| h.contains(TOKEN)),
            "the token did go to --base-url"
        );
        assert_no_token(&run, dir.path());
    }
    let reached = elsewhere.heads();
    assert!(
        !reached.iter().any(|h| carries_token(h)),
        "the token reached another origin: {reached:?}"
    );
    assert!(
        reached.is_empty(),
        "nothing is sent to the other origin: {reached:?}"
    );
}

#[test]
fn a_redirect_within_the_origin_is_followed_with_the_token() {
    // `--base-url .../old` moved to the root: every page is redirected, then served.
    let server = Loopback::start(|target, head| {
        if let Some(rest) = target.strip_prefix("/old") {
            return Reply::redirect(308, rest.to_owned());
        }
        if !head.contains(&format!("api_access_token: {TOKEN}")) {
            return Reply::json(401, r#"{"error":"Invalid Access Token"}"#);
        }
        if target.contains("page=1&") {
            Reply::json(
                200,
                r#"{"meta":{"count":2,"current_page":"1"},"payload":[
                    {"id":1,"name":"Dana","created_at":1700000000},
                    {"id":2,"name":"Noa","created_at":1700000600}]}"#,
            )
        } else {
            Reply::json(200, r#"{"meta":{"count":2},"payload":[]}"#)
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &format!("{}/old", server.base_url()),
        "ndjson",
        dir.path(),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let manifest = manifest(dir.path()).expect("manifest");
    assert_eq!(manifest["unique_contacts"], 2);
    let heads = server.heads();
    let page_of = |head: &String, prefix: &str| {
        let query = head.strip_prefix(prefix)?;
        let number = query.split("page=").nth(1)?.split(['&', ' ']).next()?;
        number.parse::<u64>().ok()
    };
    let served: Vec<u64> = heads
        .iter()
        .filter_map(|h| page_of(h, "GET /api/v1/accounts/1/contacts?"))
        .collect();
    let redirected: Vec<u64> = heads
        .iter()
        .filter_map(|h| page_of(h, "GET /old/api/v1/accounts/1/contacts?"))
        .collect();
    // Pages 1 and 2 (the empty one that ends the walk) were needed; the walk may have asked
    // for a few more with page 1, before it knew the count.
    assert!(
        served.contains(&1) && served.contains(&2),
        "pages 1 and 2 served: {heads:?}"
    );
    assert!(
        served.iter().all(|page| redirected.contains(page)),
        "every page served after its redirect: {heads:?}"
    );
    assert_no_token(&run, dir.path());
}

#[test]
fn a_redirect_loop_fails_with_a_clear_error() {
    let server = Loopback::start(|target, _| Reply::redirect(302, target.to_owned()));
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&server.base_url(), "csv", dir.path(), &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("page 1 was redirected more than 5 times"),
        "{}",
        run.stderr
    );
    assert!(manifest(dir.path()).is_none());
    assert_no_token(&run, dir.path());
}
