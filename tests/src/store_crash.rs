//! What the store crash-consistency test writes and checks (the writer is
//! `src/bin/windflow-store-writer.rs`; the test `tests/store_crash.rs`).

use windflow_control_plane::store::Table;

pub const COUNTER_TABLE: Table = Table::Orgs;
pub const COUNTER: &[u8] = b"crash-counter";
/// Each round adds one entry to each of these, in the same batch as the counter.
pub const ENTRY_TABLES: [Table; 2] = [Table::Audit, Table::DeploymentEvents];

pub fn entry_key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// A value of a few kilobytes that says which round wrote it, so a torn or misplaced value shows.
pub fn payload(n: u64) -> Vec<u8> {
    let line = format!("entry {n:020}\n");
    line.repeat(1 + (n % 200) as usize).into_bytes()
}

pub fn decode_counter(bytes: &[u8]) -> u64 {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}
