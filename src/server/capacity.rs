//! How many connections this box lets this process hold, and which limit
//! binds first.
//!
//! A thread per connection meets limits an async server never sees: every
//! connection is a descriptor and, while it keeps a thread, a thread. A
//! thread is a task in the machine's `pid_max` and `threads-max`, in the
//! cgroup's `pids.max` (systemd's `TasksMax`), in the user's
//! `RLIMIT_NPROC`, and four mappings (stack, signal stack and their guard
//! pages) in the process's
//! `vm.max_map_count`; and it costs memory, most of it in the kernel (a
//! 16 KiB kernel stack, task structures) that RSS never shows. With parking
//! on (`--park-after`, the default) an idle connection holds no thread:
//! only descriptors and memory bound how many the box holds, and the
//! thread limits bound how many can be busy at once.
//! [`Limits::read`] reads them all; [`Limits::capacity`] turns them into
//! the number of connections each allows, the smallest first.
//!
//! The per-connection memory is the measured figure ([`Cost`]); what is
//! already in use (tasks on the machine and in the cgroup, this process's
//! mappings and descriptors, memory) is subtracted, so the answer is what
//! is left now.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// What one idle connection costs the box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// The whole machine's memory, in bytes.
    pub memory: u64,
    /// Whether it holds a thread (a task, four mappings).
    pub thread: bool,
}

impl Cost {
    /// An idle connection that keeps its thread (`--park-after 0`): 78.5
    /// to 83.9 KiB of the machine's memory (the drop of MemAvailable,
    /// kernel stack and slab included) in three runs with 15,000 idle
    /// connections on this project's 2-core box (BENCHMARKS.md, "Parked
    /// connections"), rounded up. The loopback client's side is included.
    pub const THREAD: Cost = Cost {
        memory: 84 * 1024,
        thread: true,
    };

    /// A parked idle connection: 12.7 to 16.0 KiB of the machine's memory
    /// in three runs at 18,000, 15.2 KiB at 100,000, measured as
    /// [`Cost::THREAD`] was (the loopback client's side and the thread
    /// cache's share included), rounded up.
    pub const PARKED: Cost = Cost {
        memory: 16 * 1024,
        thread: false,
    };
}

/// Descriptors the process keeps besides its connections (listeners, the
/// admin endpoint, the timer, Redis, logs), with a margin.
const RESERVED_FDS: u64 = 64;

/// Threads the process keeps besides its workers (accept, timer, TLS
/// handshakes, admin, Redis), with a margin.
const RESERVED_THREADS: u64 = 32;

/// What bounds connections on this box, as read (`None`: no limit, or not
/// readable here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE` (soft) and the descriptors open now.
    pub nofile: Option<(u64, u64)>,
    /// `RLIMIT_NPROC` (soft): the user's tasks.
    pub nproc: Option<u64>,
    /// `kernel.pid_max`.
    pub pid_max: Option<u64>,
    /// `kernel.threads-max`.
    pub threads_max: Option<u64>,
    /// Tasks on the machine now (`/proc/loadavg`).
    pub tasks_now: u64,
    /// `vm.max_map_count` and this process's mappings now.
    pub max_map_count: Option<(u64, u64)>,
    /// The cgroup's `pids.max` and `pids.current`.
    pub cgroup_pids: Option<(u64, u64)>,
    /// The cgroup's memory limit and usage.
    pub cgroup_memory: Option<(u64, u64)>,
    /// `MemAvailable`, in bytes.
    pub mem_available: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
}

/// One limit, and how many connections it leaves room for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// What it is, e.g. `kernel.pid_max`.
    pub limit: &'static str,
    /// Its value (bytes for memory).
    pub value: u64,
    /// The connections it leaves room for.
    pub connections: u64,
    /// What to raise, and where.
    pub raise: &'static str,
}

/// Every bound, the one that binds first at the front, and the warnings
/// that are not a count (a listen backlog the kernel cuts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Every limit that was read, smallest room first.
    pub bounds: Vec<Bound>,
    /// Other things to fix, each a sentence.
    pub warnings: Vec<String>,
}

impl Capacity {
    /// The connections this process can hold: the smallest room of all
    /// (`u64::MAX` if nothing could be read).
    pub fn connections(&self) -> u64 {
        self.bounds.first().map_or(u64::MAX, |b| b.connections)
    }

