//! The account's custom attribute definitions: `GET /api/v1/accounts/{id}/custom_attribute_definitions`.
//!
//! Receives the response body (a bare JSON array, both models' definitions when no
//! `attribute_model` is asked for); emits the contact attributes' keys and display types, which
//! type the `custom_attributes__<key>` columns before any value is seen (see
//! `Flattener::declare_custom_attributes`), and each definition whole, as the API rendered it
//! (the `custom_attribute_definitions` table). Lenient like the page model: items that are not
//! contact attributes, or lack a string key or display type, are skipped, not errors.

use serde::Deserialize;

/// One contact attribute's definition, as far as the export needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeDefinition {
    /// The key in `custom_attributes` (not restricted by the server: spaces, dots, Hebrew).
    pub key: String,
    /// `text`, `number`, `currency`, `percent`, `link`, `date`, `list` or `checkbox`.
    pub display_type: String,
    /// The definition as the server sent it (a JSON object).
    pub raw: serde_json::Value,
}

/// The contact attribute definitions in a response body.
pub fn parse_definitions(body: &[u8]) -> Result<Vec<AttributeDefinition>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Item {
        attribute_key: Option<serde_json::Value>,
        attribute_display_type: Option<serde_json::Value>,
        attribute_model: Option<serde_json::Value>,
    }
    let raw: Vec<serde_json::Value> = serde_json::from_slice(body)?;
    let items = raw
        .into_iter()
        .map(|raw| Ok((Item::deserialize(&raw)?, raw)))
        .collect::<Result<Vec<(Item, serde_json::Value)>, serde_json::Error>>()?;
    Ok(items
        .into_iter()
        .filter(|(item, _)| {
            // The string form is what the API renders; the enum's integer is 1 in the database.
            matches!(&item.attribute_model, Some(serde_json::Value::String(m)) if m == "contact_attribute")
                || item.attribute_model == Some(1.into())
        })
        .filter_map(|(item, raw)| match (item.attribute_key, item.attribute_display_type) {
            (Some(serde_json::Value::String(key)), Some(serde_json::Value::String(display_type))) => {
                Some(AttributeDefinition { key, display_type, raw })
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_contact_attributes_and_skips_the_rest() {
        let body = br#"[
            {"id":1,"attribute_key":"plan","attribute_display_type":"list","attribute_model":"contact_attribute","attribute_values":["a"]},
            {"id":2,"attribute_key":"priority","attribute_display_type":"number","attribute_model":"conversation_attribute"},
            {"id":3,"attribute_key":"seats count","attribute_display_type":"number","attribute_model":1},
            {"id":4,"attribute_key":null,"attribute_display_type":"text","attribute_model":"contact_attribute"},
            {"id":5,"attribute_key":"odd","attribute_model":"contact_attribute"}
        ]"#;
        let definitions = parse_definitions(body).expect("parses");
        let keys: Vec<(&str, &str)> = definitions
            .iter()
            .map(|d| (d.key.as_str(), d.display_type.as_str()))
            .collect();
        assert_eq!(keys, [("plan", "list"), ("seats count", "number")]);
    }

    #[test]
    fn a_body_that_is_not_an_array_is_an_error() {
        assert!(parse_definitions(br#"{"payload":[]}"#).is_err());
        assert!(parse_definitions(b"<html>").is_err());
        assert_eq!(parse_definitions(b"[]").expect("empty"), []);
    }
}
