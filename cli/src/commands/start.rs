//! `tracehop start SERVICE`: starts one service again, with the environment
//! `up` gives it, and waits until it answers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use tracehop_launcher::Launcher;

use crate::settings::Settings;

/// How long the service has to answer after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A service started and answering.
#[derive(Debug)]
pub struct Started {
    pub service: &'static str,
    pub pid: u32,
    /// Until it answered.
    pub elapsed: Duration,
    /// The process: whoever keeps running should wait for it, so that it is
    /// not left a zombie when it exits.
    pub child: std::process::Child,
}

/// Starts the service named `name` with `launcher`'s environment and waits
/// until it answers on `nats` (the gateway at `gateway_addr`).
pub async fn start(
    launcher: &Launcher,
    nats: &async_nats::Client,
    gateway_addr: &str,
    name: &str,
) -> anyhow::Result<Started> {
    let service = super::kill::known_service(name)?;
    if let Some(pid) = launcher.running_pid(service) {
        bail!("{service} is already running (pid {pid})");
    }
    let started = Instant::now();
    let mut child = launcher.start(service)?;
    let pid = child.id();
    let log = launcher.log_path(service);

    let services = [service];
    let ready = tracehop_launcher::wait_ready(nats, &services, gateway_addr, READY_TIMEOUT);
    tokio::pin!(ready);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            outcome = &mut ready => {
                if let Err(error) = outcome {
                    bail!("{service} started (pid {pid}) but did not answer: {error:#}; see its log at {}", log.display());
                }
                break;
            }
            _ = tick.tick() => {
                // A service that exits during start-up will never answer: say
                // so now instead of after the timeout.
                if let Ok(Some(exit)) = child.try_wait() {
                    bail!(
                        "{service} exited during start-up ({exit}); last lines of {}:\n{}",
                        log.display(),
                        log_tail(&log, 10)
                    );
                }
            }
        }
    }
    Ok(Started { service, pid, elapsed: started.elapsed(), child })
}

pub async fn run(settings: &Settings, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    let service = super::kill::known_service(name)?;
    if let Some(pid) = launcher.running_pid(service) {
        bail!("{service} is already running (pid {pid})");
    }
    // Connect first: a service started while NATS is unreachable could not
    // be seen to answer.
    let nats = super::connect_nats(settings).await?;
    let started = start(&launcher, &nats, &settings.gateway_addr, service).await?;
    if as_json {
        let outcome =
            json!({"service": started.service, "pid": started.pid, "ready_ms": started.elapsed.as_millis() as u64});
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", started.describe());
    }
    Ok(ExitCode::SUCCESS)
}

impl Started {
    /// One line for people.
    pub fn describe(&self) -> String {
        format!("{} started (pid {}), answering after {:.1} s", self.service, self.pid, self.elapsed.as_secs_f64())
    }
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}
