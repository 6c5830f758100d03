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
use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};

pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
const REFRESH_PREFIX: &str = "wfr";
/// The organisation the first admin owns, made on first start.
pub const DEFAULT_ORG: &str = "Default";
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
    #[error("this account is disabled")]
    Disabled,
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("user names are 1 to 64 letters, digits, '.', '-', '_' or '@'")]
    BadUsername,
    #[error("the password is too weak: {0}")]
    WeakPassword(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Org(#[from] crate::orgs::OrgError),
    #[error("the user changed meanwhile; try again")]
    Conflict,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    /// An administrator of the whole installation (manages users), not of an organisation.
    pub is_admin: bool,
    pub created_at_unix_s: i64,
    /// A disabled user cannot sign in, and their sessions and API tokens stop working.
    pub disabled: bool,
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

/// Whose signed-in session an access token belongs to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: Uuid,
    pub username: String,
    pub session_id: Uuid,
    pub is_admin: bool,
}

/// Who is calling, after their credentials were checked, and in which organisation.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub username: String,
    /// The session family; nil for an API token.
    pub session_id: Uuid,
    /// Set when the caller is an API token: its id and scope.
    pub token: Option<(Uuid, crate::api_tokens::Scope)>,
    /// An installation administrator (see [`User::is_admin`]).
    pub is_admin: bool,
    /// The organisation this request acts in (nil when the user belongs to none; routes about
    /// an organisation's objects are refused before they run in that case).
    pub org_id: Uuid,
    /// The caller's role in that organisation.
    pub role: Option<crate::orgs::Role>,
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

/// The password policy: 12 to 1,024 characters, at least 5 distinct ones, not containing the
/// user name.
pub fn check_password_policy(username: &str, password: &str) -> Result<(), AuthError> {
    let length = password.chars().count();
    if length < 12 {
        return Err(AuthError::WeakPassword("use at least 12 characters"));
    }
    if password.len() > 1024 {
        return Err(AuthError::WeakPassword("use at most 1,024 bytes"));
    }
    if password.chars().collect::<std::collections::HashSet<_>>().len() < 5 {
        return Err(AuthError::WeakPassword("use at least 5 different characters"));
    }
    if username.len() >= 3 && password.to_lowercase().contains(&username.to_lowercase()) {
        return Err(AuthError::WeakPassword("do not put the user name in the password"));
    }
    Ok(())
}

fn check_username(username: &str) -> Result<(), AuthError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@');
    if username.is_empty() || username.len() > 64 || !username.chars().all(allowed) {
        return Err(AuthError::BadUsername);
    }
    Ok(())
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
        let admin = self.create_user("admin", &password, true)?;
        crate::orgs::create(self.store.as_ref(), DEFAULT_ORG, admin.id, &admin.username)?;
        Ok(generated.then_some(password))
    }

    /// Creates a user; the name must be free and the password must pass the policy.
    pub fn create_user(&self, username: &str, password: &str, is_admin: bool) -> Result<User, AuthError> {
        check_username(username)?;
        check_password_policy(username, password)?;
        let user = User {
            id: Uuid::now_v7(),
            username: username.to_owned(),
            password_hash: hash_password(password)?,
            is_admin,
            created_at_unix_s: now_unix_s(),
            disabled: false,
        };
        let created = self.store.atomic(
            &[Check { table: Table::Users, key: user.key(), expected: None }],
            &[Write { table: Table::Users, key: user.key(), value: Some(user.encode()) }],
        )?;
        if created { Ok(user) } else { Err(AuthError::UserExists(username.to_owned())) }
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.store.load_all()?)
    }

    pub fn user_by_id(&self, id: Uuid) -> Result<Option<User>, AuthError> {
        Ok(self.users()?.into_iter().find(|u| u.id == id))
    }

    /// Changes a user's record (disabled, is_admin) if nobody changed it meanwhile.
    pub fn update_user(&self, user: &User, change: impl FnOnce(&mut User)) -> Result<User, AuthError> {
        let mut changed = user.clone();
        change(&mut changed);
        if self.store.replace(user, &changed)? { Ok(changed) } else { Err(AuthError::Conflict) }
    }

    /// Sets a new password (checked against the policy) and signs out every other session.
    pub fn set_password(&self, user: &User, password: &str, keep_session: Option<Uuid>) -> Result<(), AuthError> {
        check_password_policy(&user.username, password)?;
        let hash = hash_password(password)?;
        self.update_user(user, |u| u.password_hash = hash)?;
        self.revoke_sessions(user.id, keep_session)
    }

    /// Signs out every session of a user, except `keep`.
    pub fn revoke_sessions(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<(), AuthError> {
        for session in self.store.load_all::<Session>()? {
            if session.user_id == user_id && !session.revoked && Some(session.id) != keep {
                self.store.save(&Session { revoked: true, ..session })?;
            }
        }
        Ok(())
    }

    /// Whether `password` is the user's (slow: argon2).
    pub fn check_password(&self, user: &User, password: &str) -> bool {
        verify_password(password, &user.password_hash)
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
        if user.disabled {
            return Err(AuthError::Disabled);
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

    /// Checks an access token, that its session is still signed in and its user still enabled.
    pub fn authenticate(&self, access_token: &str) -> Result<Identity, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(access_token, &self.decoding, &validation)
            .map_err(|_| AuthError::BadAccessToken)?
            .claims;
        let session = self.store.load::<Session>(claims.sid.as_bytes())?.ok_or(AuthError::SessionRevoked)?;
        if session.revoked {
            return Err(AuthError::SessionRevoked);
        }
        let user = self.user(&claims.name)?.filter(|u| u.id == claims.sub).ok_or(AuthError::SessionRevoked)?;
        if user.disabled {
            return Err(AuthError::Disabled);
        }
        Ok(Identity { user_id: user.id, username: user.username, session_id: claims.sid, is_admin: user.is_admin })
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
        auth.ensure_admin(Some("a long passphrase".into())).expect("admin");
        let tokens = auth.login("admin", "a long passphrase").expect("login");
        let caller = auth.authenticate(&tokens.access_token).expect("valid");
        auth.logout(caller.session_id).expect("logout");
        assert!(auth.authenticate(&tokens.access_token).is_err());
        assert!(auth.refresh(&tokens.refresh_token).is_err());
    }

    #[test]
    fn weak_passwords_are_refused_with_the_reason() {
        for (password, reason) in
            [("short", "at least 12"), ("aaaaaaaaaaaaaaaa", "5 different"), ("my-alice-password", "user name")]
        {
            let error = check_password_policy("alice", password).expect_err(password).to_string();
            assert!(error.contains(reason), "{password}: {error}");
        }
        check_password_policy("alice", "correct horse battery").expect("strong enough");
    }

    #[test]
    fn a_disabled_user_can_neither_sign_in_nor_use_a_live_session() {
        let (_dir, auth) = auth();
        let user = auth.create_user("bob", "correct horse battery", false).expect("created");
        let tokens = auth.login("bob", "correct horse battery").expect("login");
        auth.update_user(&user, |u| u.disabled = true).expect("disabled");
        assert!(matches!(auth.authenticate(&tokens.access_token), Err(AuthError::Disabled)));
        assert!(matches!(auth.login("bob", "correct horse battery"), Err(AuthError::Disabled)));
        assert!(matches!(auth.create_user("bob", "another good one", false), Err(AuthError::UserExists(_))));
    }

    #[test]
    fn a_new_password_signs_out_every_other_session() {
        let (_dir, auth) = auth();
        let user = auth.create_user("bob", "correct horse battery", false).expect("created");
        let here = auth.login("bob", "correct horse battery").expect("login");
        let elsewhere = auth.login("bob", "correct horse battery").expect("login");
        let session = auth.authenticate(&here.access_token).expect("valid").session_id;
        auth.set_password(&user, "staple battery horse", Some(session)).expect("changed");
        assert!(auth.authenticate(&here.access_token).is_ok());
        assert!(matches!(auth.authenticate(&elsewhere.access_token), Err(AuthError::SessionRevoked)));
        assert!(auth.login("bob", "staple battery horse").is_ok());
    }
}
