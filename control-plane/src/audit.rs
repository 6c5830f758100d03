//! The audit trail: an append-only log of every mutating API request and every agent-side event
//! (connected, refused, disconnected, revoked, deployment applied, drift repaired).
//!
//! Each entry carries the SHA-256 of the previous entry's hash and its own content, so changing,
//! removing or reordering a stored entry breaks the chain where it happened, which
//! [`AuditLog::verify`] reports. Entries hold who, what, which object and the outcome; never a
//! request body, so never a secret.
//!
//! Refused requests repeated within a minute are written once and then counted (see
//! [`RepeatedRefusals`]): a client looping on a bad credential would otherwise grow the trail by
//! an entry per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Statuses that refuse a request before it did anything: a missing or bad credential, a
/// forbidden action, a rate limit.
pub fn is_refusal(status: u16) -> bool {
    matches!(status, 401 | 403 | 429)
}

/// How long identical refusals are counted under the first one's entry.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Distinct refusals counted at once. Past this (many clients, or one varying its requests),
/// refusals are written one by one: never dropped, only not coalesced.
const REFUSALS_TRACKED: usize = 10_000;

/// Who was refused what, from where: refusals with the same key within [`REFUSAL_WINDOW`] are
/// one entry and a count.
type RefusalKey = (String, String, Option<u16>, Option<String>);

/// The coalescing of repeated refusals, without IO: what to write, given the time.
///
/// The first refusal of a key is written at once. Identical ones within the window after it are
/// counted; when the window has passed, one more entry says how many there were. Nothing is
/// lost: every refusal is either an entry or counted in one.
#[derive(Debug, Default)]
pub struct RepeatedRefusals {
    open: HashMap<RefusalKey, Window>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    first: Fact,
    repeats: u64,
}

impl RepeatedRefusals {
    /// A refusal happened at `now`: the facts to write for it (none when it was counted).
    pub fn admit(&mut self, fact: Fact, now: Instant) -> Vec<Fact> {
        let key = (fact.actor.clone(), fact.object.clone(), fact.status, fact.remote.clone());
        let mut write = Vec::new();
        if let Some(window) = self.open.get_mut(&key) {
            if now.duration_since(window.opened) < REFUSAL_WINDOW {
                window.repeats += 1;
                return write;
            }
            write.extend(self.open.remove(&key).and_then(Window::summary));
        }
        if self.open.len() < REFUSALS_TRACKED {
            self.open.insert(key, Window { opened: now, first: fact.clone(), repeats: 0 });
        }
        write.push(fact);
        write
    }

    /// Closes the windows that have passed at `now` (all of them with `None`, on a stop): the
    /// counts to write.
    pub fn close(&mut self, now: Option<Instant>) -> Vec<Fact> {
        let passed = |window: &Window| now.is_none_or(|now| now.duration_since(window.opened) >= REFUSAL_WINDOW);
        let keys: Vec<RefusalKey> = self.open.iter().filter(|(_, w)| passed(w)).map(|(k, _)| k.clone()).collect();
        keys.into_iter().filter_map(|key| self.open.remove(&key).and_then(Window::summary)).collect()
    }
}

impl Window {
    fn summary(self) -> Option<Fact> {
        (self.repeats > 0).then(|| Fact {
            detail: Some(format!(
                "refused {} more times in the {} s after the first refusal",
                self.repeats,
                REFUSAL_WINDOW.as_secs()
            )),
            ..self.first
        })
    }
}

pub struct AuditLog {
    store: std::sync::Arc<dyn Store>,
    /// The next sequence number and the last hash: appends are serialised here.
    head: Mutex<(u64, String)>,
    live: broadcast::Sender<Entry>,
    refusals: Mutex<RepeatedRefusals>,
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
        Ok(Self {
            store,
            head: Mutex::new(head),
            live: broadcast::channel(1024).0,
            refusals: Mutex::new(RepeatedRefusals::default()),
        })
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

    /// Records a refused request, coalesced with identical ones (see [`RepeatedRefusals`]).
    pub fn record_refusal(&self, fact: Fact) {
        let write = self.refusals.lock().unwrap_or_else(|e| e.into_inner()).admit(fact, Instant::now());
        write.into_iter().for_each(|fact| self.record(fact));
    }

