//! weir transformer `normalize`: writes event names one way and derives properties.
//!
//! For every event whose `type` is in `types` (track, page and screen by default), in order:
//!
//! 1. the name (`event` of a track, `name` of a page or screen) is trimmed, written in the
//!    configured case style and renamed through the `rename` map;
//! 2. `add_properties` are added to `properties` where missing;
//! 3. `currency` derives converted amounts, such as `properties.revenue_usd` from
//!    `properties.revenue` and `properties.currency`.
//!
//! Other events pass unchanged. See README.md for the config.

mod case;
mod currency;

use std::collections::HashMap;

use serde::Deserialize;
use weir_plugin::serde_json::{Map, Value};
use weir_plugin::{Event, InitError, Outcome, Plugin, Transform};

pub use case::CaseStyle;
pub use currency::{CurrencyConfig, Unconvertible};

/// The plugin's config (the `[[plugins]]` table in weir.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Event types the plugin changes; others pass unchanged.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Trim the name and collapse runs of whitespace inside it to one space.
    #[serde(default = "default_true")]
    pub trim: bool,
    /// Case style of names.
    #[serde(default)]
    pub case: CaseStyle,
    /// Old name → new name. Keys are compared after trimming and case conversion (so with
    /// `snake_case`, the key `"Order Done"` matches `order-done`, `OrderDone`...); values are
    /// used exactly as written.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Properties added to `properties` when missing (an existing value is never replaced).
    /// Keys may be dotted paths below `properties`.
    #[serde(default)]
    pub add_properties: Map<String, Value>,
    /// Derived amounts in one currency.
    #[serde(default)]
    pub currency: Option<CurrencyConfig>,
}

fn default_types() -> Vec<String> {
    ["track", "page", "screen"].map(String::from).to_vec()
}

fn default_true() -> bool {
    true
}

const KNOWN_TYPES: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// The `normalize` transformer.
#[derive(Debug)]
pub struct Normalize {
    types: Vec<String>,
    trim: bool,
    case: CaseStyle,
    /// Keys already normalised like incoming names.
    rename: HashMap<String, String>,
    /// `(path below the event root, value)`.
    add_properties: Vec<(String, Value)>,
    currency: Option<currency::Converter>,
}

impl Plugin for Normalize {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if let Some(unknown) = config
            .types
            .iter()
            .find(|t| !KNOWN_TYPES.contains(&t.as_str()))
        {
            return Err(format!(
                "`types` lists `{unknown}`; event types are {}",
                KNOWN_TYPES.join(", ")
            )
            .into());
        }
        let mut plugin = Normalize {
            types: config.types,
            trim: config.trim,
            case: config.case,
            rename: HashMap::new(),
            add_properties: config
                .add_properties
                .into_iter()
                .map(|(key, value)| (format!("properties.{key}"), value))
                .collect(),
            currency: config.currency.map(currency::Converter::new).transpose()?,
        };
        plugin.rename = config
            .rename
            .into_iter()
            .map(|(from, to)| (plugin.normalize_name(&from), to))
            .collect();
        Ok(plugin)
    }
}

impl Normalize {
    /// Trim and case conversion, without renaming.
    fn normalize_name(&self, name: &str) -> String {
        let trimmed = if self.trim {
            name.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            name.to_owned()
        };
        self.case.apply(&trimmed)
    }

    fn rewrite(&self, event: &mut Event) -> Result<(), String> {
        if let Some(name) = event.event_name() {
            let normalized = self.normalize_name(name);
            let new_name = match self.rename.get(&normalized) {
                Some(renamed) => renamed.clone(),
                None => normalized,
            };
            if event.event_name() != Some(new_name.as_str()) {
                event.set_event_name(new_name);
            }
        }
        for (path, value) in &self.add_properties {
            if event.get(path).is_none() {
                event.set(path, value.clone()).map_err(|e| e.to_string())?;
            }
        }
        if let Some(converter) = &self.currency {
            converter.apply(event)?;
        }
        Ok(())
    }
}

impl Transform for Normalize {
    fn transform(&mut self, mut event: Event) -> Outcome {
        let applies = event
            .event_type()
            .is_some_and(|t| self.types.iter().any(|wanted| wanted == t));
        if !applies {
            return Outcome::Keep(event);
        }
        match self.rewrite(&mut event) {
            Ok(()) => Outcome::Keep(event),
            Err(error) => Outcome::Fail(error),
        }
    }
}

weir_plugin::export_transform!(Normalize);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn plugin(config: Value) -> Normalize {
        weir_plugin::init_from_json::<Normalize>(&config.to_string()).unwrap()
    }

    fn keep(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Keep(event) => Value::Object(event.into_fields()),
            other => panic!("expected keep, got {other:?}"),
        }
    }

    fn event(value: Value) -> Event {
        Event::from_value(value).unwrap()
    }

    #[test]
    fn fixtures() {
        weir_plugin::testing::assert_transform_fixtures::<Normalize>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures"
        ));
    }

    #[test]
    fn rename_keys_match_any_spelling_of_the_name() {
        let mut p =
            plugin(json!({"case": "snake_case", "rename": {"Order Done": "Order Completed"}}));
        for spelling in ["Order Done", "order_done", "orderDone", " order-done "] {
            let out = keep(p.transform(event(json!({"type": "track", "event": spelling}))));
            assert_eq!(out["event"], json!("Order Completed"), "{spelling}");
        }
    }

    #[test]
    fn without_trim_whitespace_is_kept() {
        let mut p = plugin(json!({"trim": false}));
        let out = keep(p.transform(event(json!({"type": "page", "name": " Home  Page"}))));
        assert_eq!(out["name"], json!(" Home  Page"));
    }

    #[test]
    fn add_properties_never_replace_values() {
        let mut p = plugin(json!({"add_properties": {"app": "shop", "plan.tier": "free"}}));
        let out = keep(p.transform(event(
            json!({"type": "track", "event": "A", "properties": {"app": "kiosk"}}),
        )));
        assert_eq!(
            out["properties"],
            json!({"app": "kiosk", "plan": {"tier": "free"}})
        );
    }

    #[test]
    fn a_scalar_properties_field_fails_the_event() {
        let mut p = plugin(json!({"add_properties": {"app": "shop"}}));
        let outcome = p.transform(event(
            json!({"type": "track", "event": "A", "properties": "x"}),
        ));
        assert!(matches!(outcome, Outcome::Fail(e) if e.contains("`properties` is a string")));
    }

    #[test]
    fn config_mistakes_are_reported() {
        let err = weir_plugin::init_from_json::<Normalize>(r#"{"case": "SCREAMING"}"#).unwrap_err();
        assert!(err.contains("at `case`"), "{err}");
        let err = weir_plugin::init_from_json::<Normalize>(r#"{"types": ["trak"]}"#).unwrap_err();
        assert!(err.contains("`trak`"), "{err}");
    }
}
