//! Bearer secrets (join tokens, refresh tokens, API tokens): `<prefix>_<id>_<secret>`.
//!
//! Only a SHA-256 of the secret part is ever stored; the id part finds the record. Secrets are
//! 256 random bits, so a plain hash (not a password hash) is the right tool.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A freshly made bearer secret: the string to hand out once, and what to store.
#[derive(Debug)]
pub struct Minted {
    pub id: Uuid,
    pub token: String,
    pub hash: String,
}

pub fn mint(prefix: &str, id: Uuid) -> Minted {
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    Minted { id, token: format!("{prefix}_{}_{secret}", id.simple()), hash: hash(&secret) }
}

/// Splits a presented token into its id and secret, if it has the expected shape.
pub fn parse<'a>(prefix: &str, token: &'a str) -> Option<(Uuid, &'a str)> {
    let rest = token.trim().strip_prefix(prefix)?.strip_prefix('_')?;
    let (id, secret) = rest.split_once('_')?;
    Some((Uuid::try_parse(id).ok()?, secret))
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    hash(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_back_and_matches_its_hash() {
        let minted = mint("wfj", Uuid::now_v7());
        let (id, secret) = parse("wfj", &minted.token).expect("parses");
        assert_eq!(id, minted.id);
        assert!(matches(secret, &minted.hash));
        assert!(!matches("other", &minted.hash));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in ["", "wfj", "wfj_", "wfr_0190_x", "wfj_notauuid_x", "xyz_0190"] {
            assert!(parse("wfj", bad).is_none(), "{bad}");
        }
    }
}
