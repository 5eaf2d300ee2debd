//! The HTTP side of `/metrics`: hyper's HTTP/1 server on a current-thread tokio runtime, on
//! its own thread.
//!
//! Each connection is a task, so an idle or slow client never holds up a scrape; a client
//! that sends no complete request head within [`HEADER_READ_TIMEOUT`] is closed, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), so the endpoint cannot
//! take the file descriptors the forwarders need.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};

use super::Source;
use crate::error::{Error, Result};

/// How long a connection may take to send a request head (an idle keep-alive connection
/// included) before it is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// The media type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics endpoint's thread; stops (closing its port and every connection) when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Binds `addr` (an error names it) and starts serving `source` on a new thread.
    pub(crate) fn start(addr: SocketAddr, source: Source) -> Result<Self> {
        let io_err = |context: &str| {
            let context = context.to_string();
            move |source| Error::Io { context, source }
        };
        let listener =
            std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        listener
            .set_nonblocking(true)
            .map_err(io_err("metrics listener"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(io_err("metrics runtime"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let source = Arc::new(source);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(accept_loop(listener, source));
                        }
                        Err(e) => tracing::error!(error = %e, "metrics endpoint not started"),
                    }
                    // Sender dropped or signalled: either way, stop.
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels the accept loop and every connection task,
                // which closes their sockets.
                drop(runtime);
            })
            .map_err(io_err("spawn metrics thread"))?;
        tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    #[cfg(test)]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, source: Arc<Source>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning on the error.
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections; closing this one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &source);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

/// `GET` or `HEAD /metrics` (hyper leaves out the body of a `HEAD` answer); 404 for any other
/// path, 405 for any other method.
fn respond(req: &Request<Incoming>, source: &Source) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use GET or HEAD\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(source.render())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::stats::ReloadStats;

    /// Dropping the server returns with a client connected and idle, closes that client's
    /// connection, and frees the port.
    #[test]
    fn drop_closes_the_port_and_idle_connections() {
        let source = Source {
            registry: Arc::default(),
            reloads: Arc::new(ReloadStats::new()),
        };
        let server = MetricsServer::start(([127, 0, 0, 1], 0).into(), source).expect("start");
        let addr = server.local_addr();
        let mut idle = TcpStream::connect(addr).expect("connect");
        assert!(scraped(addr));

        drop(server);
        idle.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match idle.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the idle connection was not closed: {other:?}"),
        }
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }

    /// Past [`MAX_CONNECTIONS`] a new connection is closed at once; when one closes, scrapes
    /// are served again.
    #[test]
    fn connection_cap() {
        let source = Source {
            registry: Arc::default(),
            reloads: Arc::new(ReloadStats::new()),
        };
        let server = MetricsServer::start(([127, 0, 0, 1], 0).into(), source).expect("start");
        let addr = server.local_addr();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        assert!(!scraped(addr), "a scrape past the cap was served");
        drop(idle.pop());
        let served = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            scraped(addr)
        });
        assert!(served, "no scrape served after a connection closed");
    }

    /// Whether one `GET /metrics` on a new connection is answered 200.
    fn scraped(addr: SocketAddr) -> bool {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer.starts_with(b"HTTP/1.1 200")
    }
}
