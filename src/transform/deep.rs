//! Contacts nested deeper than the flattener parses: their too-deep values kept as text.
//!
//! Receives a contact's JSON text; emits, only when it nests deeper than `MAX_DEPTH` levels, the
//! same contact with each too-deep value replaced by a JSON string holding that value's text as
//! the server sent it, and the columns those values land in. The value is replaced whole at its
//! column: a top-level field's value, a value of a key of `additional_attributes` or
//! `custom_attributes` (column `additional_attributes__<key>`, `custom_attributes__<key>`), or a
//! `contact_inboxes` item (column `contact_inbox`, as any link of another shape). The scan is a
//! loop over brackets and strings, with no recursion, so no depth overflows the stack; what is
//! left after the replacement is at most `MAX_DEPTH` deep and the flattener checks it as JSON.
//! The text inside a replaced value is kept as it came, not checked.

/// The deepest nesting kept as columns: serde_json refuses a 128th level (its recursion
/// limit), and the flattener's two paths parse with it.
pub const MAX_DEPTH: usize = 127;

/// A contact with its too-deep values replaced by strings.
#[derive(Debug, PartialEq)]
pub struct Shallow {
    pub text: String,
    /// The `contacts` column of each replaced value (`None`: a `contact_inboxes` item).
    pub columns: Vec<Option<String>>,
}

/// An object or array met by the scan.
struct Open {
    start: usize,
    depth: usize,
    /// The deepest level met inside it so far.
    deepest: usize,
    /// Its key in the enclosing object (raw text between the quotes), if it is a value there.
    key: Option<(usize, usize)>,
}

/// `text` with every too-deep value replaced, or `None` when it nests at most `MAX_DEPTH`
/// levels or is not an object (the flattener then judges it as usual).
pub fn keep_deep_values_as_text(text: &str) -> Option<Shallow> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    // Spans to replace, in text order, each with its column.
    let mut replace: Vec<(usize, usize, Option<String>)> = Vec::new();
    // The last string met directly in an object, and whether a `:` followed it (a key).
    let mut last_string: Option<(usize, usize)> = None;
    let mut pending_key: Option<(usize, usize)> = None;
    let mut at = 0;
    let mut deepest = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                let start = at + 1;
                at = start;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, at.min(bytes.len())));
            }
            b':' => pending_key = last_string.take(),
            b',' => pending_key = None,
            open @ (b'{' | b'[') => {
                if stack.is_empty() && (open != b'{' || at != text.len() - text.trim_start().len())
                {
                    return None;
                }
                let depth = stack.len() + 1;
                deepest = deepest.max(depth);
                let key = if stack.last().is_some_and(|o| bytes[o.start] == b'{') {
                    pending_key.take()
                } else {
                    None
                };
                stack.push(Open {
                    start: at,
                    depth,
                    deepest: depth,
                    key,
                });
            }
            b'}' | b']' => {
                let closed = stack.pop()?;
                let end = at + 1;
                if let Some(parent) = stack.last_mut() {
                    parent.deepest = parent.deepest.max(closed.deepest);
                }
                if closed.deepest > MAX_DEPTH
                    && let Some(column) = column_of(text, &stack, &closed)
                {
                    replace.push((closed.start, end, column));
                }
                pending_key = None;
            }
            _ => {}
        }
        at += 1;
    }
    if deepest <= MAX_DEPTH || !stack.is_empty() {
        return None;
    }
    replace.sort_by_key(|(start, _, _)| *start);
    let mut shallow = String::with_capacity(text.len() + replace.len() * 16);
    let mut columns = Vec::with_capacity(replace.len());
    let mut copied = 0;
    for (start, end, column) in replace {
        shallow.push_str(&text[copied..start]);
        shallow.push_str(&serde_json::to_string(&text[start..end]).ok()?);
        copied = end;
        columns.push(column);
    }
    shallow.push_str(&text[copied..]);
    Some(Shallow {
        text: shallow,
        columns,
    })
}

/// Where a too-deep container `closed` is replaced, given the containers still open around it:
/// `Some(column)` when it is a column's whole value, `None` (not replaced here) when it is
/// deeper inside one, whose replacement then covers it.
fn column_of(text: &str, around: &[Open], closed: &Open) -> Option<Option<String>> {
    let key = |span: Option<(usize, usize)>| span.map(|(start, end)| unescaped(&text[start..end]));
    match closed.depth {
        2 => {
            let name = key(closed.key)?;
            // These are taken apart one level further down.
            let special = matches!(
                (name.as_str(), text.as_bytes()[closed.start]),
                ("additional_attributes" | "custom_attributes", b'{') | ("contact_inboxes", b'[')
            );
            (!special).then_some(Some(name))
        }
        3 => {
            let parent = around.last()?;
            let parent_key = key(parent.key)?;
            match (parent_key.as_str(), text.as_bytes()[parent.start]) {
                ("additional_attributes" | "custom_attributes", b'{') => {
                    Some(Some(format!("{parent_key}__{}", key(closed.key)?)))
                }
                ("contact_inboxes", b'[') => Some(None),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A key's text between its quotes, with JSON escapes resolved.
fn unescaped(raw: &str) -> String {
    if raw.contains('\\') {
        serde_json::from_str(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_owned())
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn shallow_contacts_are_left_alone() {
        for text in [
            r#"{"id":1,"a":{"b":[1,{"c":"]]]]"}]}}"#.to_owned(),
            format!(r#"{{"id":1,"x":{}}}"#, nested(MAX_DEPTH - 1)),
            "[1]".to_owned(),
            format!("[{}]", nested(300)),
        ] {
            assert_eq!(keep_deep_values_as_text(&text), None, "{text}");
        }
    }

    #[test]
    fn a_too_deep_value_becomes_the_text_of_its_column() {
        let deep = nested(MAX_DEPTH);
        let text = format!(
            r#"{{"id":1,"x":{deep},"additional_attributes":{{"city":"Haifa","k\"q":{{"a":{deep}}}}},"custom_attributes":{{"c":{deep},"ok":[1]}},"contact_inboxes":[{{"source_id":"s","inbox":{{"id":{deep}}}}},{{"source_id":"t"}}],"name":"n"}}"#
        );
        let shallow = keep_deep_values_as_text(&text).expect("too deep");
        let value: serde_json::Value = serde_json::from_str(&shallow.text).expect("parses");
        assert_eq!(value["x"], deep.as_str());
        assert_eq!(value["additional_attributes"]["city"], "Haifa");
        assert_eq!(
            value["additional_attributes"]["k\"q"],
            format!(r#"{{"a":{deep}}}"#).as_str()
        );
        assert_eq!(value["custom_attributes"]["c"], deep.as_str());
        assert_eq!(value["custom_attributes"]["ok"], serde_json::json!([1]));
        assert_eq!(
            value["contact_inboxes"][0],
            format!(r#"{{"source_id":"s","inbox":{{"id":{deep}}}}}"#).as_str()
        );
        assert_eq!(value["contact_inboxes"][1]["source_id"], "t");
        assert_eq!(
            shallow.columns,
            [
                Some("x".to_owned()),
                Some("additional_attributes__k\"q".to_owned()),
                Some("custom_attributes__c".to_owned()),
                None,
            ]
        );
    }

    #[test]
    fn ten_thousand_levels_do_not_overflow_the_stack() {
        let text = format!(
            r#"{{"id":1,"additional_attributes":{{"a":{}}}}}"#,
            nested(10_000)
        );
        let shallow = keep_deep_values_as_text(&text).expect("too deep");
        assert_eq!(shallow.columns, [Some("additional_attributes__a".into())]);
    }
}
