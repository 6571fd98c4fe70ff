//! weir filter `tracking-plan`: checks events against a tracking plan (Segment Protocols /
//! RudderStack tracking plans), then drops them, forwards them with the violations written into
//! `context.violationErrors`, or forwards them silently, per event type.
//!
//! The plan is the plugin's config: the allowed events per type, each with a JSON Schema
//! (subset, see [`schema`]) for its `properties` (track, page, screen) or `traits` (identify,
//! group). Everything is compiled at `init`, so a bad plan is refused before it goes live and
//! per-event work is only checking. See README.md.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use weir_plugin::serde_json::{Map, Value};
use weir_plugin::{Event, Filter, InitError, Outcome, Plugin};

pub mod schema;

use schema::{Kind, Schema, Violation, segment};

/// The `event` label of violations of events that are not in the plan (client-chosen names
/// never become label values).
pub const UNPLANNED_LABEL: &str = "(unplanned)";

/// Where `forward` writes the violations.
pub const VIOLATIONS_PATH: &str = "context.violationErrors";

/// At most this many violations are spelled out in a drop reason.
const REASON_MAX: usize = 10;

/// What happens to an event that is unplanned or violates its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Drop it, with a reason listing the violations.
    Drop,
    /// Keep it, with the violations in `context.violationErrors`.
    Forward,
    /// Keep it unchanged (the violations are only counted).
    ForwardSilently,
}

/// The actions of one event type (or the default); an absent one falls back to the default's,
/// then to `forward`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// For an event whose type or name is not in the plan.
    #[serde(default)]
    pub unplanned: Option<Action>,
    /// For a planned event that violates its schema.
    #[serde(default)]
    pub violation: Option<Action>,
}

/// `actions`: a default and overrides per event type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    #[serde(default)]
    pub default: ActionConfig,
    #[serde(default)]
    pub track: Option<ActionConfig>,
    #[serde(default)]
    pub identify: Option<ActionConfig>,
    #[serde(default)]
    pub group: Option<ActionConfig>,
    #[serde(default)]
    pub page: Option<ActionConfig>,
    #[serde(default)]
    pub screen: Option<ActionConfig>,
    #[serde(default)]
    pub alias: Option<ActionConfig>,
}

/// `events`: the allowed events per type. A type that is absent is unplanned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// Event name → `{"properties": schema}`.
    #[serde(default)]
    pub track: Option<Map<String, Value>>,
    /// `{"traits": schema}`.
    #[serde(default)]
    pub identify: Option<Value>,
    /// `{"traits": schema}`.
    #[serde(default)]
    pub group: Option<Value>,
    /// Page name → `{"properties": schema}`.
    #[serde(default)]
    pub page: Option<Map<String, Value>>,
    /// Screen name → `{"properties": schema}`.
    #[serde(default)]
    pub screen: Option<Map<String, Value>>,
    /// `{}`: alias calls are allowed (they carry nothing to check).
    #[serde(default)]
    pub alias: Option<Value>,
}

/// The plugin's config: a tracking plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The plan's name (or id and version, `web-v3`): a label of the counter and part of drop
    /// reasons and messages.
    pub plan: String,
    /// The allowed events.
    pub events: Events,
    /// What to do with unplanned and violating events.
    #[serde(default)]
    pub actions: Actions,
}

/// The checks of one planned event (or of the one rule of identify / group / alias).
#[derive(Debug)]
struct Rule {
    /// `properties` or `traits`; `None` for alias.
    field: Option<&'static str>,
    /// `None`: anything goes.
    schema: Option<Schema>,
}

#[derive(Debug)]
enum Rules {
    /// track, page, screen: by name.
    Named(HashMap<String, Rule>),
    /// identify, group, alias.
    Single(Rule),
}

#[derive(Debug, Clone, Copy)]
struct Resolved {
    unplanned: Action,
    violation: Action,
}

#[derive(Debug)]
struct TypePlan {
    rules: Option<Rules>,
    actions: Resolved,
}

