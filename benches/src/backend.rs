//! The sink and echo backends at the far end of every bench path.
//!
//! * The **sink** reads a stream, checks it against the [`Pattern`] and, when the sender
//!   half-closes, answers with a 16-byte [`SinkReport`] (bytes received, and the offset of the
//!   first wrong byte if any) and closes. A bulk sender therefore knows that every byte it wrote
//!   arrived, in order, through the proxies under test.
//! * The **echo** backend writes back what it reads and half-closes when its peer does.
//!
//! Both run on a tokio runtime so that thousands of idle connections cost no threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pattern::Pattern;

/// What the sink sends back when the sender half-closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkReport {
    /// Bytes received.
    pub received: u64,
    /// The stream offset of the first byte that did not match the pattern.
    pub first_bad: Option<u64>,
}

impl SinkReport {
    /// The report's size on the wire.
    pub const LEN: usize = 16;

    /// The wire form: received, then first_bad + 1 (0 = none), both little-endian u64.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[..8].copy_from_slice(&self.received.to_le_bytes());
        b[8..].copy_from_slice(&self.first_bad.map_or(0, |o| o + 1).to_le_bytes());
        b
    }

    /// Reads the wire form.
    pub fn decode(b: &[u8; Self::LEN]) -> Self {
        let word =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        let bad = word(8..16);
        Self {
            received: word(0..8),
            first_bad: bad.checked_sub(1),
        }
    }
}

/// The backends of one bench run, listening.
pub struct Backends {
    /// Where the sink listens.
    pub sink: SocketAddr,
    /// Where the echo backend listens.
    pub echo: SocketAddr,
}

/// Binds both backends (port 0 picks a free port) on `rt` and serves them until the runtime ends.
pub fn start(rt: &tokio::runtime::Runtime, sink: SocketAddr, echo: SocketAddr) -> Result<Backends> {
    let pattern = Arc::new(Pattern::new());
    let (sink_l, echo_l) = rt.block_on(async {
        let s = TcpListener::bind(sink)
            .await
            .with_context(|| format!("binding the sink to {sink}"))?;
        let e = TcpListener::bind(echo)
            .await
            .with_context(|| format!("binding the echo backend to {echo}"))?;
        anyhow::Ok((s, e))
    })?;
    let addrs = Backends {
        sink: sink_l.local_addr()?,
        echo: echo_l.local_addr()?,
    };
    rt.spawn(accept_loop(sink_l, move |s| sink_conn(s, pattern.clone())));
    rt.spawn(accept_loop(echo_l, echo_conn));
    Ok(addrs)
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            // Out of file descriptors and the like: wait, do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn sink_conn(mut s: TcpStream, pattern: Arc<Pattern>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut report = SinkReport {
        received: 0,
        first_bad: None,
    };
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if report.first_bad.is_none() {
            report.first_bad = pattern.mismatch(report.received, &buf[..n]);
        }
        report.received += n as u64;
    }
    s.write_all(&report.encode()).await?;
    s.shutdown().await
}

async fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// A runtime for the backends with `threads` worker threads.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        for r in [
            SinkReport {
                received: 0,
                first_bad: None,
            },
            SinkReport {
                received: u64::MAX - 1,
                first_bad: Some(0),
            },
            SinkReport {
                received: 77,
                first_bad: Some(76),
            },
        ] {
            assert_eq!(SinkReport::decode(&r.encode()), r);
        }
    }
}
