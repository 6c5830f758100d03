//! All persistence of the control plane goes through [`Store`]: a small transactional
//! key-value interface, so that a PostgreSQL backend can sit beside the embedded sled one.
//!
//! Record encodings live here too ([`Record`]): every record is JSON with a version marker, and
//! decoding refuses versions it does not know instead of guessing. Nothing else in the crate
//! knows how records are laid out on disk.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend: {0}")]
    Backend(String),
    #[error("record in {table:?} has version {found}, this build reads version {expected}")]
    UnknownVersion { table: Table, found: u64, expected: u64 },
    #[error("record in {table:?} is corrupt: {reason}")]
    Corrupt { table: Table, reason: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The tables of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Users,
    Sessions,
    JoinTokens,
    Agents,
    Stacks,
    /// Key: stack id, then the version number big-endian, so a prefix scan lists them in order.
    StackVersions,
    Deployments,
    /// Key: deployment id, then a big-endian sequence number.
    DeploymentEvents,
    /// Key: big-endian sequence number.
    Audit,
    ApiTokens,
    Orgs,
    /// Key: organisation id, then user id.
    Memberships,
    /// An index of targets by organisation. Key: organisation id, then agent id; empty value.
    OrgTargets,
    /// An organisation's identity provider. Key: organisation id.
    SsoConfigs,
    Migrations,
    /// An organisation's private marketplace templates.
    Templates,
    /// Key: the template's id, a 0 byte, then the reviewer's user id.
    TemplateReviews,
    /// Key: the template's id.
    TemplateStats,
    Workflows,
    /// Key: workflow id, then the version number big-endian.
    WorkflowVersions,
    /// Key: workflow id, then run id (time-ordered).
    WorkflowRuns,
    /// Key: run id, then a big-endian sequence number.
    WorkflowLogs,
    /// Each trigger occurrence that started a run. Key: workflow id, node id, 0, occurrence.
    WorkflowFirings,
    /// An organisation's language-model provider, by organisation id.
    AiConfigs,
    /// Tokens and cost of an organisation's model: organisation id (16 bytes) + month.
    AiUsage,
    /// Stack versions rolled out to several targets as one operation.
    Rollouts,
}

impl Table {
    const ALL: [Table; 26] = [
        Table::Users,
        Table::Sessions,
        Table::JoinTokens,
        Table::Agents,
        Table::Stacks,
        Table::StackVersions,
        Table::Deployments,
        Table::DeploymentEvents,
        Table::Audit,
        Table::ApiTokens,
        Table::Orgs,
        Table::Memberships,
        Table::OrgTargets,
        Table::SsoConfigs,
        Table::Migrations,
        Table::Templates,
        Table::TemplateReviews,
        Table::TemplateStats,
        Table::Workflows,
        Table::WorkflowVersions,
        Table::WorkflowRuns,
        Table::WorkflowLogs,
        Table::WorkflowFirings,
        Table::AiConfigs,
        Table::AiUsage,
        Table::Rollouts,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Sessions => "sessions",
            Table::JoinTokens => "join_tokens",
            Table::Agents => "agents",
            Table::Stacks => "stacks",
            Table::StackVersions => "stack_versions",
            Table::Deployments => "deployments",
            Table::DeploymentEvents => "deployment_events",
            Table::Audit => "audit",
            Table::ApiTokens => "api_tokens",
            Table::Orgs => "orgs",
            Table::Memberships => "memberships",
            Table::OrgTargets => "org_targets",
            Table::SsoConfigs => "sso_configs",
            Table::Migrations => "migrations",
            Table::Templates => "templates",
            Table::TemplateReviews => "template_reviews",
            Table::TemplateStats => "template_stats",
            Table::Workflows => "workflows",
            Table::WorkflowVersions => "workflow_versions",
            Table::WorkflowRuns => "workflow_runs",
            Table::WorkflowLogs => "workflow_logs",
            Table::WorkflowFirings => "workflow_firings",
            Table::AiConfigs => "ai_configs",
            Table::AiUsage => "ai_usage",
            Table::Rollouts => "rollouts",
        }
    }

    /// Tables whose entries are also counted per key prefix of this length, so that one
    /// organisation's share of a large index is known without scanning it.
    fn counted_prefix(self) -> Option<usize> {
        match self {
            Table::OrgTargets => Some(16),
            _ => None,
        }
    }
}

