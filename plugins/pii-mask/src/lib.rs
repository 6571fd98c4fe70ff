//! weir filter `pii-mask`: hashes, redacts or removes personal data at configured paths.
//!
//! Every event is kept; only the values at the configured paths change. Hashing (SHA-256, hex,
//! with an optional salt) keeps values joinable (the same email always gives the same hash)
//! without revealing them. See README.md for the config.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_plugin::serde_json::Value;
use weir_plugin::{Event, Filter, InitError, Outcome, Plugin};

/// What happens to a value at a configured path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replace the value by the hex SHA-256 of `salt` followed by the value.
    #[default]
    Hash,
    /// Replace the value by `replacement`.
    Redact,
    /// Remove the field.
    Remove,
}

/// The plugin's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dotted paths to mask, e.g. `context.traits.email`, `traits.email`, `properties.phone`.
    pub paths: Vec<String>,
    /// `hash` (default), `redact` or `remove`.
    #[serde(default)]
    pub mode: Mode,
    /// Prepended to every value before hashing, so hashes cannot be looked up in tables of
    /// hashed emails. Keep it secret and stable: changing it changes every hash.
    #[serde(default)]
    pub salt: Option<String>,
    /// With `hash`: trim and lower-case strings first, so `Ann@Example.com ` and
    /// `ann@example.com` hash alike.
    #[serde(default)]
    pub trim_lowercase: bool,
    /// With `redact`: the value written instead.
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

fn default_replacement() -> String {
    "[redacted]".to_owned()
}

/// The `pii-mask` filter.
#[derive(Debug)]
pub struct PiiMask {
    paths: Vec<String>,
    mode: Mode,
    salt: String,
    trim_lowercase: bool,
    replacement: String,
}

impl Plugin for PiiMask {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if config.paths.is_empty() {
            return Err("`paths` is empty: list the fields to mask".into());
        }
        if let Some(bad) = config
            .paths
            .iter()
            .find(|p| p.split('.').any(str::is_empty))
        {
            return Err(format!(
                "`paths` holds `{bad}`, which is not a dotted path like `context.traits.email`"
            )
            .into());
        }
        if config.mode != Mode::Hash && (config.salt.is_some() || config.trim_lowercase) {
            return Err("`salt` and `trim_lowercase` only apply to mode = \"hash\"".into());
        }
        Ok(PiiMask {
            paths: config.paths,
            mode: config.mode,
            salt: config.salt.unwrap_or_default(),
            trim_lowercase: config.trim_lowercase,
            replacement: config.replacement,
        })
    }
}

impl PiiMask {
    fn hash(&self, value: &Value) -> Value {
        let text = match value {
            Value::String(s) if self.trim_lowercase => s.trim().to_lowercase(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let digest = Sha256::new()
            .chain_update(self.salt.as_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        Value::String(hex(&digest))
    }

    /// Masks every configured path of `event`; returns, per path, whether it masked something.
    fn mask(&self, event: &mut Event) -> Vec<bool> {
        self.paths
            .iter()
            .map(|path| {
                let Some(value) = event.get_mut(path) else {
                    return false;
                };
                // Nothing personal in an absent value: leave `null` and "" as they are.
                if value.is_null() || value.as_str() == Some("") {
                    return false;
                }
                match self.mode {
                    Mode::Hash => *value = self.hash(value),
                    Mode::Redact => *value = Value::String(self.replacement.clone()),
                    Mode::Remove => {
                        event.remove(path);
                    }
                }
                true
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

impl Filter for PiiMask {
    fn filter(&mut self, mut event: Event) -> Outcome {
        self.mask(&mut event);
        Outcome::Keep(event)
    }

    /// Masks the batch and reports, once per batch and path, how many values were masked in
    /// the `pii_masked` counter (one host call per path instead of one per event).
    fn filter_batch(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let mut masked: BTreeMap<&str, u64> = BTreeMap::new();
        let outcomes = batch
            .into_iter()
            .map(|mut event| {
                for (path, hit) in self.paths.iter().zip(self.mask(&mut event)) {
                    if hit {
                        *masked.entry(path.as_str()).or_default() += 1;
                    }
                }
                Outcome::Keep(event)
            })
            .collect();
        for (path, n) in masked {
            weir_plugin::count("pii_masked", &[("path", path)], n);
        }
        outcomes
    }
}

weir_plugin::export_filter!(PiiMask);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn plugin(config: Value) -> Result<PiiMask, String> {
        weir_plugin::init_from_json::<PiiMask>(&config.to_string())
    }

    #[test]
    fn fixtures() {
        weir_plugin::testing::assert_filter_fixtures::<PiiMask>(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures"
        ));
    }

    #[test]
    fn hashes_are_sha256_hex_of_salt_and_value() {
        let p = plugin(json!({"paths": ["traits.email"]})).unwrap();
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            p.hash(&json!("abc")),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let salted = plugin(json!({"paths": ["traits.email"], "salt": "a"})).unwrap();
        assert_eq!(salted.hash(&json!("bc")), p.hash(&json!("abc")));
    }

    #[test]
    fn trim_lowercase_makes_spellings_hash_alike() {
        let p = plugin(json!({"paths": ["traits.email"], "trim_lowercase": true})).unwrap();
        assert_eq!(
            p.hash(&json!(" Ann@Example.com")),
            p.hash(&json!("ann@example.com"))
        );
    }

    #[test]
    fn config_mistakes_are_refused() {
        assert!(
            plugin(json!({"paths": []}))
                .unwrap_err()
                .contains("`paths` is empty")
        );
        assert!(
            plugin(json!({"paths": ["traits."]}))
                .unwrap_err()
                .contains("`traits.`")
        );
        let err =
            plugin(json!({"paths": ["traits.email"], "mode": "redact", "salt": "s"})).unwrap_err();
        assert!(err.contains("only apply to mode"), "{err}");
        let err = plugin(json!({"paths": ["traits.email"], "mode": "encrypt"})).unwrap_err();
        assert!(err.contains("at `mode`"), "{err}");
    }
}
