//! The second factor: TOTP codes (RFC 6238: SHA-1, 6 digits, 30 s, what every authenticator app
//! speaks) and single-use recovery codes.
//!
//! The TOTP seed is sealed at rest with the master key ([`crate::sealing`]); recovery codes are
//! stored as SHA-256 only (they are 50 random bits each, used once). A code is accepted once:
//! the time step it matched is remembered, so a code seen over someone's shoulder cannot be
//! replayed within its 30 seconds.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::auth::{Auth, AuthError, User, now_unix_s};

const ISSUER: &str = "WindFlow";
const STEP_S: u64 = 30;
const RECOVERY_CODES: usize = 10;
/// Base32 without look-alikes, for recovery codes people type.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A user's second factor, as stored on the user record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotpState {
    /// The seed, sealed for `totp:<user id>`.
    pub secret_sealed: String,
    /// False while enrolment waits for the first code from the app.
    pub enabled: bool,
    /// SHA-256 of each unused recovery code.
    pub recovery_hashes: Vec<String>,
    /// The last time step a code was accepted for; only later steps are accepted after it.
    pub last_step: u64,
}

/// What enrolment hands to the user once: the seed as base32 and as an `otpauth://` URL for a
/// QR code.
#[derive(Debug)]
pub struct Enrolment {
    pub secret_base32: String,
    pub otpauth_url: String,
}

fn seal_context(user: &User) -> String {
    format!("totp:{}", user.id)
}

fn generator(secret: Vec<u8>, username: &str) -> Result<TOTP, AuthError> {
    TOTP::new(Algorithm::SHA1, 6, 1, STEP_S, secret, Some(ISSUER.to_owned()), username.to_owned())
        .map_err(|e| AuthError::Hash(format!("TOTP: {e}")))
}

/// The time step `code` belongs to, if it is right for `now_s` (one step of clock drift either
/// way) and later than `last_step`.
pub fn matching_step(totp: &TOTP, code: &str, now_s: u64, last_step: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now_s / STEP_S;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .filter(|step| *step > last_step)
        .find(|step| bool::from(totp.generate(step * STEP_S).as_bytes().ct_eq(code.as_bytes())))
}

/// Fresh recovery codes (`xxxxx-xxxxx`) and their hashes.
pub fn mint_recovery_codes() -> (Vec<String>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let raw: String =
                (0..10).map(|_| RECOVERY_ALPHABET[rand::random_range(0..RECOVERY_ALPHABET.len())] as char).collect();
            let shown = format!("{}-{}", &raw[..5], &raw[5..]);
            (shown, crate::secrets::hash(&raw))
        })
        .unzip()
}

fn normalise_recovery_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

impl Auth {
    pub(crate) fn totp_of(&self, user: &User, state: &TotpState) -> Result<TOTP, AuthError> {
        let secret = self.master_key().open(&seal_context(user), &state.secret_sealed).map_err(|e| {
            tracing::error!(user = %user.username, "the TOTP seed does not open: {e}");
            AuthError::Hash("the TOTP seed cannot be read with this master key".into())
        })?;
        generator(secret, &user.username)
    }

    /// Starts (or restarts) enrolment: a new seed, not enabled until [`enable_totp`] sees a
    /// code from it. Refused when a second factor is already enabled.
    ///
    /// [`enable_totp`]: Self::enable_totp
    pub fn begin_totp(&self, user: &User) -> Result<Enrolment, AuthError> {
        if user.totp.as_ref().is_some_and(|t| t.enabled) {
            return Err(AuthError::TotpAlreadyEnabled);
        }
        let secret = rand::random::<[u8; 20]>().to_vec();
        let totp = generator(secret.clone(), &user.username)?;
        let state = TotpState {
            secret_sealed: self.master_key().seal(&seal_context(user), &secret),
            enabled: false,
            recovery_hashes: vec![],
            last_step: 0,
        };
        self.update_user(user, |u| u.totp = Some(state))?;
        Ok(Enrolment { secret_base32: totp.get_secret_base32(), otpauth_url: totp.get_url() })
    }

