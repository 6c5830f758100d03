//! What an enrolled agent keeps in its data directory: its key and certificate, the control
//! plane's CA, the pinned job key, and where to connect. Secrets are written 0600, atomically.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

const IDENTITY: &str = "agent.json";
const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const CA: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this agent is not enrolled ({0} missing); run `windflow-agent enroll` first")]
    NotEnrolled(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Where to reach the control plane and what to trust, as learnt at enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub version: u32,
    pub agent_id: Uuid,
    pub server_url: String,
    pub quic_endpoint: String,
    pub server_name: String,
    /// Hex Ed25519 public key that must have signed every job.
    pub job_public_key: String,
}

/// The files of an agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn is_enrolled(&self) -> bool {
        self.root.join(IDENTITY).exists()
    }

    pub fn identity(&self) -> Result<Identity, IdentityError> {
        let path = self.root.join(IDENTITY);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IdentityError::NotEnrolled(path.clone()),
            _ => IdentityError::Io { path: path.clone(), source: e },
        })?;
        serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt { path, reason: e.to_string() })
    }

    pub fn read(&self, name: &str) -> Result<String, IdentityError> {
        let path = self.root.join(name);
        std::fs::read_to_string(&path).map_err(|source| IdentityError::Io { path, source })
    }

    pub fn key_pem(&self) -> Result<String, IdentityError> {
        self.read(KEY)
    }

    pub fn cert_pem(&self) -> Result<String, IdentityError> {
        self.read(CERT)
    }

    pub fn ca_pem(&self) -> Result<String, IdentityError> {
        self.read(CA)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Saves a complete enrollment. The identity file is written last: its presence means the
    /// rest is there.
    pub fn save_enrollment(
        &self,
        identity: &Identity,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), IdentityError> {
        self.write(KEY, key_pem.as_bytes())?;
        self.write(CERT, cert_pem.as_bytes())?;
        self.write(CA, ca_pem.as_bytes())?;
        let json = serde_json::to_vec_pretty(identity).unwrap_or_default();
        self.write(IDENTITY, &json)
    }

    /// Replaces key and certificate after a renewal.
    pub fn save_renewal(&self, key_pem: &str, cert_pem: &str) -> Result<(), IdentityError> {
        // Key first: a crash in between leaves a new key with the old certificate, which the
        // handshake rejects; the old pair is kept as a fallback for exactly that case.
        let _ = std::fs::copy(self.root.join(KEY), self.root.join("key.pem.previous"));
        let _ = std::fs::copy(self.root.join(CERT), self.root.join("cert.pem.previous"));
        self.write(KEY, key_pem.as_bytes())?;
        self.write(CERT, cert_pem.as_bytes())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
        let path = self.root.join(name);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let tmp = self.root.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
