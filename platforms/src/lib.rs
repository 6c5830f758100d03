//! How a `StackSpec` becomes each platform's own objects — Swarm services, Kubernetes objects — as pure
//! functions: the control plane uses them to check a stack against a target kind and to render
//! what would be applied; the agent uses the very same functions to apply it. Nothing here
//! talks to an engine, a cluster or the network.
//!
//! **Invariant:** a stack feature a platform cannot honour is reported as a blocking
//! [`Finding`] by [`check`](swarm::check) before anything is applied, never half-applied.

#[cfg(test)]
mod fixtures;
pub mod kubernetes;
pub mod libvirt;
pub mod swarm;

/// Labels every object WindFlow makes carries, whatever the platform.
pub const LABEL_MANAGED: &str = "io.windflow.managed";
pub const LABEL_DEPLOYMENT: &str = "io.windflow.deployment";
pub const LABEL_PROJECT: &str = "io.windflow.project";

/// Something about a stack on a platform: refused (`blocking`) or applied differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Where in the Compose model, e.g. `services.web.privileged`.
    pub path: String,
    pub message: String,
    /// The stack cannot be deployed to the platform until this is changed.
    pub blocking: bool,
}

impl Finding {
    fn blocking(path: String, message: impl Into<String>) -> Self {
        Self { path, message: message.into(), blocking: true }
    }

    fn note(path: String, message: impl Into<String>) -> Self {
        Self { path, message: message.into(), blocking: false }
    }
}

/// Serialises `value` as YAML with every map's keys sorted, so that a rendering is the same
/// from one run to the next.
pub fn sorted_yaml<T: serde::Serialize>(value: &T) -> String {
    serde_yaml::to_string(&ordered(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))).unwrap_or_default()
}

/// A JSON value as YAML with sorted maps (BTreeMap order), whatever serde_json's map type is.
fn ordered(value: serde_json::Value) -> serde_yaml::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: std::collections::BTreeMap<String, serde_yaml::Value> =
                map.into_iter().map(|(k, v)| (k, ordered(v))).collect();
            serde_yaml::Value::Mapping(sorted.into_iter().map(|(k, v)| (serde_yaml::Value::String(k), v)).collect())
        }
        serde_json::Value::Array(items) => serde_yaml::Value::Sequence(items.into_iter().map(ordered).collect()),
        serde_json::Value::String(s) => serde_yaml::Value::String(s),
        serde_json::Value::Number(n) => serde_yaml::to_value(n).unwrap_or(serde_yaml::Value::Null),
        serde_json::Value::Bool(b) => serde_yaml::Value::Bool(b),
        serde_json::Value::Null => serde_yaml::Value::Null,
    }
}
