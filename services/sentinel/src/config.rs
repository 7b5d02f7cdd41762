//! The sentinel's configuration, read from the environment.

use std::time::Duration;

use tracehop_messaging::health;
use tracehop_service::{BaseConfig, env_millis, env_or};

/// Sentinel settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `SENTINEL_DEADLINE_MS`: an event not processed this long after it was
    /// published is late (default 5 s).
    pub deadline: Duration,
    /// `SENTINEL_INTERVAL_MS`: how often consumers are checked.
    pub interval: Duration,
    /// `SENTINEL_DOWN_AFTER_MS`: how long a consumer may have nobody pulling
    /// and make no progress before it is reported down (a live consumer busy
    /// with a batch has no pull request waiting either, but it moves).
    pub down_after: Duration,
    /// `SENTINEL_MAX_MISSED_SPANS`: failure spans per incident and consumer;
    /// the rest are counted on the recovery span.
    pub max_missed_spans: usize,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            base: BaseConfig::from_env()?,
            deadline: env_millis("SENTINEL_DEADLINE_MS", health::DEFAULT_DEADLINE)?,
            interval: env_millis("SENTINEL_INTERVAL_MS", Duration::from_millis(500))?,
            down_after: env_millis("SENTINEL_DOWN_AFTER_MS", health::DEFAULT_DOWN_AFTER)?,
            max_missed_spans: env_or("SENTINEL_MAX_MISSED_SPANS", 100)?,
        })
    }
}
