//! `tracehop start NAME`: starts a service again (every copy `up` started
//! that is not running), or one copy (`order-2`), with the environment `up`
//! gives it, and waits until it answers. The console's buttons call
//! [`start`] too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tracehop_launcher::Launcher;

use crate::settings::Settings;

/// How long the service has to answer after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A process started, its service answering.
#[derive(Debug)]
pub struct Started {
    /// The process: a service's first copy by its name, another as `order-2`.
    pub service: String,
    pub pid: u32,
    /// Until its service answered.
    pub elapsed: Duration,
    /// The process: whoever keeps running should wait for it, so that it is
    /// not left a zombie when it exits.
    pub child: std::process::Child,
}

impl Started {
    /// One line for people.
    pub fn describe(&self) -> String {
        format!("{} started (pid {}), answering after {:.1} s", self.service, self.pid, self.elapsed.as_secs_f64())
    }
}

/// Starts every process `name` stands for that is not running, with
/// `launcher`'s environment, and waits until its service answers on `nats`
/// (the gateway at `gateway_addr`); an error when all of them run.
pub async fn start(
    launcher: &Launcher,
    nats: &async_nats::Client,
    gateway_addr: &str,
    name: &str,
) -> anyhow::Result<Vec<Started>> {
    let processes = launcher.resolve(name)?;
    let stopped: Vec<String> =
        processes.iter().map(|p| p.name()).filter(|process| launcher.running_pid(process).is_none()).collect();
    if stopped.is_empty() {
        let pids: Vec<String> =
            processes.iter().filter_map(|p| launcher.running_pid(&p.name())).map(|pid| pid.to_string()).collect();
        bail!("{name} is already running (pid {})", pids.join(", "));
    }
    let service = processes[0].service.name();
    let started = Instant::now();
    let mut children = Vec::new();
    for process in stopped {
        let child = launcher.start(&process)?;
        children.push((process, child));
    }

    let services = [service];
    let ready = tracehop_launcher::wait_ready(nats, &services, gateway_addr, READY_TIMEOUT);
    tokio::pin!(ready);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            outcome = &mut ready => {
                if let Err(error) = outcome {
                    let logs: Vec<String> =
                        children.iter().map(|(p, _)| launcher.log_path(p).display().to_string()).collect();
                    bail!("{name} started but did not answer: {error:#}; see {}", logs.join(", "));
                }
                break;
            }
            _ = tick.tick() => {
                // A process that exits during start-up will never answer:
                // say so now instead of after the timeout.
                for (process, child) in &mut children {
                    if let Ok(Some(exit)) = child.try_wait() {
                        let log = launcher.log_path(process);
                        bail!(
                            "{process} exited during start-up ({exit}); last lines of {}:\n{}",
                            log.display(),
                            log_tail(&log, 10)
                        );
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    Ok(children.into_iter().map(|(service, child)| Started { service, pid: child.id(), elapsed, child }).collect())
}

/// `--json` prints one object for one process, an array for several.
pub async fn run(settings: &Settings, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    // Connect first: a service started while NATS is unreachable could not
    // be seen to answer.
    let nats = super::connect_nats(settings).await?;
    let started = start(&launcher, &nats, &settings.gateway_addr, name).await?;
    if as_json {
        let outcomes = started
            .iter()
            .map(|s| json!({"service": s.service, "pid": s.pid, "ready_ms": s.elapsed.as_millis() as u64}))
            .collect();
        super::print_json_outcomes(outcomes)?;
    } else {
        for process in &started {
            println!("{}", process.describe());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}
