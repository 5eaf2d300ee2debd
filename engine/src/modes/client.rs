//! Client mode: plain TCP in, TLS out. The accepted leg is plain; the dialed leg carries TLS,
//! with us as the client that verifies the upstream.

use rustls::pki_types::ServerName;

use super::{Built, Plan, Role, Tls};
use crate::config::ForwarderConfig;
use crate::error::{Error, Result};
use crate::tls::material;

/// The client-mode plan of `f`; `host` (of `connect`) is the name verified unless `sni` is set.
pub(super) fn build(f: &ForwarderConfig, host: &str) -> Result<Built> {
    let name_text = f.sni.clone().unwrap_or_else(|| host.to_string());
    let opts = material::ClientTlsOptions {
        ca: f.ca.clone(),
        ca_pem: f.ca_pem.clone(),
        cert: f.cert.clone(),
        key: f.key.clone(),
        alpn: f.alpn.clone(),
        versions: f.tls_versions.clone(),
        disable_resumption: !f.resumption,
        pins: f.pin.clone(),
        server_name: Some(name_text.clone()),
    };
    let built = material::client_config(&opts)?;
    let name = ServerName::try_from(name_text.clone()).map_err(|e| Error::Address {
        addr: name_text,
        why: format!("not a valid TLS server name: {e}"),
    })?;
    Ok(Built {
        plan: Plan::PlainTls {
            tls_on: Role::Dialed,
            tls: Tls::Client {
                config: built.config,
                name,
            },
        },
        leaf: built.leaf,
    })
}
