//! The inventory service's configuration, read from the environment.

use tracehop_service::{BaseConfig, env_or};

/// Inventory settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `INVENTORY_DB_CONNECTIONS` (24, shared among copies: [`BaseConfig::pool_share`]): the pool size. A reservation that
    /// waits on a lock (the scenario `slow-inventory`) holds its connection
    /// while it waits, so this bounds how many rare slow ones the fast ones
    /// can live beside before the pool runs dry.
    pub max_connections: u32,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        let base = BaseConfig::from_env()?;
        Ok(Self { base: base.clone(), max_connections: env_or("INVENTORY_DB_CONNECTIONS", base.pool_share(24))? })
    }
}
