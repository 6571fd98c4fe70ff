//! The JSON Schema subset of a tracking plan, compiled once at `init` and checked per event.
//!
//! Keywords: `type` (one name or a list), `properties`, `required`, `additionalProperties`
//! (`true`/`false`), `enum`, `pattern`, `minimum`, `maximum`, `minLength`, `maxLength`,
//! `items` (one schema). Annotations (`title`, `description`, `$schema`...) are accepted and
//! ignored; any other keyword is refused at `init`, so a typo never silently disables a check.

use std::collections::HashMap;

use regex::Regex;
use weir_plugin::json_eq;
use weir_plugin::serde_json::{Number, Value, json};

/// A violation kind, named as RudderStack names them in `context.violationErrors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The event's type, or its name, is not in the plan.
    UnplannedEvent,
    /// A `required` property is absent.
    RequiredMissing,
    /// A value has none of the schema's `type`s.
    DatatypeMismatch,
    /// A property not in `properties` where `additionalProperties` is `false`.
    AdditionalProperties,
    /// Any other check: `enum`, `pattern`, `minimum`, `maximum`, `minLength`, `maxLength`.
    UnknownViolation,
}

impl Kind {
    /// The name teams know (`Required-Missing`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UnplannedEvent => "Unplanned-Event",
            Kind::RequiredMissing => "Required-Missing",
            Kind::DatatypeMismatch => "Datatype-Mismatch",
            Kind::AdditionalProperties => "Additional-Properties",
            Kind::UnknownViolation => "Unknown-Violation",
        }
    }
}

/// One violation of the plan by one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What kind of violation.
    pub kind: Kind,
    /// What is wrong, e.g. `must have required property 'revenue'`.
    pub message: String,
    /// JSON pointer to the offending value in the event, e.g. `/properties/revenue`.
    pub instance_path: String,
}

