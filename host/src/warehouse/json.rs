//! The JSON tree the mapper reads: strings and keys borrowed from the payload where they hold no
//! escapes, objects as their fields in document order. `serde_json::Value` allocates every key
//! and string and hashes every key into an index map, all to be moved into cells or dropped a
//! moment later: that was a third of the warehouse's CPU per event.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

use crate::event::raw_object::Key;

/// An object's fields, in document order (a repeated key keeps both; the mapper's lookups take
/// the last, as `serde_json` would).
pub type Object<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

#[derive(Clone, Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

impl<'a> Json<'a> {
    /// Parses `bytes`, borrowing from them.
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn string(s: impl Into<Cow<'a, str>>) -> Json<'a> {
        Json::String(s.into())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The value as text: a string as itself, anything else as compact JSON (what
    /// `serde_json::Value::to_string` gives).
    pub fn into_text(self) -> String {
        match self {
            Json::String(s) => s.into_owned(),
            other => serde_json::to_string(&other).unwrap_or_default(),
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json<'a>, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

/// A string as the warehouse keeps it: without NUL characters (`\u0000`, valid in JSON), which
/// PostgreSQL text cannot hold: one would fail the whole load, and every load after it. Only a
/// string with escapes can hold one (JSON has no raw control characters), and only those come
/// here unescaped; a borrowed string is never checked.
fn without_nul(mut s: String) -> String {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
    s
}

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(without_nul(s.to_owned()))))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(without_nul(s))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(k)) = map.next_key()? {
            fields.push((k, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_dropped_from_strings() {
        let text = br#"{"a":"x\u0000y","b":["\u0000"],"c":"plain"}"#;
        let Json::Object(fields) = Json::parse(text).unwrap() else {
            panic!("not an object")
        };
        assert_eq!(fields[0].1, Json::string("xy"));
        assert_eq!(fields[1].1, Json::Array(vec![Json::string("")]));
        assert_eq!(fields[2].1, Json::string("plain"));
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_text_matches_serde_json() {
        let text = br#"{"a":"plain","b":"esc\"aped","n":[1,-2,3.5,18446744073709551615],"o":{"x":null,"y":true}}"#;
        let Json::Object(fields) = Json::parse(text).unwrap() else {
            panic!("an object")
        };
        assert!(matches!(&fields[0].1, Json::String(Cow::Borrowed("plain"))));
        assert!(matches!(&fields[1].1, Json::String(Cow::Owned(s)) if s == "esc\"aped"));
        let value: serde_json::Value = serde_json::from_slice(text).unwrap();
        for (k, v) in fields {
            assert_eq!(
                v.clone().into_text(),
                match &value[k.as_ref()] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            );
        }
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(Json::parse(b"{\"a\":").is_err());
    }
}
