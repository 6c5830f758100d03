//! The store's crash consistency: a writer process is killed (SIGKILL) at random moments while it
//! commits atomic batches, the store is opened again, and its invariants are checked:
//! - no acknowledged batch is lost (the counter is at least the last one acknowledged, and at
//!   most one more: the batch in flight may or may not have landed);
//! - batches are atomic: every entry up to the counter is in both tables, whole, and none beyond;
//! - the per-table counts the store keeps agree with what it holds.
//!
//! 20 rounds here; `WINDFLOW_STORE_CRASH_ROUNDS` sets more (docs/reliability.md has a long run).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use windflow_control_plane::store::{RedbStore, Store};
use windflow_tests::bin;
use windflow_tests::store_crash::{COUNTER, COUNTER_TABLE, ENTRY_TABLES, decode_counter, entry_key, payload};

#[test]
fn a_store_killed_in_the_middle_of_atomic_writes_reopens_with_every_acknowledged_write_and_no_torn_one() {
    let rounds: usize = std::env::var("WINDFLOW_STORE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut acknowledged_total = 0u64;
    let mut landed_unacknowledged = 0u64;
    for round in 0..rounds {
        let out = dir.path().join(format!("writer-{round}.out"));
        let mut writer = Command::new(bin("windflow-store-writer"))
            .arg(&path)
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("writer");
        std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
        writer.kill().expect("kill");
        writer.wait().expect("wait");
        let printed = std::fs::read_to_string(&out).expect("out");
        let acked = printed.lines().filter_map(|l| l.strip_prefix("acked ")?.parse::<u64>().ok()).max();

        let store = RedbStore::open(&path).expect("the store opens after a crash");
        let counter = store.get(COUNTER_TABLE, COUNTER).expect("get").as_deref().map_or(0, decode_counter);
        if let Some(acked) = acked {
            assert!(counter >= acked, "round {round}: batch {acked} was acknowledged but the counter is {counter}");
            assert!(
                counter <= acked + 1,
                "round {round}: counter {counter} is ahead of the last batch ({acked}) and the one in flight"
            );
            acknowledged_total = acked;
            landed_unacknowledged += counter - acked;
        }
        for table in ENTRY_TABLES {
            let entries = store.scan(table).expect("scan");
            assert_eq!(
                entries.len() as u64,
                counter,
                "round {round}: {table:?} holds {} entries for counter {counter}",
                entries.len()
            );
            for n in 1..=counter {
                let value = store.get(table, &entry_key(n)).expect("get");
                assert_eq!(
                    value.as_deref(),
                    Some(payload(n).as_slice()),
                    "round {round}: entry {n} of {table:?} is missing or torn"
                );
            }
            let (total, _) = store.page(table, 0, 1).expect("page");
            assert_eq!(total as u64, counter, "round {round}: the kept count of {table:?} disagrees");
        }
        drop(store);
    }
    println!(
        "store crash loop: {rounds} kills in {:?}; {acknowledged_total} batches acknowledged, none lost, none torn; \
         {landed_unacknowledged} batches in flight at a kill had landed",
        started.elapsed()
    );
}
