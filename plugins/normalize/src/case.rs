//! Case styles for event names: splitting a name into words and joining them again.

use serde::Deserialize;

/// How event names are written after normalisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CaseStyle {
    /// Leave the case alone.
    #[default]
    #[serde(rename = "keep")]
    Keep,
    /// `order_completed`
    #[serde(rename = "snake_case")]
    Snake,
    /// `order-completed`
    #[serde(rename = "kebab-case")]
    Kebab,
    /// `orderCompleted`
    #[serde(rename = "camelCase")]
    Camel,
    /// `OrderCompleted`
    #[serde(rename = "PascalCase")]
    Pascal,
    /// `Order Completed`
    #[serde(rename = "Title Case")]
    Title,
    /// `order completed`
    #[serde(rename = "lower case")]
    Lower,
}

/// Splits a name into words: at every character that is not a letter or digit, between a
/// lower-case letter and an upper-case one (`orderCompleted`), and before a capital that
/// follows a capital or a digit and starts a lower-case run (`HTTPRequest` is `HTTP`, `Request`;
/// `step2Done` is `step2`, `Done`; `2FA` stays one word).
fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() && c.is_uppercase() && i > 0 {
            let previous = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if previous.is_lowercase() || next_is_lower {
                words.push(std::mem::take(&mut current));
            }
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

impl CaseStyle {
    /// `name` written in this style. Characters that are neither letters nor digits separate
    /// words and are dropped, except with [`CaseStyle::Keep`], which returns `name` as it is.
    pub fn apply(self, name: &str) -> String {
        let words = words(name);
        let lower = || words.iter().map(|w| w.to_lowercase());
        match self {
            CaseStyle::Keep => name.to_owned(),
            CaseStyle::Snake => lower().collect::<Vec<_>>().join("_"),
            CaseStyle::Kebab => lower().collect::<Vec<_>>().join("-"),
            CaseStyle::Lower => lower().collect::<Vec<_>>().join(" "),
            CaseStyle::Title => words
                .iter()
                .map(|w| capitalized(w))
                .collect::<Vec<_>>()
                .join(" "),
            CaseStyle::Pascal => words.iter().map(|w| capitalized(w)).collect(),
            CaseStyle::Camel => words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        w.to_lowercase()
                    } else {
                        capitalized(w)
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_at_separators_and_case_changes() {
        assert_eq!(words("Order Completed"), ["Order", "Completed"]);
        assert_eq!(words("order_completed"), ["order", "completed"]);
        assert_eq!(words("orderCompleted"), ["order", "Completed"]);
        assert_eq!(words("HTTPRequest sent"), ["HTTP", "Request", "sent"]);
        assert_eq!(words("  Add to   Cart! "), ["Add", "to", "Cart"]);
        assert_eq!(words("step2Done 2FA"), ["step2", "Done", "2FA"]);
        assert_eq!(words("Überprüfung_Gestartet"), ["Überprüfung", "Gestartet"]);
        assert!(words(" - ").is_empty());
    }

    #[test]
    fn writes_every_style() {
        let name = "checkout step-Viewed";
        assert_eq!(CaseStyle::Keep.apply(name), name);
        assert_eq!(CaseStyle::Snake.apply(name), "checkout_step_viewed");
        assert_eq!(CaseStyle::Kebab.apply(name), "checkout-step-viewed");
        assert_eq!(CaseStyle::Camel.apply(name), "checkoutStepViewed");
        assert_eq!(CaseStyle::Pascal.apply(name), "CheckoutStepViewed");
        assert_eq!(CaseStyle::Title.apply(name), "Checkout Step Viewed");
        assert_eq!(CaseStyle::Lower.apply(name), "checkout step viewed");
    }

    #[test]
    fn styles_round_trip() {
        for style in [
            CaseStyle::Snake,
            CaseStyle::Camel,
            CaseStyle::Title,
            CaseStyle::Kebab,
        ] {
            let written = style.apply("Product List Filtered");
            assert_eq!(
                CaseStyle::Title.apply(&written),
                "Product List Filtered",
                "{style:?}"
            );
        }
    }
}
