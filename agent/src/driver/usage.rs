//! What a project's containers use: readings of the engine's counters taken some time apart,
//! turned into CPU cores (from the growth of the container's CPU time against the host's) and a
//! memory working set. The arithmetic is here, apart from the engine, and tested on its own.

use bollard::models::ContainerStatsResponse;

/// One reading of a container's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// Nanoseconds of CPU the container used since it started.
    pub cpu_total_ns: u64,
    /// Nanoseconds of CPU the whole host used since it booted, all cores together.
    pub system_total_ns: u64,
    pub online_cpus: u32,
    /// Memory in use, page cache that can be dropped left out.
    pub working_set_bytes: u64,
    pub limit_bytes: Option<u64>,
}

impl Reading {
    pub fn from_stats(stats: &ContainerStatsResponse) -> Option<Self> {
        let cpu = stats.cpu_stats.as_ref()?;
        let memory = stats.memory_stats.as_ref()?;
        let usage = memory.usage.unwrap_or(0);
        // cgroup v2 calls the droppable cache inactive_file, v1 total_inactive_file.
        let inactive = memory
            .stats
            .as_ref()
            .and_then(|s| s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied())
            .unwrap_or(0);
        Some(Self {
            cpu_total_ns: cpu.cpu_usage.as_ref()?.total_usage?,
            system_total_ns: cpu.system_cpu_usage?,
            online_cpus: cpu.online_cpus.unwrap_or(1).max(1),
            working_set_bytes: usage.saturating_sub(inactive),
            // The engine reports the host's memory as the limit of an unlimited container.
            limit_bytes: memory.limit,
        })
    }
}

/// Averages and peaks over readings in time order: (cpu avg, cpu peak) in millicores, (memory
/// avg, memory peak) in bytes.
pub fn summarise(readings: &[Reading]) -> ((u32, u32), (u64, u64)) {
    let cpu: Vec<u32> = readings
        .windows(2)
        .filter_map(|pair| {
            let cpu = pair[1].cpu_total_ns.checked_sub(pair[0].cpu_total_ns)?;
            let system = pair[1].system_total_ns.checked_sub(pair[0].system_total_ns).filter(|s| *s > 0)?;
            let cores = cpu as f64 / system as f64 * f64::from(pair[1].online_cpus);
            Some((cores * 1000.0).round().min(f64::from(u32::MAX)) as u32)
        })
        .collect();
    let memory: Vec<u64> = readings.iter().map(|r| r.working_set_bytes).collect();
    let average = |values: &[u64]| if values.is_empty() { 0 } else { values.iter().sum::<u64>() / values.len() as u64 };
    let cpu_wide: Vec<u64> = cpu.iter().map(|c| u64::from(*c)).collect();
    (
        (u32::try_from(average(&cpu_wide)).unwrap_or(u32::MAX), cpu.iter().copied().max().unwrap_or(0)),
        (average(&memory), memory.iter().copied().max().unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu_ms: u64, system_ms: u64, memory_mib: u64) -> Reading {
        Reading {
            cpu_total_ns: cpu_ms * 1_000_000,
            system_total_ns: system_ms * 1_000_000,
            online_cpus: 4,
            working_set_bytes: memory_mib << 20,
            limit_bytes: None,
        }
    }

    #[test]
    fn cpu_is_the_containers_share_of_the_hosts_time_times_its_cores() {
        // 4 cores: 4000 ms of host time per second. 500 ms used is half a core, 1000 ms one.
        let readings = [reading(0, 0, 100), reading(500, 4000, 120), reading(1500, 8000, 110)];
        let ((avg, peak), (mem_avg, mem_peak)) = summarise(&readings);
        assert_eq!((avg, peak), (750, 1000));
        assert_eq!((mem_avg, mem_peak), (110 << 20, 120 << 20));
    }

    #[test]
    fn one_reading_gives_memory_but_no_cpu_and_counters_going_back_are_skipped() {
        assert_eq!(summarise(&[reading(10, 10, 64)]), ((0, 0), (64 << 20, 64 << 20)));
        let restarted = [reading(900, 4000, 1), reading(100, 8000, 1)];
        assert_eq!(summarise(&restarted).0, (0, 0));
        assert_eq!(summarise(&[]), ((0, 0), (0, 0)));
    }
}