    /// Finishes enrolment with a first code; answers the recovery codes, shown once.
    pub fn enable_totp(&self, user: &User, code: &str) -> Result<Vec<String>, AuthError> {
        let state = match &user.totp {
            Some(state) if state.enabled => return Err(AuthError::TotpAlreadyEnabled),
            Some(state) => state.clone(),
            None => return Err(AuthError::TotpNotEnrolled),
        };
        let totp = self.totp_of(user, &state)?;
        let step =
            matching_step(&totp, code, now_unix_s() as u64, state.last_step).ok_or(AuthError::BadSecondFactor)?;
        let (codes, hashes) = mint_recovery_codes();
        let enabled = TotpState { enabled: true, recovery_hashes: hashes, last_step: step, ..state };
        self.update_user(user, |u| u.totp = Some(enabled))?;
        Ok(codes)
    }

    /// Turns the second factor off (the caller has checked the password or is an administrator).
    pub fn disable_totp(&self, user: &User) -> Result<(), AuthError> {
        self.update_user(user, |u| u.totp = None).map(drop)
    }

    /// New recovery codes for a code from the app; the old ones stop working.
    pub fn renew_recovery_codes(&self, user: &User, code: &str) -> Result<Vec<String>, AuthError> {
        let user = self.verify_second_factor(user, code)?;
        let (codes, hashes) = mint_recovery_codes();
        self.update_user(&user, |u| {
            if let Some(state) = u.totp.as_mut() {
                state.recovery_hashes = hashes;
            }
        })?;
        Ok(codes)
    }

    /// Checks a TOTP code or a recovery code (which is then spent) for a user whose second factor
    /// is enabled; answers the user as updated.
    pub fn verify_second_factor(&self, user: &User, code: &str) -> Result<User, AuthError> {
        let state = user.totp.clone().filter(|t| t.enabled).ok_or(AuthError::TotpNotEnrolled)?;
        let totp = self.totp_of(user, &state)?;
        let updated = if let Some(step) = matching_step(&totp, code, now_unix_s() as u64, state.last_step) {
            TotpState { last_step: step, ..state }
        } else {
            let hash = crate::secrets::hash(&normalise_recovery_code(code));
            let mut remaining = state.recovery_hashes.clone();
            let before = remaining.len();
            remaining.retain(|h| !bool::from(h.as_bytes().ct_eq(hash.as_bytes())));
            if remaining.len() == before {
                return Err(AuthError::BadSecondFactor);
            }
            tracing::info!(user = %user.username, left = remaining.len(), "recovery code used");
            TotpState { recovery_hashes: remaining, ..state }
        };
        // Compare-and-swap: two requests racing with the same code cannot both pass.
        self.update_user(user, |u| u.totp = Some(updated)).map_err(|e| match e {
            AuthError::Conflict => AuthError::BadSecondFactor,
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totp() -> TOTP {
        generator(b"12345678901234567890".to_vec(), "alice").expect("valid")
    }

    #[test]
    fn the_rfc_6238_vector_matches_and_one_step_of_drift_is_tolerated() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits), so 287082 with 6.
        let t = totp();
        assert_eq!(t.generate(59), "287082");
        assert_eq!(matching_step(&t, "287082", 59, 0), Some(1));
        assert_eq!(matching_step(&t, "287 082", 89, 0), Some(1), "spaces are ignored; the previous step is accepted");
        assert_eq!(matching_step(&t, "287082", 150, 0), None, "too old");
    }

    #[test]
    fn a_code_is_accepted_once_and_malformed_codes_never() {
        let t = totp();
        assert_eq!(matching_step(&t, "287082", 59, 1), None, "its step was already used");
        for bad in ["", "28708", "2870822", "abcdef", "28708x"] {
            assert_eq!(matching_step(&t, bad, 59, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_codes_are_distinct_readable_and_hashed() {
        let (codes, hashes) = mint_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(codes.iter().collect::<std::collections::HashSet<_>>().len(), 10);
        for (code, hash) in codes.iter().zip(&hashes) {
            assert_eq!(code.len(), 11);
            assert_eq!(&code[5..6], "-");
            assert_eq!(&crate::secrets::hash(&normalise_recovery_code(&code.to_uppercase())), hash);
        }
    }

    #[test]
    fn the_otpauth_url_names_the_issuer_and_the_account() {
        let url = totp().get_url();
        assert!(url.starts_with("otpauth://totp/WindFlow:alice?"), "{url}");
        assert!(url.contains("issuer=WindFlow"), "{url}");
    }
}
