//! Enrolled agents (the targets of deployments): enrollment from a join token and a CSR,
//! listing, and revocation records. Live connection state is the hub's, not the store's:
//! heartbeats never touch the disk.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::HostFacts;

use crate::auth::now_unix_s;
use crate::join_tokens::{self, JoinTokenError};
use crate::pki::{Pki, PkiError};
use crate::store::{Record, RecordStore, Store, StoreError, Table, Write};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: Uuid,
    /// The organisation of the join token it enrolled with.
    pub org_id: Uuid,
    /// The name the agent gave at enrollment; the live facts may say otherwise later.
    pub name: String,
    pub enrolled_at_unix_s: i64,
    pub join_token_id: Uuid,
    pub revoked_at_unix_s: Option<i64>,
    /// Updated when a session starts and when it ends, not on every heartbeat.
    pub last_seen_unix_ms: Option<u64>,
    pub facts: Option<HostFacts>,
    pub labels: crate::labels::Labels,
    /// What the agent last said it can drive; `None` before it first said (older agents).
    #[serde(default)]
    pub capabilities: Option<Vec<windflow_protocol::Capability>>,
}

impl Record for Agent {
    const TABLE: Table = Table::Agents;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: labels.
        (version == 1).then(|| {
            record["labels"] = serde_json::json!({});
            record
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] JoinTokenError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("name must be 1 to 253 characters")]
    BadName,
}

#[derive(Debug)]
pub struct Enrollment {
    pub agent: Agent,
    pub certificate_pem: String,
}

/// Enrolls a new agent: the token is checked, a certificate is issued for the CSR's key, and
/// the agent record and the token's use are written in one transaction. On any error nothing
/// is written.
pub fn enroll(
    store: &dyn Store,
    pki: &Pki,
    token: &str,
    csr_der: &[u8],
    name: &str,
    cert_lifetime: Duration,
) -> Result<Enrollment, EnrollError> {
    if name.is_empty() || name.len() > 253 {
        return Err(EnrollError::BadName);
    }
    // Fails early, before any certificate is made, for a token that cannot be used.
    join_tokens::check(store, token)?;
    let id = Uuid::now_v7();
    let certificate = pki.issue_agent_certificate(csr_der, id, cert_lifetime)?;
    let agent = |token: &join_tokens::JoinToken| Agent {
        id,
        org_id: token.org_id,
        name: token.assign.name.clone().unwrap_or_else(|| name.into()),
        labels: token.assign.labels.clone(),
        enrolled_at_unix_s: now_unix_s(),
        join_token_id: token.id,
        revoked_at_unix_s: None,
        last_seen_unix_ms: None,
        facts: None,
        capabilities: None,
    };
    let spent = join_tokens::redeem(store, token, |t| {
        let agent = agent(t);
        vec![
            Write { table: Table::Agents, key: agent.key(), value: Some(agent.encode()) },
            Write { table: Table::OrgTargets, key: org_index_key(&agent), value: Some(vec![]) },
        ]
    })?;
    let agent = agent(&spent);
    Ok(Enrollment { agent, certificate_pem: certificate.pem() })
}

pub fn get(store: &dyn Store, id: Uuid) -> Result<Option<Agent>, StoreError> {
    store.load(id.as_bytes())
}

pub fn list(store: &dyn Store) -> Result<Vec<Agent>, StoreError> {
    store.load_all()
}

/// The agent with this id if it belongs to the organisation: another organisation's agent is
/// not found, exactly like one that does not exist.
pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Agent>, StoreError> {
    Ok(get(store, id)?.filter(|a| a.org_id == org_id))
}

fn org_index_key(agent: &Agent) -> Vec<u8> {
    [agent.org_id.as_bytes().as_slice(), agent.id.as_bytes()].concat()
}

/// Applies `change` to the stored agent, if it exists.
pub fn update(store: &dyn Store, id: Uuid, change: impl FnOnce(&mut Agent)) -> Result<Option<Agent>, StoreError> {
    let Some(mut agent) = get(store, id)? else { return Ok(None) };
    change(&mut agent);
    store.save(&agent)?;
    Ok(Some(agent))
}

/// Like [`update`], without waiting for the disk: for observations (facts, last seen).
pub fn observe(store: &dyn Store, id: Uuid, change: impl FnOnce(&mut Agent)) -> Result<Option<Agent>, StoreError> {
    let Some(mut agent) = get(store, id)? else { return Ok(None) };
    change(&mut agent);
    store.save_relaxed(&agent)?;
    Ok(Some(agent))
}

/// One page of an organisation's agents in enrollment order (their ids are UUIDv7), and how
/// many it has. Paged through the organisation index, so a large fleet costs a request only
/// the page it returns.
pub fn page(store: &dyn Store, org_id: Uuid, offset: usize, limit: usize) -> Result<(usize, Vec<Agent>), StoreError> {
    let (total, keys) = store.page_prefix(Table::OrgTargets, org_id.as_bytes(), offset, limit)?;
    let mut agents = Vec::with_capacity(keys.len());
    for (key, _) in keys {
        agents.extend(get(store, index_entry_id(&key)?)?);
    }
    Ok((total, agents))
}

/// The ids of every agent of an organisation, from its index.
pub fn ids_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    store.scan_prefix(Table::OrgTargets, org_id.as_bytes())?.into_iter().map(|(key, _)| index_entry_id(&key)).collect()
}

fn index_entry_id(key: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(&key[16..]).map_err(|e| StoreError::Corrupt { table: Table::OrgTargets, reason: e.to_string() })
}

pub fn delete(store: &dyn Store, agent: &Agent) -> Result<(), StoreError> {
    store
        .atomic(
            &[],
            &[
                Write { table: Table::Agents, key: agent.key(), value: None },
                Write { table: Table::OrgTargets, key: org_index_key(agent), value: None },
            ],
        )
        .map(drop)
}
