//! Dotted paths into a JSON event: `context.traits.email`, `properties.products.0.sku`.
//!
//! A path is a list of keys separated by `.`. A segment that is a decimal number indexes an
//! array when the value at that point is an array, and is an ordinary key otherwise (so
//! `properties.0` still reaches a property named `"0"`). There is no escaping: a key that
//! itself contains a `.` cannot be reached with a path; use [`Event::fields_mut`] for those.
//!
//! Key order is preserved: `set` appends new keys at the end and `remove` shifts the keys after
//! the removed one, so an event that a plugin did not touch serializes as it arrived.
//!
//! [`Event::fields_mut`]: crate::Event::fields_mut

use serde_json::{Map, Value};

/// Why [`Event::set`](crate::Event::set) could not write a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty or has an empty segment (`""`, `"a..b"`, `"a."`).
    #[error(
        "invalid path `{0}`: a path is keys separated by single dots, like `context.traits.email`"
    )]
    Invalid(String),
    /// A value on the way is neither an object nor an array, so nothing can be put inside it.
    #[error("cannot write `{path}`: `{blocked_at}` is a {kind}, not an object")]
    NotAContainer {
        /// The path that was being written.
        path: String,
        /// The prefix of `path` that holds the value in the way.
        blocked_at: String,
        /// The JSON type found there (`string`, `number`...).
        kind: &'static str,
    },
    /// An array segment is not a number or is past the end of the array (`set` never grows an
    /// array).
    #[error("cannot write `{path}`: the array at `{blocked_at}` has no element `{segment}`")]
    NoSuchElement {
        /// The path that was being written.
        path: String,
        /// The prefix of `path` that holds the array.
        blocked_at: String,
        /// The segment that does not name an element.
        segment: String,
    },
}

/// Splits a path; `None` when a segment is empty.
fn segments(path: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(segments)
}

fn step<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    }
}

fn step_mut<'a>(value: &'a mut Value, segment: &str) -> Option<&'a mut Value> {
    match value {
        Value::Object(map) => map.get_mut(segment),
        Value::Array(items) => items.get_mut(segment.parse::<usize>().ok()?),
        _ => None,
    }
}

pub(crate) fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let segments = segments(path)?;
    let (first, rest) = segments.split_first()?;
    rest.iter()
        .try_fold(root.get(*first)?, |value, segment| step(value, segment))
}

pub(crate) fn get_mut<'a>(root: &'a mut Map<String, Value>, path: &str) -> Option<&'a mut Value> {
    let segments = segments(path)?;
    let (first, rest) = segments.split_first()?;
    rest.iter()
        .try_fold(root.get_mut(*first)?, |value, segment| {
            step_mut(value, segment)
        })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Writes `value` at `path`, creating missing objects on the way; a `null` on the way counts as
/// missing. Returns the value it replaced.
pub(crate) fn set(
    root: &mut Map<String, Value>,
    path: &str,
    value: Value,
) -> Result<Option<Value>, PathError> {
    let segments = segments(path).ok_or_else(|| PathError::Invalid(path.to_owned()))?;
    // Walk a `Value` rather than a `Map` so objects and arrays on the way are handled alike;
    // moving the map in and out is a few pointer copies.
    let mut whole = Value::Object(std::mem::take(root));
    let result = set_in(&mut whole, path, &segments, value);
    if let Value::Object(map) = whole {
        *root = map;
    }
    result
}

fn set_in(
    root: &mut Value,
    path: &str,
    segments: &[&str],
    value: Value,
) -> Result<Option<Value>, PathError> {
    let mut current = root;
    // Length of the prefix of `path` that leads to `current`, including its trailing dot.
    let mut consumed = 0;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let here = || path[..consumed.max(1) - 1].to_owned();
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        current = match current {
            Value::Object(map) => {
                if is_last {
                    return Ok(map.insert((*segment).to_owned(), value));
                }
                map.entry((*segment).to_owned()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let Some(element) = segment
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| items.get_mut(index))
                else {
                    return Err(PathError::NoSuchElement {
                        path: path.to_owned(),
                        blocked_at: here(),
                        segment: (*segment).to_owned(),
                    });
                };
                if is_last {
                    return Ok(Some(std::mem::replace(element, value)));
                }
                element
            }
            other => {
                return Err(PathError::NotAContainer {
                    path: path.to_owned(),
                    blocked_at: here(),
                    kind: kind(other),
                });
            }
        };
        consumed += segment.len() + 1;
    }
    Err(PathError::Invalid(path.to_owned()))
}

