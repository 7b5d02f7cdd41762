//! The keeper's configuration, read from the environment.

use std::time::Duration;

use tracehop_service::{BaseConfig, env_millis, env_or};
use tracehop_spanfeed::PARTITIONS;

/// Keeper settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub base: BaseConfig,
    /// `KEEPER_INSTANCE` (0) of `KEEPER_INSTANCES` (1): this instance
    /// decides the feed's partitions whose number modulo the instance count
    /// is its own.
    pub instance: u8,
    pub instances: u8,
    /// `TRACEHOP_KEEP_SLOWER_THAN_MS` (1000): every trace slower is kept.
    pub slower_than: Duration,
    /// `TRACEHOP_KEEP_RATIO` (0.1): the share of the other traces kept.
    pub ratio: f64,
    /// `KEEPER_QUIET_MS` (3000): a trace that looks whole is decided once it
    /// has had no new span for this long.
    pub quiet: Duration,
    /// `KEEPER_MAX_WAIT_MS` (30000): any trace is decided this long after its
    /// first span, on what arrived.
    pub max_wait: Duration,
    /// `KEEPER_MAX_PENDING_TRACES` (200000): most traces held in memory.
    pub max_pending: usize,
}

impl Config {
    /// Reads the configuration; defaults work on a developer machine.
    pub fn from_env() -> anyhow::Result<Self> {
        let config = Self {
            base: BaseConfig::from_env()?,
            instance: env_or("KEEPER_INSTANCE", 0)?,
            instances: env_or("KEEPER_INSTANCES", 1)?,
            slower_than: env_millis("TRACEHOP_KEEP_SLOWER_THAN_MS", Duration::from_secs(1))?,
            ratio: env_or("TRACEHOP_KEEP_RATIO", 0.1)?,
            quiet: env_millis("KEEPER_QUIET_MS", Duration::from_secs(3))?,
            max_wait: env_millis("KEEPER_MAX_WAIT_MS", Duration::from_secs(30))?,
            max_pending: env_or("KEEPER_MAX_PENDING_TRACES", 200_000)?,
        };
        if config.instances == 0 || config.instances > PARTITIONS || config.instance >= config.instances {
            anyhow::bail!(
                "KEEPER_INSTANCE must be below KEEPER_INSTANCES, which must be 1 to {PARTITIONS}: got {} of {}",
                config.instance,
                config.instances
            );
        }
        if !(0.0..=1.0).contains(&config.ratio) {
            anyhow::bail!("TRACEHOP_KEEP_RATIO must be from 0 to 1, got {}", config.ratio);
        }
        Ok(config)
    }

    /// The partitions this instance decides.
    pub fn partitions(&self) -> Vec<u8> {
        (0..PARTITIONS).filter(|p| p % self.instances == self.instance).collect()
    }
}
