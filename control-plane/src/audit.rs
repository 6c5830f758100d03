//! The audit trail: an append-only log of every mutating API request and every agent-side event
//! (connected, refused, disconnected, revoked, deployment applied, drift repaired).
//!
//! Each entry carries the SHA-256 of the previous entry's hash and its own content, so changing,
//! removing or reordering a stored entry breaks the chain where it happened, which
//! [`AuditLog::verify`] reports. Entries hold who, what, which object and the outcome; never a
//! request body, so never a secret.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::hub::unix_ms;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// The hash before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at_unix_ms: u64,
    /// `user:<name>`, `agent:<id>`, `anonymous` or `system`.
    pub actor: String,
    /// What happened, e.g. `api.request`, `agent.connected`, `deployment.drift_repaired`.
    pub kind: String,
    /// What it happened to, e.g. `POST /api/v1/stacks` or a deployment id.
    pub object: String,
    /// The HTTP status of a request, when it was one.
    pub status: Option<u16>,
    pub detail: Option<String>,
    pub remote: Option<String>,
    /// The organisation it happened in; none for installation-wide events (a refused
    /// handshake, user management).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<uuid::Uuid>,
    pub prev_hash: String,
    pub hash: String,
}

impl Record for Entry {
    const TABLE: Table = Table::Audit;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.seq.to_be_bytes().to_vec()
    }
}

impl Entry {
    /// The hash of this entry: over the previous hash and every other field.
    fn compute_hash(&self) -> String {
        let mut content = serde_json::json!([
            self.seq,
            self.at_unix_ms,
            self.actor,
            self.kind,
            self.object,
            self.status,
            self.detail,
            self.remote,
        ]);
        if let (Some(org), Some(fields)) = (self.org_id, content.as_array_mut()) {
            fields.push(serde_json::json!(org));
        }
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(b"\n");
        hasher.update(content.to_string().as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub valid: bool,
    pub entries: u64,
    /// The first entry where the chain breaks, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One thing to record.
#[derive(Debug, Clone, Default)]
pub struct Fact {
    pub actor: String,
    pub kind: &'static str,
    pub object: String,
    pub status: Option<u16>,
    pub detail: Option<String>,
    pub remote: Option<String>,
    pub org_id: Option<uuid::Uuid>,
}

pub struct AuditLog {
    store: std::sync::Arc<dyn Store>,
    /// The next sequence number and the last hash: appends are serialised here.
    head: Mutex<(u64, String)>,
    live: broadcast::Sender<Entry>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    pub fn open(store: std::sync::Arc<dyn Store>) -> Result<Self, StoreError> {
        let (total, _) = store.page(Table::Audit, 0, 0)?;
        let last = match total {
            0 => None,
            n => store.load_page::<Entry>(n - 1, 1)?.1.pop(),
        };
        let head = last.map_or((1, GENESIS.to_owned()), |e| (e.seq + 1, e.hash));
        Ok(Self { store, head: Mutex::new(head), live: broadcast::channel(1024).0 })
    }

    /// Appends an entry. Entries are written without waiting for the disk (the store flushes
    /// within its interval), so that a fleet reconnecting does not fsync once per agent.
    pub fn record(&self, fact: Fact) {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let mut entry = Entry {
            seq: head.0,
            at_unix_ms: unix_ms(),
            actor: fact.actor,
            kind: fact.kind.to_owned(),
            object: fact.object,
            status: fact.status,
            detail: fact.detail,
            remote: fact.remote,
            org_id: fact.org_id,
            prev_hash: head.1.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        if let Err(error) = self.store.save_relaxed(&entry) {
            tracing::error!(%error, "could not append to the audit trail");
            return;
        }
        *head = (entry.seq + 1, entry.hash.clone());
        drop(head);
        let _ = self.live.send(entry);
    }

    /// Walks the whole chain from the first entry.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let mut prev = GENESIS.to_owned();
        let broken = |seq: u64, problem: String, entries: u64| Verification {
            valid: false,
            entries,
            broken_at: Some(seq),
            problem: Some(problem),
        };
        let entries = self.store.scan(Table::Audit)?;
        let count = entries.len() as u64;
        for (expected_seq, (key, value)) in (1u64..).zip(entries) {
            let key_seq = key.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            let entry = match Entry::decode(&value) {
                Ok(entry) => entry,
                Err(error) => return Ok(broken(key_seq, format!("entry is unreadable: {error}"), count)),
            };
            if entry.seq != key_seq {
                return Ok(broken(key_seq, format!("entry stored at {key_seq} says it is entry {}", entry.seq), count));
            }
            if entry.seq != expected_seq {
                return Ok(broken(
                    expected_seq,
                    format!("entry {expected_seq} is missing (next is {})", entry.seq),
                    count,
                ));
            }
            if entry.prev_hash != prev {
                return Ok(broken(entry.seq, "entry does not follow the one before it".into(), count));
            }
            if entry.compute_hash() != entry.hash {
                return Ok(broken(entry.seq, "entry was changed after it was written".into(), count));
            }
            prev = entry.hash;
        }
        Ok(Verification { valid: true, entries: count, broken_at: None, problem: None })
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.store.load_all()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SledStore;

    fn log() -> (tempfile::TempDir, Arc<dyn Store>, AuditLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let log = AuditLog::open(store.clone()).expect("audit");
        for n in 0..5 {
            log.record(Fact {
                actor: "user:admin".into(),
                kind: "api.request",
                object: format!("POST /x/{n}"),
                status: Some(201),
                ..Fact::default()
            });
        }
        (dir, store, log)
    }

    #[test]
    fn an_untouched_chain_verifies_and_survives_a_reopen() {
        let (_dir, store, log) = log();
        assert_eq!(
            log.verify().expect("verify"),
            Verification { valid: true, entries: 5, broken_at: None, problem: None }
        );
        let reopened = AuditLog::open(store).expect("reopen");
        reopened.record(Fact { actor: "system".into(), kind: "test", object: "x".into(), ..Fact::default() });
        assert!(reopened.verify().expect("verify").valid);
        assert_eq!(reopened.entries().expect("entries").last().map(|e| e.seq), Some(6));
    }

    #[test]
    fn an_edited_entry_is_found() {
        let (_dir, store, log) = log();
        let mut third =
            Entry::decode(&store.get(Table::Audit, &3u64.to_be_bytes()).expect("get").expect("there")).expect("decode");
        third.status = Some(200);
        store.put(Table::Audit, &third.key(), third.encode()).expect("tamper");
        let found = log.verify().expect("verify");
        assert_eq!((found.valid, found.broken_at), (false, Some(3)));
    }

    #[test]
    fn a_removed_entry_is_found() {
        let (_dir, store, log) = log();
        store.delete(Table::Audit, &2u64.to_be_bytes()).expect("tamper");
        assert_eq!(log.verify().expect("verify").broken_at, Some(2));
    }

    #[test]
    fn swapped_entries_are_found() {
        let (_dir, store, log) = log();
        let a = store.get(Table::Audit, &2u64.to_be_bytes()).expect("get").expect("there");
        let b = store.get(Table::Audit, &4u64.to_be_bytes()).expect("get").expect("there");
        store.put(Table::Audit, &2u64.to_be_bytes(), b).expect("tamper");
        store.put(Table::Audit, &4u64.to_be_bytes(), a).expect("tamper");
        assert_eq!(log.verify().expect("verify").broken_at, Some(2));
    }
}
