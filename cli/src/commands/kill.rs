//! `tracehop kill SERVICE`: stops one service that `up` started, with
//! SIGKILL by default (what a crash looks like: no drain, no flush) or with
//! SIGTERM and `--term` (a graceful drain, SIGKILL after the grace period).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tracehop_launcher::{Launcher, Service, StopMode};

use crate::settings::Settings;

/// How long a service has to drain after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(15);

/// The service named `name`, or an error that lists the valid names.
pub fn known_service(name: &str) -> anyhow::Result<&'static str> {
    Ok(name.parse::<Service>()?.name())
}

/// What stopping a service did.
#[derive(Clone, Debug)]
pub struct Stopped {
    pub service: &'static str,
    pub pid: u32,
    /// `SIGKILL` or `SIGTERM`.
    pub signal: &'static str,
    /// After SIGTERM: whether it drained before the grace period ended.
    pub drained: bool,
    pub elapsed: Duration,
}

impl Stopped {
    /// One line for people.
    pub fn describe(&self) -> String {
        let (service, pid) = (self.service, self.pid);
        if self.signal == "SIGKILL" {
            format!("{service} killed (SIGKILL, pid {pid})")
        } else if self.drained {
            format!("{service} stopped (SIGTERM, pid {pid}, drained in {:.1} s)", self.elapsed.as_secs_f64())
        } else {
            format!("{service} did not drain within {} s after SIGTERM: killed (pid {pid})", GRACE.as_secs())
        }
    }
}

/// Stops the service named `name` with SIGKILL, or with SIGTERM and a
/// grace period when `term`.
pub async fn stop(launcher: &Launcher, name: &str, term: bool) -> anyhow::Result<Stopped> {
    let service = known_service(name)?;
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
    Ok(Stopped { service, pid, signal, drained: term && elapsed < GRACE, elapsed })
}

pub async fn run(settings: &Settings, name: &str, term: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let stopped = stop(&settings.launcher()?, name, term).await?;
    if as_json {
        let outcome = json!({
            "service": stopped.service,
            "pid": stopped.pid,
            "signal": stopped.signal,
            "drained": stopped.drained,
            "elapsed_ms": stopped.elapsed.as_millis() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", stopped.describe());
    }
    Ok(ExitCode::SUCCESS)
}
