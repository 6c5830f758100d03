//! Stacks: Compose YAML plus variables, saved as immutable numbered versions. A version is only
//! stored after the pipeline in [`crate::compose`] accepted it, so every stored version deploys.
//!
//! Secret variables (passwords, keys) interpolate like the others but are sealed with the
//! master key before they are stored, and only their names ever leave this module towards the
//! API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::StackSpec;

use crate::auth::now_unix_s;
use crate::compose::{self, Diagnostic, Invalid};
use crate::sealing::MasterKey;
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
    /// Secret variables: name → value sealed for [`secret_context`].
    pub secrets: BTreeMap<String, String>,
    pub created_by: String,
    pub created_at_unix_s: i64,
}

impl Record for StackVersion {
    const TABLE: Table = Table::StackVersions;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        version_key(self.stack_id, self.version)
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: secret variables.
        (version == 1).then(|| {
            record["secrets"] = serde_json::json!({});
            record
        })
    }
}

/// What a version holds, as its author wrote it.
#[derive(Debug, Clone, Default)]
pub struct Content {
    pub compose: String,
    pub variables: BTreeMap<String, String>,
    /// Secret variables, in plain text here; sealed before they are stored.
    pub secrets: BTreeMap<String, String>,
}

fn secret_context(stack_id: Uuid, name: &str) -> String {
    format!("stack-secret:{stack_id}:{name}")
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
    #[error("{name:?} is not a variable name (letters, digits and '_', not starting with a digit)")]
    BadVariableName { field: &'static str, name: String },
    #[error("{0:?} is both a variable and a secret; keep one")]
    SecretClash(String),
    #[error("a secret of this stack cannot be opened with this control plane's master key")]
    Sealed,
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

/// Variable names as Compose interpolation reads them: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Runs the pipeline over a version's content, secrets interpolating like variables.
pub fn validate(name: &str, content: &Content) -> Result<compose::Parsed, StackError> {
    for (field, names) in [("variables", &content.variables), ("secrets", &content.secrets)] {
        if let Some(bad) = names.keys().find(|k| !is_variable_name(k)) {
            return Err(StackError::BadVariableName { field, name: bad.clone() });
        }
    }
    if let Some(clash) = content.secrets.keys().find(|k| content.variables.contains_key(*k)) {
        return Err(StackError::SecretClash(clash.clone()));
    }
    let mut all = content.variables.clone();
    all.extend(content.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    compose::parse(&content.compose, name, &all).map_err(StackError::Invalid)
}

fn seal_secrets(key: &MasterKey, stack_id: Uuid, secrets: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    secrets
        .iter()
        .map(|(name, value)| (name.clone(), key.seal(&secret_context(stack_id, name), value.as_bytes())))
        .collect()
}

/// A stored version's content, its secrets opened.
pub fn content_of(key: &MasterKey, version: &StackVersion) -> Result<Content, StackError> {
    let secrets = version
        .secrets
        .iter()
        .map(|(name, sealed)| {
            let value =
                key.open_string(&secret_context(version.stack_id, name), sealed).map_err(|_| StackError::Sealed)?;
            Ok((name.clone(), value))
        })
        .collect::<Result<_, StackError>>()?;
    Ok(Content { compose: version.compose.clone(), variables: version.variables.clone(), secrets })
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
    key: &MasterKey,
    org_id: Uuid,
    name: &str,
    content: Content,
    by: &str,
) -> Result<Saved, StackError> {
    check_name(store, org_id, name, None)?;
    let parsed = validate(name, &content)?;
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
        secrets: seal_secrets(key, stack.id, &content.secrets),
        compose: content.compose,
        variables: content.variables,
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

/// Saves `content` as the next version (and optionally a new name).
pub fn update(
    store: &dyn Store,
    key: &MasterKey,
    stack: &Stack,
    name: Option<&str>,
    content: Content,
    by: &str,
) -> Result<Saved, StackError> {
    let name = name.unwrap_or(&stack.name);
    check_name(store, stack.org_id, name, Some(stack.id))?;
    let parsed = validate(name, &content)?;
    let now = now_unix_s();
    let next = StackVersion {
        stack_id: stack.id,
        version: stack.current_version + 1,
        secrets: seal_secrets(key, stack.id, &content.secrets),
        compose: content.compose,
        variables: content.variables,
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
pub fn spec_of(key: &MasterKey, stack: &Stack, version: &StackVersion) -> Result<StackSpec, StackError> {
    Ok(parsed_of(key, stack, version)?.spec)
}

/// As [`spec_of`], with what only some platforms apply (the Swarm parts).
pub fn parsed_of(key: &MasterKey, stack: &Stack, version: &StackVersion) -> Result<compose::Parsed, StackError> {
    validate(&stack.name, &content_of(key, version)?)
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
