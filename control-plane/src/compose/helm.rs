//! `x-helm`: a stack that is a Helm chart release rather than services of its own.
//!
//! ```yaml
//! services: {}
//! x-helm:
//!   chart: nginx                        # in `repo`; or oci://…; or a path on the agent's host
//!   repo: https://charts.bitnami.com/bitnami
//!   version: 18.1.0
//!   values:                             # interpolated like the rest of the file
//!     replicaCount: 2
//!     auth: { password: "${DB_PASSWORD}" }
//! ```

use serde_yaml::Value;
use windflow_protocol::stack::HelmChart;

use super::Diagnostic;

const KEYS: &[&str] = &["chart", "repo", "version", "values"];

/// The path of the first mapping key below `value` that is not a string, number or boolean.
fn key_not_a_name(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Mapping(mapping) => mapping.iter().find_map(|(key, item)| match key {
            Value::String(name) => key_not_a_name(item, &format!("{path}.{name}")),
            Value::Number(_) | Value::Bool(_) => key_not_a_name(item, path),
            _ => Some(path.to_owned()),
        }),
        Value::Sequence(items) => {
            items.iter().enumerate().find_map(|(index, item)| key_not_a_name(item, &format!("{path}[{index}]")))
        }
        Value::Tagged(tagged) => key_not_a_name(&tagged.value, path),
        _ => None,
    }
}

/// The chart of the stack, if it has an `x-helm` section; problems go to `errors` by path.
pub fn extract(value: &Value, errors: &mut Vec<Diagnostic>) -> Option<HelmChart> {
    let section = value.get("x-helm")?;
    let Some(section) = section.as_mapping() else {
        errors.push(Diagnostic::at_str("x-helm", "must be a mapping with at least `chart`"));
        return None;
    };
    for key in section.keys() {
        match key.as_str() {
            Some(key) if KEYS.contains(&key) => {}
            other => errors.push(Diagnostic::at_str(
                &format!("x-helm.{}", other.unwrap_or("?")),
                format!("unknown key; x-helm takes {}", KEYS.join(", ")),
            )),
        }
    }
    let text = |key: &str, errors: &mut Vec<Diagnostic>| match section.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            errors.push(Diagnostic::at_str(&format!("x-helm.{key}"), "must be a non-empty string"));
            None
        }
    };
    let chart = text("chart", errors);
    let repo = text("repo", errors);
    let version = text("version", errors);
    if chart.is_none() && !errors.iter().any(|e| e.path.as_deref() == Some("x-helm.chart")) {
        errors.push(Diagnostic::at_str("x-helm.chart", "the chart to release is required"));
    }
    if let Some(repo) = &repo
        && !(repo.starts_with("https://") || repo.starts_with("http://"))
    {
        errors.push(Diagnostic::at_str("x-helm.repo", "a chart repository is an http(s) URL"));
    }
    let values = match section.get("values") {
        None | Some(Value::Null) => String::new(),
        Some(values @ Value::Mapping(_)) => {
            if let Some(path) = key_not_a_name(values, "x-helm.values") {
                errors.push(Diagnostic::at_str(
                    &path,
                    "the chart's values are named by strings (Helm reads them as JSON)",
                ));
            }
            serde_yaml::to_string(values).unwrap_or_default()
        }
        Some(_) => {
            errors.push(Diagnostic::at_str("x-helm.values", "must be a mapping of the chart's values"));
            String::new()
        }
    };
    let has_services = value.get("services").and_then(Value::as_mapping).is_some_and(|s| !s.is_empty());
    if has_services {
        errors.push(Diagnostic::at_str(
            "services",
            "a Helm stack releases its chart and has no services of its own: leave `services: {}`",
        ));
    }
    Some(HelmChart { chart: chart?, repo, version, values_yaml: values })
}
