//! Sockets: ports, connects with timeouts, how a stream ended, echo round trips.

use super::*;

/// 127.0.0.1:port.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port that was free a moment ago, for an engine to listen on.
///
/// Ports come from below the kernel's ephemeral range when there is room (so the many outgoing
/// connections of concurrent tests cannot take one between this call and the engine's bind),
/// each handed out once per test process, starting at an offset derived from the pid.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(32768);
    const LOW: usize = 10_000;
    if ephemeral_low > LOW + 2_000 {
        let span = ephemeral_low - LOW;
        let base = (std::process::id() as usize * 7919) % span;
        for _ in 0..span {
            let port = LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = u16::try_from(port).expect("port fits in u16");
            if TcpListener::bind(localhost(port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Connects with the test I/O timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A listener on `addr` that never accepts, its accept queue full, so the kernel drops the SYNs
/// of further connects and they time out, as to an address behind a firewall that drops them.
pub struct SilentListener {
    _listener: socket2::Socket,
    _queued: TcpStream,
}

/// Listens on `addr` with room for one connection in the accept queue and fills it; checks
/// that a further connect does time out.
pub fn silent_listener(addr: SocketAddr) -> SilentListener {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    listener
        .bind(&addr.into())
        .expect("bind the silent listener");
    listener.listen(0).expect("listen");
    let queued = TcpStream::connect(addr).expect("the one connection the queue takes");
    let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(
        matches!(&probe, Err(e) if e.kind() == io::ErrorKind::TimedOut),
        "a connect to a full accept queue times out: {probe:?}"
    );
    SilentListener {
        _listener: listener,
        _queued: queued,
    }
}

/// Connects with the test I/O timeouts set, or says why not.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects, sends `payload` (a write error is ignored: the peer may already have closed), and
/// reads until the connection ends. A reset while connecting counts as the end.
pub fn send_and_read_to_end(addr: SocketAddr, payload: &[u8]) -> (Vec<u8>, End) {
    match try_connect(addr) {
        Ok(mut s) => {
            let _ = s.write_all(payload);
            read_until_end(&mut s)
        }
        Err(e) => match classify(e) {
            End::Reset => (Vec::new(), End::Reset),
            other => panic!("connect to {addr}: {other:?}"),
        },
    }
}

/// Sets SO_LINGER {on, 0}: closing the socket then sends a RST.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("socklen");
    // SAFETY: the fd is a live socket owned by `s`; the option value points to a properly
    // initialised `linger` that outlives the call, and `len` is its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// A clean EOF.
    Eof,
    /// ECONNRESET / ECONNABORTED.
    Reset,
    /// Some other error (a TLS alert, an unexpected EOF in TLS...).
    Error(io::Error),
    /// Nothing happened before the read timeout.
    TimedOut,
}

impl End {
    /// Whether the stream was closed one way or another (not a timeout).
    pub fn closed(&self) -> bool {
        !matches!(self, End::TimedOut)
    }
}

/// Classifies a read error.
pub fn classify(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::TimedOut,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => End::Reset,
        _ => End::Error(e),
    }
}

/// Reads until the stream ends (or the socket's read timeout fires); returns the bytes read
/// and how it ended.
pub fn read_until_end(r: &mut impl Read) -> (Vec<u8>, End) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (data, End::Eof),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (data, classify(e)),
        }
    }
}

/// Writes `msg`, reads back exactly as many bytes, and checks they are the same.
pub fn echo_roundtrip(s: &mut (impl Read + Write), msg: &[u8]) {
    s.write_all(msg).expect("write the echo request");
    s.flush().expect("flush the echo request");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo reply");
    assert!(back == msg, "echo reply differs from what was sent");
}

/// Like `echo_roundtrip` but reports failure instead of panicking.
pub fn try_echo_roundtrip(s: &mut (impl Read + Write), msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    s.flush()?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("echo reply differs from what was sent"));
    }
    Ok(())
}
