//! Fixture files: a plugin's expected behaviour, as data that both its native unit tests and the
//! host's `weir plugin test` (on the built component) check.
//!
//! A fixture directory holds `*.json` files, each one case:
//!
//! ```json
//! {
//!   "name": "renames and snake-cases track events",
//!   "config": {"case": "snake_case"},
//!   "input": [{"type": "track", "event": "Order Completed"}],
//!   "expect": [{"keep": {"type": "track", "event": "order_completed"}}]
//! }
//! ```
//!
//! - `config` (optional, default `{}`): the plugin config, as in weir.toml.
//! - `source` (optional, default `"fixture"`): the source name every input event arrives on;
//!   input event `i` has offset `i`.
//! - `input`: the batch, sent in one call. Any JSON value is sent as its JSON text, so a
//!   non-object tests the plugin's handling of malformed payloads.
//! - `expect`: one outcome per input event, in order: `{"keep": {...}}`, `{"drop": "reason"}`,
//!   `{"fail": "error"}`, `{"expand": [{...}, ...]}`. Events compare as JSON values (key order
//!   and number formatting, `2` vs `2.0`, do not matter); a `drop` reason or `fail` error matches
//!   when the actual one contains the expected text.
//! - `init_error` (optional, instead of `input`/`expect`): `init` must fail with an error that
//!   contains this text.
//!
//! Expectations describe what the plugin returns, before the host post-processes it (the host
//! overrides the message ids of expanded events with `{messageId}:{i}`, for instance).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::destination::{BuildOutput, Destination, Request};
use crate::plugin::{Filter, Plugin, Transform, init_from_json};
use crate::raw::{RawEvent, RawOutcome};

/// One fixture file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What the case shows.
    pub name: String,
    /// Plugin config; `{}` when absent.
    #[serde(default)]
    pub config: Option<Value>,
    /// Source name of the input events; `"fixture"` when absent.
    #[serde(default)]
    pub source: Option<String>,
    /// The batch.
    #[serde(default)]
    pub input: Vec<Value>,
    /// One expected outcome per input event.
    #[serde(default)]
    pub expect: Vec<Expected>,
    /// When set, `init` must fail with an error containing this text.
    #[serde(default)]
    pub init_error: Option<String>,
    /// The file the fixture was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// An expected outcome.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expected {
    /// The event, as JSON.
    Keep(Value),
    /// Text the drop reason contains.
    Drop(String),
    /// Text the error contains.
    Fail(String),
    /// The events, as JSON.
    Expand(Vec<Value>),
}

/// Why fixtures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a fixture.
    #[error("{path} is not a valid fixture: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// The directory holds no `*.json` file.
    #[error("no fixture (*.json) in {0}")]
    Empty(PathBuf),
}

impl Fixture {
    /// Reads every `*.json` file of `dir`, in file name order.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Fixture>, FixtureError> {
        let dir = dir.as_ref();
        let io = |source| FixtureError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(FixtureError::Empty(dir.to_owned()));
        }
        files.sort();
        files.into_iter().map(Fixture::load).collect()
    }

    /// Reads one fixture file.
    pub fn load(path: PathBuf) -> Result<Fixture, FixtureError> {
        let text = fs::read(&path).map_err(|source| FixtureError::Io {
            path: path.clone(),
            source,
        })?;
        let mut fixture: Fixture =
            serde_json::from_slice(&text).map_err(|source| FixtureError::Invalid {
                path: path.clone(),
                source,
            })?;
        fixture.file = path;
        Ok(fixture)
    }

    /// The config as the host passes it to `init`.
    pub fn config_json(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(|| "{}".to_owned(), Value::to_string)
    }

    /// The input as the host passes it to `transform` or `filter`.
    pub fn raw_batch(&self) -> Vec<RawEvent> {
        let source = self.source.as_deref().unwrap_or("fixture");
        (0u64..)
            .zip(&self.input)
            .map(|(offset, value)| RawEvent {
                payload: value.to_string().into_bytes(),
                source: source.to_owned(),
                offset,
            })
            .collect()
    }

    /// Checks the result of `init`: `Ok` when it matches [`init_error`](Self::init_error).
    pub fn check_init(&self, result: Result<(), &str>) -> Result<(), String> {
        match (&self.init_error, result) {
            (None, Ok(())) => Ok(()),
            (None, Err(error)) => Err(format!("init failed: {error}")),
            (Some(expected), Ok(())) => Err(format!(
                "init succeeded, expected an error containing {expected:?}"
            )),
            (Some(expected), Err(error)) if error.contains(expected.as_str()) => Ok(()),
            (Some(expected), Err(error)) => Err(format!(
                "init failed with {error:?}, expected an error containing {expected:?}"
            )),
        }
    }

    /// Checks the outcomes of one call against `expect`; the error lists every mismatch.
    pub fn check(&self, actual: &[RawOutcome]) -> Result<(), String> {
        if actual.len() != self.expect.len() {
            return Err(format!(
                "expected {} outcomes, got {}: {}",
                self.expect.len(),
                actual.len(),
                actual.iter().map(describe).collect::<Vec<_>>().join(", ")
            ));
        }
        let mismatches: Vec<String> = self
            .expect
            .iter()
            .zip(actual)
            .enumerate()
            .filter(|(_, (expected, actual))| !matches(expected, actual))
            .map(|(i, (expected, actual))| {
                format!(
                    "outcome {i}: expected {}, got {}",
                    serde_json::to_string(&expected_json(expected)).unwrap_or_default(),
                    describe(actual)
                )
            })
            .collect();
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(mismatches.join("\n"))
        }
    }

    /// Runs this fixture against plugin type `P`: `init` with the config, then one call.
    pub fn run<P: Plugin>(
        &self,
        call: impl FnOnce(&mut P, Vec<RawEvent>) -> Vec<RawOutcome>,
    ) -> Result<(), String> {
        let plugin = init_from_json::<P>(&self.config_json());
        self.check_init(plugin.as_ref().map(|_| ()).map_err(String::as_str))?;
        match plugin {
            Ok(mut plugin) => self.check(&call(&mut plugin, self.raw_batch())),
            Err(_) => Ok(()),
        }
    }
}

