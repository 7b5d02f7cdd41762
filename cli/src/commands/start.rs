//! `tracehop start NAME`: starts a service again (every copy `up` started
//! that is not running), or one copy (`order-2`), with the environment `up`
//! gives it, and waits until it answers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::settings::Settings;

/// How long the service has to answer after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(settings: &Settings, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    let processes = launcher.resolve(name)?;
    let stopped: Vec<String> =
        processes.iter().map(|p| p.name()).filter(|process| launcher.running_pid(process).is_none()).collect();
    if stopped.is_empty() {
        let pids: Vec<String> =
            processes.iter().filter_map(|p| launcher.running_pid(&p.name())).map(|pid| pid.to_string()).collect();
        bail!("{name} is already running (pid {})", pids.join(", "));
    }
    let service = processes[0].service.name();
    // Connect first: a service started while NATS is unreachable could not
    // be seen to answer.
    let nats = super::connect_nats(settings).await?;
    let started = Instant::now();
    let mut children = Vec::new();
    for process in &stopped {
        children.push((process.clone(), launcher.start(process)?));
    }

    let services = [service];
    let ready = tracehop_launcher::wait_ready(&nats, &services, &settings.gateway_addr, READY_TIMEOUT);
    tokio::pin!(ready);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            outcome = &mut ready => {
                if let Err(error) = outcome {
                    let logs: Vec<String> = stopped.iter().map(|p| launcher.log_path(p).display().to_string()).collect();
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
    let mut outcomes = Vec::new();
    for (process, child) in &children {
        let pid = child.id();
        if as_json {
            outcomes.push(json!({"service": process, "pid": pid, "ready_ms": elapsed.as_millis() as u64}));
        } else {
            println!("{process} started (pid {pid}), answering after {:.1} s", elapsed.as_secs_f64());
        }
    }
    if as_json {
        super::print_json_outcomes(outcomes)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}