    /// The limit that binds first.
    pub fn binding(&self) -> Option<&Bound> {
        self.bounds.first()
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} leaves room for {} connections (raise: {})",
            self.limit, self.value, self.connections, self.raise
        )
    }
}

/// What this box lets this process hold, as the server will run it: idle
/// connections parked (`parking`) or each with its thread, listeners with
/// the server's backlog.
pub fn this_box(parking: bool) -> Capacity {
    let backlog = u64::try_from(crate::sys::LISTEN_BACKLOG).unwrap_or(u64::MAX);
    let cost = if parking { Cost::PARKED } else { Cost::THREAD };
    Limits::read().capacity(cost, backlog)
}

impl Limits {
    /// Reads this box's limits.
    pub fn read() -> Limits {
        Limits::read_from(Path::new("/"))
    }

    /// Reads the limits under `root` (`/` on a live box; a fake tree in
    /// tests).
    fn read_from(root: &Path) -> Limits {
        let at = |path: &str| root.join(path.trim_start_matches('/'));
        let number = |path: &str| read_number(&at(path));
        let tasks_now = fs::read_to_string(at("/proc/loadavg"))
            .ok()
            .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok())
            .unwrap_or(0);
        let maps_now = fs::read_to_string(at("/proc/self/maps")).map_or(0, |m| m.lines().count());
        let mem_available = fs::read_to_string(at("/proc/meminfo")).ok().and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
        let cgroups = Cgroups::of(root);
        let rlimits = fs::read_to_string(at("/proc/self/limits")).unwrap_or_default();
        let soft = |name: &str| -> Option<u64> {
            let line = rlimits.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        let open_fds = fs::read_dir(at("/proc/self/fd")).map_or(0, |d| d.count() as u64);
        Limits {
            nofile: soft("Max open files").map(|soft| (soft, open_fds)),
            nproc: soft("Max processes"),
            pid_max: number("/proc/sys/kernel/pid_max"),
            threads_max: number("/proc/sys/kernel/threads-max"),
            tasks_now,
            max_map_count: number("/proc/sys/vm/max_map_count").map(|m| (m, maps_now as u64)),
            cgroup_pids: cgroups.pids(),
            cgroup_memory: cgroups.memory(),
            mem_available,
            somaxconn: number("/proc/sys/net/core/somaxconn"),
        }
    }

    /// The connections each limit leaves room for, each connection costing
    /// `cost` (the thread limits count only if it holds a thread), and
    /// listeners asking for a backlog of `backlog`.
    pub fn capacity(&self, cost: Cost, backlog: u64) -> Capacity {
        let mut bounds = Vec::new();
        let mut bound = |limit, value, connections: u64, raise| {
            bounds.push(Bound {
                limit,
                value,
                connections,
                raise,
            });
        };
        if let Some((soft, open)) = self.nofile {
            let room = soft.saturating_sub(open.max(RESERVED_FDS));
            bound(
                "RLIMIT_NOFILE",
                soft,
                room,
                "ulimit -n, or LimitNOFILE= under systemd",
            );
        }
        if cost.thread {
            self.thread_bounds(&mut bound);
        }
        let per_connection = cost.memory.max(1);
        if let Some((max, used)) = self.cgroup_memory {
            let room = max.saturating_sub(used) / per_connection;
            bound(
                "cgroup memory limit",
                max,
                room,
                "MemoryMax= under systemd, --memory in a container",
            );
        }
        if let Some(available) = self.mem_available {
            let room = available / per_connection;
            bound(
                "MemAvailable",
                available,
                room,
                "memory (or fewer connections per box)",
            );
        }
        bounds.sort_by_key(|b| b.connections);
        let mut warnings = Vec::new();
        if let Some(max) = self.somaxconn
            && max < backlog
        {
            warnings.push(format!(
                "net.core.somaxconn = {max} cuts the listen backlog of {backlog}: a connect storm past {max} waiting is refused by the kernel (raise: sysctl net.core.somaxconn)"
            ));
        }
        Capacity { bounds, warnings }
    }

