//! Join tokens: what a new agent presents, once, to enroll. Expiring, N-use, revocable, and
//! stored only as a hash.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::now_unix_s;
use crate::secrets;
use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};

const PREFIX: &str = "wfj";

#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("the join token is malformed (expected wfj_<id>_<secret>)")]
    Malformed,
    #[error("the join token is not valid for this control plane")]
    Unknown,
    #[error("the join token has been revoked")]
    Revoked,
    #[error("the join token expired")]
    Expired,
    #[error("the join token has been used up ({uses} of {uses} uses)")]
    UsedUp { uses: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: Uuid,
    /// Agents enrolled with this token join this organisation.
    pub org_id: Uuid,
    pub secret_hash: String,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub expires_at_unix_s: i64,
    pub uses_allowed: u32,
    pub uses: u32,
    pub revoked: bool,
    /// What the targets it enrolls start with.
    pub assign: Assign,
}

/// What a join token gives the targets it enrolls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assign {
    /// The target's name, in place of the host's own (for bulk onboarding).
    pub name: Option<String>,
    pub labels: crate::labels::Labels,
}

impl Record for JoinToken {
    const TABLE: Table = Table::JoinTokens;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: names and labels for the targets.
        (version == 1).then(|| {
            record["assign"] = serde_json::json!({ "name": null, "labels": {} });
            record
        })
    }
}

impl JoinToken {
    pub fn is_usable(&self, now: i64) -> bool {
        !self.revoked && now < self.expires_at_unix_s && self.uses < self.uses_allowed
    }
}

/// Creates a token; the returned string is shown once and never stored.
pub fn create(
    store: &dyn Store,
    org_id: Uuid,
    created_by: &str,
    ttl: Duration,
    uses: u32,
    assign: Assign,
) -> Result<(JoinToken, String), StoreError> {
    let minted = secrets::mint(PREFIX, Uuid::now_v7());
    let now = now_unix_s();
    let token = JoinToken {
        id: minted.id,
        org_id,
        secret_hash: minted.hash,
        created_by: created_by.into(),
        created_at_unix_s: now,
        expires_at_unix_s: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        uses_allowed: uses.max(1),
        uses: 0,
        revoked: false,
        assign,
    };
    store.save(&token)?;
    Ok((token, minted.token))
}

/// An organisation's join tokens.
pub fn list(store: &dyn Store, org_id: Uuid) -> Result<Vec<JoinToken>, StoreError> {
    Ok(store.load_all::<JoinToken>()?.into_iter().filter(|t| t.org_id == org_id).collect())
}

/// Revokes one of an organisation's tokens. Returns false when it has no such token.
pub fn revoke(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
    match store.load::<JoinToken>(id.as_bytes())? {
        Some(token) if token.org_id == org_id => store.save(&JoinToken { revoked: true, ..token }).map(|()| true),
        _ => Ok(false),
    }
}

/// A token that was checked and may be spent. Spend it with [`Redemption::spend`], which
/// commits one use together with the caller's own writes, or with nothing at all.
#[derive(Debug)]
pub struct Redemption {
    pub token: JoinToken,
}

/// Checks a presented token without using it.
pub fn check(store: &dyn Store, presented: &str) -> Result<Redemption, JoinTokenError> {
    let (id, secret) = secrets::parse(PREFIX, presented).ok_or(JoinTokenError::Malformed)?;
    let token = store.load::<JoinToken>(id.as_bytes())?.ok_or(JoinTokenError::Unknown)?;
    if !secrets::matches(secret, &token.secret_hash) {
        return Err(JoinTokenError::Unknown);
    }
    if token.revoked {
        return Err(JoinTokenError::Revoked);
    }
    if now_unix_s() >= token.expires_at_unix_s {
        return Err(JoinTokenError::Expired);
    }
    if token.uses >= token.uses_allowed {
        return Err(JoinTokenError::UsedUp { uses: token.uses_allowed });
    }
    Ok(Redemption { token })
}

