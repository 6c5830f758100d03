//! Login backoff and temporary lockout: after repeated failures for one account, or from one
//! address, further attempts are refused for a while (doubling with each further failure, up to
//! a cap) without even checking the password, so guessing is slow and costs the server nothing.
//!
//! State is in memory: a restart forgets it, which a single control plane can accept (an
//! attacker cannot cause restarts), and several replicas would move it to the shared store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed for one account before it is locked.
pub const ACCOUNT_FAILURES: u32 = 5;
/// Failures allowed from one address (over every account) before it is locked.
pub const ADDRESS_FAILURES: u32 = 20;
const FIRST_LOCK: Duration = Duration::from_secs(30);
const LONGEST_LOCK: Duration = Duration::from_secs(15 * 60);
/// Failures older than this no longer count.
const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
struct Record {
    failures: u32,
    last_failure: Option<Instant>,
    locked_until: Option<Instant>,
}

impl Record {
    /// Whether the record still affects anything at `now`: a lock not yet over, or failures that
    /// still count.
    fn matters_at(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
            || self.last_failure.is_some_and(|at| now.duration_since(at) <= WINDOW)
    }
}

/// Records kept before the ones that no longer matter are dropped; after a drop, the next one
/// happens at twice what was left (so that dropping costs O(1) per failure, amortised).
const PRUNE_AT_LEAST: usize = 10_000;

#[derive(Debug)]
pub struct LoginGuard {
    records: Mutex<Records>,
}

#[derive(Debug)]
struct Records {
    by_key: HashMap<String, Record>,
    prune_at: usize,
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self { records: Mutex::new(Records { by_key: HashMap::new(), prune_at: PRUNE_AT_LEAST }) }
    }
}

/// The records a login touches. User names longer than any account's (64) are cut: a guesser
/// sending huge names must not make huge keys.
fn keys(username: &str, address: &str) -> [(String, u32); 2] {
    let username: String = username.chars().take(64).collect();
    [(format!("user:{username}"), ACCOUNT_FAILURES), (format!("addr:{address}"), ADDRESS_FAILURES)]
}

impl LoginGuard {
    /// `Err(wait)` when the account or the address is locked at `now`.
    pub fn check(&self, username: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let wait = keys(username, address)
            .iter()
            .filter_map(|(key, _)| records.by_key.get(key).and_then(|r| r.locked_until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        wait.map_or(Ok(()), Err)
    }

    pub fn failed(&self, username: &str, address: &str, now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        // Every failure from a new name or address adds a record: those whose failures no
        // longer count and whose lock is over go, or guessing at names would grow it forever.
        if records.by_key.len() >= records.prune_at {
            records.by_key.retain(|_, record| record.matters_at(now));
            records.prune_at = PRUNE_AT_LEAST.max(2 * records.by_key.len());
        }
        for (key, allowed) in keys(username, address) {
            let record = records.by_key.entry(key).or_default();
            if record.last_failure.is_some_and(|at| now.duration_since(at) > WINDOW) {
                *record = Record::default();
            }
            record.failures += 1;
            record.last_failure = Some(now);
            if record.failures >= allowed {
                let doublings = (record.failures - allowed).min(10);
                let lock = FIRST_LOCK.saturating_mul(1 << doublings).min(LONGEST_LOCK);
                record.locked_until = Some(now + lock);
            }
        }
    }

    /// A successful login clears the account's failures (not the address's: one good password
    /// must not reset an address that is guessing at other accounts).
    pub fn succeeded(&self, username: &str) {
        let [(account, _), _] = keys(username, "");
        self.records.lock().unwrap_or_else(|e| e.into_inner()).by_key.remove(&account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_locks_after_its_allowed_failures_and_the_lock_doubles() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for _ in 0..ACCOUNT_FAILURES - 1 {
            guard.failed("ann", "10.0.0.1", now);
        }
        assert_eq!(guard.check("ann", "10.0.0.1", now), Ok(()));
        guard.failed("ann", "10.0.0.1", now);
        assert_eq!(guard.check("ann", "10.0.0.1", now), Err(FIRST_LOCK));
        assert_eq!(guard.check("ann", "10.0.0.1", now + FIRST_LOCK), Ok(()), "the lock ends");
        guard.failed("ann", "10.0.0.1", now + FIRST_LOCK);
        assert_eq!(guard.check("ann", "10.0.0.1", now + FIRST_LOCK), Err(FIRST_LOCK * 2));
        assert_eq!(guard.check("bob", "10.0.0.2", now), Ok(()), "others are not affected");
    }

    #[test]
    fn an_address_guessing_at_many_accounts_locks() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for n in 0..ADDRESS_FAILURES {
            guard.failed(&format!("user{n}"), "10.0.0.9", now);
        }
        assert!(guard.check("someone-else", "10.0.0.9", now).is_err());
        assert_eq!(guard.check("someone-else", "10.0.0.8", now), Ok(()));
    }

    #[test]
    fn success_clears_the_account_and_old_failures_expire() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for _ in 0..ACCOUNT_FAILURES - 1 {
            guard.failed("ann", "10.0.0.1", now);
        }
        guard.succeeded("ann");
        guard.failed("ann", "10.0.0.1", now);
        assert_eq!(guard.check("ann", "10.0.0.1", now), Ok(()));
        let later = now + WINDOW + Duration::from_secs(1);
        for _ in 0..ACCOUNT_FAILURES - 1 {
            guard.failed("ann", "10.0.0.1", later);
        }
        assert_eq!(guard.check("ann", "10.0.0.1", later), Ok(()), "failures from before the window do not add up");
    }

    #[test]
    fn guessing_at_ever_new_names_does_not_grow_the_records_forever() {
        let guard = LoginGuard::default();
        let start = Instant::now();
        for n in 0..PRUNE_AT_LEAST {
            guard.failed(&format!("guess{n}"), "10.0.0.9", start);
        }
        let much_later = start + WINDOW + LONGEST_LOCK + Duration::from_secs(1);
        for n in 0..PRUNE_AT_LEAST {
            guard.failed(&format!("again{n}"), "10.0.0.7", much_later);
        }
        let kept = guard.records.lock().expect("records").by_key.len();
        assert!(kept <= PRUNE_AT_LEAST + 1, "the first round's records went: {kept} kept");
        assert!(guard.check("again1", "10.0.0.7", much_later).is_err(), "the second round's still count");
    }

    #[test]
    fn a_huge_user_name_makes_a_key_no_longer_than_a_real_one() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        let huge = "x".repeat(100_000);
        guard.failed(&huge, "10.0.0.1", now);
        let records = guard.records.lock().expect("records");
        assert!(
            records.by_key.keys().all(|key| key.len() <= 5 + 64),
            "{:?}",
            records.by_key.keys().map(String::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn locks_never_exceed_the_cap() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for _ in 0..100 {
            guard.failed("ann", "10.0.0.1", now);
        }
        assert_eq!(guard.check("ann", "10.0.0.1", now), Err(LONGEST_LOCK));
    }
}