/// One write of an atomic batch: `Some` puts, `None` deletes.
#[derive(Debug, Clone)]
pub struct Write {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A precondition of an atomic batch: the key currently holds exactly `expected`.
#[derive(Debug, Clone)]
pub struct Check {
    pub table: Table,
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// A key and its value, as stored.
pub type Entry = (Vec<u8>, Vec<u8>);

pub trait Store: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of a table, in key order.
    fn scan(&self, table: Table) -> Result<Vec<Entry>, StoreError> {
        self.scan_prefix(table, &[])
    }
    /// The entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    /// Applies all `writes` if every check holds, atomically, and makes them durable before
    /// returning. Returns false (and writes nothing) when a check failed.
    fn atomic(&self, checks: &[Check], writes: &[Write]) -> Result<bool, StoreError>;

    /// Makes every write so far durable (relaxed ones included); called at shutdown.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes without waiting for the disk: for observations (facts, last seen) that the next
    /// report rewrites anyway. The backend makes them durable within its flush interval.
    fn put_relaxed(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.put(table, key, value)
    }

    /// One page of a table in key order, and how many entries the table holds, without
    /// decoding or copying the entries outside the page.
    fn page(&self, table: Table, offset: usize, limit: usize) -> Result<(usize, Vec<Entry>), StoreError> {
        self.page_prefix(table, &[], offset, limit)
    }

    /// One page of the entries whose key starts with `prefix`, and how many there are.
    fn page_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Entry>), StoreError> {
        let all = self.scan_prefix(table, prefix)?;
        let total = all.len();
        Ok((total, all.into_iter().skip(offset).take(limit).collect()))
    }

    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.atomic(&[], &[Write { table, key: key.to_vec(), value: Some(value) }]).map(drop)
    }

    fn delete(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.atomic(&[], &[Write { table, key: key.to_vec(), value: None }]).map(drop)
    }
}

/// The embedded default: sled in the data directory.
pub struct SledStore {
    db: sled::Db,
    trees: std::collections::HashMap<Table, sled::Tree>,
    /// Entries per table: sled counts by scanning, which a paged list cannot afford per request.
    counts: std::collections::HashMap<Table, std::sync::atomic::AtomicI64>,
    /// Entries per key prefix, for the tables that ask for it ([`Table::counted_prefix`]).
    prefix_counts: std::sync::Mutex<std::collections::HashMap<(Table, Vec<u8>), i64>>,
}