/// The `tracking-plan` filter.
#[derive(Debug)]
pub struct TrackingPlan {
    plan: String,
    types: HashMap<&'static str, TypePlan>,
    default_actions: Resolved,
}

/// The result of checking one event.
#[derive(Debug)]
struct Check<'a> {
    /// The `event` label: a name or type from the plan, or [`UNPLANNED_LABEL`].
    label: &'a str,
    unplanned: bool,
    violations: Vec<Violation>,
}

fn compile_rule(value: &Value, field: Option<&'static str>, path: &str) -> Result<Rule, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "{path}: a rule must be an object{}",
            field.map_or_else(String::new, |f| format!(" like {{\"{f}\": {{...}}}}"))
        ));
    };
    let mut schema = None;
    for (key, v) in map {
        match key.as_str() {
            "description" => {}
            k if Some(k) == field => {
                schema = Some(Schema::compile(v, &format!("{path}{}", segment(k)))?);
            }
            other => {
                let expected = field.map_or_else(
                    || "an alias rule is `{}`".to_owned(),
                    |f| format!("expected \"{f}\" (and \"description\")"),
                );
                return Err(format!("{path}: unknown key {other:?}; {expected}"));
            }
        }
    }
    Ok(Rule { field, schema })
}

fn compile_named(
    rules: &Map<String, Value>,
    field: &'static str,
    path: &str,
) -> Result<Rules, String> {
    let mut named = HashMap::with_capacity(rules.len());
    for (name, rule) in rules {
        if name.is_empty() {
            return Err(format!("{path}: an event name is empty"));
        }
        let at = format!("{path}[{}]", Value::String(name.clone()));
        named.insert(name.clone(), compile_rule(rule, Some(field), &at)?);
    }
    Ok(Rules::Named(named))
}

fn resolve(own: Option<ActionConfig>, default: Resolved) -> Resolved {
    let own = own.unwrap_or_default();
    Resolved {
        unplanned: own.unplanned.unwrap_or(default.unplanned),
        violation: own.violation.unwrap_or(default.violation),
    }
}

impl Plugin for TrackingPlan {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if config.plan.trim().is_empty() {
            return Err("`plan` is empty: name the tracking plan, e.g. \"web-v3\"".into());
        }
        let e = config.events;
        if e.track.is_none()
            && e.identify.is_none()
            && e.group.is_none()
            && e.page.is_none()
            && e.screen.is_none()
            && e.alias.is_none()
        {
            return Err("`events` is empty: every event would be unplanned".into());
        }
        let a = config.actions;
        let default_actions = Resolved {
            unplanned: a.default.unplanned.unwrap_or(Action::Forward),
            violation: a.default.violation.unwrap_or(Action::Forward),
        };
        let named = |rules: Option<Map<String, Value>>, path: &str| {
            rules
                .map(|r| compile_named(&r, "properties", path))
                .transpose()
        };
        let single = |rule: Option<Value>, field: Option<&'static str>, path: &str| {
            rule.map(|r| compile_rule(&r, field, path).map(Rules::Single))
                .transpose()
        };
        let plans = [
            ("track", named(e.track, "events.track")?, a.track),
            ("page", named(e.page, "events.page")?, a.page),
            ("screen", named(e.screen, "events.screen")?, a.screen),
            (
                "identify",
                single(e.identify, Some("traits"), "events.identify")?,
                a.identify,
            ),
            (
                "group",
                single(e.group, Some("traits"), "events.group")?,
                a.group,
            ),
            ("alias", single(e.alias, None, "events.alias")?, a.alias),
        ];
        let types = plans
            .into_iter()
            .map(|(ty, rules, actions)| {
                let actions = resolve(actions, default_actions);
                (ty, TypePlan { rules, actions })
            })
            .collect();
        Ok(TrackingPlan {
            plan: config.plan,
            types,
            default_actions,
        })
    }
}

