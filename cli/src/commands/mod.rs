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

/// Connects to NATS (`NATS_URL`: one server, or a comma-separated list of a
/// cluster's) or explains how to get it running.
pub async fn connect_nats(settings: &Settings) -> anyhow::Result<async_nats::Client> {
    let servers = tracehop_messaging::server_addrs(&settings.nats_url).context("NATS_URL is invalid")?;
    let options = tracehop_messaging::access::connect_options(
        tracehop_messaging::access::NatsUser::Command,
        &settings.nats_credentials()?,
    );
    let connect = options.connection_timeout(Duration::from_secs(3)).connect(servers);
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

/// Prints what `kill` or `start` did with `--json`: one object for one
/// process (as with one copy of each service), an array for several.
pub fn print_json_outcomes(mut outcomes: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let output = match outcomes.len() {
        1 => outcomes.remove(0),
        _ => serde_json::Value::Array(outcomes),
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
