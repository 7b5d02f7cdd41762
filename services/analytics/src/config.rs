//! The analytics service's configuration, read from the environment.

use tracehop_service::{BaseConfig, env_or};

/// Analytics settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `ANALYTICS_DB_CONNECTIONS`: the pool size, shared by the consumer
    /// (one event at a time) and the summary requests.
    pub max_connections: u32,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self { base: BaseConfig::from_env()?, max_connections: env_or("ANALYTICS_DB_CONNECTIONS", 4)? })
    }
}
