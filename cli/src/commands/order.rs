//! `tracehop order`: one order through the gateway.

use std::process::ExitCode;

use serde_json::json;

use crate::client::{OrderInput, OrderOutcome, dollars, place_order};
use crate::settings::Settings;

pub async fn run(settings: &Settings, input: OrderInput, as_json: bool) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let outcome = place_order(&http, &settings.gateway_url(), &input).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!(outcome))?);
    } else {
        println!("{}", describe(&outcome));
    }
    Ok(if outcome.http_status == 201 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One line for people: what happened, and how to see its trace.
pub fn describe(outcome: &OrderOutcome) -> String {
    let id = outcome.order_id.as_deref().unwrap_or("-");
    let mut line = match outcome.status.as_str() {
        "confirmed" => format!(
            "order {id} confirmed, total {} ({:.0} ms)",
            dollars(outcome.total_cents.unwrap_or_default()),
            outcome.elapsed_ms
        ),
        status => {
            let message = outcome.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or("no reason given");
            let field = outcome.error.as_ref().and_then(|e| e["field"].as_str());
            let field = field.map(|f| format!(" [{f}]")).unwrap_or_default();
            format!("order {id} {status} (HTTP {}): {message}{field}", outcome.http_status)
        }
    };
    if let Some(trace_id) = &outcome.trace_id {
        line.push_str(&format!("\n  trace {trace_id}   (tracehop trace {trace_id} --wait 5)"));
    }
    line
}
