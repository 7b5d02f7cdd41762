//! `tracehop start SERVICE`: starts one service again, with the environment
//! `up` gives it, and waits until it answers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::settings::Settings;

/// How long the service has to answer after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(settings: &Settings, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let service = super::kill::known_service(name)?;
    let launcher = settings.launcher()?;
    if let Some(pid) = launcher.running_pid(service) {
        bail!("{service} is already running (pid {pid})");
    }
    // Connect first: a service started while NATS is unreachable could not
    // be seen to answer.
    let nats = super::connect_nats(settings).await?;
    let started = Instant::now();
    let mut child = launcher.start(service)?;
    let pid = child.id();
    let log = launcher.log_path(service);

    let services = [service];
    let ready = tracehop_launcher::wait_ready(&nats, &services, &settings.gateway_addr, READY_TIMEOUT);
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
    let elapsed = started.elapsed();
    if as_json {
        let outcome = json!({"service": service, "pid": pid, "ready_ms": elapsed.as_millis() as u64});
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{service} started (pid {pid}), answering after {:.1} s", elapsed.as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}
