//! The order service's configuration, read from the environment.

use std::time::Duration;

use tracehop_service::{BaseConfig, env_millis, env_or};

/// Order settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `ORDER_INVENTORY_TIMEOUT_MS`: the deadline of each inventory request.
    pub inventory_timeout: Duration,
    /// `ORDER_PAYMENT_TIMEOUT_MS`: the deadline of a charge (3 s).
    pub payment_timeout: Duration,
    /// `ORDER_OUTBOX_POLL_MS`: how often the relay looks for events it was
    /// not told about (written by another instance, or left by a crash).
    pub outbox_poll_interval: Duration,
    /// `ORDER_DB_CONNECTIONS`: the pool size.
    pub max_connections: u32,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            base: BaseConfig::from_env()?,
            inventory_timeout: env_millis("ORDER_INVENTORY_TIMEOUT_MS", Duration::from_secs(5))?,
            payment_timeout: env_millis("ORDER_PAYMENT_TIMEOUT_MS", Duration::from_secs(3))?,
            outbox_poll_interval: env_millis("ORDER_OUTBOX_POLL_MS", Duration::from_millis(500))?,
            max_connections: env_or("ORDER_DB_CONNECTIONS", 10)?,
        })
    }
}
