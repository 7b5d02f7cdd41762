//! `tracehop kill SERVICE`: stops one service that `up` started, with
//! SIGKILL by default (what a crash looks like: no drain, no flush) or with
//! SIGTERM and `--term` (a graceful drain, SIGKILL after the grace period).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tracehop_launcher::{Service, StopMode};

use crate::settings::Settings;

/// How long a service has to drain after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(15);

/// The service named `name`, or an error that lists the valid names.
pub fn known_service(name: &str) -> anyhow::Result<&'static str> {
    Ok(name.parse::<Service>()?.name())
}

pub async fn run(settings: &Settings, name: &str, term: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let service = known_service(name)?;
    let launcher = settings.launcher()?;
    let Some(pid) = launcher.running_pid(service) else {
        bail!("{service} is not running (start it with `tracehop start {service}`)");
    };
    let started = Instant::now();
    let (mode, signal) = if term { (StopMode::Graceful(GRACE), "SIGTERM") } else { (StopMode::Kill, "SIGKILL") };
    if !launcher.stop(service, mode).await? {
        bail!("{service} is not running (it stopped on its own)");
    }
    let elapsed = started.elapsed();
    // `stop` sends SIGKILL once the grace period is over.
    let drained = term && elapsed < GRACE;
    if as_json {
        let outcome = json!({
            "service": service,
            "pid": pid,
            "signal": signal,
            "drained": drained,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else if !term {
        println!("{service} killed (SIGKILL, pid {pid})");
    } else if drained {
        println!("{service} stopped (SIGTERM, pid {pid}, drained in {:.1} s)", elapsed.as_secs_f64());
    } else {
        println!("{service} did not drain within {} s after SIGTERM: killed (pid {pid})", GRACE.as_secs());
    }
    Ok(ExitCode::SUCCESS)
}
