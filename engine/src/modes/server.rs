//! Server mode: TLS in, plain TCP out. The accepted leg carries TLS, with us as the server
//! (requiring client certificates when `client_ca` is set); the dialed leg is plain.

use super::{Built, Plan, Role, Tls, missing};
use crate::config::ForwarderConfig;
use crate::error::Result;
use crate::tls::material;

/// The server-mode plan of `f`.
pub(super) fn build(f: &ForwarderConfig) -> Result<Built> {
    let opts = material::ServerTlsOptions {
        cert: f.cert.clone().ok_or_else(|| missing(f, "cert"))?,
        key: f.key.clone().ok_or_else(|| missing(f, "key"))?,
        client_ca: f.client_ca.clone(),
        alpn: f.alpn.clone(),
        versions: f.tls_versions.clone(),
        disable_resumption: !f.resumption,
    };
    let built = material::server_config(&opts)?;
    Ok(Built {
        plan: Plan::PlainTls {
            tls_on: Role::Accepted,
            tls: Tls::Server {
                config: built.config,
            },
        },
        leaf: built.leaf,
    })
}