fn expected_json(expected: &Expected) -> Value {
    match expected {
        Expected::Keep(event) => serde_json::json!({"keep": event}),
        Expected::Drop(reason) => serde_json::json!({"drop": reason}),
        Expected::Fail(error) => serde_json::json!({"fail": error}),
        Expected::Expand(events) => serde_json::json!({"expand": events}),
    }
}

fn parse_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn describe(actual: &RawOutcome) -> String {
    let value = match actual {
        RawOutcome::Keep(bytes) => serde_json::json!({"keep": parse_or_text(bytes)}),
        RawOutcome::Drop(reason) => serde_json::json!({"drop": reason}),
        RawOutcome::Fail(error) => serde_json::json!({"fail": error}),
        RawOutcome::Expand(events) => serde_json::json!({
            "expand": events.iter().map(|e| parse_or_text(e)).collect::<Vec<_>>()
        }),
    };
    value.to_string()
}

fn event_matches(expected: &Value, actual: &[u8]) -> bool {
    serde_json::from_slice::<Value>(actual).is_ok_and(|actual| json_eq(expected, &actual))
}

fn matches(expected: &Expected, actual: &RawOutcome) -> bool {
    match (expected, actual) {
        (Expected::Keep(expected), RawOutcome::Keep(actual)) => event_matches(expected, actual),
        (Expected::Drop(expected), RawOutcome::Drop(actual))
        | (Expected::Fail(expected), RawOutcome::Fail(actual)) => {
            actual.contains(expected.as_str())
        }
        (Expected::Expand(expected), RawOutcome::Expand(actual)) => {
            expected.len() == actual.len()
                && expected
                    .iter()
                    .zip(actual)
                    .all(|(expected, actual)| event_matches(expected, actual))
        }
        _ => false,
    }
}

pub use crate::event::json_eq;

/// Plugin `P` made from `config` as the host's `init` makes it; panics with the init error.
/// For a destination's unit tests (transforms and filters have fixtures).
pub fn plugin<P: Plugin>(config: &Value) -> P {
    match init_from_json::<P>(&config.to_string()) {
        Ok(plugin) => plugin,
        Err(error) => panic!("init failed: {error}"),
    }
}

/// Runs destination `plugin`'s `build` the way the component export does: each value sent as
/// its JSON text, from `source`, at offsets 0, 1, ...
pub fn build<D: Destination>(plugin: &mut D, source: &str, events: &[Value]) -> BuildOutput {
    let raw = (0u64..)
        .zip(events)
        .map(|(offset, event)| RawEvent {
            payload: event.to_string().into_bytes(),
            source: source.into(),
            offset,
        })
        .collect();
    plugin.build_raw(raw)
}

/// The body of `request` as JSON; panics when it is not JSON.
pub fn json_body(request: &Request) -> Value {
    match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(error) => panic!("body is not JSON ({error}): {:?}", request.body),
    }
}

