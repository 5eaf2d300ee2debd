//! Half-close in both directions, reset propagation in both directions, and truncation: a TLS
//! peer that closes TCP without close_notify must reset the plain side, never give it a clean EOF.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc;

use rustls::ServerConnection;

use crate::support::*;

const REPLY: u64 = 4 * 1024 * 1024;

/// A backend whose behaviour per connection is `f`, reporting a value through a channel.
fn reporting_backend<T: Send + 'static>(
    f: impl Fn(TcpStream) -> T + Send + Sync + 'static,
) -> (Backend, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let b = Backend::spawn(move |s| {
        let v = f(s);
        let _ = tx.lock().expect("report channel").send(v);
    });
    (b, rx)
}

/// The client sends a request and shuts down its write side; the backend reads to EOF, then
/// sends a 4 MiB reply and closes. The client must get all of it, then a clean EOF.
fn client_half_close(driver: &str) {
    let pki = Pki::new();
    let (backend, rx) = reporting_backend(|mut s| {
        let got = read_hashed(&mut s).map_err(|(n, _, e)| format!("after {n} bytes: {e}"));
        if got.is_ok() {
            let _ = write_random(&mut s, REPLY, 11, None);
            let _ = s.shutdown(Shutdown::Write);
        }
        got
    });
    let chain = Chain::start(&pki, backend.addr, driver);

    let mut s = connect(chain.entry);
    let request = random_bytes(300 * 1024, 10);
    s.write_all(&request).expect("write the request");
    s.shutdown(Shutdown::Write).expect("half-close the request");
    let (n, hash) = read_hashed(&mut s)
        .unwrap_or_else(|(n, _, e)| panic!("reading the reply failed after {n} bytes: {e}"));
    assert_eq!(n, REPLY, "reply length after our half-close");
    assert_eq!(hash, random_hash(REPLY, 11), "reply SHA-256");
    let (bn, bhash) = rx
        .recv_timeout(SOON)
        .expect("backend report")
        .expect("the backend read the request to a clean EOF");
    assert_eq!(
        (bn, bhash),
        (request.len() as u64, sha256_hex(&request)),
        "what the backend received before EOF"
    );
}

#[test]
fn client_half_close_uring() {
    client_half_close("uring");
}

#[test]
fn client_half_close_epoll() {
    client_half_close("epoll");
}

/// The backend sends its reply and shuts down its write side first; the client gets the reply
/// and a clean EOF, and can still send: the backend receives all of it and then a clean EOF.
fn backend_half_close(driver: &str) {
    let pki = Pki::new();
    let (backend, rx) = reporting_backend(|mut s| {
        let _ = write_random(&mut s, REPLY, 21, None);
        let _ = s.shutdown(Shutdown::Write);
        read_hashed(&mut s).map_err(|(n, _, e)| format!("after {n} bytes: {e:?}"))
    });
    let chain = Chain::start(&pki, backend.addr, driver);

    let mut s = connect(chain.entry);
    let (n, hash) = read_hashed(&mut s)
        .unwrap_or_else(|(n, _, e)| panic!("reading the backend's data failed after {n}: {e}"));
    assert_eq!(n, REPLY, "bytes before the backend's FIN");
    assert_eq!(hash, random_hash(REPLY, 21));
    // Our direction still works after the backend's FIN.
    let sent = write_random(&mut s, 2 * 1024 * 1024, 22, None)
        .expect("writing after the backend half-closed");
    s.shutdown(Shutdown::Write).expect("half-close ours");
    let (bn, bhash) = rx
        .recv_timeout(SOON)
        .expect("backend report")
        .expect("the backend read our data to a clean EOF");
    assert_eq!(
        bn,
        2 * 1024 * 1024,
        "bytes the backend got after its own FIN"
    );
    assert_eq!(bhash, sent);
}

#[test]
fn backend_half_close_uring() {
    backend_half_close("uring");
}

#[test]
fn backend_half_close_epoll() {
    backend_half_close("epoll");
}

/// The client sends data, then resets (SO_LINGER 0 + close). The backend must see an error
/// (ECONNRESET), not a clean EOF that would pass the cut-off data as complete.
fn client_reset(driver: &str) {
    const FIRST: usize = 64 * 1024;
    let pki = Pki::new();
    let (got_first_tx, got_first_rx) = mpsc::channel();
    let got_first_tx = Mutex::new(got_first_tx);
    let (backend, rx) = reporting_backend(move |mut s| {
        let mut buf = vec![0u8; FIRST];
        if s.read_exact(&mut buf).is_err() {
            return None;
        }
        let _ = got_first_tx.lock().expect("chan").send(());
        Some(read_until_end(&mut s))
    });
    let chain = Chain::start(&pki, backend.addr, driver);

    let mut s = connect(chain.entry);
    s.write_all(&random_bytes(FIRST, 30)).expect("write");
    got_first_rx
        .recv_timeout(SOON)
        .expect("the backend received the first 64 KiB");
    set_linger_zero(&s);
    drop(s);
    let (_, end) = rx
        .recv_timeout(SOON * 2)
        .expect("backend report")
        .expect("backend read the first part");
    assert!(
        matches!(end, End::Reset | End::Error(_)),
        "after the client's reset the backend saw {end:?}; want a reset/error"
    );
}

