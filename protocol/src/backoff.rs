//! Reconnect delays: exponential, capped, with jitter so that a fleet reconnecting after a
//! control-plane restart spreads out instead of arriving at once.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The delay before the next attempt. `random` is any uniformly random number: the delay is
    /// drawn from the upper half of the current exponential step ("equal jitter"), so it never
    /// collapses to zero and never exceeds the cap.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let step = self.base.saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if half_ms == 0 { 0 } else { random % (half_ms + 1) })
    }

    /// Call after a connection succeeded and held.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_and_stay_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let steps = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for step in steps {
            let low = backoff.clone().next_delay(0);
            let high = backoff.clone().next_delay(u64::MAX - 1);
            assert!(low >= Duration::from_millis(step / 2), "step {step}: {low:?}");
            assert!(high <= Duration::from_millis(step), "step {step}: {high:?}");
            backoff.next_delay(12345);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..10 {
            backoff.next_delay(1);
        }
        backoff.reset();
        assert!(backoff.next_delay(u64::MAX) <= Duration::from_millis(100));
    }

    #[test]
    fn many_attempts_never_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(backoff.next_delay(u64::MAX) <= Duration::from_secs(30));
        }
    }
}
