//! The keeper process.

use tracehop_keeper::{Config, SERVICE, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // The keeper's own spans stay out of the feed it reads, and it exports
    // only what it keeps: its telemetry is logs.
    let mut base = config.base.clone();
    base.span_feed = false;
    base.otlp_endpoint = None;
    tracehop_service::run(SERVICE, env!("CARGO_PKG_VERSION"), &base, |runtime| run(config, runtime)).await
}
