//! What the kernel counts for a process (`/proc/<pid>/stat` and `status`): CPU time and memory,
//! for tests and benchmarks that measure a provider rather than assume.

use std::time::Duration;

/// The state letter of `pid` (`R`, `S`, `Z` for a zombie, ...); `None` once it is gone.
#[must_use]
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// CPU time `pid` has used, user and system (`stat` fields 14 and 15); `None` once it is gone.
#[must_use]
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: the name may hold spaces and parentheses; fields count from state (3).
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Some(Duration::from_nanos(total * 1_000_000_000 / hz))
}

/// The share of one core `pid` used over `window`, measured by sleeping through it.
pub async fn core_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid).unwrap_or_default();
    tokio::time::sleep(window).await;
    let used = cpu_time(pid).unwrap_or_default().saturating_sub(before);
    used.as_secs_f64() / window.as_secs_f64()
}

/// A size field of `/proc/<pid>/status` in KiB: `VmRSS` (resident now), `VmHWM` (peak).
#[must_use]
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_holds_memory() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(me).unwrap() > Duration::ZERO);
        let rss = memory_kib(me, "VmRSS").unwrap();
        assert!(rss > 0 && memory_kib(me, "VmHWM").unwrap() >= rss);
        assert_eq!(memory_kib(me, "NoSuchField"), None);
    }

    #[test]
    fn an_exited_child_is_a_zombie_until_reaped_and_then_gone() {
        assert!(state(std::process::id()).is_some_and(|s| s != 'Z'));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('Z') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state(pid), Some('Z'));
        child.wait().unwrap();
        assert_eq!(state(pid), None);
    }
}
