//! The control plane's HTTP/1 server, shared by `/metrics` and the tunnel API: hyper on a
//! current-thread tokio runtime, on a thread of its own (the data plane never waits for it).
//!
//! Each connection is a task, so an idle or slow client never holds up another; a client that
//! sends no complete request head within [`HEADER_READ_TIMEOUT`] is closed, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), so an endpoint cannot take
//! the file descriptors the forwarders need. Dropping the server closes its port and every
//! connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};

use crate::error::{Error, Result};

/// How long a connection may take to send a request head (an idle keep-alive connection
/// included) before it is closed.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are closed as soon as they are accepted.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// A running HTTP endpoint; it stops (closing its port and every connection) when dropped.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    /// Binds `addr` (an error names it) and answers each request with `handler(request, peer)`
    /// on a new thread named `thread`; `what` names the endpoint in errors and logs.
    pub(crate) fn start<H, F>(
        what: &'static str,
        thread: &'static str,
        addr: SocketAddr,
        handler: H,
    ) -> Result<Self>
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let io_err = move |context: &str| {
            let context = format!("{what} {context}");
            move |source| Error::Io { context, source }
        };
        // Named: "cannot listen on ADDR" alone does not say that it is the API's address.
        let listener = std::net::TcpListener::bind(addr)
            .map_err(io_err(&format!("cannot listen on {addr}")))?;
        let addr = listener.local_addr().unwrap_or(addr);
        listener.set_nonblocking(true).map_err(io_err("listener"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(io_err("runtime"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let thread = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(accept_loop(what, listener, handler));
                        }
                        Err(e) => tracing::error!(error = %e, "{what} not started"),
                    }
                    // Sender dropped or signalled: either way, stop.
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels the accept loop and every connection task,
                // which closes their sockets.
                drop(runtime);
            })
            .map_err(io_err("thread"))?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop<H, F>(what: &'static str, listener: tokio::net::TcpListener, handler: Arc<H>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning on the error.
                tracing::debug!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "{what}: too many connections; closing this one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answer = handler(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "{what}: connection ended");
            }
            drop(slot);
        });
    }
}
