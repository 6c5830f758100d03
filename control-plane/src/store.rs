//! All persistence of the control plane goes through [`Store`]: a small transactional
//! key-value interface, so that a PostgreSQL backend can sit beside the embedded redb one.
//!
//! Record encodings live here too ([`Record`]): every record is JSON with a version marker, and
//! decoding refuses versions it does not know instead of guessing. Nothing else in the crate
//! knows how records are laid out on disk.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

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

macro_rules! backend_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}

backend_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

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
    /// Shows `visit` each entry whose key starts with `prefix`, in key order, until it returns
    /// false: a pass over a large table without holding all of it in memory at once.
    fn visit_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for (key, value) in self.scan_prefix(table, prefix)? {
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }
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

/// The embedded default: redb, one file in the store's directory.
///
/// redb holds at most its page cache of the file in memory, so the control plane's memory
/// follows the history on disk only until the cache is full (sled's kept following it: the
/// hour-long soaks in `docs/reliability.md` show both).
pub struct RedbStore {
    db: std::sync::Arc<redb::Database>,
    /// Entries per key prefix, for the tables that ask for it ([`Table::counted_prefix`]).
    prefix_counts: std::sync::Mutex<std::collections::HashMap<(Table, Vec<u8>), i64>>,
    /// Set by a relaxed write, cleared by the next durable commit.
    relaxed_pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Makes relaxed writes durable within [`RELAXED_FLUSH_INTERVAL`]; stops when its sender is
    /// dropped.
    flusher: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// The store's page cache unless configured otherwise, in MiB. Small, as SQLite's (2 MiB): the
/// kernel keeps the file's pages in its own cache anyway, and a miss only costs a copy from it.
pub const DEFAULT_CACHE_MIB: u64 = 4;

/// How long a relaxed write may stay in memory only.
const RELAXED_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The store's file inside its directory.
const STORE_FILE: &str = "windflow.redb";

type Definition = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;

fn definition(table: Table) -> Definition {
    redb::TableDefinition::new(table.name())
}

impl RedbStore {
    /// Opens (or creates) the store in the directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_MIB)
    }

    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        let cache_bytes = usize::try_from(cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
        sled_import::import_if_present(dir, cache_bytes)?;
        let db = std::sync::Arc::new(open_file(&dir.join(STORE_FILE), cache_bytes)?);
        let mut prefix_counts = std::collections::HashMap::new();
        let read = db.begin_read()?;
        for table in Table::ALL {
            if let Some(len) = table.counted_prefix() {
                for entry in read.open_table(definition(table))?.iter()? {
                    let key = entry?.0.value().to_vec();
                    *prefix_counts.entry((table, key[..len.min(key.len())].to_vec())).or_insert(0) += 1;
                }
            }
        }
        drop(read);
        let relaxed_pending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let flusher = {
            let (db, pending) = (db.clone(), relaxed_pending.clone());
            std::thread::Builder::new()
                .name("store-flusher".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(RELAXED_FLUSH_INTERVAL)
                    {
                        if pending.load(std::sync::atomic::Ordering::Acquire)
                            && let Err(e) = commit_durably(&db, &pending)
                        {
                            tracing::warn!("store: relaxed writes could not be made durable: {e}");
                        }
                    }
                })
                .map_err(|e| StoreError::Backend(format!("store flusher: {e}")))?
        };
        Ok(Self {
            db,
            prefix_counts: std::sync::Mutex::new(prefix_counts),
            relaxed_pending,
            flusher: Some((stop, flusher)),
        })
    }

    fn adjust_prefix_count(&self, table: Table, key: &[u8], existed: bool, exists: bool) {
        let delta = i64::from(exists) - i64::from(existed);
        if let Some(len) = table.counted_prefix()
            && delta != 0
        {
            let mut counts = self.prefix_counts.lock().unwrap_or_else(|e| e.into_inner());
            *counts.entry((table, key[..len.min(key.len())].to_vec())).or_insert(0) += delta;
        }
    }

    /// Up to `limit` entries from the `offset`th whose key starts with `prefix`, in key order.
    fn entries(&self, table: Table, prefix: &[u8], offset: usize, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let (mut entries, mut skipped) = (Vec::new(), 0);
        self.visit_prefix(table, prefix, &mut |key, value| {
            if skipped < offset {
                skipped += 1;
            } else if entries.len() < limit {
                entries.push((key.to_vec(), value.to_vec()));
            }
            entries.len() < limit
        })?;
        Ok(entries)
    }
}