    /// The bounds a thread per connection meets: tasks and mappings.
    fn thread_bounds(&self, bound: &mut impl FnMut(&'static str, u64, u64, &'static str)) {
        // Room for threads under `max` with `now` in use.
        let threads = |max: u64, now: u64| max.saturating_sub(now + RESERVED_THREADS);
        if let Some(nproc) = self.nproc {
            bound(
                "RLIMIT_NPROC",
                nproc,
                threads(nproc, 0),
                "ulimit -u, or LimitNPROC= under systemd",
            );
        }
        if let Some(max) = self.pid_max {
            let room = threads(max, self.tasks_now);
            bound(
                "kernel.pid_max",
                max,
                room,
                "sysctl kernel.pid_max (up to 4194304)",
            );
        }
        if let Some(max) = self.threads_max {
            let room = threads(max, self.tasks_now);
            bound("kernel.threads-max", max, room, "sysctl kernel.threads-max");
        }
        if let Some((max, now)) = self.cgroup_pids {
            let room = threads(max, now);
            bound(
                "cgroup pids.max",
                max,
                room,
                "TasksMax= under systemd, --pids-limit in a container",
            );
        }
        if let Some((max, now)) = self.max_map_count {
            // Four mappings a thread: its stack and guard page, its signal
            // stack and guard page.
            let room = max.saturating_sub(now) / 4;
            bound("vm.max_map_count", max, room, "sysctl vm.max_map_count");
        }
    }
}

/// This process's cgroups: v2 (one unified hierarchy) or v1 (one per
/// controller).
struct Cgroups {
    root: PathBuf,
    /// `(controller, path)` from `/proc/self/cgroup`; controller `""` is v2.
    entries: Vec<(String, String)>,
}

impl Cgroups {
    fn of(root: &Path) -> Cgroups {
        let text = fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                Some((controllers.to_owned(), path.to_owned()))
            })
            .collect();
        Cgroups {
            root: root.join("sys/fs/cgroup"),
            entries,
        }
    }

    /// The directory of `controller` (v1), or of the unified hierarchy.
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        let v1 = self
            .entries
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == controller))
            .map(|(_, path)| {
                self.root
                    .join(controller)
                    .join(path.trim_start_matches('/'))
            });
        let v2 = self
            .entries
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, path)| self.root.join(path.trim_start_matches('/')));
        v1.filter(|d| d.is_dir()).or(v2.filter(|d| d.is_dir()))
    }

    /// `pids.max` (`None` for `max`) and `pids.current`.
    fn pids(&self) -> Option<(u64, u64)> {
        let dir = self.dir("pids")?;
        let max = read_number(&dir.join("pids.max"))?;
        Some((max, read_number(&dir.join("pids.current")).unwrap_or(0)))
    }

    /// The memory limit and usage: v2 `memory.max` and `memory.current`,
    /// v1 `memory.limit_in_bytes` and `memory.usage_in_bytes`. `None`
    /// without a limit (v2 `max`, v1's "no limit", a page-rounded
    /// `i64::MAX`).
    fn memory(&self) -> Option<(u64, u64)> {
        let dir = self.dir("memory")?;
        let (max, used) = if dir.join("memory.max").exists() {
            (dir.join("memory.max"), dir.join("memory.current"))
        } else {
            (
                dir.join("memory.limit_in_bytes"),
                dir.join("memory.usage_in_bytes"),
            )
        };
        let max = read_number(&max).filter(|&m| m < (1 << 62))?;
        Some((max, read_number(&used).unwrap_or(0)))
    }
}

