//! Stacks: Compose YAML plus variables, saved as immutable numbered versions. A version is only
//! stored after the pipeline in [`crate::compose`] accepted it, so every stored version deploys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::StackSpec;

use crate::auth::now_unix_s;
use crate::compose::{self, Diagnostic, Invalid};
use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub current_version: u32,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

impl Record for Stack {
    const TABLE: Table = Table::Stacks;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackVersion {
    pub stack_id: Uuid,
    pub version: u32,
    pub compose: String,
    pub variables: BTreeMap<String, String>,
    pub created_by: String,
    pub created_at_unix_s: i64,
}

impl Record for StackVersion {
    const TABLE: Table = Table::StackVersions;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        version_key(self.stack_id, self.version)
    }
}

fn version_key(stack_id: Uuid, version: u32) -> Vec<u8> {
    let mut key = stack_id.as_bytes().to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("the Compose file is not valid: {0}")]
    Invalid(Invalid),
    #[error("a stack named {0:?} already exists")]
    NameTaken(String),
    #[error("name must be 1 to 64 characters")]
    BadName,
    #[error("the stack changed while saving; retry")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a successful save returns.
#[derive(Debug)]
pub struct Saved {
    pub stack: Stack,
    pub version: StackVersion,
    pub spec: StackSpec,
    pub warnings: Vec<Diagnostic>,
}

pub fn validate(
    name: &str,
    compose_yaml: &str,
    variables: &BTreeMap<String, String>,
) -> Result<compose::Parsed, StackError> {
    compose::parse(compose_yaml, name, variables).map_err(StackError::Invalid)
}

/// Names are unique within an organisation.
fn check_name(store: &dyn Store, org_id: Uuid, name: &str, except: Option<Uuid>) -> Result<(), StackError> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(StackError::BadName);
    }
    if list(store, org_id)?.iter().any(|s| s.name == name && Some(s.id) != except) {
        return Err(StackError::NameTaken(name.to_owned()));
    }
    Ok(())
}

pub fn create(
    store: &dyn Store,
    org_id: Uuid,
    name: &str,
    compose_yaml: &str,
    variables: BTreeMap<String, String>,
    by: &str,
) -> Result<Saved, StackError> {
    check_name(store, org_id, name, None)?;
    let parsed = validate(name, compose_yaml, &variables)?;
    let now = now_unix_s();
    let stack = Stack {
        id: Uuid::now_v7(),
        org_id,
        name: name.to_owned(),
        current_version: 1,
        created_by: by.into(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    let version = StackVersion {
        stack_id: stack.id,
        version: 1,
        compose: compose_yaml.to_owned(),
        variables,
        created_by: by.into(),
        created_at_unix_s: now,
    };
    let written = store.atomic(
        &[Check { table: Table::Stacks, key: stack.key(), expected: None }],
        &[
            Write { table: Table::Stacks, key: stack.key(), value: Some(stack.encode()) },
            Write { table: Table::StackVersions, key: version.key(), value: Some(version.encode()) },
        ],
    )?;
    if !written {
        return Err(StackError::Conflict);
    }
    Ok(Saved { stack, version, spec: parsed.spec, warnings: parsed.warnings })
}

/// Saves a new version (and optionally a new name). Compose and variables default to the
/// current version's.
pub fn update(
    store: &dyn Store,
    stack: &Stack,
    name: Option<&str>,
    compose_yaml: Option<&str>,
    variables: Option<BTreeMap<String, String>>,
    by: &str,
) -> Result<Saved, StackError> {
    let current = version(store, stack.id, stack.current_version)?.ok_or(StackError::Conflict)?;
    let name = name.unwrap_or(&stack.name);
    check_name(store, stack.org_id, name, Some(stack.id))?;
    let compose_yaml = compose_yaml.unwrap_or(&current.compose);
    let variables = variables.unwrap_or(current.variables);
    let parsed = validate(name, compose_yaml, &variables)?;
    let now = now_unix_s();
    let next = StackVersion {
        stack_id: stack.id,
        version: stack.current_version + 1,
        compose: compose_yaml.to_owned(),
        variables,
        created_by: by.into(),
        created_at_unix_s: now,
    };
    let updated =
        Stack { name: name.to_owned(), current_version: next.version, updated_at_unix_s: now, ..stack.clone() };
    let written = store.atomic(
        &[Check { table: Table::Stacks, key: stack.key(), expected: Some(stack.encode()) }],
        &[
            Write { table: Table::Stacks, key: updated.key(), value: Some(updated.encode()) },
            Write { table: Table::StackVersions, key: next.key(), value: Some(next.encode()) },
        ],
    )?;
    if !written {
        return Err(StackError::Conflict);
    }
    Ok(Saved { stack: updated, version: next, spec: parsed.spec, warnings: parsed.warnings })
}

pub fn get(store: &dyn Store, id: Uuid) -> Result<Option<Stack>, StoreError> {
    store.load(id.as_bytes())
}

/// The stack with this id if it belongs to the organisation (see [`crate::agents::get_in`]).
pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Stack>, StoreError> {
    Ok(get(store, id)?.filter(|s| s.org_id == org_id))
}

/// An organisation's stacks.
pub fn list(store: &dyn Store, org_id: Uuid) -> Result<Vec<Stack>, StoreError> {
    Ok(store.load_all::<Stack>()?.into_iter().filter(|s| s.org_id == org_id).collect())
}

pub fn version(store: &dyn Store, stack_id: Uuid, version: u32) -> Result<Option<StackVersion>, StoreError> {
    store.load(&version_key(stack_id, version))
}

pub fn versions(store: &dyn Store, stack_id: Uuid) -> Result<Vec<StackVersion>, StoreError> {
    store.load_prefix(stack_id.as_bytes())
}

/// The typed spec of a stored version. Stored versions were valid when saved; parsing again
/// keeps the store free of derived data.
pub fn spec_of(stack: &Stack, version: &StackVersion) -> Result<StackSpec, StackError> {
    Ok(validate(&stack.name, &version.compose, &version.variables)?.spec)
}

/// Deletes a stack and all its versions in one transaction.
pub fn delete(store: &dyn Store, stack: &Stack) -> Result<(), StoreError> {
    let mut writes: Vec<Write> = versions(store, stack.id)?
        .iter()
        .map(|v| Write { table: Table::StackVersions, key: v.key(), value: None })
        .collect();
    writes.push(Write { table: Table::Stacks, key: stack.key(), value: None });
    store.atomic(&[], &writes).map(drop)
}
