//! The engine chain: test -> client mode -> TLS -> server mode -> backend.

use super::*;

/// Two engines in a row in front of a backend.
pub struct Chain {
    /// The server-mode engine (TLS in, plain to the backend).
    pub server: Proc,
    /// The client-mode engine (plain in, TLS to `server`).
    pub client: Proc,
    /// Where the test connects (the client-mode listener).
    pub entry: SocketAddr,
    /// The server-mode listener.
    pub server_addr: SocketAddr,
    /// Metrics of the client-mode engine.
    pub client_metrics: SocketAddr,
    /// Metrics of the server-mode engine.
    pub server_metrics: SocketAddr,
}

impl Chain {
    /// Starts server mode in front of `backend` and client mode in front of it, both on `driver`.
    pub fn start(pki: &Pki, backend: SocketAddr, driver: &str) -> Chain {
        Self::start_with(pki, backend, driver, &[])
    }

    /// [`Chain::start`] with extra `--flag value` options for both engines.
    pub fn start_with(
        pki: &Pki,
        backend: SocketAddr,
        driver: &str,
        opts: &[(&str, &str)],
    ) -> Chain {
        let (sp, smp, cp, cmp) = (free_port(), free_port(), free_port(), free_port());
        let mut server = EngineCmd::server(sp, backend, &pki.server, driver)
            .metrics(smp)
            .label(format!("server mode ({driver})"));
        let mut client = EngineCmd::client(cp, localhost(sp), &pki.ca, driver)
            .opt("--sni", "localhost")
            .metrics(cmp)
            .label(format!("client mode ({driver})"));
        for (flag, value) in opts {
            server = server.opt(flag, value);
            client = client.opt(flag, value);
        }
        let (server, client) = (server.start(), client.start());
        Chain {
            server,
            client,
            entry: localhost(cp),
            server_addr: localhost(sp),
            client_metrics: localhost(cmp),
            server_metrics: localhost(smp),
        }
    }
}
