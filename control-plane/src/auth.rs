//! Local accounts and sessions: argon2id password hashes, short-lived JWT access tokens, and
//! rotating refresh tokens grouped in session families (a reused refresh token revokes its
//! whole family, since only a thief would present an already-rotated one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsutil::read_or_create_secret;
use crate::secrets;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
const REFRESH_PREFIX: &str = "wfr";
/// How many rotated-out refresh hashes a family remembers for reuse detection.
const REMEMBERED_ROTATIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("the access token is missing, malformed or expired")]
    BadAccessToken,
    #[error("the refresh token is invalid, expired or revoked")]
    BadRefreshToken,
    #[error("the session has been signed out")]
    SessionRevoked,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at_unix_s: i64,
}

impl Record for User {
    const TABLE: Table = Table::Users;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.username.as_bytes().to_vec()
    }
}

/// A family of refresh tokens that descend from one login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub current_hash: String,
    pub rotated_hashes: Vec<String>,
    pub expires_at_unix_s: i64,
    pub revoked: bool,
}

impl Record for Session {
    const TABLE: Table = Table::Sessions;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    name: String,
    sid: Uuid,
    iat: i64,
    exp: i64,
}

/// Who is calling, after the access token was checked.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub username: String,
    /// The session family; nil for an API token.
    pub session_id: Uuid,
    /// Set when the caller is an API token: its id and scope.
    pub token: Option<(Uuid, crate::api_tokens::Scope)>,
}

#[derive(Debug)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

