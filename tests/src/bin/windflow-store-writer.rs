//! Writes to a WindFlow store until it is killed, for the crash-consistency test
//! (`tests/tests/store_crash.rs`). Each round is one atomic batch across three keys in two
//! tables: the counter advances to `n` (checked against its previous value) and entry `n` is
//! added to each table. `acked <n>` is printed once the store returned from the batch, which by
//! the store's contract means it is durable. A relaxed write follows each round, as the control
//! plane's observations do.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use windflow_control_plane::store::{Check, RedbStore, Store, Table, Write};
use windflow_tests::store_crash::{COUNTER, COUNTER_TABLE, ENTRY_TABLES, entry_key, payload};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).context("usage: windflow-store-writer <store directory>")?;
    let store = RedbStore::open(Path::new(&path))?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let current = store.get(COUNTER_TABLE, COUNTER)?;
        let n = current.as_deref().map_or(0, windflow_tests::store_crash::decode_counter) + 1;
        let mut writes =
            vec![Write { table: COUNTER_TABLE, key: COUNTER.to_vec(), value: Some(n.to_be_bytes().to_vec()) }];
        writes.extend(ENTRY_TABLES.map(|table| Write { table, key: entry_key(n), value: Some(payload(n)) }));
        if store.atomic(&[Check { table: COUNTER_TABLE, key: COUNTER.to_vec(), expected: current }], &writes)? {
            writeln!(stdout, "acked {n}")?;
            stdout.flush()?;
        }
        store.put_relaxed(Table::Agents, b"observed", n.to_be_bytes().to_vec())?;
    }
}
