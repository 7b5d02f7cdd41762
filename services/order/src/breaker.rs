//! A circuit breaker for the calls to payment.
//!
//! - **closed**: calls go through; `failure_threshold` failures in a row open it.
//! - **open**: calls fail at once, without touching the network; a payment
//!   outage then costs each checkout microseconds instead of a full timeout.
//!   It stays open [`FIRST_OPEN`] the first time, then twice as long after
//!   each failed trial, up to `open_for`: a short outage (payment's database
//!   restarting) is over for checkout about a second after it is over for
//!   payment, while a long one is probed only every `open_for`.
//! - **half-open**: once the open period is over, one trial call goes
//!   through (others still fail fast); its success closes the breaker, its
//!   failure opens it again, for longer.
//!
//! Only unavailability counts as a failure (timeouts, no responders, a
//! processor error): a declined card is payment working as it should.
//!
//! A call goes through with a [`Permit`], a guard: its outcome is recorded
//! with [`Permit::record`], and a permit dropped without one (a panic, a
//! cancelled future) records a failure, so that a trial call can never stay
//! "in flight" forever and keep the breaker failing fast for good.

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

/// What the breaker allowed for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Allowed {
    /// Go ahead (closed).
    Call,
    /// Go ahead: this is the one trial call of the half-open state.
    Trial,
}

/// Leave to make one call; records its outcome exactly once, a failure if
/// it is dropped unrecorded.
#[derive(Debug)]
#[must_use = "a permit records a failure when dropped without an outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    allowed: Allowed,
    recorded: bool,
}

impl Permit<'_> {
    /// True for the one trial call of the half-open state.
    pub fn is_trial(&self) -> bool {
        self.allowed == Allowed::Trial
    }

    /// Records the call's outcome; returns the state after it.
    pub fn record(mut self, success: bool) -> State {
        self.recorded = true;
        self.breaker.finish(self.allowed, success)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            // No outcome known: not a success.
            self.breaker.finish(self.allowed, false);
        }
    }
}

/// The breaker is open: fail fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected;

/// How long the breaker first stays open (at most `open_for`).
pub const FIRST_OPEN: Duration = Duration::from_secs(1);

/// The state, with the open period that the next failed trial doubles.
#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { trial_in_flight: bool, period: Duration },
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
            Inner::Open { until, .. } if Instant::now() < until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Asks to make a call: a [`Permit`] to go ahead, or [`Rejected`] when
    /// the breaker is open (or its one trial call is in flight).
    pub fn permit(&self) -> Result<Permit<'_>, Rejected> {
        let mut inner = self.lock();
        let allowed = match *inner {
            Inner::Closed { .. } => Allowed::Call,
            Inner::Open { until, .. } if Instant::now() < until => return Err(Rejected),
            Inner::Open { period, .. } | Inner::HalfOpen { trial_in_flight: false, period } => {
                *inner = Inner::HalfOpen { trial_in_flight: true, period };
                Allowed::Trial
            }
            Inner::HalfOpen { trial_in_flight: true, .. } => return Err(Rejected),
        };
        Ok(Permit { breaker: self, allowed, recorded: false })
    }

    /// Records the outcome of a permitted call; returns the state after it.
    fn finish(&self, allowed: Allowed, success: bool) -> State {
        let mut inner = self.lock();
        *inner = match (&*inner, allowed, success) {
            (_, _, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, Allowed::Call, false) if failures + 1 < self.failure_threshold => {
                Inner::Closed { failures: failures + 1 }
            }
            // The trial failed: open again, for twice as long.
            (Inner::HalfOpen { period, .. }, Allowed::Trial, false) => {
                let period = (*period * 2).min(self.open_for);
                Inner::Open { until: Instant::now() + period, period }
            }
            // A call let through before the breaker opened came back failed:
            // the open period stands.
            (Inner::Open { until, period }, _, false) => Inner::Open { until: *until, period: *period },
            (Inner::HalfOpen { trial_in_flight, period }, Allowed::Call, false) => {
                Inner::HalfOpen { trial_in_flight: *trial_in_flight, period: *period }
            }
            // The threshold is reached: open for the first period.
            _ => {
                let period = FIRST_OPEN.min(self.open_for);
                Inner::Open { until: Instant::now() + period, period }
            }
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

    fn fail(breaker: &CircuitBreaker) -> State {
        breaker.permit().expect("a permit").record(false)
    }

    #[test]
    fn opens_after_the_threshold_and_fails_fast() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            let permit = breaker.permit().expect("closed");
            assert!(!permit.is_trial());
            assert_eq!(permit.record(false), State::Closed);
        }
        assert_eq!(fail(&breaker), State::Open);
        assert_eq!(breaker.permit().unwrap_err(), Rejected);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn each_failed_trial_opens_it_longer_up_to_the_limit() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(3));
        fail(&breaker);
        let open_for = |breaker: &CircuitBreaker| match *breaker.lock() {
            Inner::Open { until, .. } => until.saturating_duration_since(Instant::now()),
            ref other => panic!("not open: {other:?}"),
        };
        assert!(open_for(&breaker) <= FIRST_OPEN);
        // Time the open period out, then fail the trial: twice as long.
        for expected in [Duration::from_secs(2), Duration::from_secs(3), Duration::from_secs(3)] {
            if let Inner::Open { until, .. } = &mut *breaker.lock() {
                *until = Instant::now();
            }
            let trial = breaker.permit().expect("the trial");
            assert!(trial.is_trial());
            assert_eq!(trial.record(false), State::Open);
            let left = open_for(&breaker);
            assert!(left <= expected && left > expected - Duration::from_millis(200), "{left:?} for {expected:?}");
        }
        // A success resets it: the next opening is short again.
        if let Inner::Open { until, .. } = &mut *breaker.lock() {
            *until = Instant::now();
        }
        assert_eq!(breaker.permit().unwrap().record(true), State::Closed);
        fail(&breaker);
        assert!(open_for(&breaker) <= FIRST_OPEN);
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60));
        fail(&breaker);
        breaker.permit().unwrap().record(true);
        assert_eq!(fail(&breaker), State::Closed);
    }

    #[test]
    fn half_open_lets_one_trial_through_and_closes_on_success() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        fail(&breaker);
        assert!(breaker.permit().is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.state(), State::HalfOpen);
        let trial = breaker.permit().expect("the trial");
        assert!(trial.is_trial());
        assert!(breaker.permit().is_err(), "only one trial at a time");
        assert_eq!(trial.record(true), State::Closed);
        assert!(!breaker.permit().unwrap().is_trial());
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        fail(&breaker);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.permit().unwrap().record(false), State::Open);
        assert!(breaker.permit().is_err());
    }

    #[test]
    fn a_trial_that_panics_does_not_stay_in_flight() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        fail(&breaker);
        std::thread::sleep(Duration::from_millis(30));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _trial = breaker.permit().expect("the trial");
            panic!("the call panicked");
        }));
        assert!(panicked.is_err());
        // Recorded as a failure on drop: open again, and a new trial comes
        // after the open period instead of never.
        assert_eq!(breaker.state(), State::Open);
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.permit().expect("a new trial").is_trial());
    }
}
