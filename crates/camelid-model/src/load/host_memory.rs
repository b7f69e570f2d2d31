//! The memory this process can still take: what a CPU model's weights are checked against
//! before they are read, and a CPU KV cache before it is sized. Without the check a model
//! larger than the machine is killed by the kernel partway through its load (and a KV cache,
//! allocated lazily, under load later), with no message. Linux only: `/proc/meminfo`'s
//! `MemAvailable` plus free swap, and the memory cgroup's limit (a container's), whichever
//! leaves less; elsewhere nothing is checked. `CAMELID_SKIP_MEMORY_CHECK=1` turns it off.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Memory still to be had, and what limits it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub bytes: u64,
    pub limited_by: &'static str,
}

/// The environment variable that turns the checks off.
pub const SKIP_VAR: &str = "CAMELID_SKIP_MEMORY_CHECK";

/// What this process may still allocate; `None` where it cannot be told (not Linux) or the
/// check is off.
pub fn room() -> Option<Room> {
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    if skip {
        return None;
    }
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_room(&t))
        .map(|bytes| Room {
            bytes,
            limited_by: "the machine's available memory and swap",
        });
    let group = cgroup_room().map(|bytes| Room {
        bytes,
        limited_by: "the memory limit of this process's cgroup",
    });
    match (machine, group) {
        (Some(m), Some(g)) => Some(if g.bytes < m.bytes { g } else { m }),
        (m, g) => m.or(g),
    }
}

/// Refuses a load whose weights need more than [`room`]: `bytes` is a lower bound of what
/// they take in memory, `what` names the model, `hint` says what would take less.
pub fn check_weights_fit(what: &str, bytes: u64, hint: &str) -> Result<()> {
    match room() {
        Some(r) if bytes > r.bytes => Err(Error::Memory(format!(
            "{what}: its weights take at least {} in memory, and {} is left ({}){hint}; \
             {SKIP_VAR}=1 loads it anyway",
            gib(bytes),
            gib(r.bytes),
            r.limited_by
        ))),
        _ => Ok(()),
    }
}

/// `bytes` as GiB with one decimal (MiB below one GiB).
pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    }
}

/// `MemAvailable` plus `SwapFree`, in bytes.
fn meminfo_room(text: &str) -> Option<u64> {
    let kb = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let available = kb("MemAvailable")?;
    Some((available + kb("SwapFree").unwrap_or(0)) * 1024)
}

/// The least room any memory cgroup holding this process leaves (its own and each above it:
/// every one's limit applies), v2 or v1.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, v2, path) = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            Some((Path::new("/sys/fs/cgroup/memory"), false, path))
        } else if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            Some((Path::new("/sys/fs/cgroup"), true, path))
        } else {
            None
        }
    })?;
    // A container sees its own group as the root, while /proc/self/cgroup may name the
    // host's path for it: where that path does not exist here, the root is this group.
    let leaf = root.join(path.trim_start_matches('/'));
    let leaf = if leaf.is_dir() {
        leaf
    } else {
        root.to_path_buf()
    };
    let mut least: Option<u64> = None;
    let mut dir: Option<PathBuf> = Some(leaf);
    while let Some(d) = dir {
        if let Some(r) = group_dir_room(&d, v2) {
            least = Some(least.map_or(r, |l| l.min(r)));
        }
        dir = d
            .parent()
            .filter(|p| p.starts_with(root))
            .map(Path::to_path_buf);
    }
    least
}

fn group_dir_room(dir: &Path, v2: bool) -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let (limit, usage, stat) = if v2 {
        (
            read("memory.max")?,
            read("memory.current")?,
            read("memory.stat"),
        )
    } else {
        (
            read("memory.limit_in_bytes")?,
            read("memory.usage_in_bytes")?,
            read("memory.stat"),
        )
    };
    group_room(&limit, &usage, stat.as_deref().unwrap_or(""), v2)
}

/// A cgroup's limit less what it uses, counting its inactive file pages (which the kernel
/// drops before it kills) as free; `None` without a limit (v2's `max`, v1's near-2⁶³).
fn group_room(limit: &str, usage: &str, stat: &str, v2: bool) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive = stat
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_room_is_available_memory_and_free_swap() {
        let text = "MemTotal:       24683772 kB\nMemFree:          100 kB\n\
                    MemAvailable:   24107452 kB\nSwapTotal: 2048 kB\nSwapFree:        1024 kB\n";
        assert_eq!(meminfo_room(text), Some((24107452 + 1024) * 1024));
        // MemFree is not MemAvailable; no MemAvailable (kernels before 3.14): not told.
        assert_eq!(meminfo_room("MemFree: 5 kB\n"), None);
    }

    #[test]
    fn a_cgroups_room_counts_its_inactive_file_pages_free() {
        let stat_v2 = "anon 100\nfile 700\nactive_file 300\ninactive_file 400\n";
        assert_eq!(group_room("1000\n", "900\n", stat_v2, true), Some(500));
        assert_eq!(group_room("max\n", "900\n", stat_v2, true), None);
        let stat_v1 = "cache 700\ninactive_file 50\ntotal_inactive_file 400\n";
        assert_eq!(group_room("1000", "900", stat_v1, false), Some(500));
        // v1's "no limit" is 2⁶³ rounded down to a page.
        assert_eq!(
            group_room("9223372036854771712", "900", stat_v1, false),
            None
        );
        // Over its limit (the kernel lets usage pass it briefly): no room, not a wrap.
        assert_eq!(group_room("1000", "1500", "", true), Some(0));
    }

    #[test]
    fn sizes_read_in_gib_or_mib() {
        assert_eq!(gib(3 << 29), "1.5 GiB");
        assert_eq!(gib((100 << 20) + 1), "101 MiB");
    }
}
