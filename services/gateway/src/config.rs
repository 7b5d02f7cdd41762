//! The gateway's configuration, read from the environment.

use std::time::Duration;

use tracehop_messaging::w3c::BaggagePolicy;
use tracehop_service::{BaseConfig, env_millis, env_or};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `GATEWAY_ADDR`: where HTTP is served.
    pub addr: String,
    /// `GATEWAY_ORDER_TIMEOUT_MS`: the deadline of a checkout.
    pub order_timeout: Duration,
    /// `GATEWAY_READ_TIMEOUT_MS`: the deadline of a read.
    pub read_timeout: Duration,
    /// `GATEWAY_BAGGAGE_ALLOW` (comma-separated keys; none by default) and
    /// `GATEWAY_BAGGAGE_MAX_BYTES` (1024): which of a client's `baggage`
    /// members pass the edge. A client is not trusted to set values that
    /// services act on, so by default none does.
    pub baggage: BaggagePolicy,
    /// `GATEWAY_RATE_LIMIT_PER_SECOND` (500; 0 turns the limit off),
    /// `GATEWAY_RATE_LIMIT_BURST` (1000), `GATEWAY_BODY_TIMEOUT_MS` (5000):
    /// see [`crate::protect`].
    pub protection: crate::protect::Protection,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            base: BaseConfig::from_env()?,
            addr: env_or("GATEWAY_ADDR", "127.0.0.1:8080".to_string())?,
            order_timeout: env_millis("GATEWAY_ORDER_TIMEOUT_MS", Duration::from_secs(20))?,
            read_timeout: env_millis("GATEWAY_READ_TIMEOUT_MS", Duration::from_secs(3))?,
            baggage: BaggagePolicy {
                allowed_keys: env_or("GATEWAY_BAGGAGE_ALLOW", String::new())?
                    .split(',')
                    .map(|key| key.trim().to_string())
                    .filter(|key| !key.is_empty())
                    .collect(),
                max_bytes: env_or("GATEWAY_BAGGAGE_MAX_BYTES", 1024)?,
            },
            protection: crate::protect::Protection {
                quota: crate::protect::Protection::quota(
                    env_or("GATEWAY_RATE_LIMIT_PER_SECOND", 500)?,
                    env_or("GATEWAY_RATE_LIMIT_BURST", 1000)?,
                ),
                body_timeout: env_millis("GATEWAY_BODY_TIMEOUT_MS", Duration::from_secs(5))?,
            },
        })
    }
}
