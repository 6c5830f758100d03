//! The parts of a Compose file only a Swarm applies — `deploy.placement`, `deploy.mode`,
//! `deploy.update_config`, `rollback_config` and `restart_policy`, host-mode ports, and
//! secrets and configs —
//! read from the interpolated YAML into a `SwarmSpec`. They are read here rather than through
//! `compose_spec`, whose types do not know `failure_action: rollback` or fractional failure
//! ratios; the update policies are emptied once read, since the typed model does not use them.
//!
//! Secrets and configs come from the stack itself: `environment: NAME` takes the stack's
//! variable or secret `NAME`, `content:` (configs) the text given. `file:` sources are refused:
//! they would be read on the machine that saves the stack, not where it runs.

use std::collections::BTreeMap;

use serde_yaml::Value;
use windflow_protocol::stack::{
    FailureAction, FileMount, RestartCondition, SwarmObject, SwarmRestartPolicy, SwarmService, SwarmSpec, UpdateOrder,
    UpdatePolicy,
};

use super::Diagnostic;

fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_mapping().and_then(|m| m.get(key))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn duration_ms(value: &Value, path: &str, errors: &mut Vec<Diagnostic>) -> Option<u64> {
    let raw = text(value)?;
    match humantime::parse_duration(raw.trim()) {
        Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        Err(e) => {
            errors.push(Diagnostic::at_str(path, format!("{raw:?} is not a duration ({e})")));
            None
        }
    }
}

fn update_policy(value: &Value, path: &str, errors: &mut Vec<Diagnostic>) -> UpdatePolicy {
    let at = |key: &str| format!("{path}.{key}");
    let failure_action = match get(value, "failure_action").and_then(text).as_deref() {
        None | Some("pause") => FailureAction::Pause,
        Some("continue") => FailureAction::Continue,
        Some("rollback") => FailureAction::Rollback,
        Some(other) => {
            errors.push(Diagnostic::at_str(
                &at("failure_action"),
                format!("{other:?} is not one of pause, continue, rollback"),
            ));
            FailureAction::Pause
        }
    };
    let order = match get(value, "order").and_then(text).as_deref() {
        None | Some("stop-first") => UpdateOrder::StopFirst,
        Some("start-first") => UpdateOrder::StartFirst,
        Some(other) => {
            errors.push(Diagnostic::at_str(&at("order"), format!("{other:?} is not one of stop-first, start-first")));
            UpdateOrder::StopFirst
        }
    };
    let ratio = get(value, "max_failure_ratio").and_then(Value::as_f64).unwrap_or(0.0);
    if !(0.0..=1.0).contains(&ratio) {
        errors.push(Diagnostic::at_str(&at("max_failure_ratio"), "max_failure_ratio is between 0 and 1"));
    }
    UpdatePolicy {
        parallelism: get(value, "parallelism").and_then(Value::as_u64).unwrap_or(1),
        delay_ms: get(value, "delay").and_then(|d| duration_ms(d, &at("delay"), errors)).unwrap_or(0),
        failure_action,
        monitor_ms: get(value, "monitor").and_then(|d| duration_ms(d, &at("monitor"), errors)),
        max_failure_ratio_permille: (ratio.clamp(0.0, 1.0) * 1000.0).round() as u32,
        order,
    }
}

fn restart_policy(value: &Value, path: &str, errors: &mut Vec<Diagnostic>) -> SwarmRestartPolicy {
    let condition = match get(value, "condition").and_then(text).as_deref() {
        None | Some("any") => RestartCondition::Any,
        Some("on-failure") => RestartCondition::OnFailure,
        Some("none") => RestartCondition::None,
        Some(other) => {
            errors.push(Diagnostic::at_str(
                &format!("{path}.condition"),
                format!("{other:?} is not one of none, on-failure, any"),
            ));
            RestartCondition::Any
        }
    };
    let mut duration = |key: &str| get(value, key).and_then(|d| duration_ms(d, &format!("{path}.{key}"), errors));
    SwarmRestartPolicy {
        condition,
        delay_ms: duration("delay"),
        window_ms: duration("window"),
        max_attempts: get(value, "max_attempts").and_then(Value::as_u64),
    }
}

/// A service's `secrets:` or `configs:` entries: `- name` or `- {source, target, uid, gid, mode}`.
fn file_mounts(value: Option<&Value>, path: &str, default_dir: &str, errors: &mut Vec<Diagnostic>) -> Vec<FileMount> {
    let Some(items) = value.and_then(Value::as_sequence) else { return vec![] };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let at = format!("{path}[{i}]");
            let (source, target, uid, gid, mode) = match item {
                Value::String(source) => (source.clone(), None, None, None, None),
                Value::Mapping(_) => {
                    let Some(source) = get(item, "source").and_then(text) else {
                        errors.push(Diagnostic::at_str(&at, "an entry needs a `source`"));
                        return None;
                    };
                    let number = |key: &str| get(item, key).and_then(text).and_then(|v| v.parse::<u32>().ok());
                    let mode = get(item, "mode").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok());
                    (source, get(item, "target").and_then(text), number("uid"), number("gid"), mode)
                }
                _ => {
                    errors.push(Diagnostic::at_str(&at, "an entry is a name or a mapping with `source`"));
                    return None;
                }
            };
            let target = match target {
                Some(t) if t.starts_with('/') => t,
                Some(t) => format!("{default_dir}{t}"),
                None => format!("{default_dir}{source}"),
            };
            Some(FileMount { source, target, uid, gid, mode })
        })
        .collect()
}

