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
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, RootCertStore, SupportedProtocolVersion};
use rustls_pemfile::Item;

use crate::error::{Error, Result};
use crate::tls::check;

/// The `file` named by configuration errors about [`ClientTlsOptions`] and [`ServerTlsOptions`].
const OPTIONS: &str = "TLS options";

/// Loads every PEM `CERTIFICATE` in `path`, in file order (leaf first for a chain).
///
/// Other PEM sections are skipped. It is an error if the file cannot be read, is not valid PEM,
/// or holds no certificate; the error names the file and, where it can tell, what the file
/// holds instead (a key, a DER blob).
///
/// A certificate that is expired or not yet valid is loaded, with a warning naming the file and
/// the date: peers will refuse it, and the log should say so before they do.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path)?;
    let mut certs = Vec::new();
    let mut others = Vec::new();
    for item in parse_pem(path, &pem)? {
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
            not_pem_hint(&pem)
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
    /// PEM file of CA certificates to trust; `None` uses the system trust store.
    pub ca: Option<PathBuf>,
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

/// Builds the rustls client config for `o`.
///
/// Server certificates are verified against `o.ca`, or against the system trust store when
/// `o.ca` is `None` (an error if it yields no usable root). Session resumption keeps rustls's
/// defaults, and secret extraction is enabled for the kTLS hand-off.
pub fn client_config(o: &ClientTlsOptions) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(engine_provider());
    let versions = protocol_versions(&o.versions)?;
    let alpn = alpn_protocols(&o.alpn)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    let builder = if o.pins.is_empty() {
        let roots = match &o.ca {
            Some(ca) => {
                let certs = load_certs(ca)?;
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
        if o.ca.is_some() {
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
    let mut config = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = certified_key(&provider, cert, key)?;
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
    Ok(Arc::new(config))
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
pub fn server_config(o: &ServerTlsOptions) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(engine_provider());
    let versions = protocol_versions(&o.versions)?;
    let alpn = alpn_protocols(&o.alpn)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)?;
    let builder = match &o.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| {
                    Error::certificate(ca, format!("cannot verify client certificates: {e}"))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = certified_key(&provider, &o.cert, &o.key)?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn;
    config.enable_secret_extraction = true;
    if o.disable_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
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
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, Connection, ProtocolVersion, ServerConnection};
    use splice_test_pki::{Key, KeyType, Pki, TempDir};

    use super::*;

    /// The options that load `pki`'s server certificate, and that trust its CA.
    trait Options {
        fn server_options(&self) -> ServerTlsOptions;
        fn client_options(&self) -> ClientTlsOptions;
    }

    impl Options for Pki {
        fn server_options(&self) -> ServerTlsOptions {
            ServerTlsOptions {
                cert: self.server.cert.clone(),
                key: self.server.key.clone(),
                ..ServerTlsOptions::default()
            }
        }

        fn client_options(&self) -> ClientTlsOptions {
            ClientTlsOptions {
                ca: Some(self.ca.path.clone()),
                ..ClientTlsOptions::default()
            }
        }
    }

    /// Which side of an in-memory handshake failed.
    #[derive(Debug, PartialEq, Eq)]
    enum Failed {
        Client,
        Server,
    }

    /// Moves every pending TLS byte from `from` to `to` and lets `to` process it.
    fn transfer(
        from: &mut Connection,
        to: &mut Connection,
    ) -> std::result::Result<(), rustls::Error> {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).expect("write_tls to a Vec");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("read_tls from a slice");
            to.process_new_packets()?;
        }
        Ok(())
    }

    /// Runs a handshake between the two configs in memory, then one round of application data.
    fn connect(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> std::result::Result<(ClientConnection, ServerConnection), (Failed, rustls::Error)> {
        let name = ServerName::try_from("localhost").expect("server name");
        let mut c = Connection::Client(ClientConnection::new(client, name).expect("client"));
        let mut s = Connection::Server(ServerConnection::new(server).expect("server"));
        for _ in 0..10 {
            transfer(&mut c, &mut s).map_err(|e| (Failed::Server, e))?;
            transfer(&mut s, &mut c).map_err(|e| (Failed::Client, e))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake stalled"
        );
        c.writer().write_all(b"ping").expect("client write");
        transfer(&mut c, &mut s).expect("client to server");
        let mut got = [0u8; 4];
        s.reader().read_exact(&mut got).expect("server read");
        assert_eq!(&got, b"ping");
        match (c, s) {
            (Connection::Client(c), Connection::Server(s)) => Ok((c, s)),
            _ => unreachable!("built above"),
        }
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn missing_file_is_named() {
        let dir = TempDir::new("missing");
        let path = dir.join("nope.pem");
        for msg in [
            message(load_certs(&path)),
            message(load_key(&path)),
            message(load_roots(&path)),
        ] {
            assert_eq!(
                msg,
                format!(
                    "{}: cannot read: No such file or directory (os error 2)",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn key_given_as_certificate() {
        let pki = Pki::new();
        let msg = message(load_certs(&pki.server.key));
        assert_eq!(
            msg,
            format!(
                "{}: no PEM certificate found (is this a key?)",
                pki.server.key.display()
            )
        );
        let mut opts = pki.server_options();
        opts.cert = pki.server.key.clone();
        assert!(message(server_config(&opts)).contains("(is this a key?)"));
        let mut opts = pki.client_options();
        opts.ca = Some(pki.client.key.clone());
        let msg = message(client_config(&opts));
        assert!(
            msg.starts_with(&pki.client.key.display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("no PEM certificate found (is this a key?)"),
            "{msg}"
        );
    }

    #[test]
    fn certificate_given_as_key() {
        let pki = Pki::new();
        let msg = message(load_key(&pki.server.cert));
        assert_eq!(
            msg,
            format!(
                "{}: no private key found (is this a certificate?)",
                pki.server.cert.display()
            )
        );
        let mut opts = pki.server_options();
        opts.key = pki.server.cert.clone();
        let msg = message(server_config(&opts));
        assert!(
            msg.starts_with(&pki.server.cert.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("no private key found"), "{msg}");
    }

    #[test]
    fn garbage_pem_is_malformed() {
        let dir = TempDir::new("garbage");
        let bad_base64 = dir.write(
            "bad64.pem",
            "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let no_end = dir.write(
            "noend.pem",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n",
        );
        for path in [&bad_base64, &no_end] {
            for msg in [message(load_certs(path)), message(load_key(path))] {
                let prefix = format!("{}: malformed PEM: ", path.display());
                assert!(msg.starts_with(&prefix), "{msg}");
                assert!(msg.len() > prefix.len(), "says what is malformed: {msg}");
            }
        }
        assert_eq!(
            message(load_certs(&no_end)),
            format!(
                "{}: malformed PEM: no \"-----END PRIVATE KEY-----\" line",
                no_end.display()
            )
        );
        assert!(message(load_key(&bad_base64)).contains("malformed PEM: invalid base64 ("));
    }

    #[test]
    fn files_without_pem() {
        let dir = TempDir::new("nopem");
        let empty = dir.write("empty.pem", "");
        let text = dir.write("text.pem", "hello, I am not a certificate\n");
        let der = dir.write("cert.der", [0x30, 0x82, 0x01, 0x00, 0x02, 0x01]);
        let cases = [
            (
                &empty,
                "no PEM certificate found (the file is empty)",
                "no private key found (the file is empty)",
            ),
            (&text, "no PEM certificate found", "no private key found"),
            (
                &der,
                "no PEM certificate found (this looks like DER; convert it to PEM)",
                "no private key found (this looks like DER; convert it to PEM)",
            ),
        ];
        for (path, cert_msg, key_msg) in cases {
            assert_eq!(
                message(load_certs(path)),
                format!("{}: {cert_msg}", path.display())
            );
            assert_eq!(
                message(load_key(path)),
                format!("{}: {key_msg}", path.display())
            );
        }
    }

    #[test]
    fn roots_must_be_usable() {
        let dir = TempDir::new("roots");
        // Valid PEM and base64, but the body is not X.509.
        let bogus = dir.write(
            "bogus.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let msg = message(load_roots(&bogus));
        assert_eq!(
            msg,
            format!(
                "{}: no certificate was usable as a trust anchor (1 found, none parsed as X.509)",
                bogus.display()
            )
        );
        let opts = ClientTlsOptions {
            ca: Some(bogus.clone()),
            ..ClientTlsOptions::default()
        };
        assert_eq!(message(client_config(&opts)), msg);
        let pki = Pki::new();
        assert_eq!(load_roots(&pki.ca.path).expect("roots").len(), 1);
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let a = Pki::new();
        let b = Pki::mixed(KeyType::P256, KeyType::P256, KeyType::Ed25519);
        let expected = format!(
            "{}: private key does not match the certificate in {}",
            b.server.key.display(),
            a.server.cert.display()
        );
        let opts = ServerTlsOptions {
            cert: a.server.cert.clone(),
            key: b.server.key.clone(),
            ..ServerTlsOptions::default()
        };
        assert_eq!(message(server_config(&opts)), expected);

        // Same for a client certificate, across key types.
        let opts = ClientTlsOptions {
            ca: Some(a.ca.path.clone()),
            cert: Some(a.client.cert.clone()),
            key: Some(b.client.key.clone()),
            ..ClientTlsOptions::default()
        };
        assert_eq!(
            message(client_config(&opts)),
            format!(
                "{}: private key does not match the certificate in {}",
                b.client.key.display(),
                a.client.cert.display()
            )
        );
    }

    #[test]
    fn half_a_client_identity_is_an_error() {
        let pki = Pki::new();
        let mut opts = pki.client_options();
        opts.cert = Some(pki.client.cert.clone());
        let msg = message(client_config(&opts));
        assert!(
            msg.starts_with(&pki.client.cert.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("without a private key"), "{msg}");
        let mut opts = pki.client_options();
        opts.key = Some(pki.client.key.clone());
        let msg = message(client_config(&opts));
        assert!(
            msg.starts_with(&pki.client.key.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("without a certificate"), "{msg}");
    }

    #[test]
    fn encrypted_and_duplicate_keys_are_refused() {
        let dir = TempDir::new("enc");
        let enc = dir.write(
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let msg = message(load_key(&enc));
        assert!(
            msg.starts_with(&format!("{}: encrypted private keys", enc.display())),
            "{msg}"
        );
        let k1 = Key::generate(KeyType::P256).pem();
        let k2 = Key::generate(KeyType::P256).pem();
        let two = dir.write("two.key", format!("{k1}{k2}"));
        assert_eq!(
            message(load_key(&two)),
            format!(
                "{}: 2 private keys found; expected exactly one",
                two.display()
            )
        );
        // A well-formed PKCS#8 section that the provider cannot use.
        let junk = dir.write(
            "junk.key",
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        );
        let msg = message(load_key(&junk));
        assert!(
            msg.starts_with(&format!("{}: unusable PKCS#8 private key", junk.display())),
            "{msg}"
        );
    }

    /// Minimal DER walk: (content of the first TLV, bytes after it).
    fn der_tlv(input: &[u8]) -> (&[u8], &[u8]) {
        let (len, header) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n => {
                let count = usize::from(n & 0x7f);
                let len = input[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + count)
            }
        };
        (&input[header..header + len], &input[header + len..])
    }

    /// The inner key of a PKCS#8 `PrivateKeyInfo`: PKCS#1 for RSA, SEC1 for EC.
    fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
        let (info, _) = der_tlv(pkcs8);
        let (_version, rest) = der_tlv(info);
        let (_algorithm, rest) = der_tlv(rest);
        let (inner, _) = der_tlv(rest);
        inner.to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("ascii"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    #[test]
    fn every_key_format_loads_and_serves() {
        let pki = Pki::mixed(KeyType::P256, KeyType::Rsa, KeyType::P256);
        let rsa = pki.server.key_der();
        let pkcs1 = pki.dir.write(
            "rsa-pkcs1.key",
            pem("RSA PRIVATE KEY", &pkcs8_inner(rsa.secret_der())),
        );
        assert!(matches!(load_key(&pkcs1), Ok(PrivateKeyDer::Pkcs1(_))));
        assert!(matches!(
            load_key(&pki.server.key),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
        // The server certificate's key, re-encoded as PKCS#1, serves a handshake.
        let mut opts = pki.server_options();
        opts.key = pkcs1;
        connect(
            client_config(&pki.client_options()).expect("client"),
            server_config(&opts).expect("server"),
        )
        .expect("handshake with a PKCS#1 key");

        let pki = Pki::new();
        let ec = pki.server.key_der();
        let sec1 = pki.dir.write(
            "ec-sec1.key",
            pem("EC PRIVATE KEY", &pkcs8_inner(ec.secret_der())),
        );
        assert!(matches!(load_key(&sec1), Ok(PrivateKeyDer::Sec1(_))));
        let mut opts = pki.server_options();
        opts.key = sec1;
        connect(
            client_config(&pki.client_options()).expect("client"),
            server_config(&opts).expect("server"),
        )
        .expect("handshake with a SEC1 key");

        let pki = Pki::mixed(KeyType::P256, KeyType::Ed25519, KeyType::P256);
        assert!(matches!(
            load_key(&pki.server.key),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
    }

    #[test]
    fn every_algorithm_as_server_and_client() {
        for server in KeyType::ALL {
            for client in KeyType::ALL {
                let pki = Pki::mixed(KeyType::P256, server, client);
                let mut server_opts = pki.server_options();
                server_opts.client_ca = Some(pki.ca.path.clone());
                let mut client_opts = pki.client_options();
                client_opts.cert = Some(pki.client.cert.clone());
                client_opts.key = Some(pki.client.key.clone());
                for version in ["1.2", "1.3"] {
                    client_opts.versions = vec![version.to_owned()];
                    let (c, s) = connect(
                        client_config(&client_opts).expect("client config"),
                        server_config(&server_opts).expect("server config"),
                    )
                    .unwrap_or_else(|e| {
                        panic!("{server:?} server, {client:?} client, TLS {version}: {e:?}")
                    });
                    let peer = s.peer_certificates().expect("client certificate");
                    assert_eq!(peer[0], load_certs(&pki.client.cert).expect("cert")[0]);
                    assert!(c.peer_certificates().is_some());
                }
            }
        }
    }

    #[test]
    fn mtls_refuses_missing_and_foreign_client_certs() {
        let pki = Pki::new();
        let mut server_opts = pki.server_options();
        server_opts.client_ca = Some(pki.ca.path.clone());
        let server = server_config(&server_opts).expect("server config");

        let anonymous = client_config(&pki.client_options()).expect("client config");
        let (side, err) = connect(anonymous, server.clone()).expect_err("anonymous client");
        assert_eq!(side, Failed::Server);
        assert_eq!(err, rustls::Error::NoCertificatesPresented);

        let other = Pki::new();
        let mut foreign = pki.client_options();
        foreign.cert = Some(other.client.cert.clone());
        foreign.key = Some(other.client.key.clone());
        let (side, err) = connect(client_config(&foreign).expect("client config"), server)
            .expect_err("client certificate from another CA");
        assert_eq!(side, Failed::Server);
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn client_verifies_the_server() {
        let pki = Pki::new();
        let other = Pki::new();
        let client = client_config(&other.client_options()).expect("client config");
        let (side, err) = connect(
            client,
            server_config(&pki.server_options()).expect("server"),
        )
        .expect_err("server from an unknown CA");
        assert_eq!(side, Failed::Client);
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn versions_are_pinned() {
        let pki = Pki::new();
        let cases = [
            (vec!["1.2"], vec![], ProtocolVersion::TLSv1_2),
            (vec!["1.3"], vec![], ProtocolVersion::TLSv1_3),
            (vec![], vec!["1.2"], ProtocolVersion::TLSv1_2),
            (vec![], vec!["1.3"], ProtocolVersion::TLSv1_3),
            (vec![], vec![], ProtocolVersion::TLSv1_3),
            (
                vec!["1.2", "1.3"],
                vec!["1.3", "1.2"],
                ProtocolVersion::TLSv1_3,
            ),
        ];
        for (client_versions, server_versions, expected) in cases {
            let mut c = pki.client_options();
            c.versions = client_versions.iter().map(|v| v.to_string()).collect();
            let mut s = pki.server_options();
            s.versions = server_versions.iter().map(|v| v.to_string()).collect();
            let (c, s) = connect(
                client_config(&c).expect("client"),
                server_config(&s).expect("server"),
            )
            .expect("handshake");
            assert_eq!(c.protocol_version(), Some(expected));
            assert_eq!(s.protocol_version(), Some(expected));
        }

        let mut c = pki.client_options();
        c.versions = vec!["1.2".into()];
        let mut s = pki.server_options();
        s.versions = vec!["1.3".into()];
        connect(
            client_config(&c).expect("client"),
            server_config(&s).expect("server"),
        )
        .expect_err("no common version");

        c.versions = vec!["1.1".into()];
        assert_eq!(
            message(client_config(&c)),
            "TLS options: unknown TLS version \"1.1\" (expected \"1.2\" or \"1.3\")"
        );
    }

    #[test]
    fn alpn_and_secret_extraction() {
        let pki = Pki::new();
        let mut c = pki.client_options();
        c.alpn = vec!["h2".into(), "http/1.1".into()];
        let mut s = pki.server_options();
        s.alpn = vec!["http/1.1".into()];
        for version in ["1.2", "1.3"] {
            c.versions = vec![version.into()];
            let (client, server) = connect(
                client_config(&c).expect("client"),
                server_config(&s).expect("server"),
            )
            .expect("handshake");
            assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
            client.dangerous_extract_secrets().expect("client secrets");
            server.dangerous_extract_secrets().expect("server secrets");
        }
        c.alpn = vec![String::new()];
        assert!(message(client_config(&c)).contains("ALPN protocol \"\""));
    }

    #[test]
    fn configs_keep_our_provider_and_resumption() {
        let pki = Pki::new();
        let c = client_config(&pki.client_options()).expect("client");
        let s = server_config(&pki.server_options()).expect("server");
        let ours = engine_provider();
        assert_eq!(
            c.crypto_provider().cipher_suites.len(),
            ours.cipher_suites.len()
        );
        assert_eq!(
            s.crypto_provider().cipher_suites.len(),
            ours.cipher_suites.len()
        );
        assert!(c.enable_secret_extraction && s.enable_secret_extraction);
        let default = rustls::client::Resumption::default();
        assert_eq!(format!("{:?}", c.resumption), format!("{default:?}"));
    }

    #[test]
    fn system_roots_are_used_without_a_ca() {
        let found = rustls_native_certs::load_native_certs();
        let usable = RootCertStore::empty()
            .add_parsable_certificates(found.certs)
            .0;
        match client_config(&ClientTlsOptions::default()) {
            Ok(_) => assert!(usable > 0),
            Err(Error::Unavailable { feature, why }) => {
                assert_eq!(usable, 0);
                assert_eq!(feature, "the system trust store");
                assert!(why.contains("set a CA file"), "{why}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
