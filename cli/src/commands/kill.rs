//! `tracehop kill NAME`: stops a service that `up` started (every copy of
//! it), or one copy (`order-2`), with SIGKILL by default (what a crash looks
//! like: no drain, no flush) or with SIGTERM and `--term` (a graceful
//! drain, SIGKILL after the grace period). The console's buttons call
//! [`stop`] too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tracehop_launcher::{Launcher, StopMode};

use crate::settings::Settings;

/// How long a service has to drain after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(15);

/// What stopping one process did.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// The process: a service's first copy by its name, another as `order-2`.
    pub service: String,
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
        let (service, pid) = (&self.service, self.pid);
        if self.signal == "SIGKILL" {
            format!("{service} killed (SIGKILL, pid {pid})")
        } else if self.drained {
            format!("{service} stopped (SIGTERM, pid {pid}, drained in {:.1} s)", self.elapsed.as_secs_f64())
        } else {
            format!("{service} did not drain within {} s after SIGTERM: killed (pid {pid})", GRACE.as_secs())
        }
    }

    /// The object `--json` prints.
    pub fn json(&self) -> Value {
        json!({
            "service": self.service,
            "pid": self.pid,
            "signal": self.signal,
            "drained": self.drained,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }
}

/// Stops every running process `name` stands for (every copy of a service,
/// or one copy) with SIGKILL, or with SIGTERM and a grace period when
/// `term`; an error when none runs.
pub async fn stop(launcher: &Launcher, name: &str, term: bool) -> anyhow::Result<Vec<Stopped>> {
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
    let mut stopped = Vec::new();
    for (service, pid) in running {
        let started = Instant::now();
        // False when it stopped on its own meanwhile: nothing to report.
        if launcher.stop(&service, mode).await? {
            let elapsed = started.elapsed();
            // `stop` sends SIGKILL once the grace period is over.
            stopped.push(Stopped { service, pid, signal, drained: term && elapsed < GRACE, elapsed });
        }
    }
    Ok(stopped)
}

/// `--json` prints one object for one process, an array for several.
pub async fn run(settings: &Settings, name: &str, term: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let stopped = stop(&settings.launcher()?, name, term).await?;
    if as_json {
        super::print_json_outcomes(stopped.iter().map(Stopped::json).collect())?;
    } else {
        for process in &stopped {
            println!("{}", process.describe());
        }
    }
    Ok(ExitCode::SUCCESS)
}