impl Violation {
    /// RudderStack's shape: `{"type", "message", "meta": {"instancePath"}}`.
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.kind.as_str(),
            "message": self.message,
            "meta": {"instancePath": self.instance_path},
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl JsonType {
    fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "null" => JsonType::Null,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Null => "null",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match (self, value) {
            (JsonType::String, Value::String(_))
            | (JsonType::Number, Value::Number(_))
            | (JsonType::Boolean, Value::Bool(_))
            | (JsonType::Object, Value::Object(_))
            | (JsonType::Array, Value::Array(_))
            | (JsonType::Null, Value::Null) => true,
            // JSON Schema: 2.0 is an integer.
            (JsonType::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// Keywords that only document a schema.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
];

const SUPPORTED: &str = "type, properties, required, additionalProperties, enum, pattern, \
                         minimum, maximum, minLength, maxLength, items";

/// A compiled schema.
#[derive(Debug)]
pub struct Schema {
    types: Option<Vec<JsonType>>,
    properties: HashMap<String, Schema>,
    required: Vec<String>,
    additional_properties: bool,
    enumeration: Option<Vec<Value>>,
    pattern: Option<Regex>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    items: Option<Box<Schema>>,
}

/// `.name` for identifier-like keys, `["Order Completed"]` for the others.
pub fn segment(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if plain {
        format!(".{key}")
    } else {
        format!("[{}]", Value::String(key.to_owned()))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn length(value: &Value, at: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| format!("{at}: must be a non-negative integer, got {value}"))
}

fn number(value: &Value, at: &str) -> Result<f64, String> {
    value
        .as_f64()
        .ok_or_else(|| format!("{at}: must be a number, got {value}"))
}

impl Schema {
    /// Compiles `value`; an error names the offending path (`path` is where `value` is, e.g.
    /// `events.track["Order Completed"].properties`).
    pub fn compile(value: &Value, path: &str) -> Result<Schema, String> {
        let Value::Object(map) = value else {
            return Err(format!(
                "{path}: a schema must be a JSON object, got {}",
                kind_of(value)
            ));
        };
        let mut schema = Schema {
            types: None,
            properties: HashMap::new(),
            required: Vec::new(),
            additional_properties: true,
            enumeration: None,
            pattern: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
            items: None,
        };
        for (key, v) in map {
            let at = format!("{path}{}", segment(key));
            match key.as_str() {
                "type" => schema.types = Some(compile_types(v, &at)?),
                "properties" => {
                    let Value::Object(props) = v else {
                        return Err(format!(
                            "{at}: must be an object of property name → schema, got {}",
                            kind_of(v)
                        ));
                    };
                    for (name, s) in props {
                        let sub = Schema::compile(s, &format!("{at}{}", segment(name)))?;
                        schema.properties.insert(name.clone(), sub);
                    }
                }
                "required" => {
                    let names = v.as_array().ok_or_else(|| {
                        format!("{at}: must be a list of property names, got {}", kind_of(v))
                    })?;
                    for name in names {
                        let name = name.as_str().ok_or_else(|| {
                            format!("{at}: must be a list of property names, holds {name}")
                        })?;
                        schema.required.push(name.to_owned());
                    }
                }
                "additionalProperties" => {
                    schema.additional_properties = v.as_bool().ok_or_else(|| {
                        format!("{at}: only true or false is supported, got {}", kind_of(v))
                    })?;
                }
                "enum" => match v {
                    Value::Array(values) if !values.is_empty() => {
                        schema.enumeration = Some(values.clone());
                    }
                    _ => return Err(format!("{at}: must be a non-empty list of values")),
                },
                "pattern" => {
                    let text = v
                        .as_str()
                        .ok_or_else(|| format!("{at}: must be a string, got {}", kind_of(v)))?;
                    let regex = Regex::new(text)
                        .map_err(|e| format!("{at}: invalid regular expression: {e}"))?;
                    schema.pattern = Some(regex);
                }
                "minimum" => schema.minimum = Some(number(v, &at)?),
                "maximum" => schema.maximum = Some(number(v, &at)?),
                "minLength" => schema.min_length = Some(length(v, &at)?),
                "maxLength" => schema.max_length = Some(length(v, &at)?),
                "items" => {
                    if v.is_array() {
                        return Err(format!(
                            "{at}: the list (tuple) form is not supported, give one schema for \
                             every item"
                        ));
                    }
                    schema.items = Some(Box::new(Schema::compile(v, &at)?));
                }
                k if ANNOTATIONS.contains(&k) => {}
                other => {
                    return Err(format!(
                        "{path}: unsupported keyword {:?} (supported: {SUPPORTED})",
                        other
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (schema.minimum, schema.maximum)
            && min > max
        {
            return Err(format!("{path}: minimum {min} is above maximum {max}"));
        }
        if let (Some(min), Some(max)) = (schema.min_length, schema.max_length)
            && min > max
        {
            return Err(format!("{path}: minLength {min} is above maxLength {max}"));
        }
        Ok(schema)
    }

    /// Checks `value`, found at JSON pointer `path`, and appends what is wrong to `out`.
    pub fn check(&self, value: &Value, path: &mut String, out: &mut Vec<Violation>) {
        if let Some(types) = &self.types
            && !types.iter().any(|t| t.matches(value))
        {
            let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
            out.push(Violation {
                kind: Kind::DatatypeMismatch,
                message: format!("must be {}, got {}", names.join(","), kind_of(value)),
                instance_path: path.clone(),
            });
            // The other keywords say nothing useful about a value of the wrong type.
            return;
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.iter().any(|a| json_eq(a, value))
        {
            out.push(Violation {
                kind: Kind::UnknownViolation,
                message: format!(
                    "must be equal to one of the allowed values: {}",
                    Value::Array(allowed.clone())
                ),
                instance_path: path.clone(),
            });
        }
        match value {
            Value::String(text) => self.check_string(text, path, out),
            Value::Number(n) => self.check_number(n, path, out),
            Value::Object(map) => {
                for name in &self.required {
                    if !map.contains_key(name) {
                        out.push(Violation {
                            kind: Kind::RequiredMissing,
                            message: format!("must have required property '{name}'"),
                            instance_path: child(path, name),
                        });
                    }
                }
                for (key, v) in map {
                    match self.properties.get(key) {
                        Some(schema) => {
                            let len = path.len();
                            push_pointer(path, key);
                            schema.check(v, path, out);
                            path.truncate(len);
                        }
                        None if !self.additional_properties => out.push(Violation {
                            kind: Kind::AdditionalProperties,
                            message: format!("must NOT have additional property '{key}'"),
                            instance_path: child(path, key),
                        }),
                        None => {}
                    }
                }
            }
            Value::Array(values) => {
                if let Some(items) = &self.items {
                    for (i, v) in values.iter().enumerate() {
                        let len = path.len();
                        push_pointer(path, &i.to_string());
                        items.check(v, path, out);
                        path.truncate(len);
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_string(&self, text: &str, path: &str, out: &mut Vec<Violation>) {
        let mut fail = |message: String| {
            out.push(Violation {
                kind: Kind::UnknownViolation,
                message,
                instance_path: path.to_owned(),
            });
        };
        if let Some(regex) = &self.pattern
            && !regex.is_match(text)
        {
            fail(format!("must match pattern {:?}", regex.as_str()));
        }
        if self.min_length.is_some() || self.max_length.is_some() {
            let chars = text.chars().count() as u64;
            if let Some(min) = self.min_length
                && chars < min
            {
                fail(format!("must NOT have fewer than {min} characters"));
            }
            if let Some(max) = self.max_length
                && chars > max
            {
                fail(format!("must NOT have more than {max} characters"));
            }
        }
    }

    fn check_number(&self, n: &Number, path: &str, out: &mut Vec<Violation>) {
        let Some(x) = n.as_f64() else { return };
        let mut fail = |message: String| {
            out.push(Violation {
                kind: Kind::UnknownViolation,
                message,
                instance_path: path.to_owned(),
            });
        };
        if let Some(min) = self.minimum
            && x < min
        {
            fail(format!("must be >= {min}"));
        }
        if let Some(max) = self.maximum
            && x > max
        {
            fail(format!("must be <= {max}"));
        }
    }
}

/// Appends `/key` to a JSON pointer, escaping `~` and `/` (RFC 6901).
pub fn push_pointer(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn child(path: &str, key: &str) -> String {
    let mut p = path.to_owned();
    push_pointer(&mut p, key);
    p
}

fn compile_types(value: &Value, at: &str) -> Result<Vec<JsonType>, String> {
    let one = |v: &Value| -> Result<JsonType, String> {
        match v {
            Value::String(name) => JsonType::parse(name).ok_or_else(|| {
                format!(
                    "{at}: unknown type {v} (types: string, number, integer, boolean, object, \
                     array, null)"
                )
            }),
            other => Err(format!(
                "{at}: must be a type name or a list of them, holds {}",
                kind_of(other)
            )),
        }
    };
    match value {
        Value::Array(names) if names.is_empty() => Err(format!("{at}: the list of types is empty")),
        Value::Array(names) => names.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(schema: Value, value: Value) -> Vec<(Kind, String)> {
        let schema = Schema::compile(&schema, "s").unwrap();
        let mut out = Vec::new();
        schema.check(&value, &mut "/properties".to_owned(), &mut out);
        out.into_iter().map(|v| (v.kind, v.instance_path)).collect()
    }

    #[test]
    fn nested_objects_and_arrays_recurse_with_escaped_pointers() {
        let schema = json!({"type": "object", "properties": {
            "a/b": {"type": "array", "items": {"type": "object", "required": ["sku"],
                "properties": {"price": {"type": "number", "minimum": 0}}}}}});
        let value = json!({"a/b": [{"sku": "x", "price": 1}, {"price": -1}]});
        assert_eq!(
            violations(schema, value),
            vec![
                (Kind::RequiredMissing, "/properties/a~1b/1/sku".to_owned()),
                (
                    Kind::UnknownViolation,
                    "/properties/a~1b/1/price".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn integers_type_lists_and_numeric_enums() {
        let schema = json!({"properties": {
            "n": {"type": "integer"}, "m": {"type": ["string", "null"]}, "e": {"enum": [1, "a"]}}});
        assert!(violations(schema.clone(), json!({"n": 2.0, "m": null, "e": 1.0})).is_empty());
        assert_eq!(
            violations(schema, json!({"n": 2.5, "m": 3, "e": 2})),
            vec![
                (Kind::DatatypeMismatch, "/properties/n".to_owned()),
                (Kind::DatatypeMismatch, "/properties/m".to_owned()),
                (Kind::UnknownViolation, "/properties/e".to_owned()),
            ]
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let schema = json!({"type": "string", "maxLength": 2});
        assert!(violations(schema, json!("éé")).is_empty());
    }

    #[test]
    fn compile_errors_name_the_path() {
        let err = |s: Value| Schema::compile(&s, "p").unwrap_err();
        assert!(
            err(json!({"properties": {"a b": {"type": "strng"}}}))
                .starts_with(r#"p.properties["a b"].type: unknown type "strng""#)
        );
        assert!(err(json!({"pattern": "("})).starts_with("p.pattern: invalid regular expression"));
        assert!(err(json!({"requird": []})).contains("unsupported keyword \"requird\""));
        assert!(err(json!({"additionalProperties": {}})).contains("only true or false"));
    }
}
