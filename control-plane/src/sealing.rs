//! Secrets at rest: values users hand us that must be usable later (TOTP seeds, secret stack
//! variables, SSO client secrets) are sealed with XChaCha20-Poly1305 under the installation's
//! master key before they reach the store.
//!
//! The master key comes from `WINDFLOW_MASTER_KEY` (64 hex digits or base64 of 32 bytes) or from
//! `master.key` in the data directory (made on first start, 0600). Each sealed value is bound to
//! what it belongs to (`context`, e.g. the user id and "totp"): a sealed value copied onto another
//! record does not open there. This module never logs, and [`MasterKey`] never prints its bytes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Marks the format of a sealed value, so that a later scheme can sit beside this one.
const PREFIX: &str = "wfs1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be 32 bytes, as 64 hex digits or base64")]
    BadKey,
    #[error("reading or creating the master key: {0}")]
    Io(#[from] std::io::Error),
    #[error("a sealed value is malformed or was sealed for something else, or under another master key")]
    Unseal,
}

/// The key that seals secrets at rest.
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// From `WINDFLOW_MASTER_KEY` when it is set, else from `<data_dir>/master.key`, created on
    /// first use.
    pub fn load(data_dir: &Path, from_env: Option<&str>) -> Result<Self, SealError> {
        let bytes = match from_env {
            Some(text) => decode_key(text.trim())?,
            None => crate::fsutil::read_or_create_secret(&data_dir.join("master.key"), || {
                rand::random::<[u8; 32]>().to_vec()
            })?,
        };
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self(XChaCha20Poly1305::new(&key.into())))
    }

    /// Seals `plaintext` for `context`; the answer is text, safe to keep in a JSON record.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        // Encryption with a valid key and a fresh nonce cannot fail for inputs this size.
        let ciphertext = self
            .0
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .unwrap_or_default();
        format!("{PREFIX}{}", STANDARD_NO_PAD.encode([nonce.as_slice(), &ciphertext].concat()))
    }

    /// Opens a value sealed by [`seal`](Self::seal) for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = sealed.strip_prefix(PREFIX).ok_or(SealError::Unseal)?;
        let raw = STANDARD_NO_PAD.decode(raw).map_err(|_| SealError::Unseal)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Unseal);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Unseal)?;
        self.0
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map_err(|_| SealError::Unseal)
    }

    /// [`open`](Self::open) for text.
    pub fn open_string(&self, context: &str, sealed: &str) -> Result<String, SealError> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| SealError::Unseal)
    }
}

fn decode_key(text: &str) -> Result<Vec<u8>, SealError> {
    if text.len() == 64
        && let Ok(bytes) = hex::decode(text)
    {
        return Ok(bytes);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| SealError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; 32]).expect("32 bytes")
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_context_only() {
        let sealed = key(1).seal("user:1/totp", b"JBSWY3DPEHPK3PXP");
        assert!(sealed.starts_with("wfs1:"));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(key(1).open("user:1/totp", &sealed).expect("opens"), b"JBSWY3DPEHPK3PXP");
        assert!(key(1).open("user:2/totp", &sealed).is_err(), "moved to another record");
        assert!(key(2).open("user:1/totp", &sealed).is_err(), "another master key");
    }

    #[test]
    fn sealing_twice_gives_different_text() {
        assert_ne!(key(1).seal("c", b"same"), key(1).seal("c", b"same"));
    }

    #[test]
    fn tampered_or_malformed_values_are_refused_not_panicked_on() {
        let sealed = key(1).seal("c", b"secret");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        for bad in ["", "wfs1:", "wfs1:!!", "plain", "wfs1:AAAA", tampered.as_str()] {
            assert!(key(1).open("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_is_read_from_hex_or_base64_or_made_once_in_the_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex_key = "11".repeat(32);
        let from_hex = MasterKey::load(dir.path(), Some(&hex_key)).expect("hex");
        let b64 = base64::engine::general_purpose::STANDARD.encode([0x11u8; 32]);
        let from_b64 = MasterKey::load(dir.path(), Some(&b64)).expect("base64");
        assert_eq!(from_b64.open("c", &from_hex.seal("c", b"x")).expect("same key"), b"x");
        assert!(matches!(MasterKey::load(dir.path(), Some("short")), Err(SealError::BadKey)));

        let made = MasterKey::load(dir.path(), None).expect("made");
        let again = MasterKey::load(dir.path(), None).expect("read back");
        assert_eq!(again.open("c", &made.seal("c", b"y")).expect("same key"), b"y");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("master.key")).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
