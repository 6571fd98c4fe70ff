//! A JSON object seen only one level deep: each field's value stays the raw JSON text it arrived
//! as.
//!
//! Enrichment touches a handful of top-level fields (`receivedAt`, `timestamp`, `messageId`,
//! `context.ip`); parsing `properties` and `traits` into trees only to print them again would
//! cost most of the ingest CPU. Untouched values are copied byte for byte, so weir also never
//! rewrites a client's numbers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A field value: borrowed from the request, or produced by enrichment (always valid JSON).
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Raw(&'a RawValue),
    Owned(String),
}

impl Value<'_> {
    pub fn json(&self) -> &str {
        match self {
            Value::Raw(r) => r.get(),
            Value::Owned(s) => s,
        }
    }
}

/// A field that should hold a string holds something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAString;

/// The fields of a JSON object in their original order.
#[derive(Debug, Default, Clone)]
pub struct RawObject<'a> {
    fields: Vec<(Cow<'a, str>, Value<'a>)>,
}

/// A string that borrows from the input when it has no escapes (object keys here and in the
/// warehouse's JSON tree).
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, Value<'de>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    // JSON parsers keep the last of duplicate keys; so do we, so every later
                    // reader of the stored event sees the value weir validated.
                    fields.retain(|(existing, _)| *existing != k);
                    fields.push((k, Value::Raw(v)));
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> RawObject<'a> {
    /// Parses `json`, which must be an object.
    pub fn parse(json: &'a str) -> Result<RawObject<'a>, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The raw JSON of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.json())
    }

    /// The raw JSON of field `name` as it was parsed, borrowed from the parsed text (`None` if
    /// absent, or set since).
    pub fn get_parsed(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match v {
                Value::Raw(r) => Some(r.get()),
                Value::Owned(_) => None,
            })
    }

    /// Field `name` if it is a JSON string; `Err` if present but not a string.
    pub fn get_str(&self, name: &str) -> Result<Option<Cow<'_, str>>, NotAString> {
        match self.get(name) {
            None | Some("null") => Ok(None),
            Some(raw) if raw.starts_with('"') => serde_json::from_str::<Cow<'_, str>>(raw)
                .map(Some)
                .map_err(|_| NotAString),
            Some(_) => Err(NotAString),
        }
    }

    /// Field `name` as an identifier: a non-empty string, or a number (as its text). Anything
    /// else, or an empty string, is `None`.
    pub fn get_id(&self, name: &str) -> Option<Cow<'_, str>> {
        let raw = self.get(name)?;
        match raw.as_bytes().first()? {
            b'"' => serde_json::from_str::<Cow<'_, str>>(raw)
                .ok()
                .filter(|s| !s.is_empty()),
            b'-' | b'0'..=b'9' => Some(Cow::Borrowed(raw)),
            _ => None,
        }
    }

    /// True if field `name` is present and not `null`.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "null")
    }

    /// Sets field `name` to the JSON `json`, in place if present, else at the end.
    pub fn set(&mut self, name: &'a str, json: String) {
        match self.fields.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = Value::Owned(json),
            None => self.fields.push((Cow::Borrowed(name), Value::Owned(json))),
        }
    }

    /// Sets field `name` to the JSON string `s`.
    pub fn set_str(&mut self, name: &'a str, s: &str) {
        self.set(name, json_string(s));
    }

    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(k, _)| k != name);
    }

    /// Writes the object as compact JSON.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(k, out);
            out.push(b':');
            out.extend_from_slice(v.json().as_bytes());
        }
        out.push(b'}');
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        // Built only from valid UTF-8 keys and values.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_json_string(s, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_values_are_kept_byte_for_byte() {
        let src = r#"{"a": 1.000, "b": {"x" : [1, 2]}, "c\"d": "e"}"#;
        let mut o = RawObject::parse(src).unwrap();
        o.set_str("f", "g\"h");
        o.set("a", "2".into());
        let out = o.to_json();
        assert_eq!(out, r#"{"a":2,"b":{"x" : [1, 2]},"c\"d":"e","f":"g\"h"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["f"], "g\"h");
    }

    #[test]
    fn last_duplicate_key_wins() {
        let o = RawObject::parse(r#"{"type":"track","type":"identify"}"#).unwrap();
        assert_eq!(o.get_str("type").unwrap().as_deref(), Some("identify"));
    }

    #[test]
    fn ids_accept_strings_and_numbers() {
        let o = RawObject::parse(r#"{"u":42,"a":"","s":"x\u0041","n":null,"o":{}}"#).unwrap();
        assert_eq!(o.get_id("u").as_deref(), Some("42"));
        assert_eq!(o.get_id("a"), None);
        assert_eq!(o.get_id("s").as_deref(), Some("xA"));
        assert_eq!(o.get_id("n"), None);
        assert_eq!(o.get_id("o"), None);
        assert!(o.get_str("o").is_err());
        assert_eq!(o.get_str("n"), Ok(None));
    }
}
