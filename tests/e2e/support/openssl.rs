//! `openssl` children (s_client, s_server): stdin piped, output collected, killed on drop.

use super::*;

/// An `openssl` child with its stdin piped and stdout/stderr collected; killed on drop.
pub struct OpensslChild {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl OpensslChild {
    /// Spawns `openssl s_client` to `addr` with SNI `localhost`, trusting `ca`, quiet
    /// (`-brief`), with `extra` flags after these. It does not add `-verify_return_error`:
    /// a test that expects the server to hang up must not let a verification failure pass
    /// for it.
    pub fn s_client(addr: SocketAddr, ca: &Path, extra: &[&str]) -> OpensslChild {
        let connect = addr.to_string();
        let ca = ca.to_string_lossy();
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-servername",
            "localhost",
            "-brief",
        ];
        args.extend_from_slice(extra);
        OpensslChild::spawn(&args)
    }

    /// Spawns `openssl ARGS...`.
    pub fn spawn(args: &[&str]) -> OpensslChild {
        let mut child = Command::new(OPENSSL)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn openssl {args:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().expect("openssl stdout");
        let mut err = child.stderr.take().expect("openssl stderr");
        let (o, e) = (stdout.clone(), stderr.clone());
        spawn("openssl-stdout", move || collect(&mut out, &o));
        spawn("openssl-stderr", move || collect(&mut err, &e));
        OpensslChild {
            child,
            stdin,
            stdout,
            stderr,
            what: format!("openssl {}", args.join(" ")),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Writes to its stdin.
    pub fn send(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(data)
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("write to {} stdin: {e}\n{}", self.what, self.stderr()));
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Waits up to `SOON` for its stdout to contain `needle`.
    pub fn wait_stdout(&self, needle: &[u8]) -> bool {
        wait_until(SOON, || {
            self.stdout().windows(needle.len()).any(|w| w == needle)
        })
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until it listens on `port` (an `s_server`).
    pub fn wait_listening(&mut self, port: u16) {
        let pid = self.pid();
        let ok = wait_until(START_TIMEOUT, || pid_listens_on(pid, port));
        assert!(
            ok,
            "{} did not listen on {port}; stderr:\n{}",
            self.what,
            self.stderr()
        );
    }

    /// What was run.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for OpensslChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {}\nstdout: {:?}\nstderr:\n{}\n----",
                self.what,
                String::from_utf8_lossy(&self.stdout()),
                self.stderr()
            );
        }
    }
}

fn collect(r: &mut impl Read, into: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => into
                .lock()
                .expect("collect lock")
                .extend_from_slice(&buf[..n]),
        }
    }
}
