//! The sentinel process.

use tracehop_sentinel::{Config, SERVICE, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    tracehop_service::run(SERVICE, env!("CARGO_PKG_VERSION"), &config.base.clone(), |runtime| run(config, runtime))
        .await
}
