//! Resource limits from what a deployment's containers were seen to use, and the mechanical
//! fixes of the analyser's findings, as a proposed Compose file to review. No model is asked:
//! the figures decide.
//!
//! Limits leave headroom over the busiest reading (half again, rounded up), never go below a
//! floor, and change only when the current limit is missing, nearly reached, or far above need.

use serde::Serialize;
use serde_yaml::{Mapping, Value};
use utoipa::ToSchema;
use windflow_protocol::messages::ContainerUsage;
use windflow_protocol::stack::{RestartPolicy, StackSpec};

use crate::analyzer::{self, Finding};

/// Compose's `M`, as the stack pipeline reads it (decimal, like the compose-spec crate).
const MB: u64 = 1_000_000;
/// Memory limits are multiples of this, and at least it twice.
const MEMORY_STEP: u64 = 16 * MB;
/// Headroom over the peak, in percent.
const HEADROOM_PERCENT: u64 = 150;
/// A current limit used above this share is nearly reached (percent).
const NEARLY_REACHED_PERCENT: u64 = 90;
/// A current limit this many times above the suggestion is wasteful.
const WASTEFUL_FACTOR: u64 = 4;

/// What one service used and what its limits should be.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ServiceAdvice {
    pub service: String,
    /// Running containers measured.
    pub containers: u32,
    pub cpu_millicores_avg: u32,
    pub cpu_millicores_peak: u32,
    pub memory_bytes_avg: u64,
    pub memory_bytes_peak: u64,
    pub memory_limit_bytes: Option<u64>,
    /// In Compose's words: `0.5`.
    pub cpus_limit: Option<String>,
    pub suggested_memory_limit_bytes: u64,
    pub suggested_cpus: String,
    /// Whether the file should change for this service, and why (or why not).
    pub change: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Optimization {
    pub services: Vec<ServiceAdvice>,
    /// What the proposed file changes, one line each.
    pub changes: Vec<String>,
    /// The stack's file with the changes, when there are any.
    pub proposed_compose: Option<String>,
    /// The analyser's findings on the current file.
    pub findings: Vec<Finding>,
    /// How the usage was measured.
    pub samples: u32,
    pub interval_ms: u32,
}

fn round_up(value: u64, step: u64) -> u64 {
    value.div_ceil(step) * step
}

/// A memory size as Compose writes it, never below `bytes`: `192M`, `1G`.
pub fn compose_memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1000 * MB) {
        format!("{}G", bytes / (1000 * MB))
    } else {
        format!("{}M", bytes.div_ceil(MB))
    }
}

fn compose_cpus(millicores: u32) -> String {
    let tenths = millicores.div_ceil(100).max(1);
    if tenths.is_multiple_of(10) { format!("{}", tenths / 10) } else { format!("{}.{}", tenths / 10, tenths % 10) }
}

