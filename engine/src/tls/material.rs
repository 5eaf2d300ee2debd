//! PEM material (certificates, keys, trust anchors) and the rustls configs built from it.
//!
//! Every error names the file it is about and says what is wrong with it, because these errors
//! are what an operator sees when a deployment is misconfigured. All configs use the aws-lc-rs
//! crypto provider explicitly, never a process-wide default, and enable secret extraction so a
//! finished handshake can be handed to kernel TLS.
//!
//! This module does not open sockets or run handshakes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, RootCertStore, SupportedProtocolVersion};
use rustls_pemfile::Item;

use crate::error::{Error, Result};
use crate::tls::check;

/// The `file` named by configuration errors about [`ClientTlsOptions`] and [`ServerTlsOptions`].
const OPTIONS: &str = "TLS options";

/// What errors about [`ClientTlsOptions::ca_pem`] name in place of a file.
const CA_PEM: &str = "ca_pem (CA certificates given as PEM text)";

/// Loads every PEM `CERTIFICATE` in `path`, in file order (leaf first for a chain).
///
/// Other PEM sections are skipped. It is an error if the file cannot be read, is not valid PEM,
/// or holds no certificate; the error names the file and, where it can tell, what the file
/// holds instead (a key, a DER blob).
///
/// A certificate that is expired or not yet valid is loaded, with a warning naming the file and
/// the date: peers will refuse it, and the log should say so before they do.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    certs_in(path, &read_file(path)?)
}

/// The certificates in PEM text `pem`, as [`load_certs`] takes them from a file; `path` names
/// where the text came from in errors and warnings.
fn certs_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    let mut others = Vec::new();
    for item in parse_pem(path, pem)? {
        match item {
            Item::X509Certificate(cert) => certs.push(cert),
            other => others.push(other),
        }
    }
    if certs.is_empty() {
        let hint = if others.iter().any(is_private_key) {
            " (is this a key?)".to_owned()
        } else if let Some(other) = others.first() {
            format!(" (found {})", describe(other))
        } else {
            not_pem_hint(pem)
        };
        return Err(Error::certificate(
            path,
            format!("no PEM certificate found{hint}"),
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Some(problem) = check::validity_problem(cert, i) {
            tracing::warn!(file = %path.display(), "{problem}");
        }
    }
    Ok(certs)
}

/// Loads the one private key in `path`: PKCS#8 (`PRIVATE KEY`, including Ed25519), PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
///
/// The key is also checked to be usable by our crypto provider (aws-lc-rs) (RSA of at least 2048 bits,
/// ECDSA P-256 or P-384, Ed25519), so a bad key is reported here, naming this file, rather than
/// later in a config builder. Encrypted keys and files with more than one key are errors.
#[cfg(test)]
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let provider = engine_provider();
    load_signing_key(path, &provider).map(|(key, _)| key)
}

/// Loads the certificates in `path` as trust anchors.
///
/// Certificates that cannot serve as trust anchors are skipped; it is an error if none can.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    roots_from(path, load_certs(path)?)
}

/// The trust anchors among `certs`, loaded from `path`.
fn roots_from(path: &Path, certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore> {
    let total = certs.len();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::certificate(
            path,
            format!(
                "no certificate was usable as a trust anchor ({total} found, none parsed as \
                 X.509)"
            ),
        ));
    }
    Ok(roots)
}

/// What a TLS client (the upstream leg in client mode) trusts and presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// PEM file of CA certificates to trust; `None` uses `ca_pem`, else the system trust store.
    pub ca: Option<PathBuf>,
    /// CA certificates to trust as PEM text, when `ca` is `None`.
    pub ca_pem: Option<String>,
    /// PEM certificate chain to present for client authentication (needs `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// ALPN protocols to offer, most preferred first; empty offers none.
    pub alpn: Vec<String>,
    /// TLS versions to allow, as `"1.2"` and `"1.3"`; empty allows both.
    pub versions: Vec<String>,
    /// Never resume sessions: every connection does a full handshake.
    pub disable_resumption: bool,
    /// Keys to trust instead of a CA: `sha256:<base64 or hex>` of a subjectPublicKeyInfo or of
    /// a whole certificate (see [`check::PinVerifier`]). Not together with `ca`.
    pub pins: Vec<String>,
    /// The name the upstream's certificate is verified for (SNI), for the start-up check of
    /// `ca` ([`client_config`]).
    pub server_name: Option<String>,
}

