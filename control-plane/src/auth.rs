//! Local accounts and sessions: argon2id password hashes, short-lived JWT access tokens, and
//! rotating refresh tokens grouped in session families (a reused refresh token revokes its
//! whole family, since only a thief would present an already-rotated one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsutil::read_or_create_secret;
use crate::sealing::MasterKey;
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
    #[error("two-factor authentication is already enabled; disable it first to enrol a new device")]
    TotpAlreadyEnabled,
    #[error("two-factor authentication is not set up for this account")]
    TotpNotEnrolled,
    #[error("the code is wrong, expired or already used")]
    BadSecondFactor,
    #[error("the sign-in step expired or is invalid; sign in with your password again")]
    BadMfaToken,
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
    /// The second factor, when one is enrolled.
    pub totp: Option<crate::totp::TotpState>,
    /// Set for accounts made by single sign-on: they sign in through their provider only (their
    /// password hash matches no password).
    pub sso: Option<SsoIdentity>,
    /// The dashboard's language for this user (`en`, `fr`); the browser's when unset.
    pub locale: Option<String>,
}

/// Who an account is at its identity provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsoIdentity {
    pub issuer: String,
    pub subject: String,
}

impl User {
    pub fn has_second_factor(&self) -> bool {
        self.totp.as_ref().is_some_and(|t| t.enabled)
    }
}

impl Record for User {
    const TABLE: Table = Table::Users;
    const VERSION: u64 = 3;
    fn key(&self) -> Vec<u8> {
        self.username.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: the second factor and single sign-on; v3: the language.
        if version == 1 {
            record["totp"] = serde_json::Value::Null;
            record["sso"] = serde_json::Value::Null;
        }
        (version <= 2).then(|| {
            record["locale"] = serde_json::Value::Null;
            record
        })
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
    /// Whether the sign-in that started the family passed a second factor (a TOTP code, or an
    /// identity provider that reported one).
    pub mfa: bool,
}

impl Record for Session {
    const TABLE: Table = Table::Sessions;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: whether the sign-in passed a second factor.
        (version == 1).then(|| {
            record["mfa"] = false.into();
            record
        })
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

/// The proof, between the two steps of a sign-in, that the password was right. Its audience
/// keeps it from passing for an access token (which also needs `sid`).
#[derive(Debug, Serialize, Deserialize)]
struct MfaClaims {
    sub: Uuid,
    name: String,
    aud: String,
    iat: i64,
    exp: i64,
}

const MFA_AUDIENCE: &str = "windflow-second-factor";
/// How long the second step of a sign-in may wait for its code.
pub const MFA_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// What a correct password leads to.
#[derive(Debug)]
pub enum Login {
    /// Signed in.
    Tokens(Tokens),
    /// The account has a second factor: the sign-in continues with a code and this token.
    SecondFactorRequired { mfa_token: String },
}

/// Whose signed-in session an access token belongs to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: Uuid,
    pub username: String,
    pub session_id: Uuid,
    pub is_admin: bool,
    /// The session's sign-in passed a second factor.
    pub mfa: bool,
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
    /// The credentials passed a second factor: a session whose sign-in did, or an API token of
    /// a user who has one enabled.
    pub second_factor: bool,
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
    crate::passwords::hash(password).map_err(|e| AuthError::Hash(e.to_string()))
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
    crate::passwords::verify(password, hash)
}

/// The account service.
pub struct Auth {
    store: Arc<dyn Store>,
    master_key: Arc<MasterKey>,
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
    pub fn new(store: Arc<dyn Store>, data_dir: &Path, master_key: Arc<MasterKey>) -> Result<Self, AuthError> {
        let secret = read_or_create_secret(&data_dir.join("jwt.key"), || rand::random::<[u8; 32]>().to_vec())
            .map_err(|e| AuthError::Store(StoreError::Backend(format!("jwt.key: {e}"))))?;
        Ok(Self {
            store,
            master_key,
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
            totp: None,
            sso: None,
            locale: None,
        };
        let created = self.store.atomic(
            &[Check { table: Table::Users, key: user.key(), expected: None }],
            &[Write { table: Table::Users, key: user.key(), value: Some(user.encode()) }],
        )?;
        if created { Ok(user) } else { Err(AuthError::UserExists(username.to_owned())) }
    }

    /// Makes the account of someone who signs in through an identity provider. It has no
    /// password: its hash matches none.
    pub fn create_sso_user(&self, username: &str, identity: SsoIdentity) -> Result<User, AuthError> {
        check_username(username)?;
        let user = User {
            id: Uuid::now_v7(),
            username: username.to_owned(),
            password_hash: "!sso".into(),
            is_admin: false,
            created_at_unix_s: now_unix_s(),
            disabled: false,
            totp: None,
            sso: Some(identity),
            locale: None,
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

    pub fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    /// The first step of a sign-in: the password. Accounts with a second factor get an
    /// `mfa_token` for [`complete_login`](Self::complete_login) instead of a session.
    pub fn login(&self, username: &str, password: &str) -> Result<Login, AuthError> {
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
        if !user.has_second_factor() {
            return Ok(Login::Tokens(self.start_session(&user, false)?));
        }
        let now = now_unix_s();
        let claims = MfaClaims {
            sub: user.id,
            name: user.username,
            aud: MFA_AUDIENCE.into(),
            iat: now,
            exp: now + MFA_TOKEN_TTL.as_secs() as i64,
        };
        let mfa_token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::BadMfaToken)?;
        Ok(Login::SecondFactorRequired { mfa_token })
    }

    /// The user an `mfa_token` was issued for, if it is valid and unexpired.
    pub fn mfa_subject(&self, mfa_token: &str) -> Result<String, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[MFA_AUDIENCE]);
        let claims = jsonwebtoken::decode::<MfaClaims>(mfa_token, &self.decoding, &validation)
            .map_err(|_| AuthError::BadMfaToken)?
            .claims;
        Ok(claims.name)
    }

