//! The processes a bench run starts: each in its own process group, registered so that they are
//! all stopped, by their own PIDs, when the run ends — normally, on an error, or on Ctrl-C — and
//! measured (CPU time, memory) as whole groups, workers and forked children included.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process_group};

/// Every process-group leader started and not yet stopped.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A started process (the leader of its own process group) and where its output goes.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in a new process group with stdout and stderr going to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = spawn_grouped(
            cmd.stdout(out.try_clone()?)
                .stderr(out)
                .stdin(Stdio::null()),
        )
        .with_context(|| format!("starting {name}: {}", crate::show(cmd)))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process (and process-group) ID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails with the tail of its log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 12)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_group(self.pid());
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` as the leader of a new process group and registers it for [`stop_all`].
pub fn spawn_grouped(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut live = LIVE.lock().expect("process list");
    let child = cmd.process_group(0).spawn()?;
    live.push(child.id() as i32);
    Ok(child)
}

/// Waits up to `limit` for `child` (started with [`spawn_grouped`]) to exit, then stops what is
/// left of its group either way. `None` means it had not exited by then.
pub fn finish(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop_group(child.id() as i32);
    let _ = child.wait();
    Ok(status)
}

/// Stops the group led by `pid`: SIGTERM, then SIGKILL for whatever is left after a moment.
pub fn stop_group(pid: i32) {
    let mut live = LIVE.lock().expect("process list");
    let Some(i) = live.iter().position(|&p| p == pid) else {
        return;
    };
    live.swap_remove(i);
    drop(live);
    let Some(pgid) = Pid::from_raw(pid) else {
        return;
    };
    if kill_process_group(pgid, Signal::TERM).is_err() {
        return; // already gone
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !group_members(pid).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process_group(pgid, Signal::KILL);
}

/// Stops every registered group (at the end of a run and on fatal errors).
pub fn stop_all() {
    let pids: Vec<i32> = LIVE.lock().expect("process list").clone();
    for pid in pids {
        stop_group(pid);
    }
}

/// On SIGINT or SIGTERM: kill every started process group at once (no grace: the user asked
/// to stop), then exit with 130. The list stays locked, so nothing new starts meanwhile.
pub fn stop_all_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "\nbench: signal {sig}: killing the {} process group(s) it started",
                live.len()
            );
            for &pid in live.iter() {
                if let Some(pgid) = Pid::from_raw(pid) {
                    let _ = kill_process_group(pgid, Signal::KILL);
                }
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// The live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[2].parse() == Ok(pgid)))
        .collect()
}

/// The fields of /proc/PID/stat after the command name (field 3, state, is index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system) used so far by the live processes of group `pgid`.
///
/// Children that have exited and been reaped count in their parent's `cutime`/`cstime`, so a
/// forking peer (socat) is charged for its finished connections too.
pub fn group_cpu_secs(pgid: i32) -> f64 {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    group_members(pgid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            // utime, stime, cutime, cstime are fields 14-17: indexes 11-14 here.
            (11..=14)
                .map(|i| f[i].parse::<f64>().unwrap_or(0.0))
                .sum::<f64>()
        })
        .sum::<f64>()
        / hz
}

/// Memory of a process group in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Proportional set size: each shared page counted once across the group, so a forking
    /// peer's copies of one binary are not counted per child.
    pub pss_kib: u64,
    /// Resident set size, summed over the group's processes.
    pub rss_kib: u64,
}

/// The memory of the live processes of group `pgid`, from `/proc/PID/smaps_rollup`.
pub fn group_memory(pgid: i32) -> Memory {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    group_members(pgid)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .fold(Memory::default(), |m, text| Memory {
            pss_kib: m.pss_kib + field(&text, "Pss:"),
            rss_kib: m.rss_kib + field(&text, "Rss:"),
        })
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
