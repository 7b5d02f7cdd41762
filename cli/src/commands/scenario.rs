//! `tracehop scenario list|on|off|fix|unfix`: the live scenarios. A flip is
//! stored in the scenario bucket, where every service watches it: it takes
//! effect within a second, with no restart, and the bucket's history keeps
//! who flipped what, and when.

use std::process::ExitCode;

use serde_json::json;
use tracehop_scenarios::{Change, Scenario, Switch};

use crate::settings::Settings;

/// What to do with a scenario.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    List,
    Flip(Scenario, Change),
}

/// Who flips: the user and host, and the tool (`tracehop scenario`,
/// `tracehop console`), for the record.
pub fn changed_by(tool: &str) -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "someone".to_string());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { format!("{user} ({tool})") } else { format!("{user}@{host} ({tool})") }
}

/// The state of a switch in a word or two.
pub fn state_of(switch: &Switch) -> &'static str {
    match (switch.on, switch.fixed) {
        (false, false) => "off",
        (false, true) => "off (fix ready)",
        (true, false) => "ON",
        (true, true) => "on, fixed",
    }
}

fn entry(scenario: Scenario, switch: &Switch) -> serde_json::Value {
    json!({
        "name": scenario.name(),
        "on": switch.on,
        "fixed": switch.fixed,
        "description": scenario.description(),
        "fix": scenario.fix(),
        "service": scenario.service(),
        "rate": (scenario == Scenario::SlowInventory).then(|| switch.rate_or_default()),
        "changed_by": (!switch.changed_by.is_empty()).then_some(&switch.changed_by),
        "changed_at_unix_ms": (switch.changed_at_unix_ms > 0).then_some(switch.changed_at_unix_ms),
    })
}

pub async fn run(settings: &Settings, action: Action, as_json: bool) -> anyhow::Result<ExitCode> {
    let nats = super::connect_nats(settings).await?;
    let js = async_nats::jetstream::new(nats);
    match action {
        Action::List => {
            let all = tracehop_scenarios::read_all(&js).await?;
            if as_json {
                let scenarios: Vec<_> = all.iter().map(|(scenario, switch)| entry(*scenario, switch)).collect();
                println!("{}", serde_json::to_string_pretty(&json!({ "scenarios": scenarios }))?);
            } else {
                for (scenario, switch) in &all {
                    let rate = if *scenario == Scenario::SlowInventory && switch.on {
                        format!(" (rate {:.1}%)", switch.rate_or_default() * 100.0)
                    } else {
                        String::new()
                    };
                    println!("{:<20} {}{rate}", scenario.name(), state_of(switch));
                    println!("    fault: {}", scenario.description());
                    println!("    fix:   {}", scenario.fix());
                    if !switch.changed_by.is_empty() {
                        println!("    last flipped by {}", switch.changed_by);
                    }
                }
            }
        }
        Action::Flip(scenario, change) => {
            let switch = tracehop_scenarios::apply(&js, scenario, change, &changed_by("tracehop scenario")).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&entry(scenario, &switch))?);
            } else {
                println!("{}: {}", scenario.name(), state_of(&switch));
                if switch.on {
                    let what = if switch.fixed { scenario.fix() } else { scenario.description() };
                    println!("  {what}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
