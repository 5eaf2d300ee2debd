//! The engine process: its command line, the guard that waits for its ports and kills it.

use super::*;

/// A command line for the engine, with the ports to wait for before it counts as started.
#[derive(Debug, Clone)]
pub struct EngineCmd {
    args: Vec<OsString>,
    ports: Vec<u16>,
    cwd: Option<PathBuf>,
    label: String,
    hosts: Option<PathBuf>,
}

impl EngineCmd {
    /// `splice-engine SUBCOMMAND`.
    pub fn new(subcommand: &str) -> EngineCmd {
        EngineCmd {
            args: vec![subcommand.into()],
            ports: Vec::new(),
            cwd: None,
            label: subcommand.to_string(),
            hosts: None,
        }
    }

    /// `client` mode, listening on `listen`, verifying the upstream against `ca`, common flags
    /// (2 threads, info logs) and `--driver driver`.
    pub fn client(listen: u16, connect: SocketAddr, ca: &Ca, driver: &str) -> EngineCmd {
        EngineCmd::new("client")
            .opt("--listen", localhost(listen).to_string())
            .opt("--connect", connect.to_string())
            .opt("--ca", &ca.path)
            .common(driver)
            .wait_port(listen)
    }

    /// `server` mode presenting `leaf`, listening on `listen`, forwarding to `connect`.
    pub fn server(listen: u16, connect: SocketAddr, leaf: &Leaf, driver: &str) -> EngineCmd {
        EngineCmd::new("server")
            .opt("--listen", localhost(listen).to_string())
            .opt("--connect", connect.to_string())
            .opt("--cert", &leaf.cert)
            .opt("--key", &leaf.key)
            .common(driver)
            .wait_port(listen)
    }

    /// A `source` (`--listen SERVICE`) or `destination` (`--connect SERVICE`) command for the
    /// relay at `relay` (`HOST:PORT`) with its access token in `token`, labelled `kind`; the
    /// caller says how it trusts the relay and adds the common flags.
    pub fn agent(kind: &str, relay: &str, token: &Path, service: &str) -> EngineCmd {
        let services = if kind == "source" {
            "--listen"
        } else {
            "--connect"
        };
        EngineCmd::new(kind)
            .opt("--relay", relay)
            .opt("--token-file", token)
            .opt(services, service)
            .label(kind)
    }

    /// `--threads 2 --log-level info --driver DRIVER`.
    pub fn common(self, driver: &str) -> EngineCmd {
        self.opt("--threads", "2")
            .opt("--log-level", "info")
            .opt("--driver", driver)
    }

    /// Adds `--metrics 127.0.0.1:PORT` and waits for that port too.
    pub fn metrics(self, port: u16) -> EngineCmd {
        self.opt("--metrics", localhost(port).to_string())
            .wait_port(port)
    }

    /// One argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> EngineCmd {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// A flag and its value.
    pub fn opt(self, flag: &str, value: impl AsRef<OsStr>) -> EngineCmd {
        self.arg(flag).arg(value)
    }

    /// `flag value`, in place of the flag's value if it is there already (`--log-level`).
    pub fn set(mut self, flag: &str, value: impl AsRef<OsStr>) -> EngineCmd {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => {
                self.args[i + 1] = value.as_ref().to_os_string();
                self
            }
            _ => self.opt(flag, value),
        }
    }

    /// A port that must be listening (owned by the process) before `start` returns.
    pub fn wait_port(mut self, port: u16) -> EngineCmd {
        if !self.ports.contains(&port) {
            self.ports.push(port);
        }
        self
    }

    /// The working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> EngineCmd {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the engine with `hosts` as its `/etc/hosts` (bind-mounted in a mount namespace of
    /// its own, by `unshare`): names that resolve as a test needs, for this process only.
    pub fn hosts(mut self, hosts: &Path) -> EngineCmd {
        self.hosts = Some(hosts.to_path_buf());
        self
    }

    /// A name for diagnostics.
    pub fn label(mut self, label: impl Into<String>) -> EngineCmd {
        self.label = label.into();
        self
    }

    /// The arguments, for messages.
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("splice-engine {}", args.join(" "))
    }

    fn spawn(&self) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("splice-e2e-proc-")
            .tempdir()
            .expect("create the process temp dir");
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr.log");
        let stdout = fs::File::create(&stdout_path).expect("create stdout.log");
        let mut cmd = match &self.hosts {
            // `unshare` and `sh` exec in turn: the child's pid is the engine's.
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
                    .arg(hosts)
                    .arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.describe()));
        Proc {
            child,
            _dir: dir,
            stderr_path,
            label: self.label.clone(),
            cmdline: self.describe(),
            status: None,
        }
    }

    /// Starts the engine and waits until every port given is listening in this process.
    pub fn start(&self) -> Proc {
        let mut p = self.spawn();
        for &port in &self.ports {
            p.wait_listening(port);
        }
        p
    }

    /// Runs the engine expecting it to exit by itself (bad input); returns its status and
    /// stderr. Panics if it is still running after `SOON`.
    pub fn run_to_exit(&self) -> (ExitStatus, String) {
        let mut p = self.spawn();
        let status = p.wait_exit(SOON).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {SOON:?}; stderr:\n{}",
                self.describe(),
                p.stderr()
            )
        });
        (status, p.stderr())
    }
}

/// A running engine; killed when dropped. On a failing test it prints its stderr.
pub struct Proc {
    child: Child,
    _dir: TempDir,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
    label: String,
    cmdline: String,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Everything it wrote to stderr so far, as written.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its stderr with terminal colour sequences removed (see `strip_ansi`).
    pub fn log(&self) -> String {
        strip_ansi(&self.stderr())
    }

    /// Whether the process is still running (reaps it if not).
    pub fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(e) => panic!("try_wait on {}: {e}", self.label),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if !self.running() {
                return self.status;
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a socket of this process listens on `port` (any address).
    pub fn is_listening(&self, port: u16) -> bool {
        pid_listens_on(self.pid(), port)
    }

    /// Waits until this process listens on `port`; panics (with its stderr) if it exits or
    /// does not listen within `START_TIMEOUT`.
    pub fn wait_listening(&mut self, port: u16) {
        let start = Instant::now();
        loop {
            if !self.running() {
                panic!(
                    "{} exited ({:?}) before listening on {port}\ncommand: {}\nstderr:\n{}",
                    self.label,
                    self.status,
                    self.cmdline,
                    self.stderr()
                );
            }
            if self.is_listening(port) {
                return;
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{} did not listen on port {port} within {START_TIMEOUT:?}\ncommand: {}\nstderr:\n{}",
                    self.label,
                    self.cmdline,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own live child
        // (it has not been reaped, so the pid cannot have been reused).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Waits up to `timeout` for the log (stderr without colour sequences) to satisfy `pred`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        wait_until(timeout, || pred(&self.log()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let err = self.log();
            let lines: Vec<&str> = err.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- {} ({}) exit {:?}, last stderr lines:\n{}\n----",
                self.label,
                self.cmdline,
                self.status,
                tail.join("\n")
            );
        }
    }
}

/// Whether process `pid` has a socket listening on `port` (any address). Read from /proc, so
/// it does not disturb the port: probing by binding it would race the process's own bind.
pub fn pid_listens_on(pid: i32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let mine = socket_inodes(pid);
    inodes.iter().any(|i| mine.contains(i))
}

fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((_, p)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port)
                && let Ok(inode) = f[9].parse::<u64>()
            {
                out.push(inode);
            }
        }
    }
    out
}

fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                out.insert(n);
            }
        }
    }
    out
}