fn open_file(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    let db = redb::Database::builder().set_cache_size(cache_bytes).create(path)?;
    let write = db.begin_write()?;
    for table in Table::ALL {
        write.open_table(definition(table))?;
    }
    write.commit()?;
    Ok(db)
}

/// Commits nothing, durably.
fn commit_durably(db: &redb::Database, relaxed_pending: &std::sync::atomic::AtomicBool) -> Result<(), StoreError> {
    commit(db.begin_write()?, relaxed_pending)
}

/// Commits `write` durably, which makes every relaxed commit before it durable too. Clearing
/// the flag before the commit (while `write` keeps other writers out) cannot miss a relaxed
/// write made after it.
fn commit(write: redb::WriteTransaction, relaxed_pending: &std::sync::atomic::AtomicBool) -> Result<(), StoreError> {
    let was_pending = relaxed_pending.swap(false, std::sync::atomic::Ordering::AcqRel);
    write.commit().inspect_err(|_| relaxed_pending.store(was_pending, std::sync::atomic::Ordering::Release))?;
    Ok(())
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if let Some((stop, flusher)) = self.flusher.take() {
            drop(stop);
            let _ = flusher.join();
        }
        if self.relaxed_pending.load(std::sync::atomic::Ordering::Acquire)
            && let Err(e) = commit_durably(&self.db, &self.relaxed_pending)
        {
            tracing::warn!("store: relaxed writes could not be made durable at close: {e}");
        }
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read()?;
        Ok(read.open_table(definition(table))?.get(key)?.map(|v| v.value().to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.entries(table, prefix, 0, usize::MAX)
    }

    fn visit_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let read = self.db.begin_read()?;
        for entry in read.open_table(definition(table))?.range::<&[u8]>(prefix..)? {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) || !visit(key.value(), value.value()) {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        commit_durably(&self.db, &self.relaxed_pending)
    }

    fn put_relaxed(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let mut write = self.db.begin_write()?;
        write.set_durability(redb::Durability::None).map_err(|e| StoreError::Backend(e.to_string()))?;
        let existed = write.open_table(definition(table))?.insert(key, value.as_slice())?.is_some();
        self.relaxed_pending.store(true, std::sync::atomic::Ordering::Release);
        write.commit()?;
        self.adjust_prefix_count(table, key, existed, true);
        Ok(())
    }

    fn page_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Entry>), StoreError> {
        let page = self.entries(table, prefix, offset, limit)?;
        let total = if prefix.is_empty() {
            let read = self.db.begin_read()?;
            let len = read.open_table(definition(table))?.len()?;
            usize::try_from(len).unwrap_or(usize::MAX)
        } else if table.counted_prefix() == Some(prefix.len()) {
            let counts = self.prefix_counts.lock().unwrap_or_else(|e| e.into_inner());
            usize::try_from(counts.get(&(table, prefix.to_vec())).copied().unwrap_or(0)).unwrap_or(0)
        } else {
            let mut count = 0;
            self.visit_prefix(table, prefix, &mut |_, _| {
                count += 1;
                true
            })?;
            count
        };
        Ok((total, page))
    }

    fn atomic(&self, checks: &[Check], writes: &[Write]) -> Result<bool, StoreError> {
        let write = self.db.begin_write()?;
        for check in checks {
            let table = write.open_table(definition(check.table))?;
            let current = table.get(check.key.as_slice())?;
            if current.as_ref().map(|v| v.value()) != check.expected.as_deref() {
                drop(current);
                drop(table);
                write.abort()?;
                return Ok(false);
            }
        }
        let mut existed = Vec::with_capacity(writes.len());
        for change in writes {
            let mut table = write.open_table(definition(change.table))?;
            let previous = match &change.value {
                Some(value) => table.insert(change.key.as_slice(), value.as_slice())?.is_some(),
                None => table.remove(change.key.as_slice())?.is_some(),
            };
            existed.push(previous);
        }
        commit(write, &self.relaxed_pending)?;
        // A key written twice in one batch would be counted twice; batches never do that.
        for (change, existed) in writes.iter().zip(existed) {
            self.adjust_prefix_count(change.table, &change.key, existed, change.value.is_some());
        }
        Ok(true)
    }
}

