//! Live scenarios: the classic production problems of an event-driven
//! checkout, switched on and off while the system runs.
//!
//! Each [`Scenario`] has a switch in the JetStream key-value bucket
//! [`BUCKET`], under its name: whether its fault is on, whether its fix is
//! applied, and (for `slow-inventory`) how often it strikes. Services keep a
//! [`Switches`] that watches the bucket, so a flip takes effect within a
//! second and with no restart; the bucket's history records who flipped what
//! and when. A switch has three useful states:
//!
//! - **off**: the system as it normally runs;
//! - **on** ([`Switch::broken`]): the incident as it happened, the fault
//!   present and the fix not applied;
//! - **on and fixed** ([`Switch::mitigated`]): the same fault, met by the fix.
//!
//! The faults are real: PostgreSQL's own lock waits, replies that never come,
//! a consumer that stops pulling. Never a sleep. Every span a scenario acts
//! on carries `tracehop.scenarios`, the switches that were on
//! ([`Switches::annotate`]), so that a trace says it.
//!
//! Modules: this file (the catalog and the switches), [`store`] (the bucket:
//! reading, flipping and watching it).

pub mod store;

use std::collections::BTreeMap;

use opentelemetry::{Array, StringValue, Value};
use tokio::sync::watch;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use store::{Change, ScenarioError, apply, create_bucket, ensure_bucket, read_all, watch};

/// The key-value bucket that holds the switches.
pub const BUCKET: &str = "SCENARIOS";
/// The span attribute that lists the scenarios on when a span was made.
pub const SPAN_ATTRIBUTE: &str = "tracehop.scenarios";
/// `slow-inventory`'s default share of reservations that take the slow path.
pub const DEFAULT_SLOW_INVENTORY_RATE: f64 = 0.02;

/// A scenario: a fault that can be switched on, and its fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    SlowInventory,
    PaymentDown,
    LoyaltyNPlusOne,
    AnalyticsDown,
}

impl Scenario {
    /// Every scenario, in the order they are listed.
    pub const ALL: [Scenario; 4] =
        [Scenario::SlowInventory, Scenario::PaymentDown, Scenario::LoyaltyNPlusOne, Scenario::AnalyticsDown];

    /// The name users type, and the switch's key in the bucket.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SlowInventory => "slow-inventory",
            Scenario::PaymentDown => "payment-down",
            Scenario::LoyaltyNPlusOne => "loyalty-n-plus-one",
            Scenario::AnalyticsDown => "analytics-down",
        }
    }

    /// The service whose behaviour the fault changes.
    pub fn service(self) -> &'static str {
        match self {
            Scenario::SlowInventory => "inventory",
            Scenario::PaymentDown => "payment",
            Scenario::LoyaltyNPlusOne => "loyalty",
            Scenario::AnalyticsDown => "analytics",
        }
    }

    /// What the fault does.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::SlowInventory => {
                "a restock batch job holds the row of the restock queue in a long transaction; the rare \
                 reservation that files a restock request (2% by default) waits for its lock in PostgreSQL, \
                 and order's retries make that checkout take about 12 s while the median stays fast"
            }
            Scenario::PaymentDown => {
                "payment stops answering charges (the process lives, replies never come); order waits 30 s \
                 per call with no circuit breaker, the gateway times out, and checkouts pile up"
            }
            Scenario::LoyaltyNPlusOne => {
                "loyalty prices each item of a premium order with its own request to inventory: N sequential \
                 calls where one would do"
            }
            Scenario::AnalyticsDown => {
                "analytics stops consuming without dying: its events wait, nothing fails loudly, and only \
                 the sentinel's alert and its missed-by spans show it"
            }
        }
    }

    /// What the fix does.
    pub fn fix(self) -> &'static str {
        match self {
            Scenario::SlowInventory => {
                "a lock timeout of 100 ms with a retry budget of 3: the restock request is deferred to the \
                 queue instead of waiting, and the checkout goes on"
            }
            Scenario::PaymentDown => {
                "a 3 s timeout and a circuit breaker: orders fail in 3 s, then in microseconds while the breaker \
                 is open, and recover by themselves when payment answers again"
            }
            Scenario::LoyaltyNPlusOne => "one batch request prices every item of the order",
            Scenario::AnalyticsDown => "analytics resumes consuming and catches up; nothing was lost",
        }
    }

    /// The scenario named `name`.
    pub fn parse(name: &str) -> Result<Self, ScenarioError> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| ScenarioError::Unknown(name.to_string()))
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One scenario's switch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Switch {
    /// The fault is injected.
    pub on: bool,
    /// The fix is applied (it matters only while the fault is on).
    pub fixed: bool,
    /// `slow-inventory`: the share of reservations that take the slow
    /// path; 0 means [`DEFAULT_SLOW_INVENTORY_RATE`].
    pub rate: f64,
    /// Who flipped it last, and when (milliseconds since the epoch).
    pub changed_by: String,
    pub changed_at_unix_ms: i64,
}

