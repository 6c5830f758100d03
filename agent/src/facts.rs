//! Host facts: what the control plane shows about this machine and uses to pick a driver.

use std::time::Duration;

use windflow_protocol::messages::{Capability, DockerFacts, HostFacts, SwarmState};

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn os_pretty_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

fn memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The Docker engine's version and Swarm state, if an engine answers within two seconds.
async fn docker() -> Option<DockerFacts> {
    let probe = async {
        let docker = bollard::Docker::connect_with_local_defaults().ok()?.negotiate_version().await.ok()?;
        let version = docker.version().await.ok()?;
        let info = docker.info().await.ok()?;
        let swarm = info.swarm.map_or(SwarmState::Inactive, |s| {
            use bollard::models::LocalNodeState;
            let node_id = s.node_id.unwrap_or_default();
            match s.local_node_state {
                Some(LocalNodeState::ACTIVE) if s.control_available == Some(true) => SwarmState::Manager { node_id },
                Some(LocalNodeState::ACTIVE) => SwarmState::Worker { node_id },
                Some(LocalNodeState::INACTIVE | LocalNodeState::EMPTY) | None => SwarmState::Inactive,
                Some(other) => SwarmState::Other(other.to_string()),
            }
        });
        Some(DockerFacts {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            swarm,
        })
    };
    tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten()
}

pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

pub async fn collect() -> HostFacts {
    HostFacts {
        hostname: hostname(),
        os: os_pretty_name(),
        arch: std::env::consts::ARCH.to_owned(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        memory_bytes: memory_bytes(),
        docker: docker().await,
    }
}

/// Every platform and whether this agent can drive it, in the order the control plane lists them.
pub async fn capabilities(facts: &HostFacts) -> Vec<Capability> {
    let mut capabilities = Capability::of_engine(facts).to_vec();
    capabilities.push(crate::driver::kubernetes::probe().await);
    capabilities.push(crate::driver::libvirt::LibvirtDriver::from_env().probe().await);
    capabilities
}
