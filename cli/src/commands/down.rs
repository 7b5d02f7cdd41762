//! `tracehop down`: stops what `up` started, the gateway first so that no
//! new order comes in while the rest drains, and the system's own NATS
//! server last, once nothing needs it.

use std::process::ExitCode;
use std::time::Duration;

use tracehop_launcher::StopMode;

use crate::settings::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    let mut stopped = 0;
    for (process, _) in launcher.running().into_iter().rev() {
        let process = process.name();
        if launcher.stop(&process, StopMode::Graceful(Duration::from_secs(15))).await? {
            println!("  {process:<15} stopped");
            stopped += 1;
        }
    }
    if let Some(own) = &settings.own_nats
        && own.stop(Duration::from_secs(15)).await
    {
        println!("  {:<15} stopped", "nats-server");
        stopped += 1;
    }
    if stopped == 0 {
        println!("nothing was running");
    }
    Ok(ExitCode::SUCCESS)
}
