//! `tracehop trace`: one trace, from the span feed or, once the feed has
//! moved past it, from the kept-traces store. It says which of three it is:
//! on the feed (complete, or still growing: `--wait` until it settles),
//! kept (and why), or older than the feed's window and not kept.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use tracehop_spanfeed::{SpanRecord, fetch_trace, kept, normalize_trace_id, wait_for_settled_trace};

use crate::render;
use crate::settings::Settings;

/// How long a trace must not grow to count as complete.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// Where a trace was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Feed,
    Kept,
    Gone,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Feed => "feed",
            Source::Kept => "kept",
            Source::Gone => "gone",
        }
    }
}

/// Why the keeper kept the trace, from its root's mark; `None` if it did not.
pub fn kept_reason(spans: &[SpanRecord]) -> Option<String> {
    spans.iter().find_map(|span| span.attr_str("tracehop.sampling.reason").map(str::to_string))
}

/// One trace as found: where, its spans, and why the keeper kept it.
#[derive(Clone, Debug)]
pub struct Found {
    pub source: Source,
    pub spans: Vec<SpanRecord>,
    pub kept_reason: Option<String>,
}

/// The trace from the span feed (waiting up to `wait` until it settles) or,
/// once the feed has moved past it, from the kept-traces store.
pub async fn find(js: &jetstream::Context, trace_id: &str, wait: Option<Duration>) -> anyhow::Result<Found> {
    let from_feed = match wait {
        Some(wait) if !wait.is_zero() => wait_for_settled_trace(js, trace_id, SETTLE, wait).await?,
        _ => fetch_trace(js, trace_id).await?,
    };
    let from_store = kept::fetch(js, trace_id).await?;
    let kept_reason = kept_reason(&from_store);
    let (source, spans) = match (from_feed.is_empty(), from_store.is_empty()) {
        (false, _) => (Source::Feed, from_feed),
        (true, false) => (Source::Kept, from_store),
        (true, true) => (Source::Gone, Vec::new()),
    };
    Ok(Found { source, spans, kept_reason })
}

pub async fn run(settings: &Settings, trace_id: &str, wait: Option<f64>, as_json: bool) -> anyhow::Result<ExitCode> {
    let trace_id = normalize_trace_id(trace_id)?;
    let nats = super::connect_nats(settings).await?;
    let js = jetstream::new(nats);
    let wait = wait.filter(|seconds| *seconds > 0.0).map(Duration::from_secs_f64);
    let Found { source, spans, kept_reason: reason } = find(&js, &trace_id, wait).await?;
    let window = match source {
        Source::Gone => kept::window(&js, tracehop_spanfeed::STREAM).await.ok(),
        _ => None,
    };
    let reach = window.as_ref().and_then(kept::Window::reach);
    if as_json {
        let mut body = render::trace_json(&spans);
        body["found_in"] = json!(source.as_str());
        body["kept_reason"] = json!(reason);
        if let Some(window) = &window {
            body["feed_window_seconds"] = json!(reach.map(|r| r.as_secs_f64()));
            body["feed_oldest_age_seconds"] = json!(window.oldest_age.map(|a| a.as_secs_f64()));
        }
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        match source {
            Source::Feed => {
                let kept = reason.map(|r| format!("; kept by the keeper ({r})")).unwrap_or_default();
                println!("from the span feed{kept}");
            }
            Source::Kept => println!(
                "from the kept-traces store (kept: {}); the span feed no longer holds it",
                reason.as_deref().unwrap_or("unknown reason")
            ),
            Source::Gone => {
                let reach = reach
                    .map(|r| format!("about {} at the current rate", humantime::format_duration(round(r))))
                    .unwrap_or_else(|| "nothing: it is empty".to_string());
                println!(
                    "trace {trace_id} is neither on the span feed, which reaches back {reach}, nor among the \
                     kept traces: it is older than that and was not kept, or it never existed \
                     (for a trace just placed, try --wait 5)"
                );
            }
        }
        if source != Source::Gone {
            println!("{}", render::waterfall(&spans, terminal_width(), super::is_terminal()));
        }
    }
    Ok(if spans.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn round(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs().max(1))
}

/// The terminal's width from `COLUMNS`, else 120.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|w| *w >= 60).unwrap_or(120)
}