/// A file holding one number; `None` if missing, unreadable or `max`.
fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/` with the given files.
    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("wheel-capacity-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        for (path, text) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn a_systemd_tasks_max_binds_before_memory_and_descriptors() {
        // cgroup v2, TasksMax=4915 (15% of pid_max 32768), 100 tasks in it.
        let root = tree(
            "v2",
            &[
                ("proc/sys/kernel/pid_max", "32768\n"),
                ("proc/sys/kernel/threads-max", "193107\n"),
                ("proc/sys/vm/max_map_count", "65530\n"),
                ("proc/sys/net/core/somaxconn", "4096\n"),
                ("proc/loadavg", "0.10 0.20 0.30 2/300 4242\n"),
                (
                    "proc/self/limits",
                    "Limit                     Soft Limit           Hard Limit           Units\nMax processes             unlimited            unlimited            processes\nMax open files            20000                20000                files\n",
                ),
                ("proc/self/cgroup", "0::/system.slice/wheel.service\n"),
                ("proc/self/maps", &"m\n".repeat(30)),
                (
                    "proc/meminfo",
                    "MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n",
                ),
                (
                    "sys/fs/cgroup/system.slice/wheel.service/pids.max",
                    "4915\n",
                ),
                (
                    "sys/fs/cgroup/system.slice/wheel.service/pids.current",
                    "100\n",
                ),
                (
                    "sys/fs/cgroup/system.slice/wheel.service/memory.max",
                    "max\n",
                ),
                (
                    "sys/fs/cgroup/system.slice/wheel.service/memory.current",
                    "1000\n",
                ),
            ],
        );
        let limits = Limits::read_from(&root);
        assert_eq!(limits.nofile, Some((20_000, 0)), "no fd/ in the fake tree");
        assert_eq!(limits.cgroup_pids, Some((4915, 100)));
        assert_eq!(limits.cgroup_memory, None, "memory.max is max: no limit");
        assert_eq!(limits.tasks_now, 300);
        let capacity = limits.capacity(Cost::THREAD, 1024);
        let binding = capacity.binding().unwrap();
        assert_eq!(binding.limit, "cgroup pids.max");
        assert_eq!(binding.connections, 4915 - 100 - RESERVED_THREADS);
        assert!(binding.raise.contains("TasksMax"));
        // Then mappings ((65530 - 30) / 4), the descriptors, the machine's
        // pid_max, threads-max, and memory (20,000,000 KiB / 84 KiB).
        let order: Vec<_> = capacity
            .bounds
            .iter()
            .map(|b| (b.limit, b.connections))
            .collect();
        assert_eq!(
            order,
            [
                ("cgroup pids.max", 4783),
                ("vm.max_map_count", 16_375),
                ("RLIMIT_NOFILE", 19_936),
                ("kernel.pid_max", 32_436),
                ("kernel.threads-max", 192_775),
                ("MemAvailable", 238_095),
            ]
        );
        assert!(capacity.warnings.is_empty());
        // Parked, an idle connection holds no thread: only the descriptors
        // and memory (20,000,000 KiB / 16 KiB) bound them.
        let parked: Vec<_> = limits
            .capacity(Cost::PARKED, 1024)
            .bounds
            .iter()
            .map(|b| (b.limit, b.connections))
            .collect();
        assert_eq!(
            parked,
            [("RLIMIT_NOFILE", 19_936), ("MemAvailable", 1_250_000)]
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_cgroup_v1_memory_limit_and_a_short_backlog_are_read() {
        let root = tree(
            "v1",
            &[
                ("proc/self/cgroup", "4:memory:/box\n8:pids:/\n0::/\n"),
                ("proc/sys/net/core/somaxconn", "128\n"),
                (
                    "sys/fs/cgroup/memory/box/memory.limit_in_bytes",
                    "1073741824\n",
                ),
                (
                    "sys/fs/cgroup/memory/box/memory.usage_in_bytes",
                    "73741824\n",
                ),
                // v1 without a limit: a page-rounded i64::MAX.
                ("sys/fs/cgroup/pids/pids.max", "max\n"),
            ],
        );
        let limits = Limits::read_from(&root);
        assert_eq!(limits.cgroup_memory, Some((1_073_741_824, 73_741_824)));
        assert_eq!(limits.cgroup_pids, None, "pids.max is max: no limit");
        let capacity = limits.capacity(Cost::THREAD, 1024);
        let binding = capacity.binding().unwrap();
        assert_eq!(binding.limit, "cgroup memory limit");
        assert_eq!(binding.connections, 1_000_000_000 / Cost::THREAD.memory);
        assert_eq!(capacity.warnings.len(), 1);
        assert!(
            capacity.warnings[0].contains("somaxconn = 128"),
            "{:?}",
            capacity.warnings
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nothing_readable_is_no_bound_at_all() {
        let root = tree("empty", &[]);
        let capacity = Limits::read_from(&root).capacity(Cost::THREAD, 1024);
        assert_eq!(capacity.connections(), u64::MAX);
        assert!(capacity.binding().is_none());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn this_box_is_read() {
        let limits = Limits::read();
        assert!(
            limits
                .nofile
                .is_some_and(|(soft, open)| soft > 0 && open > 0)
        );
        assert!(limits.pid_max.is_some());
        assert!(limits.mem_available.is_some());
        let capacity = limits.capacity(Cost::THREAD, 1024);
        assert!(capacity.connections() > 0 && capacity.connections() < u64::MAX);
    }
}