/// What a TLS server (the downstream leg in server mode) presents and requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTlsOptions {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// PEM file of CAs; when set, every client must present a certificate issued by one of them.
    pub client_ca: Option<PathBuf>,
    /// ALPN protocols to accept, most preferred first; empty ignores ALPN.
    pub alpn: Vec<String>,
    /// TLS versions to allow, as `"1.2"` and `"1.3"`; empty allows both.
    pub versions: Vec<String>,
    /// Issue no session tickets or IDs: every connection does a full handshake.
    pub disable_resumption: bool,
}

/// A rustls config and the certificate it presents (the leaf of `cert`), loaded once for both:
/// the engine reads the leaf's expiry for its metrics.
#[derive(Debug)]
pub struct Built<C> {
    /// The config.
    pub config: Arc<C>,
    /// The certificate this end presents, if it presents one.
    pub leaf: Option<CertificateDer<'static>>,
}

/// Builds the rustls client config for `o`.
///
/// Server certificates are verified against `o.ca`, or against the system trust store when
/// `o.ca` is `None` (an error if it yields no usable root). Session resumption keeps rustls's
/// defaults, and secret extraction is enabled for the kTLS hand-off.
pub fn client_config(o: &ClientTlsOptions) -> Result<Built<rustls::ClientConfig>> {
    let provider = Arc::new(engine_provider());
    let versions = protocol_versions(&o.versions)?;
    let alpn = alpn_protocols(&o.alpn)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    let builder = if o.pins.is_empty() {
        let anchors = match (&o.ca, &o.ca_pem) {
            (Some(ca), _) => Some((ca.as_path(), load_certs(ca)?)),
            (None, Some(pem)) => Some((
                Path::new(CA_PEM),
                certs_in(Path::new(CA_PEM), pem.as_bytes())?,
            )),
            (None, None) => None,
        };
        let roots = match anchors {
            Some((ca, certs)) => {
                let roots = roots_from(ca, certs.clone())?;
                if let Some(name) = &o.server_name {
                    refuse_server_cert_as_ca(ca, &certs, &roots, name, &provider)?;
                }
                roots
            }
            None => system_roots()?,
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| Error::config(OPTIONS, format!("cannot verify servers: {e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(check::HintingVerifier(webpki)))
    } else {
        if o.ca.is_some() || o.ca_pem.is_some() {
            return Err(Error::config(
                OPTIONS,
                "`pin` and `ca` exclude each other: a pin trusts exactly that key, without a CA",
            ));
        }
        let pins = o
            .pins
            .iter()
            .map(|p| check::parse_pin(p))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::config(OPTIONS, e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(check::PinVerifier::new(pins, &provider))
    };
    let mut leaf = None;
    let mut config = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = certified_key(&provider, cert, key)?;
            leaf = chain.first().cloned();
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) => {
            return Err(Error::certificate(
                cert,
                "client certificate given without a private key (set `key`)",
            ));
        }
        (None, Some(key)) => {
            return Err(Error::certificate(
                key,
                "client private key given without a certificate (set `cert`)",
            ));
        }
    };
    config.alpn_protocols = alpn;
    config.enable_secret_extraction = true;
    if o.disable_resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Built {
        config: Arc::new(config),
        leaf,
    })
}

/// Fails when `ca` holds a self-signed CA certificate (CA:TRUE) naming `name`: most likely the
/// upstream's own certificate, made with `openssl req -x509`, which webpki refuses as a server
/// certificate (CaUsedAsEndEntity) on every connection. The error says how to pin it instead.
fn refuse_server_cert_as_ca(
    ca: &Path,
    certs: &[CertificateDer<'static>],
    roots: &RootCertStore,
    name: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<()> {
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name.to_owned()) else {
        return Ok(());
    };
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
            .build()
    else {
        return Ok(());
    };
    let now = rustls::pki_types::UnixTime::now();
    for cert in certs {
        let names_it = cert
            .as_ref()
            .windows(name.len())
            .any(|w| w.eq_ignore_ascii_case(name.as_bytes()));
        if !check::self_issued(cert) || !names_it {
            continue;
        }
        let refused = match verifier.verify_server_cert(cert, &[], &server_name, &[], now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(e))) => {
                e.to_string().contains("CaUsedAsEndEntity")
            }
            _ => false,
        };
        if refused {
            let pin = check::pin_of(cert).unwrap_or_default();
            return Err(Error::certificate(
                ca,
                format!(
                    "this self-signed certificate for {name:?} is a CA (CA:TRUE), which TLS \
                     verification refuses as the server's own certificate; trust exactly its \
                     key with `--pin {pin}` (TOML: pin = [\"{pin}\"]) instead of `ca`, or \
                     reissue it with CA:FALSE and subjectAltName=DNS:{name}"
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the rustls server config for `o`.
///
/// With `o.client_ca`, clients must present a certificate chaining to one of its CAs
/// (verified by [`WebPkiClientVerifier`]); without it, client certificates are not requested.
/// Secret extraction is enabled for the kTLS hand-off.
pub fn server_config(o: &ServerTlsOptions) -> Result<Built<rustls::ServerConfig>> {
    let verifier = match &o.client_ca {
        Some(ca) => Some(client_verifier(ca, &[], false)?),
        None => None,
    };
    server_config_with(o, verifier)
}

/// [`server_config`] with the client certificate verifier given (e.g. the relay's, which
/// asks for an optional certificate from two sets of roots); `o.client_ca` is not read.
pub fn server_config_with(
    o: &ServerTlsOptions,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Built<rustls::ServerConfig>> {
    let provider = Arc::new(engine_provider());
    let versions = protocol_versions(&o.versions)?;
    let alpn = alpn_protocols(&o.alpn)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = certified_key(&provider, &o.cert, &o.key)?;
    let leaf = chain.first().cloned();
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn;
    config.enable_secret_extraction = true;
    if o.disable_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Built {
        config: Arc::new(config),
        leaf,
    })
}

/// A verifier of client certificates that chain to the CAs in `ca`, checked against `crls`
/// (end-entity certificates only; a certificate whose issuer has no CRL here passes, so CRLs
/// can be given for some CAs and not others). `optional`: a client may present none (the
/// handshake then goes on without an identity). Errors name `ca`.
pub fn client_verifier(
    ca: &Path,
    crls: &[CertificateRevocationListDer<'static>],
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = Arc::new(load_roots(ca)?);
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots, Arc::new(engine_provider()));
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| Error::certificate(ca, format!("cannot verify client certificates: {e}")))
}

/// Loads every certificate revocation list (PEM `X509 CRL`) in `path`. It is an error if the
/// file cannot be read, is not PEM, or holds no CRL (the error says what it holds instead).
/// Whether webpki can parse each CRL shows when a verifier is built with it
/// ([`client_verifier`]).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = read_file(path)?;
    let mut crls = Vec::new();
    let mut others = Vec::new();
    for item in parse_pem(path, &pem)? {
        match item {
            Item::Crl(crl) => crls.push(crl),
            other => others.push(other),
        }
    }
    if crls.is_empty() {
        let hint = match others.first() {
            Some(other) => format!(" (found {})", describe(other)),
            None => not_pem_hint(&pem),
        };
        return Err(Error::certificate(
            path,
            format!("no PEM certificate revocation list (X509 CRL) found{hint}"),
        ));
    }
    Ok(crls)
}

/// The one crypto provider this engine uses: aws-lc-rs, with AES-128-GCM preferred.
///
/// aws-lc-rs rather than ring: on CPUs with VAES/AVX-512 its AES-GCM seals about 1.5x as fast
/// (measured 77 vs 51 Gbit/s per core on 16 KiB records here), which is a tenth of a forwarding
/// end's CPU at full speed.
///
/// AES-128-GCM is as strong as the key exchanges we offer (128-bit security) and cheaper than
/// AES-256-GCM; in TLS 1.3 it also brings SHA-256 instead of SHA-384 into the key schedule,
/// which shows in full-handshake rates.
fn engine_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
            _ => 4,
        }
    });
    provider
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::certificate(path, format!("cannot read: {e}")))
}

