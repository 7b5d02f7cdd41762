//! The keeper process.

use tracehop_keeper::{Config, SERVICE, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // The keeper's own spans stay out of the feed it reads, and no span of
    // its own goes over OTLP, where only what it keeps belongs; its metrics
    // and logs go there like every service's.
    let mut base = config.base.clone();
    base.span_feed = false;
    base.tail_sampling = true;
    tracehop_service::run(SERVICE, env!("CARGO_PKG_VERSION"), &base, |runtime| run(config, runtime)).await
}
