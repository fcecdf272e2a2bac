//! The token never shows: not in output, files, errors; and it can come from a file.

use crate::harness::{Fake, TOKEN, assert_no_token, run_with_env};

#[test]
fn a_token_file_works_and_the_token_shows_nowhere() {
    let fake = Fake::with_contacts(45);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let out = dir.path().join("out");
    let run = run_with_env(
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
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_token(&run, &out);
}
