//! `tracehop trace`: one trace from the span feed.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use tracehop_spanfeed::{fetch_trace, normalize_trace_id, wait_for_settled_trace};

use crate::render;
use crate::settings::Settings;

/// How long a trace must not grow to count as complete.
pub const SETTLE: Duration = Duration::from_millis(1500);

pub async fn run(settings: &Settings, trace_id: &str, wait: Option<f64>, as_json: bool) -> anyhow::Result<ExitCode> {
    let trace_id = normalize_trace_id(trace_id)?;
    let nats = super::connect_nats(settings).await?;
    let js = jetstream::new(nats);
    let spans = match wait {
        Some(seconds) if seconds > 0.0 => {
            wait_for_settled_trace(&js, &trace_id, SETTLE, Duration::from_secs_f64(seconds)).await?
        }
        _ => fetch_trace(&js, &trace_id).await?,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&render::trace_json(&spans))?);
    } else {
        println!("{}", render::waterfall(&spans, terminal_width(), super::is_terminal()));
    }
    Ok(if spans.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The terminal's width from `COLUMNS`, else 120.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|w| *w >= 60).unwrap_or(120)
}