    /// Writes the counts of repeated refusals whose window has passed; every one on a stop.
    pub fn close_refusal_windows(&self, stopping: bool) {
        let now = (!stopping).then(Instant::now);
        let write = self.refusals.lock().unwrap_or_else(|e| e.into_inner()).close(now);
        write.into_iter().for_each(|fact| self.record(fact));
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

/// Writes the counts of repeated refusals as their windows pass, until `stopped`.
pub async fn close_refusal_windows(audit: std::sync::Arc<AuditLog>, stopped: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => audit.close_refusal_windows(false),
            () = &mut stopped => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::RedbStore;

    fn log() -> (tempfile::TempDir, Arc<dyn Store>, AuditLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).expect("open"));
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

    fn refusal(object: &str) -> Fact {
        Fact {
            actor: "anonymous".into(),
            kind: "api.request",
            object: object.into(),
            status: Some(401),
            remote: Some("192.0.2.7".into()),
            ..Fact::default()
        }
    }

    #[test]
    fn identical_refusals_within_a_window_are_one_entry_and_a_count() {
        let mut refusals = RepeatedRefusals::default();
        let start = Instant::now();
        assert_eq!(refusals.admit(refusal("POST /api/v1/stacks"), start).len(), 1, "the first is written");
        for n in 1..=99 {
            let written = refusals.admit(refusal("POST /api/v1/stacks"), start + Duration::from_millis(n * 100));
            assert!(written.is_empty(), "repeat {n} is counted");
        }
        assert!(refusals.close(Some(start + Duration::from_secs(59))).is_empty(), "the window is still open");
        let counts = refusals.close(Some(start + REFUSAL_WINDOW));
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].object, "POST /api/v1/stacks");
        assert_eq!(counts[0].status, Some(401));
        assert!(counts[0].detail.as_deref().is_some_and(|d| d.starts_with("refused 99 more times")), "{counts:?}");
        assert!(refusals.close(None).is_empty(), "nothing is left open");
    }

    #[test]
    fn a_refusal_after_its_window_writes_the_count_then_itself() {
        let mut refusals = RepeatedRefusals::default();
        let start = Instant::now();
        refusals.admit(refusal("POST /api/v1/stacks"), start);
        refusals.admit(refusal("POST /api/v1/stacks"), start + Duration::from_secs(1));
        let written = refusals.admit(refusal("POST /api/v1/stacks"), start + REFUSAL_WINDOW);
        let details: Vec<Option<&str>> = written.iter().map(|f| f.detail.as_deref()).collect();
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(details[0].is_some_and(|d| d.starts_with("refused 1 more times")));
        assert_eq!(details[1], None, "a new window starts with the refusal itself");
    }

    #[test]
    fn different_requests_callers_or_statuses_are_not_coalesced_and_a_stop_writes_every_count() {
        let mut refusals = RepeatedRefusals::default();
        let now = Instant::now();
        let forbidden = Fact { status: Some(403), ..refusal("POST /api/v1/stacks") };
        let elsewhere = Fact { remote: Some("192.0.2.8".into()), ..refusal("POST /api/v1/stacks") };
        for fact in [refusal("POST /api/v1/stacks"), refusal("DELETE /api/v1/stacks/1"), forbidden, elsewhere] {
            assert_eq!(refusals.admit(fact.clone(), now).len(), 1, "{fact:?} is a first");
            assert!(refusals.admit(fact, now).is_empty());
        }
        assert_eq!(refusals.close(None).len(), 4, "a stop writes every open count, however recent");
    }

    #[test]
    fn refusals_recorded_through_the_log_are_coalesced_and_the_chain_stays_valid() {
        let (_dir, _store, log) = log();
        for _ in 0..50 {
            log.record_refusal(refusal("POST /api/v1/stacks"));
        }
        assert_eq!(log.entries().expect("entries").len(), 6, "five before, and the first refusal");
        log.close_refusal_windows(true);
        let entries = log.entries().expect("entries");
        assert_eq!(entries.len(), 7);
        assert!(entries[6].detail.as_deref().is_some_and(|d| d.starts_with("refused 49 more times")));
        assert!(log.verify().expect("verify").valid);
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
