//! Backends: plain TCP servers the engines forward to (echo, hashing sink).

use super::*;

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1 that runs a handler per connection on its own thread.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Starts a backend running `handler` for every connection.
    pub fn spawn(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        Self::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
    }

    /// [`Backend::spawn`] on `addr`.
    pub fn spawn_on(
        addr: SocketAddr,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Backend {
        let handler: Handler = Arc::new(handler);
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind a backend on {addr}: {e}"));
        let addr = listener.local_addr().expect("backend address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        thread::Builder::new()
            .name(format!("backend-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(sock) = conn else { continue };
                    acc.fetch_add(1, Ordering::SeqCst);
                    let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = sock.set_write_timeout(Some(IO_TIMEOUT));
                    let h = handler.clone();
                    let _ = thread::Builder::new()
                        .name("backend-conn".into())
                        .spawn(move || h(sock));
                }
            })
            .expect("spawn backend thread");
        Backend {
            addr,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Echoes every byte back; on EOF, half-closes its write side (so half-close propagates).
pub fn echo_backend() -> Backend {
    echo_backend_on(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// [`echo_backend`] on `addr`.
pub fn echo_backend_on(addr: SocketAddr) -> Backend {
    Backend::spawn_on(addr, |mut sock| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => {
                    let _ = sock.shutdown(Shutdown::Write);
                    // Wait for the peer to close too, so the socket is not reset by a drop
                    // while bytes are still arriving.
                    let _ = sock.read(&mut buf);
                    return;
                }
                Ok(n) => {
                    if sock.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

/// What a sink saw on one connection.
#[derive(Debug, Clone)]
pub struct SinkReport {
    /// Bytes read before EOF (or before the error).
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
    /// The read error, if the stream did not end with a clean EOF.
    pub error: Option<String>,
}

/// Reads everything, hashes it; after EOF writes `"BYTES HEX\n"` back, half-closes, and reports
/// on the channel. While `gate` is false it does not read at all (a slow reader).
pub fn sink_backend(gate: Option<Arc<AtomicBool>>) -> (Backend, mpsc::Receiver<SinkReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |mut sock| {
        if let Some(g) = &gate {
            let start = Instant::now();
            while !g.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let report = match read_hashed(&mut sock) {
            Ok((bytes, sha256)) => {
                let _ = sock.write_all(format!("{bytes} {sha256}\n").as_bytes());
                let _ = sock.shutdown(Shutdown::Write);
                SinkReport {
                    bytes,
                    sha256,
                    error: None,
                }
            }
            Err((bytes, sha256, e)) => SinkReport {
                bytes,
                sha256,
                error: Some(format!("{:?}: {e}", e.kind())),
            },
        };
        let _ = tx.lock().expect("sink channel").send(report);
    });
    (backend, rx)
}
