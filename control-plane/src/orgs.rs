//! Organisations (tenants) and memberships. Every target, join token, stack, deployment, API
//! token and audit entry belongs to one organisation; a user acts inside one organisation per
//! request, with the role their membership gives them there.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::now_unix_s;
use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};

/// Roles in increasing order of power: each may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything in the organisation.
    Viewer,
    /// Also deploys, rolls back, removes deployments, reads logs, tests targets.
    Operator,
    /// Also edits stacks, adds and revokes targets, manages members below owner, reads the
    /// organisation's audit trail.
    Admin,
    /// Also grants and takes away ownership, renames and deletes the organisation.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub created_at_unix_s: i64,
    /// Members act here only with a second factor: a session whose sign-in passed one, or an
    /// API token of a user who has one.
    pub require_2fa: bool,
}

impl Record for Org {
    const TABLE: Table = Table::Orgs;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: the second-factor requirement.
        (version == 1).then(|| {
            record["require_2fa"] = false.into();
            record
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub since_unix_s: i64,
}

impl Record for Membership {
    const TABLE: Table = Table::Memberships;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        membership_key(self.org_id, self.user_id)
    }
}

fn membership_key(org_id: Uuid, user_id: Uuid) -> Vec<u8> {
    [org_id.as_bytes().as_slice(), user_id.as_bytes()].concat()
}

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("name must be 1 to 64 characters")]
    BadName,
    #[error("an organisation named {0:?} already exists")]
    NameTaken(String),
    #[error("an organisation keeps at least one owner")]
    LastOwner,
    #[error("the organisation changed meanwhile; try again")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_name(store: &dyn Store, name: &str, except: Option<Uuid>) -> Result<(), OrgError> {
    if name.trim().is_empty() || name.chars().count() > 64 {
        return Err(OrgError::BadName);
    }
    if list(store)?.iter().any(|o| o.name.eq_ignore_ascii_case(name) && Some(o.id) != except) {
        return Err(OrgError::NameTaken(name.to_owned()));
    }
    Ok(())
}

/// Creates an organisation with its first owner, in one transaction.
pub fn create(store: &dyn Store, name: &str, owner_id: Uuid, owner_name: &str) -> Result<Org, OrgError> {
    check_name(store, name, None)?;
    let now = now_unix_s();
    let org = Org { id: Uuid::now_v7(), name: name.to_owned(), created_at_unix_s: now, require_2fa: false };
    let owner = Membership {
        org_id: org.id,
        user_id: owner_id,
        username: owner_name.to_owned(),
        role: Role::Owner,
        since_unix_s: now,
    };
    store.atomic(
        &[],
        &[
            Write { table: Table::Orgs, key: org.key(), value: Some(org.encode()) },
            Write { table: Table::Memberships, key: owner.key(), value: Some(owner.encode()) },
        ],
    )?;
    Ok(org)
}

/// Changes an organisation's settings; a new name must be free.
pub fn update(store: &dyn Store, org: &Org, change: impl FnOnce(&mut Org)) -> Result<Org, OrgError> {
    let mut changed = org.clone();
    change(&mut changed);
    if changed.name != org.name {
        check_name(store, &changed.name, Some(org.id))?;
    }
    if !store.replace(org, &changed)? {
        return Err(OrgError::Conflict);
    }
    Ok(changed)
}

pub fn get(store: &dyn Store, id: Uuid) -> Result<Option<Org>, StoreError> {
    store.load(id.as_bytes())
}

pub fn list(store: &dyn Store) -> Result<Vec<Org>, StoreError> {
    store.load_all()
}

pub fn membership(store: &dyn Store, org_id: Uuid, user_id: Uuid) -> Result<Option<Membership>, StoreError> {
    store.load(&membership_key(org_id, user_id))
}

pub fn members(store: &dyn Store, org_id: Uuid) -> Result<Vec<Membership>, StoreError> {
    store.load_prefix(org_id.as_bytes())
}

