//! Column names that SQL engines take without quoting (`sink.column_names = "snake"`).
//!
//! Receives a table's column names in output order (attribute keys as the server sent them:
//! spaces, dots, Hebrew, upper case); emits one name per column, lowercase ASCII letters,
//! digits and `_` only, unique within the table. Glue and Athena allow nothing else, Spark's
//! DataFrame API needs backticks around dots, and every SQL engine needs quotes for the rest.
//!
//! Each character outside `[a-z0-9_]` (after lowercasing ASCII) becomes one `_`, so the
//! export's own `__` between a group and its key stays visible (`custom_attributes__plan_name`).
//! A name that would start with a digit, or be empty, gets a leading `_`. Two columns that come
//! out the same keep their order: the first takes the name, the next `name_2`, then `name_3`,
//! skipping any suffix another column already has. The mapping depends only on the names and
//! their order, so the same columns get the same names every run; the original of each is kept
//! in the manifest.

use std::collections::HashSet;

/// The snake name of each of `names`, in the same order, unique.
pub fn snake_names<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    // Names that are already snake keep themselves: a column called `plan_2` is never
    // renamed because another one maps onto it.
    let mut taken: HashSet<String> = names
        .iter()
        .map(AsRef::as_ref)
        .filter(|name| snake(name) == *name)
        .map(str::to_owned)
        .collect();
    names
        .iter()
        .map(|name| {
            let want = snake(name.as_ref());
            if want == name.as_ref() {
                return want;
            }
            let mut candidate = want.clone();
            let mut n = 2;
            while taken.contains(&candidate) {
                candidate = format!("{want}_{n}");
                n += 1;
            }
            taken.insert(candidate.clone());
            candidate
        })
        .collect()
}

/// `name` lowercased, with every character outside `[a-z0-9_]` replaced by `_`.
fn snake(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_lowercase_ascii_with_underscores() {
        assert_eq!(
            snake_names(&[
                "id",
                "custom_attributes__Plan Name",
                "additional_attributes__social_profiles__x.com",
                "custom_attributes__עיר",
                "3d",
                "",
            ]),
            [
                "id",
                "custom_attributes__plan_name",
                "additional_attributes__social_profiles__x_com",
                "custom_attributes_____",
                "_3d",
                "_",
            ]
        );
    }

    #[test]
    fn collisions_get_numbered_suffixes_in_column_order() {
        assert_eq!(
            snake_names(&["a.b", "A B", "a_b", "a-b"]),
            ["a_b_2", "a_b_3", "a_b", "a_b_4"],
            "the column already called a_b keeps it; the others follow in order"
        );
        assert_eq!(
            snake_names(&["Plan", "plan_2", "PLAN"]),
            ["plan", "plan_2", "plan_3"]
        );
        assert_eq!(snake_names(&["עיר", "שם", "עיר!"]), ["___", "__", "____"]);
        assert_eq!(snake_names(&["ע", "ש"]), ["_", "__2"]);
    }

    #[test]
    fn names_are_unique_and_stable() {
        let names = ["X", "x", "x_2", "X.2", "x 2", "x_2_2"];
        let once = snake_names(&names);
        assert_eq!(once, snake_names(&names));
        let unique: HashSet<&String> = once.iter().collect();
        assert_eq!(unique.len(), names.len(), "{once:?}");
        for name in &once {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
