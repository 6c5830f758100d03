//! Labels on targets (`env=prod`, `group=web`): key–value pairs that people filter and group
//! targets by. A join token may carry labels, which the targets it enrolls start with.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// The most labels one target may have.
pub const MAX_LABELS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("at most {MAX_LABELS} labels")]
    TooMany,
    #[error(
        "label key {0:?}: 1 to 63 lowercase letters, digits, '.', '-', '_' or '/', starting with a letter or digit"
    )]
    BadKey(String),
    #[error("label {0:?}: values are at most 63 characters, without control characters")]
    BadValue(String),
}

/// Checks labels as people type them: keys are lowercase identifiers, values short text.
pub fn check(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    for (key, value) in labels {
        let key_ok = key.len() <= 63
            && key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '/'));
        if !key_ok {
            return Err(LabelError::BadKey(key.clone()));
        }
        if value.chars().count() > 63 || value.chars().any(char::is_control) {
            return Err(LabelError::BadValue(key.clone()));
        }
    }
    Ok(())
}

/// Parses `key=value` selectors (`env=prod`), or a bare `key` for "has this label".
pub fn matches(labels: &Labels, selector: &str) -> bool {
    match selector.split_once('=') {
        Some((key, value)) => labels.get(key.trim()).is_some_and(|v| v == value.trim()),
        None => labels.contains_key(selector.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn keys_are_lowercase_identifiers_and_values_short_text() {
        assert!(check(&labels(&[("env", "prod"), ("team/web", "Front end"), ("k8s.io_zone", "")])).is_ok());
        assert_eq!(check(&labels(&[("Env", "x")])), Err(LabelError::BadKey("Env".into())));
        assert_eq!(check(&labels(&[("-x", "x")])), Err(LabelError::BadKey("-x".into())));
        assert_eq!(check(&labels(&[("", "x")])), Err(LabelError::BadKey(String::new())));
        assert_eq!(check(&labels(&[("a", &"v".repeat(64))])), Err(LabelError::BadValue("a".into())));
        assert_eq!(check(&labels(&[("a", "line\nbreak")])), Err(LabelError::BadValue("a".into())));
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(check(&many), Err(LabelError::TooMany));
    }

    #[test]
    fn selectors_match_a_value_or_the_presence_of_a_key() {
        let l = labels(&[("env", "prod"), ("group", "web")]);
        assert!(matches(&l, "env=prod") && matches(&l, " group = web ") && matches(&l, "env"));
        assert!(!matches(&l, "env=staging") && !matches(&l, "zone"));
    }
}