/// Every membership of a user, oldest organisation first (organisation ids are time-ordered).
pub fn memberships_of(store: &dyn Store, user_id: Uuid) -> Result<Vec<Membership>, StoreError> {
    Ok(store.load_all::<Membership>()?.into_iter().filter(|m| m.user_id == user_id).collect())
}

/// Adds a member or changes a member's role. Demoting the last owner is refused; the check
/// and the write are one transaction, so two concurrent demotions cannot both pass.
pub fn set_member(store: &dyn Store, membership: &Membership) -> Result<(), OrgError> {
    let current = self::membership(store, membership.org_id, membership.user_id)?;
    let demoting_an_owner = current.as_ref().is_some_and(|m| m.role == Role::Owner) && membership.role != Role::Owner;
    change_members(store, membership.org_id, current.as_ref(), Some(membership), demoting_an_owner)
}

/// Removes a member; the last owner cannot be removed.
pub fn remove_member(store: &dyn Store, org_id: Uuid, user_id: Uuid) -> Result<bool, OrgError> {
    let Some(current) = membership(store, org_id, user_id)? else {
        return Ok(false);
    };
    change_members(store, org_id, Some(&current), None, current.role == Role::Owner)?;
    Ok(true)
}

fn change_members(
    store: &dyn Store,
    org_id: Uuid,
    current: Option<&Membership>,
    next: Option<&Membership>,
    losing_an_owner: bool,
) -> Result<(), OrgError> {
    let key = current.or(next).map(Record::key).unwrap_or_default();
    let mut checks = vec![Check { table: Table::Memberships, key: key.clone(), expected: current.map(Record::encode) }];
    if losing_an_owner {
        // Every other owner must still be there, unchanged, when this commits.
        let others: Vec<Membership> =
            members(store, org_id)?.into_iter().filter(|m| m.role == Role::Owner && m.key() != key).collect();
        if others.is_empty() {
            return Err(OrgError::LastOwner);
        }
        checks.extend(others.iter().map(|m| Check {
            table: Table::Memberships,
            key: m.key(),
            expected: Some(m.encode()),
        }));
    }
    let write = Write { table: Table::Memberships, key, value: next.map(Record::encode) };
    if store.atomic(&checks, &[write])? { Ok(()) } else { Err(OrgError::Conflict) }
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

    fn member(org: &Org, name: &str, role: Role) -> Membership {
        Membership { org_id: org.id, user_id: Uuid::now_v7(), username: name.into(), role, since_unix_s: 0 }
    }

    #[test]
    fn the_creator_owns_the_new_organisation_and_names_are_unique() {
        let (_dir, store) = store();
        let owner = Uuid::now_v7();
        let org = create(&store, "Acme", owner, "alice").expect("created");
        assert_eq!(membership(&store, org.id, owner).expect("read").map(|m| m.role), Some(Role::Owner));
        assert!(matches!(create(&store, "acme", owner, "alice"), Err(OrgError::NameTaken(_))));
        assert!(matches!(create(&store, " ", owner, "alice"), Err(OrgError::BadName)));
    }

    #[test]
    fn the_last_owner_can_be_neither_demoted_nor_removed() {
        let (_dir, store) = store();
        let owner = Uuid::now_v7();
        let org = create(&store, "Acme", owner, "alice").expect("created");
        let alice = membership(&store, org.id, owner).expect("read").expect("member");
        assert!(matches!(
            set_member(&store, &Membership { role: Role::Admin, ..alice.clone() }),
            Err(OrgError::LastOwner)
        ));
        assert!(matches!(remove_member(&store, org.id, owner), Err(OrgError::LastOwner)));

        let bob = member(&org, "bob", Role::Owner);
        set_member(&store, &bob).expect("second owner");
        set_member(&store, &Membership { role: Role::Viewer, ..alice }).expect("alice may step down now");
        assert!(matches!(remove_member(&store, org.id, bob.user_id), Err(OrgError::LastOwner)));
        assert_eq!(members(&store, org.id).expect("members").len(), 2);
    }
}
