//! The inventory service's configuration, read from the environment.

use tracehop_service::{BaseConfig, env_or};

/// Inventory settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_DB_CONNECTIONS`: the pool size.
    pub max_connections: u32,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self { base: BaseConfig::from_env()?, max_connections: env_or("INVENTORY_DB_CONNECTIONS", 8)? })
    }
}
