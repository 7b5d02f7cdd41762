//! The order service's configuration, read from the environment.

use std::time::Duration;

use tracehop_service::{BaseConfig, env_millis, env_or};

/// Order settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `ORDER_INVENTORY_TIMEOUT_MS` (4000): the deadline of each inventory request.
    pub inventory_timeout: Duration,
    /// `ORDER_INVENTORY_ATTEMPTS` (3): how often a reserve that timed out is
    /// sent, in all. A reserve is idempotent per order, so asking again is
    /// safe; it is also how a rare slow reserve becomes a 12 s checkout.
    pub inventory_attempts: u32,
    /// `ORDER_PAYMENT_TIMEOUT_MS`: the deadline of a charge (3 s).
    pub payment_timeout: Duration,
    /// `ORDER_OUTBOX_POLL_MS`: how often the relay looks for events it was
    /// not told about (written by another instance, or left by a crash).
    pub outbox_poll_interval: Duration,
    /// `ORDER_DB_CONNECTIONS` (10, shared among copies: [`BaseConfig::pool_share`]): the pool size.
    pub max_connections: u32,
    /// `ORDER_BREAKER_FAILURES`: payment failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// `ORDER_BREAKER_OPEN_MS`: how long the breaker stays open before a trial call.
    pub breaker_open_for: Duration,
    /// `ORDER_RESOLVER_INTERVAL_MS`: how often interrupted checkouts are looked for.
    pub resolver_interval: Duration,
    /// `ORDER_PENDING_TIMEOUT_MS`: a checkout still pending after this long was
    /// interrupted (a crash) and is failed by the resolver. Longer than the
    /// longest checkout: reserve + charge + commit timeouts.
    pub pending_timeout: Duration,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        let base = BaseConfig::from_env()?;
        Ok(Self {
            base: base.clone(),
            inventory_timeout: env_millis("ORDER_INVENTORY_TIMEOUT_MS", Duration::from_secs(4))?,
            inventory_attempts: env_or::<u32>("ORDER_INVENTORY_ATTEMPTS", 3)?.max(1),
            payment_timeout: env_millis("ORDER_PAYMENT_TIMEOUT_MS", Duration::from_secs(3))?,
            outbox_poll_interval: env_millis("ORDER_OUTBOX_POLL_MS", Duration::from_millis(500))?,
            max_connections: env_or("ORDER_DB_CONNECTIONS", base.pool_share(10))?,
            breaker_failures: env_or("ORDER_BREAKER_FAILURES", 5)?,
            breaker_open_for: env_millis("ORDER_BREAKER_OPEN_MS", Duration::from_secs(10))?,
            resolver_interval: env_millis("ORDER_RESOLVER_INTERVAL_MS", Duration::from_secs(5))?,
            pending_timeout: env_millis("ORDER_PENDING_TIMEOUT_MS", Duration::from_secs(60))?,
        })
    }
}