impl TrackingPlan {
    fn unplanned(&self, message: String, instance_path: &str) -> Check<'_> {
        Check {
            label: UNPLANNED_LABEL,
            unplanned: true,
            violations: vec![Violation {
                kind: Kind::UnplannedEvent,
                message,
                instance_path: instance_path.to_owned(),
            }],
        }
    }

    /// Checks one event against the plan.
    fn check(&self, event: &Event) -> Check<'_> {
        let plan = &self.plan;
        let Some(ty) = event.event_type() else {
            return self.unplanned("event has no `type`".to_owned(), "/type");
        };
        let Some((
            &ty_label,
            TypePlan {
                rules: Some(rules), ..
            },
        )) = self.types.get_key_value(ty)
        else {
            return self.unplanned(
                format!("type {ty:?} is not in tracking plan {plan:?}"),
                "/type",
            );
        };
        let (label, rule) = match rules {
            Rules::Single(rule) => (ty_label, rule),
            Rules::Named(named) => {
                let key = if ty == "track" { "/event" } else { "/name" };
                let Some(name) = event.event_name() else {
                    return self.unplanned(format!("{ty} event has no name"), key);
                };
                match named.get_key_value(name) {
                    Some((name, rule)) => (name.as_str(), rule),
                    None => {
                        return self.unplanned(
                            format!("{ty} {name:?} is not in tracking plan {plan:?}"),
                            key,
                        );
                    }
                }
            }
        };
        let mut violations = Vec::new();
        if let (Some(field), Some(schema)) = (rule.field, &rule.schema) {
            // No properties (or `null`) are checked as `{}`, so required ones are reported.
            let empty = Value::Object(Map::new());
            let value = match event.fields().get(field) {
                None | Some(Value::Null) => &empty,
                Some(value) => value,
            };
            let mut path = String::new();
            schema::push_pointer(&mut path, field);
            schema.check(value, &mut path, &mut violations);
        }
        Check {
            label,
            unplanned: false,
            violations,
        }
    }

    fn actions(&self, event: &Event) -> Resolved {
        event
            .event_type()
            .and_then(|ty| self.types.get(ty))
            .map_or(self.default_actions, |t| t.actions)
    }

    fn reason(&self, violations: &[Violation]) -> String {
        let mut parts: Vec<String> = violations
            .iter()
            .take(REASON_MAX)
            .map(|v| {
                let at = if v.instance_path.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", v.instance_path)
                };
                format!("{}{at}: {}", v.kind.as_str(), v.message)
            })
            .collect();
        if violations.len() > REASON_MAX {
            parts.push(format!("and {} more", violations.len() - REASON_MAX));
        }
        format!("tracking plan {:?}: {}", self.plan, parts.join("; "))
    }

    /// The outcome for one event, and what was found (for the counters).
    fn judge(&self, mut event: Event) -> (Outcome, Check<'_>) {
        let check = self.check(&event);
        if check.violations.is_empty() {
            return (Outcome::Keep(event), check);
        }
        let actions = self.actions(&event);
        let action = if check.unplanned {
            actions.unplanned
        } else {
            actions.violation
        };
        let outcome = match action {
            Action::Drop => Outcome::Drop(self.reason(&check.violations)),
            Action::Forward => {
                let errors: Vec<Value> = check.violations.iter().map(Violation::to_json).collect();
                // A `context` that is not an object cannot hold them: the event is kept as
                // it is (the violations are still counted).
                let _ = event.set(VIOLATIONS_PATH, Value::Array(errors));
                Outcome::Keep(event)
            }
            Action::ForwardSilently => Outcome::Keep(event),
        };
        (outcome, check)
    }
}

impl Filter for TrackingPlan {
    fn filter(&mut self, event: Event) -> Outcome {
        self.judge(event).0
    }

