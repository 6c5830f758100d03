//! Circuit breakers for what the control plane calls outside itself (LLM providers, the hosts
//! workflows call, agent links): after a run of failures the circuit opens and calls are refused at
//! once instead of piling up on a service that is down; after a pause one probe goes through
//! (half-open) and its outcome closes the circuit or opens it again.
//!
//! The state machine takes the time as an argument, so its tests need no clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the pause is over.
    Open,
    /// One probe is (or may be) on its way; the others are refused.
    HalfOpen,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When a call may be tried again.
    pub retry_in: Duration,
}

/// A snapshot for the API and the metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerView {
    pub state: CircuitState,
    /// Failures in a row (while closed).
    pub consecutive_failures: u32,
    /// How many times the circuit opened since the control plane started.
    pub times_opened: u64,
    /// Seconds until a probe may go (while open).
    pub retry_in_s: Option<u64>,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    pause: Duration,
    phase: Mutex<(Phase, u64)>,
}

impl Breaker {
    /// Opens after `threshold` failures in a row, for `pause`.
    pub fn new(threshold: u32, pause: Duration) -> Self {
        Self { threshold: threshold.max(1), pause, phase: Mutex::new((Phase::Closed { failures: 0 }, 0)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, u64)> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go now. A call let through must report its outcome with
    /// [`Breaker::record`].
    pub fn admit(&self, now: Instant) -> Result<(), Refused> {
        let mut guard = self.lock();
        match guard.0 {
            Phase::Closed { .. } => Ok(()),
            Phase::Open { until } if now < until => Err(Refused { retry_in: until - now }),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                guard.0 = Phase::HalfOpen { probing: true };
                Ok(())
            }
            Phase::HalfOpen { probing: true } => Err(Refused { retry_in: Duration::ZERO }),
        }
    }

    /// The outcome of a call [`Breaker::admit`] let through.
    pub fn record(&self, succeeded: bool, now: Instant) {
        let mut guard = self.lock();
        let (phase, opened) = &mut *guard;
        *phase = match (&*phase, succeeded) {
            (_, true) => Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, false) if failures + 1 < self.threshold => {
                Phase::Closed { failures: failures + 1 }
            }
            (Phase::Open { until }, false) => Phase::Open { until: *until },
            (_, false) => {
                *opened += 1;
                Phase::Open { until: now + self.pause }
            }
        };
    }

    /// Closes the circuit whatever its state (what it guards was replaced by a fresh one, such
    /// as an agent's new session); the count of times it opened is kept.
    pub fn close(&self) {
        self.lock().0 = Phase::Closed { failures: 0 };
    }

    pub fn view(&self, now: Instant) -> BreakerView {
        let guard = self.lock();
        let (state, consecutive_failures, retry_in_s) = match guard.0 {
            Phase::Closed { failures } => (CircuitState::Closed, failures, None),
            Phase::Open { until } if now < until => {
                (CircuitState::Open, self.threshold, Some((until - now).as_secs_f64().ceil() as u64))
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => (CircuitState::HalfOpen, self.threshold, None),
        };
        BreakerView { state, consecutive_failures, times_opened: guard.1, retry_in_s }
    }
}

/// Breakers by what they guard (a language-model provider, a webhook's host), each made on
/// first use with the same threshold and pause.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    pause: Duration,
    by_key: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub fn new(threshold: u32, pause: Duration) -> Self {
        Self { threshold, pause, by_key: Mutex::new(HashMap::new()) }
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    pub fn get(&self, key: &str) -> Arc<Breaker> {
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        by_key.entry(key.to_owned()).or_insert_with(|| Arc::new(Breaker::new(self.threshold, self.pause))).clone()
    }

    /// How many are open now, and how many times they opened in all: for the metrics.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        by_key.values().map(|b| b.view(now)).fold((0, 0), |(open, opened), view| {
            (open + u64::from(view.state == CircuitState::Open), opened + view.times_opened)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_secs(30);

    #[test]
    fn failures_below_the_threshold_keep_it_closed_and_a_success_resets_the_count() {
        let breaker = Breaker::new(3, PAUSE);
        let now = Instant::now();
        for _ in 0..2 {
            breaker.admit(now).expect("closed");
            breaker.record(false, now);
        }
        breaker.record(true, now);
        for _ in 0..2 {
            breaker.record(false, now);
        }
        assert_eq!(breaker.view(now).state, CircuitState::Closed);
        assert_eq!(breaker.view(now).consecutive_failures, 2);
    }

    #[test]
    fn the_threshold_opens_it_and_calls_are_refused_until_the_pause_is_over() {
        let breaker = Breaker::new(3, PAUSE);
        let now = Instant::now();
        for _ in 0..3 {
            breaker.record(false, now);
        }
        assert_eq!(breaker.admit(now + Duration::from_secs(10)), Err(Refused { retry_in: Duration::from_secs(20) }));
        assert_eq!(breaker.view(now).state, CircuitState::Open);
        assert_eq!(breaker.view(now).times_opened, 1);
    }

    #[test]
    fn after_the_pause_one_probe_goes_and_its_success_closes_the_circuit() {
        let breaker = Breaker::new(1, PAUSE);
        let now = Instant::now();
        breaker.record(false, now);
        let later = now + PAUSE;
        assert_eq!(breaker.admit(later), Ok(()), "the probe");
        assert!(breaker.admit(later).is_err(), "a second call while the probe is out");
        assert_eq!(breaker.view(later).state, CircuitState::HalfOpen);
        breaker.record(true, later);
        assert_eq!(breaker.admit(later), Ok(()));
        assert_eq!(breaker.view(later).state, CircuitState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_pause() {
        let breaker = Breaker::new(1, PAUSE);
        let now = Instant::now();
        breaker.record(false, now);
        let later = now + PAUSE;
        breaker.admit(later).expect("the probe");
        breaker.record(false, later);
        assert_eq!(breaker.admit(later), Err(Refused { retry_in: PAUSE }));
        assert_eq!(breaker.view(later).times_opened, 2);
    }

    #[test]
    fn a_registry_keeps_one_breaker_per_key_and_counts_the_open_ones() {
        let breakers = Breakers::new(1, PAUSE);
        let now = Instant::now();
        breakers.get("https://a.example:443").record(false, now);
        breakers.get("https://b.example:443").record(true, now);
        assert!(breakers.get("https://a.example:443").admit(now).is_err(), "the same breaker again");
        assert_eq!(breakers.totals(now), (1, 1));
    }

    #[test]
    fn late_failures_of_calls_started_before_it_opened_do_not_extend_the_pause() {
        let breaker = Breaker::new(1, PAUSE);
        let now = Instant::now();
        breaker.record(false, now);
        breaker.record(false, now + Duration::from_secs(20));
        assert_eq!(breaker.admit(now + PAUSE), Ok(()));
    }
}