pub fn now_unix_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The account service.
pub struct Auth {
    store: Arc<dyn Store>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Verified against when the user does not exist, so that timing does not tell which
    /// user names exist.
    dummy_hash: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth")
    }
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, data_dir: &Path) -> Result<Self, AuthError> {
        let secret = read_or_create_secret(&data_dir.join("jwt.key"), || rand::random::<[u8; 32]>().to_vec())
            .map_err(|e| AuthError::Store(StoreError::Backend(format!("jwt.key: {e}"))))?;
        Ok(Self {
            store,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            dummy_hash: hash_password("not a real password")?,
        })
    }

    /// Creates the first admin when there are no users yet. Returns the password when one was
    /// generated (the caller prints it once).
    pub fn ensure_admin(&self, password: Option<String>) -> Result<Option<String>, AuthError> {
        if !self.store.scan(Table::Users)?.is_empty() {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
        });
        self.store.save(&User {
            id: Uuid::now_v7(),
            username: "admin".into(),
            password_hash: hash_password(&password)?,
            is_admin: true,
            created_at_unix_s: now_unix_s(),
        })?;
        Ok(generated.then_some(password))
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, AuthError> {
        Ok(self.store.load::<User>(username.as_bytes())?)
    }

    pub fn login(&self, username: &str, password: &str) -> Result<Tokens, AuthError> {
        let Some(user) = self.user(username)? else {
            verify_password(password, &self.dummy_hash);
            return Err(AuthError::BadCredentials);
        };
        if !verify_password(password, &user.password_hash) {
            return Err(AuthError::BadCredentials);
        }
        let minted = secrets::mint(REFRESH_PREFIX, Uuid::now_v7());
        let session = Session {
            id: minted.id,
            user_id: user.id,
            username: user.username.clone(),
            current_hash: minted.hash,
            rotated_hashes: vec![],
            expires_at_unix_s: now_unix_s() + REFRESH_TOKEN_TTL.as_secs() as i64,
            revoked: false,
        };
        self.store.save(&session)?;
        self.tokens_for(&session, minted.token)
    }

    /// Exchanges a refresh token for new tokens, rotating it.
    pub fn refresh(&self, refresh_token: &str) -> Result<Tokens, AuthError> {
        let (id, secret) = secrets::parse(REFRESH_PREFIX, refresh_token).ok_or(AuthError::BadRefreshToken)?;
        // Retry on a concurrent rotation of the same family.
        for _ in 0..3 {
            let session = self.store.load::<Session>(id.as_bytes())?.ok_or(AuthError::BadRefreshToken)?;
            if session.revoked || session.expires_at_unix_s <= now_unix_s() {
                return Err(AuthError::BadRefreshToken);
            }
            if !secrets::matches(secret, &session.current_hash) {
                if session.rotated_hashes.iter().any(|h| secrets::matches(secret, h)) {
                    tracing::warn!(session = %session.id, user = %session.username, "refresh token reused; revoking the session family");
                    self.store.save(&Session { revoked: true, ..session })?;
                }
                return Err(AuthError::BadRefreshToken);
            }
            let minted = secrets::mint(REFRESH_PREFIX, session.id);
            let mut rotated = session.clone();
            rotated.rotated_hashes.push(std::mem::replace(&mut rotated.current_hash, minted.hash));
            let excess = rotated.rotated_hashes.len().saturating_sub(REMEMBERED_ROTATIONS);
            rotated.rotated_hashes.drain(..excess);
            if self.store.replace(&session, &rotated)? {
                return self.tokens_for(&rotated, minted.token);
            }
        }
        Err(AuthError::BadRefreshToken)
    }

    pub fn logout(&self, session_id: Uuid) -> Result<(), AuthError> {
        if let Some(session) = self.store.load::<Session>(session_id.as_bytes())? {
            self.store.save(&Session { revoked: true, ..session })?;
        }
        Ok(())
    }

    /// Checks an access token and that its session is still signed in.
    pub fn authenticate(&self, access_token: &str) -> Result<Caller, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(access_token, &self.decoding, &validation)
            .map_err(|_| AuthError::BadAccessToken)?
            .claims;
        let session = self.store.load::<Session>(claims.sid.as_bytes())?.ok_or(AuthError::SessionRevoked)?;
        if session.revoked {
            return Err(AuthError::SessionRevoked);
        }
        Ok(Caller { user_id: claims.sub, username: claims.name, session_id: claims.sid, token: None })
    }

    /// The user name in a well-signed, unexpired access token, without touching the store: for
    /// labelling audit entries, never for deciding access.
    pub fn token_subject(&self, access_token: &str) -> Option<String> {
        let validation = Validation::new(Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(access_token, &self.decoding, &validation).ok().map(|data| data.claims.name)
    }

    fn tokens_for(&self, session: &Session, refresh_token: String) -> Result<Tokens, AuthError> {
        let now = now_unix_s();
        let claims = Claims {
            sub: session.user_id,
            name: session.username.clone(),
            sid: session.id,
            iat: now,
            exp: now + ACCESS_TOKEN_TTL.as_secs() as i64,
        };
        let access_token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::BadAccessToken)?;
        Ok(Tokens { access_token, refresh_token, expires_in: ACCESS_TOKEN_TTL.as_secs() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).expect("open"));
        let auth = Auth::new(store, dir.path()).expect("auth");
        (dir, auth)
    }

    #[test]
    fn the_first_admin_is_created_once_with_a_generated_password() {
        let (_dir, auth) = auth();
        let password = auth.ensure_admin(None).expect("ok").expect("generated");
        assert!(password.len() >= 16);
        assert_eq!(auth.ensure_admin(None).expect("ok"), None);
        auth.login("admin", &password).expect("logs in");
        assert!(matches!(auth.login("admin", "wrong"), Err(AuthError::BadCredentials)));
        assert!(matches!(auth.login("nobody", "x"), Err(AuthError::BadCredentials)));
    }

    #[test]
    fn refresh_rotates_and_a_reused_token_revokes_the_family() {
        let (_dir, auth) = auth();
        auth.ensure_admin(Some("correct horse".into())).expect("admin");
        let first = auth.login("admin", "correct horse").expect("login");
        let second = auth.refresh(&first.refresh_token).expect("rotates");
        assert_ne!(first.refresh_token, second.refresh_token);
        // The old token again: theft suspected, the whole family dies.
        assert!(matches!(auth.refresh(&first.refresh_token), Err(AuthError::BadRefreshToken)));
        assert!(matches!(auth.refresh(&second.refresh_token), Err(AuthError::BadRefreshToken)));
        assert!(matches!(auth.authenticate(&second.access_token), Err(AuthError::SessionRevoked)));
    }

    #[test]
    fn logout_revokes_the_access_token_at_once() {
        let (_dir, auth) = auth();
        auth.ensure_admin(Some("pw-pw-pw-pw".into())).expect("admin");
        let tokens = auth.login("admin", "pw-pw-pw-pw").expect("login");
        let caller = auth.authenticate(&tokens.access_token).expect("valid");
        auth.logout(caller.session_id).expect("logout");
        assert!(auth.authenticate(&tokens.access_token).is_err());
        assert!(auth.refresh(&tokens.refresh_token).is_err());
    }
}