    /// Filters the batch and counts violations per planned event name (or type) and kind in
    /// `tracking_plan_violations` (one host call per label set and batch).
    fn filter_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let mut counts: BTreeMap<(&str, Kind), u64> = BTreeMap::new();
        let outcomes = batch
            .into_iter()
            .map(|event| {
                let (outcome, check) = self.judge(event);
                for v in &check.violations {
                    *counts.entry((check.label, v.kind)).or_default() += 1;
                }
                outcome
            })
            .collect();
        for ((event, kind), n) in counts {
            weir_plugin::count(
                "tracking_plan_violations",
                &[
                    ("plan", &self.plan),
                    ("event", event),
                    ("kind", kind.as_str()),
                ],
                n,
            );
        }
        outcomes
    }
}

weir_plugin::export_filter!(TrackingPlan);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn plugin(config: Value) -> Result<TrackingPlan, String> {
        weir_plugin::init_from_json::<TrackingPlan>(&config.to_string())
    }

    fn event(value: Value) -> Event {
        Event::from_value(value).unwrap()
    }

    #[test]
    fn fixtures() {
        weir_plugin::testing::assert_filter_fixtures::<TrackingPlan>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures"
        ));
    }

    #[test]
    fn a_bad_type_is_refused_with_its_path() {
        let err = plugin(json!({"plan": "web-v3", "events": {"track": {
            "Order Completed": {"properties": {"type": "object",
                "properties": {"revenue": {"type": "strng"}}}}}}}))
        .unwrap_err();
        assert!(
            err.starts_with(
                r#"events.track["Order Completed"].properties.properties.revenue.type: unknown type "strng""#
            ),
            "{err}"
        );
        let err = plugin(json!({"plan": "p", "events": {"track": {
            "Order Completed": {"properties": {"type": "strng"}}}}}))
        .unwrap_err();
        assert!(
            err.starts_with(
                r#"events.track["Order Completed"].properties.type: unknown type "strng""#
            ),
            "{err}"
        );
    }

    #[test]
    fn per_type_actions_fall_back_to_the_default_then_forward() {
        let p = plugin(json!({"plan": "p", "events": {"identify": {}},
            "actions": {"default": {"unplanned": "drop"}, "identify": {"violation": "drop"}}}))
        .unwrap();
        let identify = p.actions(&event(json!({"type": "identify"})));
        assert_eq!(identify.unplanned, Action::Drop);
        assert_eq!(identify.violation, Action::Drop);
        let track = p.actions(&event(json!({"type": "track"})));
        assert_eq!(track.unplanned, Action::Drop);
        assert_eq!(track.violation, Action::Forward);
        let unknown = p.actions(&event(json!({"type": "weird"})));
        assert_eq!(unknown.violation, Action::Forward);
    }

    #[test]
    fn client_chosen_names_never_become_labels() {
        let p =
            plugin(json!({"plan": "p", "events": {"track": {"A": {}}, "identify": {}}})).unwrap();
        let label = |e: Value| p.check(&event(e)).label.to_owned();
        assert_eq!(label(json!({"type": "track", "event": "A"})), "A");
        assert_eq!(
            label(json!({"type": "track", "event": "free text"})),
            UNPLANNED_LABEL
        );
        assert_eq!(label(json!({"type": "identify"})), "identify");
        assert_eq!(label(json!({"type": "page", "name": "A"})), UNPLANNED_LABEL);
    }

    #[test]
    fn long_violation_lists_are_cut_in_drop_reasons() {
        let p = plugin(
            json!({"plan": "p", "events": {"track": {"A": {"properties": {
            "additionalProperties": false}}}}, "actions": {"default": {"violation": "drop"}}}),
        )
        .unwrap();
        let props: Map<String, Value> = (0..15).map(|i| (format!("k{i}"), json!(i))).collect();
        let (outcome, check) = p.judge(event(json!({"type": "track", "event": "A",
            "properties": props})));
        assert_eq!(check.violations.len(), 15);
        let Outcome::Drop(reason) = outcome else {
            panic!("not dropped")
        };
        assert!(reason.ends_with("; and 5 more"), "{reason}");
    }
}