/// Removes the value at `path`; an array element is removed and the elements after it shift.
pub(crate) fn remove(root: &mut Map<String, Value>, path: &str) -> Option<Value> {
    let segments = segments(path)?;
    let (last, parents) = segments.split_last()?;
    if parents.is_empty() {
        return root.shift_remove(*last);
    }
    let parent_path = &path[..path.len() - last.len() - 1];
    match get_mut(root, parent_path)? {
        Value::Object(map) => map.shift_remove(*last),
        Value::Array(items) => {
            let index = last.parse::<usize>().ok()?;
            (index < items.len()).then(|| items.remove(index))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn get_walks_objects_and_arrays() {
        let root = object(json!({
            "context": {"traits": {"email": "a@b.c"}},
            "properties": {"products": [{"sku": "x"}, {"sku": "y"}], "0": "zero"}
        }));
        assert_eq!(get(&root, "context.traits.email"), Some(&json!("a@b.c")));
        assert_eq!(get(&root, "properties.products.1.sku"), Some(&json!("y")));
        assert_eq!(get(&root, "properties.0"), Some(&json!("zero")));
        assert_eq!(get(&root, "properties.products.2"), None);
        assert_eq!(get(&root, "properties.products.x"), None);
        assert_eq!(get(&root, "context.traits.email.domain"), None);
        assert_eq!(get(&root, "context..traits"), None);
        assert_eq!(get(&root, ""), None);
    }

    #[test]
    fn set_creates_missing_objects_and_keeps_key_order() {
        let mut root = object(json!({"type": "track", "properties": null, "event": "E"}));
        assert_eq!(set(&mut root, "properties.a.b", json!(1)), Ok(None));
        assert_eq!(
            set(&mut root, "properties.a.b", json!(2)),
            Ok(Some(json!(1)))
        );
        assert_eq!(set(&mut root, "userId", json!("u")), Ok(None));
        assert_eq!(
            Value::Object(root).to_string(),
            r#"{"type":"track","properties":{"a":{"b":2}},"event":"E","userId":"u"}"#
        );
    }

    #[test]
    fn set_walks_into_existing_array_elements_only() {
        let mut root = object(json!({"p": {"items": [{"sku": "x"}, 3]}}));
        assert_eq!(set(&mut root, "p.items.0.price", json!(9)), Ok(None));
        assert_eq!(set(&mut root, "p.items.1", json!(4)), Ok(Some(json!(3))));
        assert_eq!(
            set(&mut root, "p.items.2.sku", json!("z")),
            Err(PathError::NoSuchElement {
                path: "p.items.2.sku".into(),
                blocked_at: "p.items".into(),
                segment: "2".into(),
            })
        );
        assert_eq!(root["p"], json!({"items": [{"sku": "x", "price": 9}, 4]}));
    }

    #[test]
    fn set_refuses_to_write_through_a_scalar() {
        let mut root = object(json!({"traits": {"email": "a@b.c"}}));
        let err = set(&mut root, "traits.email.domain", json!("b.c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot write `traits.email.domain`: `traits.email` is a string, not an object"
        );
        assert_eq!(root["traits"]["email"], json!("a@b.c"));
        assert!(matches!(
            set(&mut root, "a..b", json!(1)),
            Err(PathError::Invalid(_))
        ));
    }

    #[test]
    fn remove_keeps_order_of_the_other_keys() {
        let mut root = object(json!({"a": 1, "b": {"c": 2, "d": 3, "e": 4}, "f": [1, 2, 3]}));
        assert_eq!(remove(&mut root, "b.c"), Some(json!(2)));
        assert_eq!(remove(&mut root, "f.1"), Some(json!(2)));
        assert_eq!(remove(&mut root, "f.7"), None);
        assert_eq!(remove(&mut root, "a"), Some(json!(1)));
        assert_eq!(remove(&mut root, "missing.path"), None);
        assert_eq!(
            Value::Object(root).to_string(),
            r#"{"b":{"d":3,"e":4},"f":[1,3]}"#
        );
    }
}
