//! `tracehop kill NAME`: stops a service that `up` started (every copy of
//! it), or one copy (`order-2`), with SIGKILL by default (what a crash looks
//! like: no drain, no flush) or with SIGTERM and `--term` (a graceful
//! drain, SIGKILL after the grace period).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tracehop_launcher::StopMode;

use crate::settings::Settings;

/// How long a service has to drain after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(15);

/// Stops every running process `name` stands for. `--json` prints one
/// object for one process, an array for several.
pub async fn run(settings: &Settings, name: &str, term: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    let running: Vec<(String, u32)> = launcher
        .resolve(name)?
        .into_iter()
        .filter_map(|process| {
            let process = process.name();
            launcher.running_pid(&process).map(|pid| (process, pid))
        })
        .collect();
    if running.is_empty() {
        bail!("{name} is not running (start it with `tracehop start {name}`)");
    }
    let (mode, signal) = if term { (StopMode::Graceful(GRACE), "SIGTERM") } else { (StopMode::Kill, "SIGKILL") };
    let mut outcomes: Vec<Value> = Vec::new();
    for (process, pid) in running {
        let started = Instant::now();
        if !launcher.stop(&process, mode).await? {
            println!("{process} was not running any more (it stopped on its own)");
            continue;
        }
        let elapsed = started.elapsed();
        // `stop` sends SIGKILL once the grace period is over.
        let drained = term && elapsed < GRACE;
        if as_json {
            outcomes.push(json!({
                "service": process,
                "pid": pid,
                "signal": signal,
                "drained": drained,
                "elapsed_ms": elapsed.as_millis() as u64,
            }));
        } else if !term {
            println!("{process} killed (SIGKILL, pid {pid})");
        } else if drained {
            println!("{process} stopped (SIGTERM, pid {pid}, drained in {:.1} s)", elapsed.as_secs_f64());
        } else {
            println!("{process} did not drain within {} s after SIGTERM: killed (pid {pid})", GRACE.as_secs());
        }
    }
    if as_json {
        super::print_json_outcomes(outcomes)?;
    }
    Ok(ExitCode::SUCCESS)
}