/// Every PEM section in `pem` that rustls-pemfile knows, in file order.
fn parse_pem(path: &Path, pem: &[u8]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut rest = pem;
    loop {
        match rustls_pemfile::read_one_from_slice(rest) {
            Ok(Some((item, after))) => {
                items.push(item);
                rest = after;
            }
            Ok(None) => return Ok(items),
            Err(e) => {
                return Err(Error::certificate(
                    path,
                    format!("malformed PEM: {}", pem_error(&e)),
                ));
            }
        }
    }
}

fn pem_error(e: &rustls_pemfile::Error) -> String {
    match e {
        rustls_pemfile::Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker)
        ),
        rustls_pemfile::Error::IllegalSectionStart { line } => {
            format!("bad section start line {:?}", String::from_utf8_lossy(line))
        }
        rustls_pemfile::Error::Base64Decode(why) => format!("invalid base64 ({why})"),
    }
}

/// Loads the key in `path` and parses it with `provider`, so it is known to be usable.
fn load_signing_key(
    path: &Path,
    provider: &CryptoProvider,
) -> Result<(PrivateKeyDer<'static>, Arc<dyn SigningKey>)> {
    let pem = read_file(path)?;
    if is_encrypted(&pem) {
        return Err(Error::certificate(
            path,
            "encrypted private keys are not supported (decrypt it first, e.g. with `openssl \
             pkey`)",
        ));
    }
    let mut keys = Vec::new();
    let mut others = Vec::new();
    for item in parse_pem(path, &pem)? {
        match item {
            Item::Pkcs8Key(key) => keys.push(PrivateKeyDer::Pkcs8(key)),
            Item::Pkcs1Key(key) => keys.push(PrivateKeyDer::Pkcs1(key)),
            Item::Sec1Key(key) => keys.push(PrivateKeyDer::Sec1(key)),
            other => others.push(other),
        }
    }
    if keys.len() > 1 {
        return Err(Error::certificate(
            path,
            format!("{} private keys found; expected exactly one", keys.len()),
        ));
    }
    let Some(key) = keys.pop() else {
        let hint = if others
            .iter()
            .any(|item| matches!(item, Item::X509Certificate(_)))
        {
            " (is this a certificate?)".to_owned()
        } else if let Some(other) = others.first() {
            format!(" (found {})", describe(other))
        } else {
            not_pem_hint(&pem)
        };
        return Err(Error::certificate(
            path,
            format!("no private key found{hint}"),
        ));
    };
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            Error::certificate(
                path,
                format!(
                    "unusable {} private key ({e}); supported: RSA (2048 bits or more), ECDSA \
                     P-256 or P-384, Ed25519",
                    key_format(&key)
                ),
            )
        })?;
    Ok((key, signing))
}

