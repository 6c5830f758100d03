//! Compose variable interpolation over a parsed YAML tree: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}`, and `$$`
//! for a literal `$`. Defaults and alternatives are interpolated themselves, so they nest.
//!
//! Values come only from the stack's own variables, never from the control plane's environment.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::{Diagnostic, Path};

/// Interpolates every string scalar under `value` (mapping keys are left alone, as Compose does).
/// Unset variables without a default become empty strings and are reported as warnings.
pub fn interpolate_tree(
    value: &mut Value,
    variables: &BTreeMap<String, String>,
    path: &mut Path,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) {
    match value {
        Value::String(text) => match interpolate(text, variables) {
            Ok((result, unset)) => {
                for name in unset {
                    warnings.push(Diagnostic::at(path, format!("variable {name} is not set; using an empty string")));
                }
                *text = result;
            }
            Err(message) => errors.push(Diagnostic::at(path, message)),
        },
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push_index(index);
                interpolate_tree(item, variables, path, errors, warnings);
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push_key(key);
                interpolate_tree(item, variables, path, errors, warnings);
                path.pop();
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, variables, path, errors, warnings),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Interpolates one string. Returns the result and the names of unset variables that were
/// replaced by empty strings, or the error message of a `?` form or a malformed expression.
pub fn interpolate(text: &str, variables: &BTreeMap<String, String>) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = matching_brace(braced).ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let (value, mut missing) = expand(&braced[..end], variables)?;
            out.push_str(&value);
            unset.append(&mut missing);
            rest = &braced[end + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("invalid interpolation format in {text:?}: a lone `$` must be written `$$`"));
            }
            let name = &after[..len];
            match variables.get(name) {
                Some(value) => out.push_str(value),
                None => unset.push(name.to_owned()),
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok((out, unset))
}

/// Every variable name `text` interpolates (`$NAME`, `${NAME}`, `${NAME:-…}`… and those in
/// defaults), in order of first use; `$$` is a literal dollar.
pub fn referenced_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let after = after.strip_prefix('{').unwrap_or(after);
        let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..len];
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        rest = &after[len..];
    }
    names
}

/// The index of the `}` that closes an expression starting right after `${`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn expand(expression: &str, variables: &BTreeMap<String, String>) -> Result<(String, Vec<String>), String> {
    let name_len = expression.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expression.len());
    let (name, operator) = expression.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("invalid variable name in `${{{expression}}}`"));
    }
    let value = variables.get(name);
    let empty_counts_as_unset = operator.starts_with(':');
    let set = match value {
        Some(v) => !(empty_counts_as_unset && v.is_empty()),
        None => false,
    };
    let op = operator.strip_prefix(':').unwrap_or(operator);
    if operator == ":" {
        return Err(format!("invalid interpolation format `${{{expression}}}`"));
    }
    let (kind, argument) = match op.chars().next() {
        None => {
            return Ok(match value {
                Some(v) => (v.clone(), vec![]),
                None => (String::new(), vec![name.to_owned()]),
            });
        }
        Some(kind @ ('-' | '?' | '+')) => (kind, &op[1..]),
        _ => return Err(format!("invalid interpolation format `${{{expression}}}`")),
    };
    match kind {
        '-' if set => Ok((value.cloned().unwrap_or_default(), vec![])),
        '-' => interpolate(argument, variables),
        '+' if set => interpolate(argument, variables),
        '+' => Ok((String::new(), vec![])),
        _ if set => Ok((value.cloned().unwrap_or_default(), vec![])),
        _ => {
            let (message, _) = interpolate(argument, variables)?;
            let message = if message.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {message}")
            };
            Err(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn run(text: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        interpolate(text, &vars(pairs)).map(|(s, _)| s)
    }

    #[test]
    fn the_names_a_text_uses_are_listed_once_in_order_and_dollars_escaped_are_not() {
        let text = "${DB_PASSWORD} $PORT ${NAME:-${FALLBACK}} $$NOT ${PORT:?set it} $1";
        assert_eq!(referenced_names(text), ["DB_PASSWORD", "PORT", "NAME", "FALLBACK"]);
    }

    #[test]
    fn plain_and_braced_variables_are_replaced() {
        assert_eq!(run("$A-${B}x", &[("A", "1"), ("B", "2")]), Ok("1-2x".into()));
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(run("cost: $$5 and $${A}", &[]), Ok("cost: $5 and ${A}".into()));
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(run("${A:-d}", &[("A", "")]), Ok("d".into()));
        assert_eq!(run("${A-d}", &[("A", "")]), Ok("".into()));
        assert_eq!(run("${A-d}", &[]), Ok("d".into()));
        assert_eq!(run("${A:-d}", &[("A", "v")]), Ok("v".into()));
    }

    #[test]
    fn defaults_nest() {
        assert_eq!(run("${A:-${B:-deep}}", &[]), Ok("deep".into()));
        assert_eq!(run("${A:-${B}}", &[("B", "b")]), Ok("b".into()));
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${DB_PASSWORD:?set a password}", &[]),
            Err("required variable DB_PASSWORD is missing a value: set a password".into())
        );
        assert_eq!(run("${A:?}", &[("A", "")]), Err("required variable A is missing a value".into()));
        assert_eq!(run("${A?}", &[("A", "")]), Ok("".into()));
    }

    #[test]
    fn alternatives_apply_only_when_set() {
        assert_eq!(run("${A:+on}", &[("A", "x")]), Ok("on".into()));
        assert_eq!(run("${A:+on}", &[]), Ok("".into()));
    }

    #[test]
    fn unset_variables_are_reported() {
        let (out, unset) = interpolate("a${X}b$Y", &vars(&[])).expect("ok");
        assert_eq!((out.as_str(), unset), ("ab", vec!["X".to_string(), "Y".to_string()]));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in ["${A", "${}", "${1A}", "$ x", "${A:}", "${A*b}"] {
            assert!(run(bad, &[]).is_err(), "{bad}");
        }
    }
}
