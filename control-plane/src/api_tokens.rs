//! API tokens for automation: named, scoped, optionally expiring, shown once and stored as a
//! hash, with their last use recorded. A token acts for the user who made it, within its scope.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::now_unix_s;
use crate::secrets;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

pub const PREFIX: &str = "wft";
/// Last use is written at most this often per token (seconds).
const LAST_USE_RESOLUTION: i64 = 60;

/// What a token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every read.
    Read,
    /// Also deploy, roll back, remove deployments, test targets.
    Deploy,
    /// Everything the user may do, except making tokens.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    /// The organisation the token acts in; it works only while its user is a member there.
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub scope: Scope,
    pub secret_hash: String,
    pub created_at_unix_s: i64,
    pub expires_at_unix_s: Option<i64>,
    pub last_used_at_unix_s: Option<i64>,
    pub revoked: bool,
}

impl Record for ApiToken {
    const TABLE: Table = Table::ApiTokens;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the API token is invalid, expired or revoked")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn create(
    store: &dyn Store,
    org_id: Uuid,
    user_id: Uuid,
    username: &str,
    name: &str,
    scope: Scope,
    ttl_s: Option<u64>,
) -> Result<(ApiToken, String), StoreError> {
    let minted = secrets::mint(PREFIX, Uuid::now_v7());
    let now = now_unix_s();
    let token = ApiToken {
        id: minted.id,
        name: name.to_owned(),
        org_id,
        user_id,
        username: username.to_owned(),
        scope,
        secret_hash: minted.hash,
        created_at_unix_s: now,
        expires_at_unix_s: ttl_s.map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        last_used_at_unix_s: None,
        revoked: false,
    };
    store.save(&token)?;
    Ok((token, minted.token))
}

/// Whether a bearer string is an API token (and not a session's JWT).
pub fn is_api_token(bearer: &str) -> bool {
    bearer.starts_with(PREFIX) && bearer.as_bytes().get(PREFIX.len()) == Some(&b'_')
}

/// The token id in a bearer string, without checking anything: for labelling audit entries.
pub fn unverified_id(bearer: &str) -> Option<Uuid> {
    secrets::parse(PREFIX, bearer).map(|(id, _)| id)
}

/// Checks a presented token and records its use.
pub fn authenticate(store: &dyn Store, presented: &str) -> Result<ApiToken, TokenError> {
    let (id, secret) = secrets::parse(PREFIX, presented).ok_or(TokenError::Invalid)?;
    let token = store.load::<ApiToken>(id.as_bytes())?.ok_or(TokenError::Invalid)?;
    let now = now_unix_s();
    if !secrets::matches(secret, &token.secret_hash)
        || token.revoked
        || token.expires_at_unix_s.is_some_and(|at| now >= at)
    {
        return Err(TokenError::Invalid);
    }
    if token.last_used_at_unix_s.is_none_or(|at| now - at >= LAST_USE_RESOLUTION) {
        store.save_relaxed(&ApiToken { last_used_at_unix_s: Some(now), ..token.clone() })?;
    }
    Ok(token)
}

pub fn list_for(store: &dyn Store, user_id: Uuid) -> Result<Vec<ApiToken>, StoreError> {
    Ok(store.load_all::<ApiToken>()?.into_iter().filter(|t| t.user_id == user_id).collect())
}

/// Revokes one of the user's tokens. False when the user has no such token.
pub fn revoke(store: &dyn Store, user_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
    match store.load::<ApiToken>(id.as_bytes())? {
        Some(token) if token.user_id == user_id => store.save(&ApiToken { revoked: true, ..token }).map(|()| true),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    #[test]
    fn a_token_authenticates_until_revoked_and_never_after_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let user = Uuid::now_v7();
        let (record, token) =
            create(&store, Uuid::nil(), user, "ci", "deploy-bot", Scope::Deploy, None).expect("create");
        assert!(is_api_token(&token));
        assert_eq!(authenticate(&store, &token).expect("valid").scope, Scope::Deploy);
        assert!(list_for(&store, user).expect("list")[0].last_used_at_unix_s.is_some(), "last use recorded");
        assert!(!revoke(&store, Uuid::now_v7(), record.id).expect("revoke"), "another user cannot revoke it");
        assert!(revoke(&store, user, record.id).expect("revoke"));
        assert!(matches!(authenticate(&store, &token), Err(TokenError::Invalid)));
        let (_, expired) = create(&store, Uuid::nil(), user, "ci", "old", Scope::Read, Some(0)).expect("create");
        assert!(matches!(authenticate(&store, &expired), Err(TokenError::Invalid)));
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(matches!(authenticate(&store, &forged), Err(TokenError::Invalid)));
    }

    #[test]
    fn the_secret_is_not_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let (_, token) = create(&store, Uuid::nil(), Uuid::now_v7(), "u", "t", Scope::Admin, None).expect("create");
        // The secret may itself hold '_' (URL-safe base64): take all of it, not its last piece.
        let (_, secret) = crate::secrets::parse(PREFIX, &token).expect("well formed");
        for (_, value) in store.scan(Table::ApiTokens).expect("scan") {
            assert!(!String::from_utf8_lossy(&value).contains(secret));
        }
    }
}