/// Loads a certificate chain and its key, and checks that the key belongs to the leaf.
fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = load_certs(cert_path)?;
    let (key, signing) = load_signing_key(key_path, provider)?;
    match CertifiedKey::new(chain.clone(), signing).keys_match() {
        // `Unknown`: the key cannot report its public half, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Ok((chain, key))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(Error::certificate(
            key_path,
            format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        )),
        Err(e) => Err(Error::certificate(
            cert_path,
            format!("the first certificate is not a valid X.509 certificate: {e}"),
        )),
    }
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!("no usable root certificate was found ({e}); set a CA file"),
            None => "no usable root certificate was found; set a CA file".to_owned(),
        };
        return Err(Error::Unavailable {
            feature: "the system trust store",
            why,
        });
    }
    Ok(roots)
}

fn protocol_versions(versions: &[String]) -> Result<Vec<&'static SupportedProtocolVersion>> {
    if versions.is_empty() {
        return Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    }
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    for v in versions {
        let version = match v.trim() {
            "1.2" => &rustls::version::TLS12,
            "1.3" => &rustls::version::TLS13,
            _ => {
                return Err(Error::config(
                    OPTIONS,
                    format!("unknown TLS version {v:?} (expected \"1.2\" or \"1.3\")"),
                ));
            }
        };
        if !out.iter().any(|seen| seen.version == version.version) {
            out.push(version);
        }
    }
    Ok(out)
}

fn alpn_protocols(alpn: &[String]) -> Result<Vec<Vec<u8>>> {
    alpn.iter()
        .map(|p| match p.len() {
            1..=255 => Ok(p.as_bytes().to_vec()),
            _ => Err(Error::config(
                OPTIONS,
                format!("ALPN protocol {p:?} must be 1 to 255 bytes long"),
            )),
        })
        .collect()
}

fn is_private_key(item: &Item) -> bool {
    matches!(
        item,
        Item::Pkcs1Key(_) | Item::Pkcs8Key(_) | Item::Sec1Key(_)
    )
}

fn is_encrypted(pem: &[u8]) -> bool {
    contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(pem, b"Proc-Type: 4,ENCRYPTED")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What to add to "no ... found" when the file held no PEM section we know.
fn not_pem_hint(data: &[u8]) -> String {
    if data.iter().all(u8::is_ascii_whitespace) {
        " (the file is empty)".to_owned()
    } else if data.first() == Some(&0x30) {
        // A DER SEQUENCE: a certificate or key that was never PEM-encoded.
        " (this looks like DER; convert it to PEM)".to_owned()
    } else {
        String::new()
    }
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::X509Certificate(_) => "a certificate",
        Item::SubjectPublicKeyInfo(_) => "a public key",
        Item::Pkcs1Key(_) | Item::Pkcs8Key(_) | Item::Sec1Key(_) => "a private key",
        Item::Crl(_) => "a certificate revocation list",
        Item::Csr(_) => "a certificate signing request",
        _ => "another PEM section",
    }
}

fn key_format(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
        PrivateKeyDer::Sec1(_) => "SEC1 EC",
        PrivateKeyDer::Pkcs8(_) => "PKCS#8",
        _ => "unknown-format",
    }
}

#[cfg(test)]
mod tests;
