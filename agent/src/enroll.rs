//! `windflow-agent enroll`: makes a key pair here, sends only a CSR and the join token, and
//! keeps the certificate, the CA and the pinned job key it gets back.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde::Deserialize;
use uuid::Uuid;

use crate::identity::{DataDir, Identity};
use crate::jobs::JobGate;

#[derive(Debug, Deserialize)]
struct EnrollResponse {
    agent_id: Uuid,
    certificate_pem: String,
    ca_pem: String,
    job_public_key: String,
    quic_endpoint: String,
    server_name: String,
}

/// An HTTPS client that trusts exactly the given CA.
pub fn https_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the CA file")?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

/// A certificate signing request for a new key; returns (key PEM, CSR PEM).
pub fn new_key_and_csr(common_name: &str) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

pub async fn enroll(
    data: &DataDir,
    server: &str,
    ca_file: &Path,
    token: &str,
    name: Option<String>,
) -> anyhow::Result<Identity> {
    let server = server.trim_end_matches('/');
    if data.is_enrolled() {
        let identity = data.identity()?;
        if identity.server_url == server {
            println!("already enrolled with {server} as agent {}; keeping this identity", identity.agent_id);
            return Ok(identity);
        }
        bail!(
            "{} is enrolled with another control plane ({}); remove it to enroll with {server}",
            data.path().display(),
            identity.server_url
        );
    }
    let ca_pem = std::fs::read_to_string(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let name = name.unwrap_or_else(crate::facts::hostname);
    let (key_pem, csr_pem) = new_key_and_csr(&name)?;
    let response = https_client(&ca_pem)?
        .post(format!("{server}/api/v1/agents/enroll"))
        .json(&serde_json::json!({ "token": token, "csr_pem": csr_pem, "name": name }))
        .send()
        .await
        .with_context(|| format!("could not reach {server}"))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or("no details given");
        bail!("enrollment refused by {server}: {message} ({status})");
    }
    let answer: EnrollResponse = response.json().await.context("reading the enrollment answer")?;
    if JobGate::parse_key(&answer.job_public_key).is_none() {
        bail!("the control plane sent an invalid job key");
    }
    let identity = Identity {
        version: 1,
        agent_id: answer.agent_id,
        server_url: server.to_owned(),
        quic_endpoint: answer.quic_endpoint,
        server_name: answer.server_name,
        job_public_key: answer.job_public_key,
    };
    data.save_enrollment(&identity, &key_pem, &answer.certificate_pem, &answer.ca_pem)?;
    println!("enrolled with {server} as agent {} ({name})", identity.agent_id);
    Ok(identity)
}