fn advice(service: &windflow_protocol::stack::ServiceSpec, measured: &[&ContainerUsage]) -> ServiceAdvice {
    let peak_memory = measured.iter().map(|u| u.memory_bytes_peak).max().unwrap_or(0);
    let avg_memory = measured.iter().map(|u| u.memory_bytes_avg).sum::<u64>() / measured.len().max(1) as u64;
    let peak_cpu = measured.iter().map(|u| u.cpu_millicores_peak).max().unwrap_or(0);
    let avg_cpu = measured.iter().map(|u| u.cpu_millicores_avg).sum::<u32>() / measured.len().max(1) as u32;
    let suggested_memory = round_up(peak_memory * HEADROOM_PERCENT / 100, MEMORY_STEP).max(2 * MEMORY_STEP);
    let suggested_cpu_millicores = (u64::from(peak_cpu) * HEADROOM_PERCENT / 100).max(100);
    let suggested_cpus = compose_cpus(u32::try_from(suggested_cpu_millicores).unwrap_or(u32::MAX));
    let current = service.resources.memory_bytes;
    let (change, reason) = match current {
        None => (true, "no memory limit: one is set from the peak, with headroom".to_owned()),
        Some(limit) if peak_memory * 100 > limit * NEARLY_REACHED_PERCENT => (
            true,
            format!(
                "the peak ({}) is close to the limit ({}): raised",
                compose_memory(peak_memory),
                compose_memory(limit)
            ),
        ),
        Some(limit) if limit > suggested_memory * WASTEFUL_FACTOR => (
            true,
            format!(
                "the limit ({}) is far above the peak ({}): lowered",
                compose_memory(limit),
                compose_memory(peak_memory)
            ),
        ),
        Some(_) => (false, "the limit fits what was used".to_owned()),
    };
    ServiceAdvice {
        service: service.name.clone(),
        containers: u32::try_from(measured.len()).unwrap_or(u32::MAX),
        cpu_millicores_avg: avg_cpu,
        cpu_millicores_peak: peak_cpu,
        memory_bytes_avg: avg_memory,
        memory_bytes_peak: peak_memory,
        memory_limit_bytes: current,
        cpus_limit: service.resources.nano_cpus.map(|n| compose_cpus(u32::try_from(n / 1_000_000).unwrap_or(u32::MAX))),
        suggested_memory_limit_bytes: suggested_memory,
        suggested_cpus,
        change,
        reason,
    }
}

fn mapping<'a>(parent: &'a mut Mapping, key: &str) -> Option<&'a mut Mapping> {
    let entry = parent.entry(Value::String(key.to_owned())).or_insert_with(|| Value::Mapping(Mapping::new()));
    if entry.is_null() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut()
}

