//! The HTTP side of `/metrics`, on the control plane's HTTP server ([`crate::http`]: its own
//! thread, a task per connection, a header timeout and a connection cap).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::Source;
use crate::error::Result;
use crate::http::HttpServer;

/// The media type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics endpoint; stops (closing its port and every connection) when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    /// Held for its drop, which stops the endpoint.
    _http: HttpServer,
}

impl MetricsServer {
    /// Binds `addr` (an error names it) and starts serving `source` on a new thread.
    pub(crate) fn start(addr: SocketAddr, source: Source) -> Result<Self> {
        let source = Arc::new(source);
        let server = HttpServer::start("metrics", "metrics", addr, move |req, _peer| {
            let answer = respond(&req, &source);
            async move { answer }
        })?;
        let addr = server.local_addr();
        tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
        Ok(Self { _http: server })
    }

    /// The address it listens on.
    #[cfg(test)]
    pub fn local_addr(&self) -> SocketAddr {
        self._http.local_addr()
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

    use std::time::Duration;

    use super::*;
    use crate::http::MAX_CONNECTIONS;
    use crate::stats::ReloadStats;

    /// Dropping the server returns with a client connected and idle, closes that client's
    /// connection, and frees the port.
    #[test]
    fn drop_closes_the_port_and_idle_connections() {
        let source = Source {
            registry: Arc::default(),
            reloads: Arc::new(ReloadStats::new()),
            agents: Arc::default(),
            relays: Arc::default(),
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
            agents: Arc::default(),
            relays: Arc::default(),
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
