//! A circuit breaker for the calls to payment.
//!
//! - **closed**: calls go through; `failure_threshold` failures in a row open it.
//! - **open**: calls fail at once, without touching the network, for
//!   `open_for`; a payment outage then costs each checkout microseconds
//!   instead of a full timeout.
//! - **half-open**: after `open_for`, one trial call goes through (others
//!   still fail fast); its success closes the breaker, its failure opens it
//!   again.
//!
//! Only unavailability counts as a failure (timeouts, no responders, a
//! processor error): a declined card is payment working as it should.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, as reported on spans (`payment.circuit_breaker.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What the breaker allows for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead (closed).
    Call,
    /// Go ahead: this is the one trial call of the half-open state.
    Trial,
    /// Fail fast: the breaker is open.
    Reject,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// A thread-safe circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self { failure_threshold: failure_threshold.max(1), open_for, inner: Mutex::new(Inner::Closed { failures: 0 }) }
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if Instant::now() < until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Asks to make a call; every [`Permit::Call`] or [`Permit::Trial`] must
    /// be followed by [`CircuitBreaker::record`].
    pub fn permit(&self) -> Permit {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Permit::Call,
            Inner::Open { until } if Instant::now() < until => Permit::Reject,
            Inner::Open { .. } | Inner::HalfOpen { trial_in_flight: false } => {
                *inner = Inner::HalfOpen { trial_in_flight: true };
                Permit::Trial
            }
            Inner::HalfOpen { trial_in_flight: true } => Permit::Reject,
        }
    }

    /// Records the outcome of a permitted call; returns the state after it.
    pub fn record(&self, permit: Permit, success: bool) -> State {
        let mut inner = self.lock();
        *inner = match (&*inner, permit, success) {
            (_, Permit::Reject, _) => return self.state_of(&inner),
            (_, _, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, Permit::Call, false) if failures + 1 < self.failure_threshold => {
                Inner::Closed { failures: failures + 1 }
            }
            // The threshold is reached, or the trial failed, or a call let
            // through before the breaker opened came back failed.
            _ => Inner::Open { until: Instant::now() + self.open_for },
        };
        self.state_of(&inner)
    }

    fn state_of(&self, inner: &Inner) -> State {
        match inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state invalid.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_fails_fast() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(breaker.permit(), Permit::Call);
            assert_eq!(breaker.record(Permit::Call, false), State::Closed);
        }
        assert_eq!(breaker.record(breaker.permit(), false), State::Open);
        assert_eq!(breaker.permit(), Permit::Reject);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60));
        breaker.record(breaker.permit(), false);
        breaker.record(breaker.permit(), true);
        assert_eq!(breaker.record(breaker.permit(), false), State::Closed);
    }

    #[test]
    fn half_open_lets_one_trial_through_and_closes_on_success() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        breaker.record(breaker.permit(), false);
        assert_eq!(breaker.permit(), Permit::Reject);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(breaker.permit(), Permit::Trial);
        assert_eq!(breaker.permit(), Permit::Reject, "only one trial at a time");
        assert_eq!(breaker.record(Permit::Trial, true), State::Closed);
        assert_eq!(breaker.permit(), Permit::Call);
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        breaker.record(breaker.permit(), false);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.permit(), Permit::Trial);
        assert_eq!(breaker.record(Permit::Trial, false), State::Open);
        assert_eq!(breaker.permit(), Permit::Reject);
    }
}