    /// The second step of a sign-in: a TOTP code or a recovery code.
    pub fn complete_login(&self, mfa_token: &str, code: &str) -> Result<Tokens, AuthError> {
        let username = self.mfa_subject(mfa_token)?;
        let user = self.user(&username)?.ok_or(AuthError::BadMfaToken)?;
        if user.disabled {
            return Err(AuthError::Disabled);
        }
        let user = self.verify_second_factor(&user, code)?;
        self.start_session(&user, true)
    }

    /// A new session family for a user whose credentials were checked.
    pub fn start_session(&self, user: &User, mfa: bool) -> Result<Tokens, AuthError> {
        let minted = secrets::mint(REFRESH_PREFIX, Uuid::now_v7());
        let session = Session {
            id: minted.id,
            user_id: user.id,
            username: user.username.clone(),
            current_hash: minted.hash,
            rotated_hashes: vec![],
            expires_at_unix_s: now_unix_s() + REFRESH_TOKEN_TTL.as_secs() as i64,
            revoked: false,
            mfa,
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
        Ok(Identity {
            user_id: user.id,
            username: user.username,
            session_id: claims.sid,
            is_admin: user.is_admin,
            mfa: session.mfa,
        })
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
    use crate::store::RedbStore;

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("db")).expect("open"));
        let key = Arc::new(MasterKey::from_bytes(&[7; 32]).expect("key"));
        let auth = Auth::new(store, dir.path(), key).expect("auth");
        (dir, auth)
    }

    /// Signs in a user without a second factor.
    fn sign_in(auth: &Auth, username: &str, password: &str) -> Tokens {
        match auth.login(username, password).expect("login") {
            Login::Tokens(tokens) => tokens,
            Login::SecondFactorRequired { .. } => panic!("{username} has a second factor"),
        }
    }

    #[test]
    fn the_first_admin_is_created_once_with_a_generated_password() {
        let (_dir, auth) = auth();
        let password = auth.ensure_admin(None).expect("ok").expect("generated");
        assert!(password.len() >= 16);
        assert_eq!(auth.ensure_admin(None).expect("ok"), None);
        sign_in(&auth, "admin", &password);
        assert!(matches!(auth.login("admin", "wrong"), Err(AuthError::BadCredentials)));
        assert!(matches!(auth.login("nobody", "x"), Err(AuthError::BadCredentials)));
    }

    #[test]
    fn refresh_rotates_and_a_reused_token_revokes_the_family() {
        let (_dir, auth) = auth();
        auth.ensure_admin(Some("correct horse".into())).expect("admin");
        let first = sign_in(&auth, "admin", "correct horse");
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
        let tokens = sign_in(&auth, "admin", "a long passphrase");
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
        let tokens = sign_in(&auth, "bob", "correct horse battery");
        auth.update_user(&user, |u| u.disabled = true).expect("disabled");
        assert!(matches!(auth.authenticate(&tokens.access_token), Err(AuthError::Disabled)));
        assert!(matches!(auth.login("bob", "correct horse battery"), Err(AuthError::Disabled)));
        assert!(matches!(auth.create_user("bob", "another good one", false), Err(AuthError::UserExists(_))));
    }