impl Switch {
    /// The incident as it happened: the fault on, the fix not applied.
    pub fn broken(&self) -> bool {
        self.on && !self.fixed
    }

    /// The fault on, met by its fix.
    pub fn mitigated(&self) -> bool {
        self.on && self.fixed
    }

    /// The rate, its default applied.
    pub fn rate_or_default(&self) -> f64 {
        if self.rate > 0.0 { self.rate.min(1.0) } else { DEFAULT_SLOW_INVENTORY_RATE }
    }
}

/// The switches as a service sees them, kept current by [`watch`].
#[derive(Clone, Debug)]
pub struct Switches {
    state: watch::Receiver<BTreeMap<Scenario, Switch>>,
}

impl Switches {
    /// Switches that are all off and never change: for code run without
    /// the bucket (unit tests, tools).
    pub fn all_off() -> Self {
        let (_, state) = watch::channel(BTreeMap::new());
        Self { state }
    }

    pub(crate) fn from_receiver(state: watch::Receiver<BTreeMap<Scenario, Switch>>) -> Self {
        Self { state }
    }

    /// `scenario`'s switch now.
    pub fn get(&self, scenario: Scenario) -> Switch {
        self.state.borrow().get(&scenario).cloned().unwrap_or_default()
    }

    /// Waits until any switch changes; false once nobody watches any more.
    pub async fn changed(&mut self) -> bool {
        self.state.changed().await.is_ok()
    }

    /// A signal that holds whether `scenario` is [`Switch::broken`], kept
    /// current by a task of its own while the switches are watched.
    pub fn broken_signal(&self, scenario: Scenario) -> watch::Receiver<bool> {
        let (sender, receiver) = watch::channel(self.get(scenario).broken());
        let mut switches = self.clone();
        tokio::spawn(async move {
            while switches.changed().await {
                sender.send_if_modified(|broken| {
                    let now = switches.get(scenario).broken();
                    std::mem::replace(broken, now) != now
                });
                if sender.is_closed() {
                    break;
                }
            }
        });
        receiver
    }

    /// Records on `span`, as `tracehop.scenarios`, which of `scenarios`
    /// are on (a fixed one as `name (fixed)`); nothing when none is.
    pub fn annotate(&self, span: &tracing::Span, scenarios: &[Scenario]) {
        let on: Vec<StringValue> = scenarios
            .iter()
            .filter_map(|&scenario| {
                let switch = self.get(scenario);
                match (switch.on, switch.fixed) {
                    (false, _) => None,
                    (true, false) => Some(scenario.name().to_string().into()),
                    (true, true) => Some(format!("{} (fixed)", scenario.name()).into()),
                }
            })
            .collect();
        if !on.is_empty() {
            span.set_attribute(SPAN_ATTRIBUTE, Value::Array(Array::String(on)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::parse(scenario.name()).unwrap(), scenario);
        }
        assert!(matches!(Scenario::parse("slow_inventory"), Err(ScenarioError::Unknown(_))));
    }

    #[test]
    fn broken_and_mitigated_need_the_fault() {
        let off = Switch::default();
        assert!(!off.broken() && !off.mitigated());
        let fixed_but_off = Switch { fixed: true, ..Switch::default() };
        assert!(!fixed_but_off.broken() && !fixed_but_off.mitigated());
        let on = Switch { on: true, ..Switch::default() };
        assert!(on.broken() && !on.mitigated());
        let on_fixed = Switch { on: true, fixed: true, ..Switch::default() };
        assert!(!on_fixed.broken() && on_fixed.mitigated());
    }

    #[test]
    fn the_rate_defaults_and_is_bounded() {
        assert_eq!(Switch::default().rate_or_default(), DEFAULT_SLOW_INVENTORY_RATE);
        assert_eq!(Switch { rate: 0.5, ..Switch::default() }.rate_or_default(), 0.5);
        assert_eq!(Switch { rate: 7.0, ..Switch::default() }.rate_or_default(), 1.0);
    }

    #[test]
    fn all_off_is_off() {
        let switches = Switches::all_off();
        for scenario in Scenario::ALL {
            assert_eq!(switches.get(scenario), Switch::default());
        }
    }
}
