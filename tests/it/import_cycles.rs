//! The import circle check of tests/run.sh (`tests/import_cycles.py`, issue 16): the crate has no
//! circle, and the check does find one (across a multi-line `use` group and a `super::` path),
//! while a test module's back-reference is not one.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::python;

/// Runs the check on the source folder `src`.
fn check(src: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import_cycles.py");
    Command::new(python())
        .arg(&script)
        .arg(src)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}; run tests/run.sh", python()))
}

/// Writes the files of a small crate; returns its folder (kept alive by the TempDir).
fn write_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp folder");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

#[test]
fn import_cycles_none_in_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let output = check(&src);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn import_cycles_found_and_named() {
    // stage/a.rs -> stage/b.rs through a `use` group over several lines; b -> a through
    // `super::`; c only imports, so it is named in no circle.
    let dir = write_crate(&[
        ("lib.rs", "pub mod stage;\npub mod c;\n"),
        ("stage/mod.rs", "pub mod a;\npub mod b;\n"),
        (
            "stage/a.rs",
            "use crate::{\n    c::Z,\n    stage::b::{self, Y},\n};\npub struct X;\n",
        ),
        ("stage/b.rs", "use super::a::X;\npub struct Y;\n"),
        (
            "c.rs",
            "pub(super) struct Z;\n// crate::stage::a::X in a comment is no import\n",
        ),
    ]);
    let output = check(dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line per circle: {stderr}");
    let a = dir.path().join("stage/a.rs").display().to_string();
    let b = dir.path().join("stage/b.rs").display().to_string();
    assert_eq!(
        lines[0],
        format!(
            "import_cycles: import circle: {a} (crate::stage::b) -> {b} (crate::stage::a::X) -> {a}: \
             move what they share into a module that imports none of them"
        )
    );

    // The same files without b's import have no circle, and neither has a back-reference
    // from a test module.
    let dir = write_crate(&[
        ("lib.rs", "pub mod stage;\npub mod c;\n"),
        ("stage/mod.rs", "pub mod a;\npub mod b;\n"),
        ("stage/a.rs", "use crate::stage::b::Y;\npub struct X;\n"),
        (
            "stage/b.rs",
            "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::super::a::X;\n    use crate::stage::a::X;\n}\n",
        ),
        ("c.rs", "\n"),
    ]);
    let output = check(dir.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
