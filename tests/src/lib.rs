//! Cross-crate tools for PF-2 Sync: the multi-process harness ([`cluster`]: real `sync-server`
//! processes, tokens, a throwaway Redis) used by `tests/cluster.rs` and the bus benchmark, the
//! consumer-group worker (`bus-worker`), the realtime fan-out load generator (`fanout`) and the
//! bare tokio-tungstenite broadcast server it is compared against (`broadcast-floor`). Run the
//! benchmarks through `tests/bench/*.sh` (`make bench-realtime`, `make bench-bus`); results go
//! to docs/benchmarks.md.

pub mod cluster;

/// Server CPU time (user + system) of a process, in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 overall, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: f64 = fields.get(11).ok_or_else(|| anyhow::anyhow!("short stat"))?.parse()?;
    let stime: f64 = fields.get(12).ok_or_else(|| anyhow::anyhow!("short stat"))?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_cpu_time_and_rss() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid, 100.0).unwrap() >= 0.0);
        assert!(super::rss_kib(pid).unwrap() > 0);
    }
}