    #[test]
    fn a_new_password_signs_out_every_other_session() {
        let (_dir, auth) = auth();
        let user = auth.create_user("bob", "correct horse battery", false).expect("created");
        let here = sign_in(&auth, "bob", "correct horse battery");
        let elsewhere = sign_in(&auth, "bob", "correct horse battery");
        let session = auth.authenticate(&here.access_token).expect("valid").session_id;
        auth.set_password(&user, "staple battery horse", Some(session)).expect("changed");
        assert!(auth.authenticate(&here.access_token).is_ok());
        assert!(matches!(auth.authenticate(&elsewhere.access_token), Err(AuthError::SessionRevoked)));
        assert!(auth.login("bob", "staple battery horse").is_ok());
    }

    fn code_now(auth: &Auth, user: &User) -> String {
        let user = auth.user(&user.username).expect("read").expect("user");
        let state = user.totp.clone().expect("enrolled");
        auth.totp_of(&user, &state).expect("seed").generate(now_unix_s() as u64)
    }

    #[test]
    fn with_totp_enabled_a_password_alone_only_starts_a_sign_in() {
        let (_dir, auth) = auth();
        let user = auth.create_user("carol", "correct horse battery", false).expect("created");
        let enrolment = auth.begin_totp(&user).expect("enrolment");
        assert!(enrolment.otpauth_url.contains(&enrolment.secret_base32));
        let user = auth.user("carol").expect("read").expect("user");
        assert!(!user.totp.as_ref().expect("pending").secret_sealed.contains(&enrolment.secret_base32));
        // Not enabled until a first code: the password still signs in alone.
        sign_in(&auth, "carol", "correct horse battery");
        assert!(matches!(auth.enable_totp(&user, "000000"), Err(AuthError::BadSecondFactor)));
        let recovery = auth.enable_totp(&user, &code_now(&auth, &user)).expect("enabled");
        assert_eq!(recovery.len(), 10);

        let Login::SecondFactorRequired { mfa_token } = auth.login("carol", "correct horse battery").expect("step 1")
        else {
            panic!("a password alone signed in")
        };
        assert!(auth.authenticate(&mfa_token).is_err(), "the step-one token is no access token");
        assert!(matches!(auth.complete_login(&mfa_token, "123456"), Err(AuthError::BadSecondFactor)));
        assert!(matches!(auth.complete_login("garbage", "123456"), Err(AuthError::BadMfaToken)));
        // The code of enabling was used already; a recovery code works once.
        let tokens = auth.complete_login(&mfa_token, &recovery[0]).expect("recovery code");
        assert!(auth.authenticate(&tokens.access_token).expect("valid").mfa);
        assert!(matches!(auth.complete_login(&mfa_token, &recovery[0]), Err(AuthError::BadSecondFactor)));
        assert!(auth.complete_login(&mfa_token, &recovery[1].to_uppercase()).is_ok());
    }

    #[test]
    fn a_totp_code_is_accepted_once() {
        let (_dir, auth) = auth();
        let user = auth.create_user("dave", "correct horse battery", false).expect("created");
        auth.begin_totp(&user).expect("enrolment");
        let user = auth.user("dave").expect("read").expect("user");
        // Enabled with the previous step's code, so the current one is still unused.
        let state = user.totp.clone().expect("pending");
        let previous = auth.totp_of(&user, &state).expect("seed").generate(now_unix_s() as u64 - 30);
        auth.enable_totp(&user, &previous).expect("enabled");
        let user = auth.user("dave").expect("read").expect("user");
        let code = code_now(&auth, &user);
        let user = auth.verify_second_factor(&user, &code).expect("first use");
        assert!(matches!(auth.verify_second_factor(&user, &code), Err(AuthError::BadSecondFactor)));
        assert!(matches!(auth.begin_totp(&user), Err(AuthError::TotpAlreadyEnabled)));
        auth.disable_totp(&user).expect("disabled");
        assert!(matches!(auth.login("dave", "correct horse battery"), Ok(Login::Tokens(_))));
    }
}