#[test]
fn client_reset_uring() {
    client_reset("uring");
}

#[test]
fn client_reset_epoll() {
    client_reset("epoll");
}

/// The backend sends some data and resets; the client must see ECONNRESET (not a clean EOF).
fn backend_reset(driver: &str) {
    let pki = Pki::new();
    let backend = Backend::spawn(|mut s| {
        let mut hello = [0u8; 5];
        if s.read_exact(&mut hello).is_err() {
            return;
        }
        let _ = s.write_all(&random_bytes(64 * 1024, 40));
        set_linger_zero(&s);
    });
    let chain = Chain::start(&pki, backend.addr, driver);

    let mut s = connect(chain.entry);
    s.write_all(b"hello").expect("write");
    let (data, end) = read_until_end(&mut s);
    assert!(
        matches!(end, End::Reset),
        "after the backend's reset the client saw {end:?} after {} bytes; want ECONNRESET",
        data.len()
    );
}

#[test]
fn backend_reset_uring() {
    backend_reset("uring");
}

#[test]
fn backend_reset_epoll() {
    backend_reset("epoll");
}

/// Server mode: the TLS client sends data and then closes TCP without close_notify. The
/// backend must not see a clean EOF.
fn tls_truncation_downstream(driver: &str) {
    let pki = Pki::new();
    let (backend, rx) = reporting_backend(|mut s| read_until_end(&mut s));
    let sp = free_port();
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver).start();
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS13),
    );
    tls.write_all(b"some data, then a FIN without close_notify")
        .expect("write");
    tls.flush().expect("flush");
    tls.sock
        .shutdown(Shutdown::Write)
        .expect("FIN without close_notify");
    let (data, end) = rx.recv_timeout(SOON * 2).expect("backend report");
    assert_eq!(data, b"some data, then a FIN without close_notify");
    assert!(
        matches!(end, End::Reset | End::Error(_)),
        "backend saw {end:?} after a TLS truncation; want a reset, not a clean EOF"
    );
}

#[test]
fn tls_truncation_downstream_uring() {
    tls_truncation_downstream("uring");
}

#[test]
fn tls_truncation_downstream_epoll() {
    tls_truncation_downstream("epoll");
}

/// Client mode: the TLS upstream sends data and closes TCP without close_notify. The plain
/// client must be reset, not given a clean EOF.
fn tls_truncation_upstream(driver: &str) {
    let pki = Pki::new();
    let cfg = server_config(&pki.server, None, TLS_ANY);
    let upstream = Backend::spawn(move |sock| {
        let Ok(conn) = ServerConnection::new(cfg.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut hello = [0u8; 5];
        if tls.read_exact(&mut hello).is_err() {
            return;
        }
        let _ = tls.write_all(b"partial answer");
        let _ = tls.flush();
        // FIN without close_notify.
        let _ = tls.sock.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = tls.sock.read_to_end(&mut rest);
    });
    let cp = free_port();
    let _client = EngineCmd::client(cp, upstream.addr, &pki.ca, driver)
        .opt("--sni", "localhost")
        .start();
    let mut s = connect(localhost(cp));
    s.write_all(b"hello").expect("write");
    let (data, end) = read_until_end(&mut s);
    assert_eq!(data, b"partial answer", "data before the truncation");
    assert!(
        matches!(end, End::Reset),
        "client saw {end:?} after the upstream truncated TLS; want ECONNRESET"
    );
}

#[test]
fn tls_truncation_upstream_uring() {
    tls_truncation_upstream("uring");
}

#[test]
fn tls_truncation_upstream_epoll() {
    tls_truncation_upstream("epoll");
}

/// Server mode: a TLS client that sends close_notify gives the backend a clean EOF (the
/// counterpart of the truncation tests: a clean close stays clean), and the reply still flows.
#[test]
fn close_notify_is_clean_eof() {
    let pki = Pki::new();
    let (backend, rx) = reporting_backend(|mut s| {
        let r = read_until_end(&mut s);
        let _ = s.write_all(b"bye");
        let _ = s.shutdown(Shutdown::Write);
        r
    });
    let sp = free_port();
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto").start();
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS13),
    );
    tls.write_all(b"all of it").expect("write");
    tls.flush().expect("flush");
    tls_close(&mut tls);
    let (data, end) = rx.recv_timeout(SOON).expect("backend report");
    assert_eq!(data, b"all of it");
    assert!(
        matches!(end, End::Eof),
        "backend saw {end:?}; want a clean EOF"
    );
    let (got, end) = read_until_end(&mut tls);
    assert_eq!(got, b"bye", "the backend's reply after our close_notify");
    assert!(
        matches!(end, End::Eof),
        "TLS stream after the backend's FIN ended with {end:?}; want close_notify + EOF"
    );
}
