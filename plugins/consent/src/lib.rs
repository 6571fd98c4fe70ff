//! weir filter `consent`: drops the events whose end user denied consent to one of the
//! categories of the destination (or warehouse) it guards.
//!
//! It reads both consent formats the SDKs send:
//! - Segment: `context.consent.categoryPreferences`, an object of category → bool
//!   (`{"Advertising": false, "Analytics": true}`): `false` denies;
//! - RudderStack: `context.consentManagement.deniedConsentIds`, a list of denied category ids
//!   (OneTrust / Ketch / custom ids such as `C0004`).
//!
//! Put one instance in the chain of each destination, with that destination's categories. See
//! README.md.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_plugin::serde_json::Value;
use weir_plugin::{Event, Filter, InitError, Outcome, Plugin};

const SEGMENT: &str = "context.consent.categoryPreferences";
const RUDDERSTACK: &str = "context.consentManagement.deniedConsentIds";

/// What to do with an event that says nothing about a category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Keep it: consent is only enforced where the event carries a decision (the SDKs'
    /// default when no consent manager is installed).
    #[default]
    Keep,
    /// Drop it: only explicitly granted categories pass (strict opt-in).
    Drop,
}

/// The plugin's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The categories this destination belongs to, as the consent manager names them
    /// (`Advertising`, `C0004`...). An event is dropped if any of them is denied.
    pub categories: Vec<String>,
    /// An event with no decision for a category: `keep` (default) or `drop`.
    #[serde(default)]
    pub unknown: Unknown,
}

/// The `consent` filter.
#[derive(Debug)]
pub struct Consent {
    categories: Vec<String>,
    unknown: Unknown,
}

/// What an event says about a category.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Granted,
    /// Denied, and where the event said so.
    Denied(&'static str),
    Unknown,
}

impl Plugin for Consent {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if config.categories.is_empty() {
            return Err(
                "`categories` is empty: name the consent categories of this destination, \
                 e.g. [\"Advertising\"]"
                    .into(),
            );
        }
        if let Some(blank) = config.categories.iter().find(|c| c.trim().is_empty()) {
            return Err(format!("`categories` holds a blank name ({blank:?})").into());
        }
        Ok(Consent {
            categories: config.categories,
            unknown: config.unknown,
        })
    }
}

impl Consent {
    fn decision(event: &Event, category: &str) -> Decision {
        let segment = event
            .get(SEGMENT)
            .and_then(Value::as_object)
            .and_then(|prefs| prefs.get(category));
        let denied_ids = event.get(RUDDERSTACK).and_then(Value::as_array);
        if segment == Some(&Value::Bool(false)) {
            return Decision::Denied(SEGMENT);
        }
        if denied_ids.is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(category))) {
            return Decision::Denied(RUDDERSTACK);
        }
        let rudder_allowed = event
            .get("context.consentManagement.allowedConsentIds")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(category)));
        if segment == Some(&Value::Bool(true)) || rudder_allowed {
            Decision::Granted
        } else {
            Decision::Unknown
        }
    }

    /// The outcome for one event, and the category that decided a drop.
    fn judge(&self, event: Event) -> (Outcome, Option<&str>) {
        for category in &self.categories {
            match Self::decision(&event, category) {
                Decision::Granted => {}
                Decision::Denied(at) => {
                    let reason = format!("consent denied for `{category}` ({at})");
                    return (Outcome::Drop(reason), Some(category));
                }
                Decision::Unknown if self.unknown == Unknown::Drop => {
                    let reason = format!("no consent given for `{category}` (unknown = \"drop\")");
                    return (Outcome::Drop(reason), Some(category));
                }
                Decision::Unknown => {}
            }
        }
        (Outcome::Keep(event), None)
    }
}

impl Filter for Consent {
    fn filter(&mut self, event: Event) -> Outcome {
        self.judge(event).0
    }

    /// Filters the batch and counts drops per category in `consent_dropped` (one host call per
    /// category and batch).
    fn filter_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        let outcomes = batch
            .into_iter()
            .map(|event| {
                let (outcome, category) = self.judge(event);
                if let Some(c) = category {
                    *dropped.entry(c.to_owned()).or_default() += 1;
                }
                outcome
            })
            .collect();
        for (category, n) in dropped {
            weir_plugin::count("consent_dropped", &[("category", &category)], n);
        }
        outcomes
    }
}

weir_plugin::export_filter!(Consent);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    #[test]
    fn fixtures() {
        weir_plugin::testing::assert_filter_fixtures::<Consent>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures"
        ));
    }

    #[test]
    fn a_denial_wins_over_a_grant_in_the_other_format() {
        let event = Event::from_value(json!({"type": "track", "context": {
            "consent": {"categoryPreferences": {"Ads": true}},
            "consentManagement": {"deniedConsentIds": ["Ads"]}}}))
        .unwrap();
        assert_eq!(
            Consent::decision(&event, "Ads"),
            Decision::Denied(RUDDERSTACK)
        );
    }
}
