//! The loyalty service's configuration, read from the environment.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tracehop_service::{BaseConfig, env_millis, env_or};

/// Loyalty settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `LOYALTY_DB_CONNECTIONS`: the pool size. Each event holds a
    /// connection only for its two statements, not while inventory prices
    /// its items, so a few serve the consumer's events in flight.
    pub max_connections: u32,
    /// `LOYALTY_PRICE_TIMEOUT_MS`: how long one price request may take.
    pub price_timeout: Duration,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            base: BaseConfig::from_env()?,
            max_connections: env_or("LOYALTY_DB_CONNECTIONS", 4)?,
            price_timeout: env_millis("LOYALTY_PRICE_TIMEOUT_MS", Duration::from_millis(2000))?,
        })
    }
}

/// How a premium order's items are priced by inventory. The live scenario
/// `loyalty-n-plus-one` switches between the two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pricing {
    /// One `svc.inventory.prices` request per item: the N+1 call pattern,
    /// while the scenario is on and unfixed.
    PerItem,
    /// One request with every SKU of the order: the fix, and the normal way.
    #[default]
    Batch,
}

impl Pricing {
    /// The configuration value, also shown on spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Pricing::PerItem => "per-item",
            Pricing::Batch => "batch",
        }
    }
}

impl fmt::Display for Pricing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pricing {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "per-item" => Ok(Pricing::PerItem),
            "batch" => Ok(Pricing::Batch),
            other => Err(format!("expected per-item or batch, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_parses_both_modes_and_nothing_else() {
        assert_eq!("per-item".parse::<Pricing>(), Ok(Pricing::PerItem));
        assert_eq!("batch".parse::<Pricing>(), Ok(Pricing::Batch));
        assert!("Batch".parse::<Pricing>().is_err());
        assert!("per_item".parse::<Pricing>().is_err());
        assert_eq!(Pricing::default(), Pricing::Batch);
    }

    #[test]
    fn pricing_round_trips_through_its_name() {
        for pricing in [Pricing::PerItem, Pricing::Batch] {
            assert_eq!(pricing.to_string().parse::<Pricing>(), Ok(pricing));
        }
    }
}
