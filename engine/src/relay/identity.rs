//! Client-certificate identities on the relay: which CAs the relay's TLS listener trusts for
//! client certificates (`client_ca` for pairing by certificate, `device_ca` for devices in
//! standby, `client_crls` for both), the verifier that asks for an optional certificate, and
//! the [`PeerIdentity`] a peer that presented one has once its handshake is over.
//!
//! A certificate is verified against the union of the two sets of roots in the handshake (a
//! bad, revoked or expired certificate fails the handshake), and then against each set on
//! its own ([`Identities::identify`]), so a device certificate cannot pair and a client
//! certificate cannot stand by for a thing: [`PeerIdentity::verified_as`] says which.
//!
//! This module does not decide what an identity may do; admission does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::{Error, Result};
use crate::tls::material::{client_verifier, load_crls};
use crate::tls::validity::subject_names;

/// Which of the relay's client CAs verified a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CaRole {
    /// `client_ca`: agents paired by certificate.
    Client,
    /// `device_ca`: devices in standby for their thing.
    Device,
}

impl CaRole {
    /// As in logs: `client` or `device`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CaRole::Client => "client",
            CaRole::Device => "device",
        }
    }
}

/// Who a peer is by its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// SHA-256 of the end-entity certificate (DER).
    pub(crate) fingerprint: [u8; 32],
    /// Its URI subject alternative names (e.g. SPIFFE IDs), in order.
    pub(crate) uri_sans: Vec<String>,
    /// Its subject's common name.
    pub(crate) common_name: Option<String>,
    /// Its DNS subject alternative names.
    pub(crate) dns_sans: Vec<String>,
    /// Verified against `client_ca`.
    pub(crate) client: bool,
    /// Verified against `device_ca`.
    pub(crate) device: bool,
}

impl PeerIdentity {
    /// The fingerprint as 64 lowercase hex digits.
    pub(crate) fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether the CA of `role` verified the certificate.
    pub(crate) fn verified_as(&self, role: CaRole) -> bool {
        match role {
            CaRole::Client => self.client,
            CaRole::Device => self.device,
        }
    }

    /// The identity two peers pair by: the certificate's first URI SAN when it has one (it
    /// names the workload and survives the certificate's renewal), else its SHA-256
    /// fingerprint in hex (which names exactly this certificate).
    pub(crate) fn pairing_identity(&self) -> String {
        match self.uri_sans.first() {
            Some(uri) => uri.clone(),
            None => self.fingerprint_hex(),
        }
    }

    /// For logs: the pairing identity and the CAs that verified it.
    pub(crate) fn describe(&self) -> String {
        let roles: Vec<&str> = [CaRole::Client, CaRole::Device]
            .into_iter()
            .filter(|r| self.verified_as(*r))
            .map(CaRole::as_str)
            .collect();
        format!(
            "{} (CN {:?}, verified by the {} CA)",
            self.pairing_identity(),
            self.common_name.as_deref().unwrap_or(""),
            roles.join(" and ")
        )
    }
}

/// The relay's client CAs, each with its own verifier (the CRLs apply to both).
#[derive(Debug)]
pub(crate) struct Identities {
    client: Option<Arc<dyn ClientCertVerifier>>,
    device: Option<Arc<dyn ClientCertVerifier>>,
}

impl Identities {
    /// The verifiers for `client_ca` and `device_ca` with `crls`; `None` when neither CA is
    /// given (the relay then asks for no certificate). Errors name the file and what is
    /// wrong with it: a CRL file is checked against each CA given.
    pub(crate) fn load(
        client_ca: Option<&Path>,
        device_ca: Option<&Path>,
        crls: &[PathBuf],
    ) -> Result<Option<Identities>> {
        if client_ca.is_none() && device_ca.is_none() {
            if let Some(crl) = crls.first() {
                return Err(Error::certificate(
                    crl,
                    "a client CRL is given without `client_ca` or `device_ca` to check it for",
                ));
            }
            return Ok(None);
        }
        let mut all = Vec::new();
        for path in crls {
            let these = load_crls(path)?;
            for ca in client_ca.iter().chain(device_ca.iter()) {
                client_verifier(ca, &these, true).map_err(|e| {
                    Error::certificate(path, format!("cannot use this CRL: {}", reason(&e)))
                })?;
            }
            all.extend(these);
        }
        let verifier = |ca: Option<&Path>| ca.map(|ca| client_verifier(ca, &all, true)).transpose();
        Ok(Some(Identities {
            client: verifier(client_ca)?,
            device: verifier(device_ca)?,
        }))
    }