/// Stores written by builds before redb are sled directories: the first start of this build
/// copies them into redb, once.
mod sled_import {
    use super::{STORE_FILE, StoreError, Table, definition, open_file};
    use std::path::Path;

    /// sled's files in its directory.
    const SLED_FILES: [&str; 3] = ["conf", "db", "blobs"];

    pub(super) fn import_if_present(dir: &Path, cache_bytes: usize) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Backend(format!("importing the sled store in {}: {e}", dir.display()));
        if !dir.join("conf").exists() {
            return Ok(());
        }
        // The import is written beside the final file and renamed over it when complete, so a
        // crash during it leaves the sled store as the one to import again.
        if !dir.join(STORE_FILE).exists() {
            let partial = dir.join(format!("{STORE_FILE}.importing"));
            let _ = std::fs::remove_file(&partial);
            let copied = copy(dir, &partial, cache_bytes)?;
            std::fs::rename(&partial, dir.join(STORE_FILE)).map_err(io)?;
            tracing::info!(entries = copied, "store: imported the sled store into {STORE_FILE}");
        }
        for name in SLED_FILES {
            let path = dir.join(name);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io)?;
            } else if path.exists() {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snap.")) {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        Ok(())
    }

    fn copy(dir: &Path, to: &Path, cache_bytes: usize) -> Result<usize, StoreError> {
        let sled_error = |e: sled::Error| StoreError::Backend(format!("reading the sled store: {e}"));
        let sled = sled::Config::new().path(dir).cache_capacity(cache_bytes as u64).open().map_err(sled_error)?;
        let db = open_file(to, cache_bytes)?;
        let write = db.begin_write()?;
        let mut copied = 0;
        for table in Table::ALL {
            let tree = sled.open_tree(table.name()).map_err(sled_error)?;
            let mut target = write.open_table(definition(table))?;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(sled_error)?;
                target.insert(key.as_ref(), value.as_ref())?;
                copied += 1;
            }
        }
        write.commit()?;
        Ok(copied)
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
    /// Decodes the records of `R`'s table one at a time and keeps those `keep` returns:
    /// memory for what is kept only, however large the table.
    fn load_where<R: Record>(&self, keep: impl FnMut(&R) -> bool) -> Result<Vec<R>, StoreError>;
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

    fn load_where<R: Record>(&self, mut keep: impl FnMut(&R) -> bool) -> Result<Vec<R>, StoreError> {
        let (mut kept, mut failed) = (Vec::new(), None);
        self.visit_prefix(R::TABLE, &[], &mut |_, bytes| match R::decode(bytes) {
            Ok(record) => {
                if keep(&record) {
                    kept.push(record);
                }
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        failed.map_or(Ok(kept), Err)
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
            let store = RedbStore::open(dir.path()).expect("open");
            store.save(&Thing { id: 1, name: "a".into() }).expect("save");
        }
        let store = reopen(dir.path());
        assert_eq!(store.load::<Thing>(&1u32.to_be_bytes()).expect("load"), Some(Thing { id: 1, name: "a".into() }));
    }

    #[test]
    fn a_failed_check_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        let old = Thing { id: 1, name: "a".into() };
        store.save(&old).expect("save");
        let stale = Thing { id: 1, name: "stale".into() };
        assert!(!store.replace(&stale, &Thing { id: 1, name: "b".into() }).expect("ran"));
        assert_eq!(store.load::<Thing>(&old.key()).expect("load"), Some(old));
    }

    fn reopen(path: &Path) -> RedbStore {
        RedbStore::open(path).expect("reopen")
    }

    #[test]
    fn pages_report_the_table_size_through_puts_deletes_and_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(dir.path()).expect("open");
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
            let store = RedbStore::open(dir.path()).expect("open");
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

    #[test]
    fn a_visit_sees_only_its_prefix_in_order_and_stops_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        for key in [b"a1", b"b1", b"b2", b"b3", b"c1"] {
            store.put(Table::Users, key, key.to_vec()).expect("put");
        }
        let mut seen = Vec::new();
        store
            .visit_prefix(Table::Users, b"b", &mut |key, _| {
                seen.push(key.to_vec());
                seen.len() < 2
            })
            .expect("visit");
        assert_eq!(seen, [b"b1".to_vec(), b"b2".to_vec()]);
    }

    #[test]
    fn load_where_keeps_only_the_records_asked_for_and_reports_a_corrupt_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        for id in 0..6u32 {
            store.save(&Thing { id, name: if id % 2 == 0 { "even" } else { "odd" }.into() }).expect("save");
        }
        let even = store.load_where(|t: &Thing| t.name == "even").expect("load");
        assert_eq!(even.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 2, 4]);
        store.put(Table::Users, &9u32.to_be_bytes(), b"not json".to_vec()).expect("put");
        assert!(matches!(store.load_where(|_: &Thing| true), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_relaxed_write_is_durable_after_the_flush_interval_without_a_clean_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        store.save_relaxed(&Thing { id: 7, name: "seen".into() }).expect("relaxed");
        std::thread::sleep(RELAXED_FLUSH_INTERVAL * 3);
        // A copy of the file as it is on disk now is what a crash would leave.
        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(dir.path().join(STORE_FILE), copy.path().join(STORE_FILE)).expect("copy");
        let crashed = RedbStore::open(copy.path()).expect("open the copy");
        assert_eq!(
            crashed.load::<Thing>(&7u32.to_be_bytes()).expect("load"),
            Some(Thing { id: 7, name: "seen".into() })
        );
    }

    #[test]
    fn a_sled_store_of_an_earlier_build_is_imported_once_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let sled = sled::open(dir.path()).expect("sled");
            sled.open_tree("users")
                .expect("tree")
                .insert(1u32.to_be_bytes(), Thing { id: 1, name: "old".into() }.encode())
                .expect("insert");
            sled.open_tree("org_targets")
                .expect("tree")
                .insert([[3u8; 16], [4u8; 16]].concat(), vec![])
                .expect("insert");
            sled.flush().expect("flush");
        }
        // sled lets go of its lock from a background thread a moment after the last handle.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match RedbStore::open(dir.path()) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        assert_eq!(store.load::<Thing>(&1u32.to_be_bytes()).expect("load"), Some(Thing { id: 1, name: "old".into() }));
        assert_eq!(store.page_prefix(Table::OrgTargets, &[3; 16], 0, 9).expect("page").0, 1);
        assert!(!dir.path().join("conf").exists() && !dir.path().join("db").exists(), "sled's files are gone");
        store.save(&Thing { id: 1, name: "new".into() }).expect("save");
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.load::<Thing>(&1u32.to_be_bytes()).expect("load").map(|t| t.name), Some("new".into()));
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
        let store = RedbStore::open(dir.path()).expect("open");
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
