//! The control plane's own PKI: its CA, its server certificate, and its Ed25519 job key.
//!
//! Created on first start in the data directory (files 0600), reused afterwards. The server's
//! key pair never changes once made, so the public-key pin printed in one-liners stays valid
//! when the certificate is re-issued (for example with other `--advertise` names).
//! No private key ever leaves this module other than to rustls and to the job signer.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fsutil::{read_or_create_secret, write_private};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key.pem";
const JOB_KEY: &str = "job.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {what}")]
    Invalid { path: PathBuf, what: &'static str },
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
}

/// The loaded PKI material.
pub struct Pki {
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    ca_key: KeyPair,
    server_key: KeyPair,
    server_cert_der: CertificateDer<'static>,
    job_key: SigningKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("server_pin", &self.server_pin()).finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

impl Pki {
    /// Loads the PKI from `dir`, creating what is missing, and issues a fresh server
    /// certificate for `advertise` (host names and IP addresses).
    pub fn load_or_create(dir: &Path, advertise: &[String]) -> Result<Self, PkiError> {
        let ca_key_path = dir.join(CA_KEY);
        let ca_cert_path = dir.join(CA_CERT);
        let (ca_key, ca_cert_pem) = if ca_key_path.exists() && ca_cert_path.exists() {
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|_| PkiError::Invalid { path: ca_key_path.clone(), what: "CA key" })?;
            let cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
            (key, cert_pem)
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn("WindFlow control plane CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::from_secs(3600);
            params.not_after = now + Duration::from_secs(10 * 365 * 86400);
            let cert = params.self_signed(&key)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes()).map_err(io_err(&ca_key_path))?;
            write_private(&ca_cert_path, cert.pem().as_bytes()).map_err(io_err(&ca_cert_path))?;
            (key, cert.pem())
        };
        let ca_cert_der = pem_to_der(&ca_cert_pem)
            .ok_or_else(|| PkiError::Invalid { path: ca_cert_path.clone(), what: "CA certificate" })?;

        let server_key_path = dir.join(SERVER_KEY);
        let server_key_pem = read_or_create_secret(&server_key_path, || {
            KeyPair::generate().map(|k| k.serialize_pem().into_bytes()).unwrap_or_default()
        })
        .map_err(io_err(&server_key_path))?;
        let server_key = std::str::from_utf8(&server_key_pem)
            .ok()
            .and_then(|pem| KeyPair::from_pem(pem).ok())
            .ok_or_else(|| PkiError::Invalid { path: server_key_path.clone(), what: "server key" })?;

        let job_key_path = dir.join(JOB_KEY);
        let seed = read_or_create_secret(&job_key_path, || rand::random::<[u8; 32]>().to_vec())
            .map_err(io_err(&job_key_path))?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| PkiError::Invalid { path: job_key_path.clone(), what: "job key" })?;

        let mut pki = Pki {
            ca_cert_pem,
            ca_cert_der,
            ca_key,
            server_key,
            server_cert_der: CertificateDer::from(Vec::new()),
            job_key: SigningKey::from_bytes(&seed),
        };
        let server_cert = pki.issue_server_certificate(advertise)?;
        let server_cert_path = dir.join(SERVER_CERT);
        write_private(&server_cert_path, server_cert.pem().as_bytes()).map_err(io_err(&server_cert_path))?;
        pki.server_cert_der = server_cert.der().clone();
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.ca_cert_der, &self.ca_key)?)
    }

    fn issue_server_certificate(&self, advertise: &[String]) -> Result<rcgen::Certificate, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("WindFlow control plane");
        params.subject_alt_names = advertise
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(365 * 86400);
        Ok(params.signed_by(&self.server_key, &self.issuer()?)?)
    }

    /// Issues an agent's client certificate from its CSR. Only the CSR's public key is used:
    /// the identity (CN = agent id) and lifetime are ours to decide.
    pub fn issue_agent_certificate(
        &self,
        csr_der: &[u8],
        agent_id: Uuid,
        lifetime: Duration,
    ) -> Result<rcgen::Certificate, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&agent_id.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        // Only the control plane checks this certificate, against the clock that issued it:
        // a few seconds of slack suffice, and the lifetime stays what was asked for, which the
        // agent's renewal at two thirds relies on.
        params.not_before = now - Duration::from_secs(5);
        params.not_after = now + lifetime;
        params.serial_number = Some(unique_serial());
        Ok(params.signed_by(&csr.public_key, &self.issuer()?)?)
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_cert_der.clone()
    }

    /// Hex SHA-256 of the CA certificate PEM as served at `/ca.pem`.
    pub fn ca_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.ca_cert_pem.as_bytes()))
    }

    /// The server's public-key pin in curl's `--pinnedpubkey` form.
    pub fn server_pin(&self) -> String {
        let digest = Sha256::digest(self.server_key.subject_public_key_info());
        format!("sha256//{}", base64::engine::general_purpose::STANDARD.encode(digest))
    }

    pub fn server_cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.server_cert_der.clone(), self.ca_cert_der.clone()]
    }

    pub fn server_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()))
    }

    pub fn job_key(&self) -> &SigningKey {
        &self.job_key
    }

    /// Hex of the job key's public half, pinned by agents at enrollment.
    pub fn job_public_key_hex(&self) -> String {
        hex::encode(self.job_key.verifying_key().as_bytes())
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "WindFlow");
    dn
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// A serial number unique per issued certificate (an agent gets a new one at every renewal).
fn unique_serial() -> rcgen::SerialNumber {
    let mut serial = *Uuid::now_v7().as_bytes();
    // Positive, as DER INTEGER serials must be.
    serial[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&serial)
}

/// Reads the agent id (the CN) from a client certificate, as the QUIC hub does after the
/// handshake verified the chain.
pub fn agent_id_from_certificate(der: &[u8]) -> Option<Uuid> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    cn.parse().ok()
}

/// The not-after time of a certificate, in Unix seconds.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_private_files_and_a_restart_reuses_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Pki::load_or_create(dir.path(), &["127.0.0.1".into()]).expect("create");
        for file in [CA_KEY, CA_CERT, SERVER_KEY, SERVER_CERT, JOB_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file)).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let second = Pki::load_or_create(dir.path(), &["other.example".into()]).expect("reload");
        assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
        assert_eq!(first.server_pin(), second.server_pin(), "pin survives a new certificate");
        assert_eq!(first.job_public_key_hex(), second.job_public_key_hex());
    }

    #[test]
    fn an_agent_certificate_carries_the_assigned_id_not_the_requested_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".into()]).expect("create");
        let agent_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("i-want-to-be-admin");
        let csr = params.serialize_request(&agent_key).expect("csr");
        let id = Uuid::now_v7();
        let cert = pki.issue_agent_certificate(csr.der(), id, Duration::from_secs(60)).expect("issued");
        assert_eq!(agent_id_from_certificate(cert.der()), Some(id));
    }

    #[test]
    fn a_garbage_csr_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".into()]).expect("create");
        let err = pki.issue_agent_certificate(b"nope", Uuid::nil(), Duration::from_secs(1));
        assert!(matches!(err, Err(PkiError::BadCsr(_))));
    }
}
