//! `${VAR}` references in config strings, so secrets (write keys, tokens, API keys) can come from
//! the environment instead of the file. `$${` writes a literal `${`.

use super::Problem;

/// Replaces every `${NAME}` in the string values of `value`, recording a problem for each
/// variable that is not set.
pub fn expand(
    value: &mut toml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand_str(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.to_owned(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), lookup, problems);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                expand(item, &child, lookup, problems);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("unterminated `${`: write `${NAME}`, or `$${` for a literal".into());
            };
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set (referenced as `${{{name}}}`)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "KEY").then(|| "secret".to_string())
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand_str("a-${KEY}-b", &lookup).unwrap(), "a-secret-b");
        assert_eq!(expand_str("$${KEY}", &lookup).unwrap(), "${KEY}");
        assert_eq!(expand_str("cost $5", &lookup).unwrap(), "cost $5");
    }

    #[test]
    fn missing_variable_is_reported_with_its_path() {
        let mut v: toml::Value = toml::from_str("[a]\nb = [\"${NOPE}\"]").unwrap();
        let mut problems = Vec::new();
        expand(&mut v, "", &lookup, &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "a.b[0]");
        assert!(problems[0].message.contains("NOPE is not set"));
    }
}
