//! Segment-spec conventions that destination plugins share when they map events to an API.

use serde_json::Value;

/// `Viewed <name> <noun>` for a named page or screen (`noun` = `Page` / `Screen`), `Loaded a
/// <noun>` for an unnamed one: the event names Segment's integrations (Amplitude, Mixpanel) give
/// page and screen calls, so charts and reports survive a move to weir.
pub fn viewed_event_name(noun: &str, name: Option<&str>) -> String {
    match name.map(str::trim).filter(|name| !name.is_empty()) {
        Some(name) => format!("Viewed {name} {noun}"),
        None => format!("Loaded a {noun}"),
    }
}

/// An id as text: a non-empty string, or a number written out (some SDKs send numeric user
/// ids). `None` for anything else.
pub fn id_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn page_names_and_ids() {
        assert_eq!(
            viewed_event_name("Page", Some(" Pricing ")),
            "Viewed Pricing Page"
        );
        assert_eq!(viewed_event_name("Screen", Some("")), "Loaded a Screen");
        assert_eq!(viewed_event_name("Page", None), "Loaded a Page");
        assert_eq!(id_text(Some(&json!(42))).as_deref(), Some("42"));
        assert_eq!(id_text(Some(&json!("u1"))).as_deref(), Some("u1"));
        assert_eq!(id_text(Some(&json!(""))), None);
        assert_eq!(id_text(Some(&json!(null))), None);
        assert_eq!(id_text(None), None);
    }
}