/// The advice for a stack, from its file as written, its spec, and the usage measured.
pub fn optimize(
    compose: &str,
    spec: &StackSpec,
    usage: &[ContainerUsage],
    samples: u32,
    interval_ms: u32,
) -> Optimization {
    let findings = analyzer::analyze(compose, spec);
    let services: Vec<ServiceAdvice> = spec
        .services
        .iter()
        .filter_map(|service| {
            let measured: Vec<&ContainerUsage> = usage.iter().filter(|u| u.service == service.name).collect();
            (!measured.is_empty()).then(|| advice(service, &measured))
        })
        .collect();
    let mut changes = Vec::new();
    let mut file: Value = serde_yaml::from_str(compose).unwrap_or(Value::Null);
    if let Some(written) = file.get_mut("services").and_then(Value::as_mapping_mut) {
        for advice in services.iter().filter(|a| a.change) {
            let Some(service) = written.get_mut(advice.service.as_str()).and_then(Value::as_mapping_mut) else {
                continue;
            };
            let memory = compose_memory(advice.suggested_memory_limit_bytes);
            // Where the file already says it, it is said again there.
            if service.contains_key("mem_limit") {
                service.insert("mem_limit".into(), memory.clone().into());
            } else if let Some(limits) =
                mapping(service, "deploy").and_then(|d| mapping(d, "resources")).and_then(|r| mapping(r, "limits"))
            {
                limits.insert("memory".into(), memory.clone().into());
                if !limits.contains_key("cpus") && advice.cpus_limit.is_none() {
                    limits.insert("cpus".into(), advice.suggested_cpus.clone().into());
                }
            }
            changes.push(format!("services.{}: memory limit {memory} ({})", advice.service, advice.reason));
        }
        // A long-running service without a restart policy stays down after a crash.
        for spec_service in spec.services.iter().filter(|s| s.restart == RestartPolicy::No) {
            if !services.iter().any(|a| a.service == spec_service.name) {
                continue;
            }
            let Some(service) = written.get_mut(spec_service.name.as_str()).and_then(Value::as_mapping_mut) else {
                continue;
            };
            if !service.contains_key("restart") {
                service.insert("restart".into(), "unless-stopped".into());
                changes.push(format!(
                    "services.{}: restart unless-stopped (it was running without a restart policy)",
                    spec_service.name
                ));
            }
        }
    }
    let proposed_compose = (!changes.is_empty()).then(|| serde_yaml::to_string(&file).unwrap_or_default());
    Optimization { services, changes, proposed_compose, findings, samples, interval_ms }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn usage(service: &str, cpu_peak: u32, memory_peak_mib: u64) -> ContainerUsage {
        ContainerUsage {
            container: format!("p-{service}-1"),
            service: service.into(),
            samples: 5,
            cpu_millicores_avg: cpu_peak / 2,
            cpu_millicores_peak: cpu_peak,
            memory_bytes_avg: memory_peak_mib * MIB / 2,
            memory_bytes_peak: memory_peak_mib * MIB,
            memory_limit_bytes: None,
        }
    }

    fn plan(compose: &str, measured: &[ContainerUsage]) -> Optimization {
        let spec = crate::compose::parse(compose, "p", &BTreeMap::new()).expect("valid").spec;
        optimize(compose, &spec, measured, 5, 1000)
    }

    #[test]
    fn sizes_are_written_as_compose_writes_them() {
        assert_eq!(compose_memory(192 * MB), "192M");
        assert_eq!(compose_memory(2000 * MB), "2G");
        assert_eq!(compose_memory(100 * MIB), "105M", "rounded up, never below");
        assert_eq!(compose_cpus(250), "0.3");
        assert_eq!(compose_cpus(2000), "2");
        assert_eq!(compose_cpus(0), "0.1");
    }

    #[test]
    fn a_service_without_limits_gets_them_from_its_peak_with_headroom_and_a_restart_policy() {
        let compose = "services:\n  web:\n    image: nginx:1.27\n  idle:\n    image: nginx:1.27\n";
        let optimization = plan(compose, &[usage("web", 400, 100)]);
        let web = &optimization.services[0];
        assert_eq!((web.suggested_memory_limit_bytes, web.suggested_cpus.as_str()), (160 * MB, "0.6"));
        assert!(web.change);
        assert_eq!(optimization.services.len(), 1, "only measured services get advice");
        let proposed = optimization.proposed_compose.expect("a proposal");
        let parsed = crate::compose::parse(&proposed, "p", &BTreeMap::new()).expect("the proposal is a valid stack");
        let service = parsed.spec.services.iter().find(|s| s.name == "web").expect("web");
        assert_eq!(service.resources.memory_bytes, Some(160 * MB));
        assert_eq!(service.restart, RestartPolicy::UnlessStopped);
        let idle = parsed.spec.services.iter().find(|s| s.name == "idle").expect("idle");
        assert_eq!(idle.resources.memory_bytes, None, "nothing measured, nothing changed");
        assert_eq!(optimization.changes.len(), 2, "{:?}", optimization.changes);
    }

    #[test]
    fn a_limit_that_fits_stays_and_one_nearly_reached_or_far_too_big_changes() {
        let fits = "services:\n  web:\n    image: nginx:1.27\n    restart: always\n    deploy: {resources: {limits: {memory: 256M}}}\n";
        let optimization = plan(fits, &[usage("web", 100, 100)]);
        assert!(!optimization.services[0].change);
        assert_eq!(optimization.proposed_compose, None);

        let tight = plan(fits, &[usage("web", 100, 240)]);
        assert!(tight.services[0].reason.contains("close to the limit"), "{}", tight.services[0].reason);
        assert!(tight.proposed_compose.expect("raised").contains("memory: 384M"));

        let big = "services:\n  web:\n    image: nginx:1.27\n    restart: always\n    mem_limit: 8G\n";
        let lowered = plan(big, &[usage("web", 100, 20)]);
        assert!(lowered.services[0].reason.contains("far above"));
        assert!(lowered.proposed_compose.expect("lowered").contains("mem_limit: 32M"));
    }
}
