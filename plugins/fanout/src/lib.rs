//! weir transformer `fanout`: one event with an array becomes one event per element.
//!
//! The classic case is e-commerce: an `Order Completed` track with `properties.products` becomes
//! one `Product Purchased` track per product, each carrying the order's properties and the
//! product's fields. Events that match no rule are kept unchanged. See README.md for the config.

use serde::Deserialize;
use weir_plugin::serde_json::{Map, Value};
use weir_plugin::{Event, InitError, Outcome, Plugin, Transform};

/// The plugin's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tried in order; the first rule whose `event` matches applies.
    pub rules: Vec<Rule>,
}

/// One fan-out rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name of the events to fan out (`event` of a track, `name` of a page or screen), exactly.
    pub event: String,
    /// Dotted path of the array, e.g. `properties.products`.
    pub array: String,
    /// Name of the events produced, one per element.
    pub emit: String,
    /// Dotted path of the object each element's fields are merged into (they win over the
    /// fields already there).
    #[serde(default = "default_into")]
    pub into: String,
    /// Property (below `into`) that receives the element's position in the array, if set.
    #[serde(default)]
    pub index_property: Option<String>,
    /// Also pass the original event on, first, with its array intact.
    #[serde(default)]
    pub keep_original: bool,
    /// Largest array fanned out; a longer one fails the event instead of flooding the pipeline.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
}

fn default_into() -> String {
    "properties".to_owned()
}

fn default_max_items() -> usize {
    1000
}

/// The `fanout` transformer.
#[derive(Debug)]
pub struct Fanout {
    rules: Vec<Rule>,
}

fn valid_path(path: &str) -> bool {
    !path.split('.').any(str::is_empty)
}

impl Plugin for Fanout {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if config.rules.is_empty() {
            return Err("`rules` is empty: give at least one rule".into());
        }
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.event.is_empty() || rule.emit.is_empty() {
                return Err(format!("rules[{i}]: `event` and `emit` must not be empty").into());
            }
            for (field, path) in [("array", &rule.array), ("into", &rule.into)] {
                if !valid_path(path) {
                    return Err(format!(
                        "rules[{i}].{field}: `{path}` is not a dotted path like `properties.products`"
                    )
                    .into());
                }
            }
            if rule.max_items == 0 {
                return Err(format!("rules[{i}].max_items must be at least 1").into());
            }
        }
        Ok(Fanout {
            rules: config.rules,
        })
    }
}

impl Rule {
    fn expand(&self, event: Event) -> Outcome {
        match event.get(&self.array) {
            None | Some(Value::Null) => return Outcome::Keep(event),
            Some(Value::Array(items)) if items.is_empty() => return Outcome::Keep(event),
            Some(Value::Array(items)) if items.len() > self.max_items => {
                return Outcome::Fail(format!(
                    "`{}` has {} elements, more than max_items ({})",
                    self.array,
                    items.len(),
                    self.max_items
                ));
            }
            Some(Value::Array(_)) => {}
            Some(_) => return Outcome::Fail(format!("`{}` is not an array", self.array)),
        }

        let original = self.keep_original.then(|| event.clone());
        // Every child starts from the event without the array: copying the whole array into
        // each of its elements would make the output quadratic in its length.
        let mut base = event;
        let items = match base.remove(&self.array) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        base.set_event_name(self.emit.clone());

        let mut events = Vec::with_capacity(items.len() + 1);
        events.extend(original);
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(fields) = item else {
                return Outcome::Fail(format!("`{}.{index}` is not an object", self.array));
            };
            match self.child(&base, fields, index) {
                Ok(child) => events.push(child),
                Err(error) => return Outcome::Fail(error),
            }
        }
        Outcome::Expand(events)
    }

    /// `base` with the element's fields merged into `into`. Keys are inserted as they are, not
    /// read as paths, so an element key containing a dot stays one key.
    fn child(
        &self,
        base: &Event,
        fields: Map<String, Value>,
        index: usize,
    ) -> Result<Event, String> {
        let mut child = base.clone();
        if child.get(&self.into).is_none_or(Value::is_null) {
            child
                .set(&self.into, Map::new())
                .map_err(|e| e.to_string())?;
        }
        let Some(Value::Object(target)) = child.get_mut(&self.into) else {
            return Err(format!("`{}` is not an object", self.into));
        };
        target.extend(fields);
        if let Some(property) = &self.index_property {
            target.insert(property.clone(), Value::from(index));
        }
        Ok(child)
    }
}

impl Transform for Fanout {
    fn transform(&mut self, event: Event) -> Outcome {
        let Some(name) = event.event_name() else {
            return Outcome::Keep(event);
        };
        match self.rules.iter().find(|rule| rule.event == name) {
            Some(rule) => rule.expand(event),
            None => Outcome::Keep(event),
        }
    }
}

weir_plugin::export_transform!(Fanout);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn plugin(config: Value) -> Result<Fanout, String> {
        weir_plugin::init_from_json::<Fanout>(&config.to_string())
    }

    #[test]
    fn fixtures() {
        weir_plugin::testing::assert_transform_fixtures::<Fanout>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures"
        ));
    }

    #[test]
    fn expanded_events_keep_source_and_offset() {
        let mut p = plugin(json!({"rules": [
            {"event": "Order Completed", "array": "properties.products", "emit": "Product Purchased"}
        ]}))
        .unwrap();
        let event = Event::from_value(json!({
            "type": "track", "event": "Order Completed",
            "properties": {"products": [{"sku": "a"}, {"sku": "b"}]}
        }))
        .unwrap()
        .with_origin("shop", 9);
        let Outcome::Expand(events) = p.transform(event) else {
            panic!("expected expand")
        };
        assert_eq!(events.len(), 2);
        assert!(
            events
                .iter()
                .all(|e| e.source() == "shop" && e.offset() == 9)
        );
    }

    #[test]
    fn long_arrays_fail_instead_of_flooding() {
        let mut p = plugin(json!({"rules": [
            {"event": "E", "array": "properties.items", "emit": "Item", "max_items": 2}
        ]}))
        .unwrap();
        let event = Event::from_value(json!({
            "type": "track", "event": "E", "properties": {"items": [{}, {}, {}]}
        }))
        .unwrap();
        assert_eq!(
            p.transform(event),
            Outcome::Fail("`properties.items` has 3 elements, more than max_items (2)".into())
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(
            plugin(json!({"rules": []}))
                .unwrap_err()
                .contains("at least one rule")
        );
        let err = plugin(json!({"rules": [{"event": "E", "array": "properties..x", "emit": "I"}]}))
            .unwrap_err();
        assert!(err.contains("rules[0].array"), "{err}");
        let err = plugin(json!({"rules": [{"event": "E", "emit": "I"}]})).unwrap_err();
        assert!(err.contains("missing field `array`"), "{err}");
    }
}
