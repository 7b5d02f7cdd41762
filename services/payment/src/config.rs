//! The payment service's configuration, read from the environment.

use std::time::Duration;

use tracehop_service::{BaseConfig, env_millis, env_or};

/// Payment settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `PAYMENT_LATENCY_MS`: how long the simulated processor takes per charge.
    pub latency: Duration,
    /// `PAYMENT_DB_CONNECTIONS` (8, shared among copies: [`BaseConfig::pool_share`]): the pool size.
    pub max_connections: u32,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        let base = BaseConfig::from_env()?;
        Ok(Self {
            base: base.clone(),
            latency: env_millis("PAYMENT_LATENCY_MS", Duration::from_millis(20))?,
            max_connections: env_or("PAYMENT_DB_CONNECTIONS", base.pool_share(8))?,
        })
    }
}