/// The store's page cache unless configured otherwise, in MiB.
pub const DEFAULT_CACHE_MIB: u64 = 64;

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_MIB)
    }

    pub fn open_with_cache(path: &Path, cache_mib: u64) -> Result<Self, StoreError> {
        // sled releases its file lock from a background thread shortly after the last handle
        // is dropped: a reopen in the same process waits for it instead of failing.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new().path(path).cache_capacity(cache_mib.saturating_mul(1024 * 1024)).open() {
                Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let trees: std::collections::HashMap<Table, sled::Tree> =
            Table::ALL.into_iter().map(|t| Ok((t, db.open_tree(t.name())?))).collect::<Result<_, sled::Error>>()?;
        // One scan per table at start; the counts are kept up to date by every write after.
        let counts = trees.iter().map(|(t, tree)| (*t, std::sync::atomic::AtomicI64::new(tree.len() as i64))).collect();
        let mut prefix_counts = std::collections::HashMap::new();
        for (table, tree) in &trees {
            if let Some(len) = table.counted_prefix() {
                for key in tree.iter().keys() {
                    let key = key?;
                    *prefix_counts.entry((*table, key[..len.min(key.len())].to_vec())).or_insert(0) += 1;
                }
            }
        }
        Ok(Self { db, trees, counts, prefix_counts: std::sync::Mutex::new(prefix_counts) })
    }

    /// Adjusts the counts by what a committed write did: +1 for a new key, -1 for a removed one.
    fn count_write(&self, table: Table, key: &[u8], existed: bool, exists: bool) {
        let delta = i64::from(exists) - i64::from(existed);
        if delta == 0 {
            return;
        }
        self.counts[&table].fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        if let Some(len) = table.counted_prefix() {
            let mut counts = self.prefix_counts.lock().unwrap_or_else(|e| e.into_inner());
            *counts.entry((table, key[..len.min(key.len())].to_vec())).or_insert(0) += delta;
        }
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // Every table is opened in `open`.
        &self.trees[&table]
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(table).get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.tree(table)
            .scan_prefix(prefix)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
            .collect()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn put_relaxed(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let previous = self.tree(table).insert(key, value)?;
        self.count_write(table, key, previous.is_some(), true);
        Ok(())
    }

    fn page(&self, table: Table, offset: usize, limit: usize) -> Result<(usize, Vec<Entry>), StoreError> {
        let tree = self.tree(table);
        let page = tree
            .iter()
            .skip(offset)
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
            .collect::<Result<_, _>>()?;
        let total = usize::try_from(self.counts[&table].load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
        Ok((total, page))
    }

    fn page_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Entry>), StoreError> {
        if prefix.is_empty() {
            return self.page(table, offset, limit);
        }
        let counted = table.counted_prefix() == Some(prefix.len());
        let page: Vec<Entry> = self
            .tree(table)
            .scan_prefix(prefix)
            .skip(offset)
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
            .collect::<Result<_, _>>()?;
        let total = if counted {
            let counts = self.prefix_counts.lock().unwrap_or_else(|e| e.into_inner());
            usize::try_from(counts.get(&(table, prefix.to_vec())).copied().unwrap_or(0)).unwrap_or(0)
        } else {
            self.tree(table).scan_prefix(prefix).count()
        };
        Ok((total, page))
    }

    fn atomic(&self, checks: &[Check], writes: &[Write]) -> Result<bool, StoreError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, abort};

        let trees: Vec<sled::Tree> = Table::ALL.iter().map(|t| self.tree(*t).clone()).collect();
        let index = |t: Table| Table::ALL.iter().position(|x| *x == t).unwrap_or(0);
        let outcome = trees.as_slice().transaction(|tx| {
            for check in checks {
                let current = tx[index(check.table)].get(&check.key)?;
                if current.as_deref() != check.expected.as_deref() {
                    return abort(());
                }
            }
            // Which keys existed before each write; counted only once the transaction commits
            // (a conflicting transaction runs this closure again).
            let mut existed = Vec::with_capacity(writes.len());
            for write in writes {
                let tree = &tx[index(write.table)];
                let previous = match &write.value {
                    Some(value) => tree.insert(write.key.as_slice(), value.as_slice())?,
                    None => tree.remove(write.key.as_slice())?,
                };
                existed.push(previous.is_some());
            }
            Ok::<_, ConflictableTransactionError<()>>(existed)
        });
        match outcome {
            Ok(existed) => {
                self.db.flush()?;
                // A key written twice in one batch would be counted twice; batches never do that.
                for (write, existed) in writes.iter().zip(existed) {
                    self.count_write(write.table, &write.key, existed, write.value.is_some());
                }
                Ok(true)
            }
            Err(sled::transaction::TransactionError::Abort(())) => Ok(false),
            Err(sled::transaction::TransactionError::Storage(e)) => Err(e.into()),
        }
    }
}

/// A typed record with a versioned encoding.
pub trait Record: Serialize + DeserializeOwned {
    const TABLE: Table;
    /// Bumped when the shape changes; `decode` then needs a migration from the old version.
    const VERSION: u64;
    fn key(&self) -> Vec<u8>;

    /// Brings a record stored in an older `version` to the current shape (both as the JSON of
    /// the record), or `None` when there is no migration from that version.
    fn migrate(_version: u64, _record: serde_json::Value) -> Option<serde_json::Value> {
        None
    }

    fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        serde_json::to_vec(&serde_json::json!({ "v": Self::VERSION, "record": body })).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { table: Self::TABLE, reason };
        let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let found = value.get("v").and_then(|v| v.as_u64()).ok_or_else(|| corrupt("no version".into()))?;
        let mut record = value["record"].take();
        if found != Self::VERSION {
            let unknown = StoreError::UnknownVersion { table: Self::TABLE, found, expected: Self::VERSION };
            if found > Self::VERSION {
                return Err(unknown);
            }
            record = Self::migrate(found, record).ok_or(unknown)?;
        }
        serde_json::from_value(record).map_err(|e| corrupt(e.to_string()))
    }
}

/// Rewrites every record of `R`'s table that an older build stored, in the current version, so
/// that compare-and-swap writes (which compare encodings) see current encodings only. Run at
/// start for each record type that has a migration; returns how many records it rewrote.
pub fn upgrade<R: Record>(store: &dyn Store) -> Result<usize, StoreError> {
    let mut checks = Vec::new();
    let mut writes = Vec::new();
    for (key, bytes) in store.scan(R::TABLE)? {
        let version = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["v"].as_u64());
        if version == Some(R::VERSION) {
            continue;
        }
        let record = R::decode(&bytes)?;
        writes.push(Write { table: R::TABLE, key: key.clone(), value: Some(record.encode()) });
        checks.push(Check { table: R::TABLE, key, expected: Some(bytes) });
    }
    if writes.is_empty() || store.atomic(&checks, &writes)? {
        Ok(writes.len())
    } else {
        Err(StoreError::Backend(format!("{:?} changed while it was being upgraded", R::TABLE)))
    }
}

/// Typed helpers over any [`Store`].
pub trait RecordStore {
    fn load<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError>;
    fn load_all<R: Record>(&self) -> Result<Vec<R>, StoreError>;
    fn load_prefix<R: Record>(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError>;
    fn save<R: Record>(&self, record: &R) -> Result<(), StoreError>;
    fn save_relaxed<R: Record>(&self, record: &R) -> Result<(), StoreError>;
    /// One page of records in key order, and the table's size.
    fn load_page<R: Record>(&self, offset: usize, limit: usize) -> Result<(usize, Vec<R>), StoreError>;

    /// Replaces `old` by `new` only if the stored record is still exactly `old`.
    fn replace<R: Record>(&self, old: &R, new: &R) -> Result<bool, StoreError>;
}

impl<S: Store + ?Sized> RecordStore for S {
    fn load<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        self.get(R::TABLE, key)?.map(|b| R::decode(&b)).transpose()
    }

