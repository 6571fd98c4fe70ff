//! A plugin's config file: JSON, or YAML (`.yaml` / `.yml`) for configs people write by hand,
//! such as tracking plans. Whichever it is on disk, the plugin gets JSON: plugins parse one
//! format, and the version a config makes is the same for the same content.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid {format}: {message}", path.display())]
    Parse {
        path: PathBuf,
        format: Format,
        message: String,
    },
}

/// How a config file is written, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        })
    }
}

impl Format {
    /// YAML for `.yaml` and `.yml`, JSON for anything else.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Json,
        }
    }
}

/// Reads and parses a config file; see the module docs.
pub fn read(path: &Path) -> Result<Value, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let format = Format::of(path);
    parse(&text, format).map_err(|message| ConfigFileError::Parse {
        path: path.to_owned(),
        format,
        message,
    })
}

/// Parses config text written in `format`.
pub fn parse(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        // Into a JSON value directly: a syntax error is reported here with YAML's line and
        // column, and the plugin sees exactly the JSON it would have got from a JSON file.
        Format::Yaml => serde_norway::from_str::<Value>(text).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_and_json_of_the_same_plan_are_the_same_config() {
        let yaml = r#"
plan: web-v3
events:
  track:
    Order Completed:
      description: A purchase
      properties:
        type: object
        required: [revenue]
        properties:
          revenue: {type: number, minimum: 0}
          coupon: {type: [string, "null"]}
          sku: {type: string, pattern: "^[A-Z]{3}-\\d+$"}
  identify: {}
actions:
  default: {unplanned: drop}
"#;
        let from_yaml = parse(yaml, Format::Yaml).unwrap();
        let from_json = json!({"plan": "web-v3", "events": {"track": {"Order Completed": {
            "description": "A purchase",
            "properties": {"type": "object", "required": ["revenue"], "properties": {
                "revenue": {"type": "number", "minimum": 0},
                "coupon": {"type": ["string", "null"]},
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d+$"}}}}},
            "identify": {}}, "actions": {"default": {"unplanned": "drop"}}});
        assert_eq!(from_yaml, from_json);
        // Key order is kept, as the plugin would see it in JSON.
        let keys: Vec<&String> = from_yaml.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["plan", "events", "actions"]);
    }

    #[test]
    fn the_extension_picks_the_format_and_errors_say_where() {
        assert_eq!(Format::of(Path::new("plan.YML")), Format::Yaml);
        assert_eq!(Format::of(Path::new("plan.yaml")), Format::Yaml);
        assert_eq!(Format::of(Path::new("plan.json")), Format::Json);
        assert_eq!(Format::of(Path::new("plan")), Format::Json);
        let err = parse("plan: [a\nevents: {}\n", Format::Yaml).unwrap_err();
        assert!(err.contains("line"), "{err}");
    }
}
