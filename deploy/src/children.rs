//! The processes this process started and that are still running: what a command that owns a
//! whole local lattice ends before it exits, so that nothing it started outlives it.
//!
//! A wasmCloud 1.x host starts each provider as a child process and, when one exits, starts it
//! again (supervised restart); a provider restarted that way is not always stopped with its host.
//! Providers also stop by themselves once their host process is gone (`provider-core`), but only
//! after draining their links; this ends them with the command.

use std::time::{Duration, Instant};

/// One child process: its id, its command name and its executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Process id.
    pub pid: u32,
    /// The command name (`/proc/<pid>/comm`).
    pub name: String,
    /// The executable (`/proc/<pid>/exe`), where it could be read.
    pub exe: Option<std::path::PathBuf>,
}

impl Child {
    /// Whether this is a provider a wasmCloud host with id `host_id` started from the archive of
    /// `package` (`sluice-provider-mqtt`): the host runs it from
    /// `<temp>/wasmcloudcache/<host id>/<archive path, each punctuation character as _>`.
    #[must_use]
    pub fn is_provider(&self, host_id: &str, package: &str) -> bool {
        let Some(exe) = self.exe.as_ref().and_then(|e| e.to_str()) else {
            return false;
        };
        exe.contains(&format!("/wasmcloudcache/{host_id}/")) && exe.contains(&package.replace('-', "_"))
    }
}

/// Every running (not zombie) child process of this process, from `/proc`.
#[must_use]
pub fn running() -> Vec<Child> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: the name may hold spaces and parentheses.
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == me && state != "Z").then(|| Child {
                pid,
                name: name.to_string(),
                exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
            })
        })
        .collect()
}

/// Ends every child process but those named in `keep`: SIGTERM, then SIGKILL for any still
/// running after `grace`. Returns the children it had to end.
pub fn end_all_but(keep: &[&str], grace: Duration) -> Vec<Child> {
    let stray: Vec<Child> = running()
        .into_iter()
        .filter(|c| !keep.contains(&c.name.as_str()))
        .collect();
    end(&stray, grace);
    stray
}

/// Ends `stray`: SIGTERM, then SIGKILL for any still running after `grace`.
pub fn end(stray: &[Child], grace: Duration) {
    for child in stray {
        signal(child.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let left: Vec<Child> = running().into_iter().filter(|c| stray.contains(c)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for child in &left {
                signal(child.pid, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) with a process id read from /proc and a valid signal number.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_a_child_that_ignores_sigterm() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .expect("sh starts");
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(200));
        let listed: Vec<Child> = running().into_iter().filter(|c| c.pid == pid).collect();
        assert_eq!(listed.len(), 1, "the child is listed");
        end(&listed, Duration::from_millis(500));
        let status = child.wait().expect("the child is reaped");
        assert!(!status.success());
        assert!(!running().iter().any(|c| c.pid == pid));
    }
}