    /// The verifier for the relay's TLS config: an optional client certificate, accepted if
    /// either CA verifies it.
    pub(crate) fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Union(self.clone()))
    }

    fn each(&self) -> impl Iterator<Item = &Arc<dyn ClientCertVerifier>> {
        self.client.iter().chain(self.device.iter())
    }

    /// The identity of the peer that presented `chain` (end entity first; the handshake
    /// verified it), with each CA checked on its own. `None` for an empty chain.
    pub(crate) fn identify(&self, chain: &[CertificateDer<'static>]) -> Option<PeerIdentity> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        let ok = |v: &Option<Arc<dyn ClientCertVerifier>>| {
            v.as_ref()
                .is_some_and(|v| v.verify_client_cert(end_entity, intermediates, now).is_ok())
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        let names = subject_names(end_entity.as_ref()).unwrap_or_default();
        Some(PeerIdentity {
            fingerprint: digest.as_ref().try_into().expect("SHA-256 is 32 bytes"),
            uri_sans: names.uris,
            common_name: names.common_name,
            dns_sans: names.dns,
            client: ok(&self.client),
            device: ok(&self.device),
        })
    }
}

/// What an error says is wrong, without the file it names (the caller names another).
fn reason(e: &Error) -> String {
    match e {
        Error::Certificate { what, .. } => what.clone(),
        other => other.to_string(),
    }
}

/// The relay's verifier: the union of the client and device verifiers (first that accepts).
#[derive(Debug)]
struct Union(Arc<Identities>);

impl ClientCertVerifier for Union {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Peers with tokens (the AWS local proxy among them) present no certificate.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Two sets of roots cannot be one borrowed list; no hints is allowed (RFC 8446
        // 4.2.4: the extension is optional) and clients with one certificate send it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let mut first_error = None;
        for v in self.0.each() {
            match v.verify_client_cert(end_entity, intermediates, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(rustls::Error::General("no client CA".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.first().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.first().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.first().supported_verify_schemes()
    }
}

impl Union {
    /// Signatures are checked the same way by both (one crypto provider): either will do.
    fn first(&self) -> &Arc<dyn ClientCertVerifier> {
        self.0
            .each()
            .next()
            .expect("Identities::load makes at least one verifier")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splice_test_pki::{Ca, KeyType, TempDir, Usage};

    /// A certificate from each CA is verified as that CA's only; a revoked one by neither;
    /// the fingerprint, names and pairing identity come from the certificate.
    #[test]
    fn each_ca_verifies_its_own() {
        let dir = TempDir::new("identity");
        let p = dir.path();
        let client_ca = Ca::new(p, "clients", KeyType::P256);
        let device_ca = Ca::new(p, "devices", KeyType::P256);
        let laptop = client_ca.issue_with(p, "laptop", &["spiffe://t/pair/1"], None, Usage::Client);
        let plain = client_ca.issue_with(p, "plain", &[], None, Usage::Client);
        let device = device_ca.issue_with(p, "dev-1", &[], None, Usage::Client);
        let revoked = client_ca.issue_with(p, "revoked", &[], None, Usage::Client);
        let crl = client_ca.write_crl(p, "clients", &[&revoked]);
        let ids = Identities::load(Some(&client_ca.path), Some(&device_ca.path), &[crl])
            .unwrap()
            .unwrap();
        let id = ids
            .identify(std::slice::from_ref(&laptop.cert_der))
            .unwrap();
        assert!(id.verified_as(CaRole::Client) && !id.verified_as(CaRole::Device));
        assert_eq!(id.pairing_identity(), "spiffe://t/pair/1");
        assert_eq!(id.common_name.as_deref(), Some("laptop"));
        let id = ids.identify(std::slice::from_ref(&plain.cert_der)).unwrap();
        assert_eq!(id.pairing_identity().len(), 64);
        assert_eq!(id.pairing_identity(), id.fingerprint_hex());
        let id = ids
            .identify(std::slice::from_ref(&device.cert_der))
            .unwrap();
        assert!(!id.verified_as(CaRole::Client) && id.verified_as(CaRole::Device));
        let id = ids
            .identify(std::slice::from_ref(&revoked.cert_der))
            .unwrap();
        assert!(!id.client && !id.device, "revoked");
        let union = Arc::new(ids).verifier();
        assert!(!union.client_auth_mandatory());
        let now = UnixTime::now();
        assert!(union.verify_client_cert(&device.cert_der, &[], now).is_ok());
        assert!(
            union
                .verify_client_cert(&revoked.cert_der, &[], now)
                .is_err()
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = TempDir::new("identity-errors");
        let p = dir.path();
        let ca = Ca::new(p, "ca", KeyType::P256);
        assert!(Identities::load(None, None, &[]).unwrap().is_none());
        let crl = ca.write_crl(p, "ca", &[]);
        let e = Identities::load(None, None, std::slice::from_ref(&crl)).unwrap_err();
        assert!(e.to_string().contains("ca.crl"), "{e}");
        let e = Identities::load(Some(&ca.path), None, std::slice::from_ref(&ca.path)).unwrap_err();
        assert!(
            e.to_string().contains("ca-ca.pem") && e.to_string().contains("found a certificate"),
            "{e}"
        );
        let missing = p.join("missing.pem");
        let e = Identities::load(Some(&missing), None, &[]).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