impl Redemption {
    /// Uses the token once and applies `writes` in the same transaction. Returns false, having
    /// written nothing, when the token changed since it was checked (another enrollment used it
    /// meanwhile): check it again and retry.
    pub fn spend(&self, store: &dyn Store, writes: &[Write]) -> Result<bool, JoinTokenError> {
        let spent = JoinToken { uses: self.token.uses + 1, ..self.token.clone() };
        let mut all = vec![Write { table: Table::JoinTokens, key: spent.key(), value: Some(spent.encode()) }];
        all.extend_from_slice(writes);
        let check = Check { table: Table::JoinTokens, key: self.token.key(), expected: Some(self.token.encode()) };
        Ok(store.atomic(&[check], &all)?)
    }
}

/// Checks the token and spends one use together with `writes`, retrying while concurrent
/// enrollments with the same token win the race; fails once it is really used up (or revoked
/// or expired meanwhile).
pub fn redeem(
    store: &dyn Store,
    presented: &str,
    writes: impl Fn(&JoinToken) -> Vec<Write>,
) -> Result<JoinToken, JoinTokenError> {
    loop {
        let redemption = check(store, presented)?;
        if redemption.spend(store, &writes(&redemption.token))? {
            return Ok(redemption.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn a_two_use_token_enrolls_twice_then_is_used_up() {
        let (_dir, store) = store();
        let (_, token) =
            create(&store, Uuid::nil(), "admin", Duration::from_secs(60), 2, Assign::default()).expect("create");
        for _ in 0..2 {
            assert!(check(&store, &token).expect("usable").spend(&store, &[]).expect("spent"));
        }
        assert!(matches!(check(&store, &token), Err(JoinTokenError::UsedUp { uses: 2 })));
    }

    #[test]
    fn concurrent_enrollments_each_get_a_use_until_none_is_left() {
        let (_dir, store) = store();
        let (_, token) =
            create(&store, Uuid::nil(), "admin", Duration::from_secs(60), 40, Assign::default()).expect("create");
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (store, token) = (store.clone(), token.clone());
                std::thread::spawn(move || redeem(store.as_ref(), &token, |_| vec![]).is_ok())
            })
            .collect();
        let succeeded = threads.into_iter().map(|t| t.join()).filter(|joined| matches!(joined, Ok(true))).count();
        assert_eq!(succeeded, 40);
    }

    #[test]
    fn a_stale_redemption_cannot_spend_a_use_twice() {
        let (_dir, store) = store();
        let (_, token) =
            create(&store, Uuid::nil(), "admin", Duration::from_secs(60), 1, Assign::default()).expect("create");
        let a = check(&store, &token).expect("usable");
        let b = check(&store, &token).expect("usable");
        assert!(a.spend(&store, &[]).expect("first wins"));
        assert!(!b.spend(&store, &[]).expect("the stale one writes nothing"));
        assert!(matches!(redeem(&store, &token, |_| vec![]), Err(JoinTokenError::UsedUp { .. })));
    }

    #[test]
    fn revoked_expired_wrong_and_malformed_tokens_are_refused() {
        let (_dir, store) = store();
        let (record, token) =
            create(&store, Uuid::nil(), "admin", Duration::from_secs(60), 5, Assign::default()).expect("create");
        let (_, expired) = create(&store, Uuid::nil(), "admin", Duration::ZERO, 5, Assign::default()).expect("create");
        assert!(matches!(check(&store, &expired), Err(JoinTokenError::Expired)));
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(matches!(check(&store, &forged), Err(JoinTokenError::Unknown)));
        assert!(matches!(check(&store, "hello"), Err(JoinTokenError::Malformed)));
        assert!(!revoke(&store, Uuid::now_v7(), record.id).expect("revoke"), "another organisation cannot");
        assert!(revoke(&store, Uuid::nil(), record.id).expect("revoke"));
        assert!(matches!(check(&store, &token), Err(JoinTokenError::Revoked)));
    }

    #[test]
    fn the_token_string_is_not_stored() {
        let (_dir, store) = store();
        let (_, token) =
            create(&store, Uuid::nil(), "admin", Duration::from_secs(60), 1, Assign::default()).expect("create");
        // The secret may itself hold '_' (URL-safe base64): take all of it, not its last piece.
        let (_, secret) = crate::secrets::parse(PREFIX, &token).expect("well formed");
        for (_, value) in store.scan(Table::JoinTokens).expect("scan") {
            assert!(!String::from_utf8_lossy(&value).contains(secret));
        }
    }
}