/// Compose writes file modes the YAML 1.1 way, `0440`, which a YAML 1.2 reader keeps as text;
/// they are turned into the number meant, in place, so that `compose_spec` reads them too.
fn octal_modes(mounts: Option<&mut Value>, path: &str, errors: &mut Vec<Diagnostic>) {
    let Some(items) = mounts.and_then(Value::as_sequence_mut) else { return };
    for (i, item) in items.iter_mut().enumerate() {
        let Some(mode) = item.get_mut("mode") else { continue };
        let Some(raw) = mode.as_str().map(str::to_owned) else { continue };
        let digits = raw.trim_start_matches("0o").trim_start_matches('0');
        match u32::from_str_radix(if digits.is_empty() { "0" } else { digits }, 8) {
            Ok(number) if number <= 0o7777 => *mode = Value::Number(number.into()),
            _ => errors
                .push(Diagnostic::at_str(&format!("{path}[{i}].mode"), format!("{raw:?} is not an octal file mode"))),
        }
    }
}

/// The stack's own `secrets:` or `configs:` and their contents.
fn objects(
    value: Option<&Value>,
    kind: &str,
    variables: &BTreeMap<String, String>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<SwarmObject> {
    let Some(entries) = value.and_then(Value::as_mapping) else { return vec![] };
    let mut out = Vec::new();
    for (name, entry) in entries {
        let Some(name) = name.as_str() else { continue };
        let at = |key: &str| format!("{kind}.{name}.{key}");
        let data = if let Some(variable) = get(entry, "environment").and_then(text) {
            match variables.get(&variable) {
                Some(value) => value.clone().into_bytes(),
                None => {
                    errors.push(Diagnostic::at_str(
                        &at("environment"),
                        format!("the stack has no variable or secret {variable:?}"),
                    ));
                    continue;
                }
            }
        } else if let (Some(content), "configs") = (get(entry, "content").and_then(text), kind) {
            content.into_bytes()
        } else if get(entry, "file").is_some() {
            errors.push(Diagnostic::at_str(
                &at("file"),
                "file sources would be read on the machine that saves the stack; use `environment` with a stack secret (or `content` for a config)",
            ));
            continue;
        } else if get(entry, "external").is_some() {
            errors.push(Diagnostic::at_str(&at("external"), format!("external {kind} are not supported")));
            continue;
        } else {
            errors
                .push(Diagnostic::at_str(&format!("{kind}.{name}"), "give `environment` (or `content` for a config)"));
            continue;
        };
        out.push(SwarmObject { name: name.to_owned(), data });
    }
    out
}

/// Reads the Swarm-only parts of `value` and leaves it acceptable to `compose_spec`.
pub fn extract(value: &mut Value, variables: &BTreeMap<String, String>, errors: &mut Vec<Diagnostic>) -> SwarmSpec {
    let mut spec = SwarmSpec {
        secrets: objects(get(value, "secrets"), "secrets", variables, errors),
        configs: objects(get(value, "configs"), "configs", variables, errors),
        ..SwarmSpec::default()
    };
    let names: Vec<String> = get(value, "services")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for name in names {
        let Some(service) = value.get_mut("services").and_then(|s| s.get_mut(name.as_str())) else { continue };
        let at = |key: &str| format!("services.{name}.{key}");
        for key in ["secrets", "configs"] {
            octal_modes(service.get_mut(key), &at(key), errors);
        }
        let mut extras = SwarmService {
            secrets: file_mounts(get(service, "secrets"), &at("secrets"), "/run/secrets/", errors),
            configs: file_mounts(get(service, "configs"), &at("configs"), "/", errors),
            ..SwarmService::default()
        };
        for port in get(service, "ports").and_then(Value::as_sequence).into_iter().flatten() {
            if get(port, "mode").and_then(text).as_deref() == Some("host")
                && let Some(target) = get(port, "target").and_then(Value::as_u64).and_then(|t| u16::try_from(t).ok())
            {
                extras.host_mode_ports.push(target);
            }
        }
        if let Some(deploy) = service.get_mut("deploy") {
            extras.constraints = get(deploy, "placement")
                .and_then(|p| get(p, "constraints"))
                .and_then(Value::as_sequence)
                .map(|c| c.iter().filter_map(text).collect())
                .unwrap_or_default();
            extras.global = get(deploy, "mode").and_then(text).as_deref() == Some("global");
            extras.restart =
                get(deploy, "restart_policy").map(|p| restart_policy(p, &at("deploy.restart_policy"), errors));
            for (key, slot) in [("update_config", &mut extras.update), ("rollback_config", &mut extras.rollback)] {
                if let Some(policy) = deploy.get_mut(key) {
                    *slot = Some(update_policy(policy, &at(&format!("deploy.{key}")), errors));
                    // Read here in full; `compose_spec`'s own model of it is narrower
                    // (no `failure_action: rollback`, whole-number ratios).
                    *policy = Value::Mapping(serde_yaml::Mapping::new());
                }
            }
        }
        if extras != SwarmService::default() {
            spec.services.insert(name.clone(), extras);
        }
    }
    spec
}
