//! The traits a plugin implements: [`Plugin`] (config and start-up) and one of [`Transform`],
//! [`Filter`] or [`Destination`](crate::Destination).

use serde::de::DeserializeOwned;

use crate::raw::{self, RawEvent, RawOutcome};
use crate::{Event, Outcome};

/// The error `init` returns: anything that converts into a boxed error, including a `String`
/// or `&str`, so `?` works on most errors and `Err("why".into())` on a message.
pub type InitError = Box<dyn std::error::Error + Send + Sync>;

/// Start-up of a plugin: the typed config it reads and how it builds itself from it.
///
/// The host calls `init` once per plugin version, before anything else, with the plugin's
/// table from weir.toml as JSON (`{}` when there is none). The SDK deserializes it into
/// [`Config`](Self::Config) (an error names the offending field), calls [`init`](Self::init)
/// and keeps the plugin for every later call. An error rejects the version: the previous one
/// keeps serving.
pub trait Plugin: Sized + 'static {
    /// The plugin's configuration. Use [`NoConfig`] for a plugin without settings.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration.
    fn init(config: Self::Config) -> Result<Self, InitError>;
}

/// The config of a plugin that has no settings: accepts only an empty table, so a user who
/// configures something that is not there hears about it.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Deserializes `config` (JSON) and builds the plugin: what the component's `init` export runs.
/// An empty string counts as `{}`.
pub fn init_from_json<P: Plugin>(config: &str) -> Result<P, String> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let mut deserializer = serde_json::Deserializer::from_str(config);
    let parsed: P::Config = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("invalid plugin config: {}", e.inner())
        } else {
            format!("invalid plugin config at `{path}`: {}", e.inner())
        }
    })?;
    P::init(parsed).map_err(|e| e.to_string())
}

/// A transformer: rewrites, drops or fans out the events of a source.
///
/// Implement [`transform`](Self::transform); override
/// [`transform_batch`](Self::transform_batch) when a batch can be processed better as a whole.
pub trait Transform: Plugin {
    /// The outcome for one event.
    fn transform(&mut self, event: Event) -> Outcome;

    /// One outcome per event, in input order. By default maps [`transform`](Self::transform)
    /// over the batch.
    fn transform_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|event| self.transform(event))
            .collect()
    }

    /// The whole call at the byte level, as the component export sees it: parses the events,
    /// runs [`transform_batch`](Self::transform_batch) and serializes the outcomes (see
    /// [`raw::run_batch`] for what happens to unparseable events and wrong counts).
    ///
    /// Override it only to control the bytes themselves, for example to pass untouched payloads
    /// through without parsing them. Benches call it to measure what the host pays for.
    fn transform_raw(&mut self, batch: Vec<RawEvent>) -> Vec<RawOutcome> {
        raw::run_batch(batch, |events| self.transform_batch(events))
    }
}

/// A filter (governance: tracking plans, PII, consent): keeps, drops, annotates or masks events.
/// The host refuses [`Outcome::Expand`] from a filter and treats it as a failure of the event.
pub trait Filter: Plugin {
    /// The outcome for one event.
    fn filter(&mut self, event: Event) -> Outcome;

    /// One outcome per event, in input order. By default maps [`filter`](Self::filter) over
    /// the batch.
    fn filter_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        batch.into_iter().map(|event| self.filter(event)).collect()
    }

    /// The whole call at the byte level; see [`Transform::transform_raw`].
    fn filter_raw(&mut self, batch: Vec<RawEvent>) -> Vec<RawOutcome> {
        raw::run_batch(batch, |events| self.filter_batch(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Config {
        #[allow(dead_code, reason = "read by serde only")]
        rates: std::collections::BTreeMap<String, f64>,
    }

    struct Rates;

    impl Plugin for Rates {
        type Config = Config;
        fn init(config: Config) -> Result<Self, InitError> {
            if config.rates.is_empty() {
                return Err("`rates` must name at least one currency".into());
            }
            Ok(Rates)
        }
    }

    struct Bare;

    impl Plugin for Bare {
        type Config = NoConfig;
        fn init(_: NoConfig) -> Result<Self, InitError> {
            Ok(Bare)
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = init_from_json::<Rates>(r#"{"rates": {"EUR": "x"}}"#)
            .err()
            .unwrap();
        assert!(
            err.starts_with("invalid plugin config at `rates.EUR`: invalid type"),
            "{err}"
        );
        let err = init_from_json::<Rates>("{}").err().unwrap();
        assert!(
            err.starts_with("invalid plugin config: missing field `rates`"),
            "{err}"
        );
        let err = init_from_json::<Rates>(r#"{"rates": {}}"#).err().unwrap();
        assert_eq!(err, "`rates` must name at least one currency");
    }

    #[test]
    fn no_config_accepts_only_an_empty_table() {
        assert!(init_from_json::<Bare>("{}").is_ok());
        assert!(init_from_json::<Bare>("").is_ok());
        let err = init_from_json::<Bare>(r#"{"x": 1}"#).err().unwrap();
        assert!(err.contains("unknown field `x`"), "{err}");
    }
}
