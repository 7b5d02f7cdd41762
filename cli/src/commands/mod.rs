//! One module per subcommand; each `run` returns the process's exit code.

pub mod bench;
pub mod console;
pub mod demo;
pub mod discard;
pub mod down;
pub mod explain;
pub mod kill;
pub mod load;
pub mod nats_keys;
pub mod order;
pub mod replay;
pub mod scenario;
pub mod slowest;
pub mod start;
pub mod status;
pub mod trace;
pub mod up;
pub mod watch;

use std::time::Duration;

use anyhow::Context as _;

use crate::settings::Settings;

/// Connects to NATS or explains how to get it running.
pub async fn connect_nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    let options = tracehop_messaging::access::connect_options(
        tracehop_messaging::access::NatsUser::Command,
        &settings.nats_credentials()?,
    );
    let connect = options.connection_timeout(Duration::from_secs(3)).connect(&settings.nats_url);
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|result| result.map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "failed to connect to NATS at {} ({})",
                settings.nats_url,
                match &settings.own_nats {
                    Some(_) => "is the system up? `tracehop up` starts its NATS server",
                    None => "start one with `nats-server -js`, or set NATS_URL",
                }
            )
        })
}

pub use crate::term::is_terminal;