/// Runs every fixture of `dir` natively against transformer `P` and panics with a report of
/// all failing cases. Meant for a plugin's unit tests:
///
/// ```ignore
/// #[test]
/// fn fixtures() {
///     weir_plugin::testing::assert_transform_fixtures::<MyPlugin>(
///         concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"),
///     );
/// }
/// ```
pub fn assert_transform_fixtures<P: Transform>(dir: impl AsRef<Path>) {
    assert_fixtures(dir.as_ref(), |fixture| fixture.run(P::transform_raw));
}

/// [`assert_transform_fixtures`] for a filter.
pub fn assert_filter_fixtures<P: Filter>(dir: impl AsRef<Path>) {
    assert_fixtures(dir.as_ref(), |fixture| fixture.run(P::filter_raw));
}

fn assert_fixtures(dir: &Path, run: impl Fn(&Fixture) -> Result<(), String>) {
    let fixtures = match Fixture::load_dir(dir) {
        Ok(fixtures) => fixtures,
        Err(error) => panic!("{error}"),
    };
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|fixture| {
            run(fixture)
                .err()
                .map(|error| format!("{} ({}):\n{error}", fixture.name, fixture.file.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, InitError, Outcome};
    use serde_json::json;

    /// Drops events named in the config, fails on `properties.bad`, fans `properties.items`
    /// out.
    struct Sample {
        drop: String,
    }

    #[derive(Deserialize)]
    struct SampleConfig {
        drop: String,
    }

    impl Plugin for Sample {
        type Config = SampleConfig;
        fn init(config: SampleConfig) -> Result<Self, InitError> {
            if config.drop.is_empty() {
                return Err("`drop` must not be empty".into());
            }
            Ok(Sample { drop: config.drop })
        }
    }

    impl Transform for Sample {
        fn transform(&mut self, event: Event) -> Outcome {
            if event.event_name() == Some(self.drop.as_str()) {
                return Outcome::Drop(format!("{} is dropped", self.drop));
            }
            if event.get("properties.bad").is_some() {
                return Outcome::Fail("bad event".into());
            }
            if let Some(Value::Array(items)) = event.get("properties.items") {
                let events = items
                    .iter()
                    .map(|item| {
                        event.derive(
                            json!({"item": item})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                return Outcome::Expand(events);
            }
            Outcome::Keep(event)
        }
    }

    fn write(dir: &Path, name: &str, fixture: Value) {
        fs::write(dir.join(name), fixture.to_string()).unwrap();
    }

    #[test]
    fn passing_fixtures_pass() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.json",
            json!({
                "name": "all outcome kinds",
                "config": {"drop": "Spam"},
                "input": [
                    {"type": "track", "event": "Spam"},
                    {"type": "track", "event": "X", "properties": {"bad": 1}},
                    {"type": "track", "event": "X", "properties": {"items": [1, 2.5]}},
                    {"type": "track", "event": "X", "n": 2.0},
                    [1, 2]
                ],
                "expect": [
                    {"drop": "dropped"},
                    {"fail": "bad"},
                    {"expand": [{"item": 1.0}, {"item": 2.5}]},
                    {"keep": {"n": 2, "event": "X", "type": "track"}},
                    {"fail": "not an object"}
                ]
            }),
        );
        write(
            dir.path(),
            "b.json",
            json!({"name": "bad config", "config": {"drop": ""}, "init_error": "must not be empty"}),
        );
        fs::write(dir.path().join("notes.txt"), "not a fixture").unwrap();
        assert_transform_fixtures::<Sample>(dir.path());
    }

    #[test]
    fn failing_fixtures_report_every_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.json",
            json!({
                "name": "wrong expectations",
                "config": {"drop": "Spam"},
                "input": [{"type": "track", "event": "Spam"}, {"type": "track", "event": "Y"}],
                "expect": [{"keep": {"type": "track", "event": "Spam"}}, {"keep": {"event": "Z"}}]
            }),
        );
        let fixtures = Fixture::load_dir(dir.path()).unwrap();
        let error = fixtures[0].run(Sample::transform_raw).unwrap_err();
        assert!(error.contains("outcome 0: expected {\"keep\""), "{error}");
        assert!(
            error.contains("got {\"drop\":\"Spam is dropped\"}"),
            "{error}"
        );
        assert!(error.contains("outcome 1:"), "{error}");
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Fixture::load_dir(dir.path()),
            Err(FixtureError::Empty(_))
        ));
    }
}