    fn load_all<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        self.scan(R::TABLE)?.into_iter().map(|(_, v)| R::decode(&v)).collect()
    }

    fn load_prefix<R: Record>(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError> {
        self.scan_prefix(R::TABLE, prefix)?.into_iter().map(|(_, v)| R::decode(&v)).collect()
    }

    fn save<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        self.put(R::TABLE, &record.key(), record.encode())
    }

    fn save_relaxed<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        self.put_relaxed(R::TABLE, &record.key(), record.encode())
    }

    fn load_page<R: Record>(&self, offset: usize, limit: usize) -> Result<(usize, Vec<R>), StoreError> {
        let (total, entries) = self.page(R::TABLE, offset, limit)?;
        Ok((total, entries.into_iter().map(|(_, v)| R::decode(&v)).collect::<Result<_, _>>()?))
    }

    fn replace<R: Record>(&self, old: &R, new: &R) -> Result<bool, StoreError> {
        self.atomic(
            &[Check { table: R::TABLE, key: old.key(), expected: Some(old.encode()) }],
            &[Write { table: R::TABLE, key: new.key(), value: Some(new.encode()) }],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Thing {
        id: u32,
        name: String,
    }

    impl Record for Thing {
        const TABLE: Table = Table::Users;
        const VERSION: u64 = 1;
        fn key(&self) -> Vec<u8> {
            self.id.to_be_bytes().to_vec()
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.save(&Thing { id: 1, name: "a".into() }).expect("save");
        }
        let store = reopen(dir.path());
        assert_eq!(store.load::<Thing>(&1u32.to_be_bytes()).expect("load"), Some(Thing { id: 1, name: "a".into() }));
    }

    #[test]
    fn a_failed_check_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let old = Thing { id: 1, name: "a".into() };
        store.save(&old).expect("save");
        let stale = Thing { id: 1, name: "stale".into() };
        assert!(!store.replace(&stale, &Thing { id: 1, name: "b".into() }).expect("ran"));
        assert_eq!(store.load::<Thing>(&old.key()).expect("load"), Some(old));
    }

    /// Opens a store again; sled lets go of its file lock a moment after the last handle is
    /// dropped (its flusher thread ends on its own), so the lock may still be held at first.
    fn reopen(path: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(path) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn pages_report_the_table_size_through_puts_deletes_and_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            for id in 0..5u32 {
                store.save(&Thing { id, name: "a".into() }).expect("save");
            }
            store.save(&Thing { id: 0, name: "again".into() }).expect("overwrite");
            store.save_relaxed(&Thing { id: 9, name: "relaxed".into() }).expect("relaxed");
            store.delete(Table::Users, &1u32.to_be_bytes()).expect("delete");
            let (total, page) = store.load_page::<Thing>(1, 2).expect("page");
            assert_eq!((total, page.iter().map(|t| t.id).collect::<Vec<_>>()), (5, vec![2, 3]));
        }
        let store = reopen(dir.path());
        assert_eq!(store.load_page::<Thing>(0, 10).expect("page").0, 5);
    }

    #[test]
    fn a_prefix_page_counts_only_that_prefix_through_writes_and_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |org: u8, n: u8| [[org; 16].as_slice(), &[n; 16]].concat();
        {
            let store = SledStore::open(dir.path()).expect("open");
            for n in 0..4 {
                store.put(Table::OrgTargets, &key(1, n), vec![]).expect("put");
            }
            store.put(Table::OrgTargets, &key(2, 0), vec![]).expect("put");
            store.put(Table::OrgTargets, &key(1, 0), vec![]).expect("overwrite");
            store.delete(Table::OrgTargets, &key(1, 3)).expect("delete");
            let (total, page) = store.page_prefix(Table::OrgTargets, &[1; 16], 1, 5).expect("page");
            assert_eq!((total, page.len()), (3, 2));
        }
        let store = reopen(dir.path());
        assert_eq!(store.page_prefix(Table::OrgTargets, &[1; 16], 0, 0).expect("page").0, 3);
        assert_eq!(store.page_prefix(Table::OrgTargets, &[2; 16], 0, 9).expect("page").1.len(), 1);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct ThingV2 {
        id: u32,
        name: String,
        colour: String,
    }

    impl Record for ThingV2 {
        const TABLE: Table = Table::Users;
        const VERSION: u64 = 2;
        fn key(&self) -> Vec<u8> {
            self.id.to_be_bytes().to_vec()
        }
        fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
            (version == 1).then(|| {
                record["colour"] = "blue".into();
                record
            })
        }
    }

    #[test]
    fn an_older_version_is_migrated_when_read() {
        let old = Thing { id: 1, name: "a".into() }.encode();
        let new = ThingV2::decode(&old).expect("migrated");
        assert_eq!(new, ThingV2 { id: 1, name: "a".into(), colour: "blue".into() });
        assert!(matches!(ThingV2::decode(br#"{"v":0,"record":{}}"#), Err(StoreError::UnknownVersion { found: 0, .. })));
    }

    #[test]
    fn upgrading_rewrites_old_records_so_that_replace_works_on_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store.save(&Thing { id: 1, name: "a".into() }).expect("save v1");
        assert_eq!(upgrade::<ThingV2>(&store).expect("upgraded"), 1);
        assert_eq!(upgrade::<ThingV2>(&store).expect("nothing left"), 0);
        let current = store.load::<ThingV2>(&1u32.to_be_bytes()).expect("load").expect("there");
        let changed = ThingV2 { colour: "red".into(), ..current };
        let current = store.load::<ThingV2>(&1u32.to_be_bytes()).expect("load").expect("there");
        assert!(store.replace(&current, &changed).expect("ran"));
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let bytes = br#"{"v":9,"record":{"id":1,"name":"a"}}"#;
        assert!(matches!(Thing::decode(bytes), Err(StoreError::UnknownVersion { found: 9, .. })));
    }
}
