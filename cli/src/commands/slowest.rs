//! `tracehop slowest`: the slowest checkouts in the span feed and the
//! kept-traces store, each with the span that held most of its time. The feed is read once
//! ([`tracehop_spanfeed::scan_feed`]), checkouts are ranked by their roots
//! (decoding only the gateway's spans), and the slowest are analysed whole by
//! [`crate::analysis`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use serde_json::{Value, json};
use tracehop_spanfeed::{scan_feed, scan_kept};

use crate::analysis::{self, TraceSummary};
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    since: Option<Duration>,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let nats = super::connect_nats(settings).await?;
    let js = jetstream::new(nats);
    let slowest = find(&js, since, limit).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&slowest_json(&slowest.top))?);
    } else {
        print!("{}", slowest_text(&slowest.top, &slowest.durations, since, slowest.messages));
    }
    Ok(ExitCode::SUCCESS)
}

/// The slowest checkouts found, and what they were ranked among.
#[derive(Clone, Debug)]
pub struct Slowest {
    /// The slowest, slowest first, each analysed.
    pub top: Vec<TraceSummary>,
    /// The root durations of every checkout ranked, in nanoseconds, sorted.
    pub durations: Vec<u64>,
    /// How many messages were read.
    pub messages: u64,
}

/// The `limit` slowest checkouts that started within `since` (or any).
pub async fn find(js: &jetstream::Context, since: Option<Duration>, limit: usize) -> anyhow::Result<Slowest> {
    // The feed holds minutes under load; the kept-traces store holds the
    // slow and failed ones for days: both are searched.
    let mut scan = scan_feed(js, since).await?;
    scan.merge_missing(scan_kept(js, since).await?);
    let since_unix_nano = since.map_or(0, |since| {
        let start = SystemTime::now().checked_sub(since).unwrap_or(UNIX_EPOCH);
        start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
    });
    let checkouts = analysis::checkouts_in(&scan, since_unix_nano);
    let top: Vec<TraceSummary> =
        checkouts.iter().take(limit).filter_map(|(_, trace_id)| analysis::summarize(&scan.decode(trace_id))).collect();
    let mut durations: Vec<u64> = checkouts.iter().map(|(duration, _)| *duration).collect();
    durations.sort_unstable();
    Ok(Slowest { top, durations, messages: scan.messages })
}

/// `{"traces": [{"trace_id", "duration_ms", "root", "culprit": {"service",
/// "span", "self_ms"}}]}`, slowest first; `culprit` is null for a trace of a
/// root alone.
pub fn slowest_json(top: &[TraceSummary]) -> Value {
    let traces: Vec<Value> = top
        .iter()
        .map(|trace| {
            json!({
                "trace_id": trace.trace_id,
                "duration_ms": ms(trace.duration_nanos),
                "root": trace.root,
                "culprit": trace.culprit.as_ref().map(|c| json!({
                    "service": c.service,
                    "span": c.span,
                    "self_ms": ms(c.self_nanos),
                })),
            })
        })
        .collect();
    json!({ "traces": traces })
}

/// The ranking for people, with the typical checkout for scale.
/// `checkouts` are the root durations of all checkouts ranked, sorted;
/// `messages` how many feed messages were read.
pub fn slowest_text(top: &[TraceSummary], checkouts: &[u64], since: Option<Duration>, messages: u64) -> String {
    let mut out = String::new();
    let window =
        since.map_or("in the span feed".to_string(), |s| format!("of the last {}", humantime::format_duration(s)));
    if top.is_empty() {
        let _ = writeln!(out, "no checkout traces {window} ({messages} feed messages read)");
        return out;
    }
    let median = checkouts.get(checkouts.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    let p99 = checkouts.get((checkouts.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "the {} slowest of {} checkouts {window}: median {} ms, p99 {} ms",
        top.len(),
        checkouts.len(),
        super::load::millis(ms(median)),
        super::load::millis(ms(p99)),
    );
    let mut table = super::load::table(&["trace", "duration", "status", "errors", "culprit", "span", "self time"]);
    for trace in top {
        let (service, span, self_time) = match &trace.culprit {
            Some(c) => (clean(&c.service), clean(&c.span), format!("{} ms", super::load::millis(ms(c.self_nanos)))),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        table.add_row(vec![
            clean(&trace.trace_id),
            format!("{} ms", super::load::millis(ms(trace.duration_nanos))),
            trace.http_status.map_or("-".to_string(), |s| s.to_string()),
            trace.errors.to_string(),
            service,
            span,
            self_time,
        ]);
    }
    super::load::right_align(&mut table, &[1, 2, 3, 6]);
    out.push_str(&super::load::table_text(&table));
    let _ = writeln!(out, "why the slowest was slow: tracehop explain {}", clean(&top[0].trace_id));
    out
}

/// Nanoseconds as milliseconds, to the microsecond.
pub(crate) fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1000.0).round() / 1000.0
}

/// `text` with control characters replaced: span names are another
/// process's data, not escape sequences for the terminal.
pub(crate) fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use tracehop_spanfeed::SpanKind;

    use super::*;
    use crate::analysis::Culprit;

    fn summary(id: char, duration_ms: u64, culprit: Option<(&str, &str, u64)>) -> TraceSummary {
        TraceSummary {
            trace_id: id.to_string().repeat(32),
            root: "POST /v1/orders".into(),
            start_unix_nano: 0,
            duration_nanos: duration_ms * 1_000_000,
            http_status: Some(201),
            culprit: culprit.map(|(service, span, self_ms)| Culprit {
                service: service.into(),
                span: span.into(),
                kind: SpanKind::Client,
                self_nanos: self_ms * 1_000_000,
                duration_nanos: self_ms * 1_000_000,
                db_system: None,
                error_type: None,
                destination: None,
                has_children: false,
            }),
            errors: 0,
        }
    }

    #[test]
    fn json_has_the_contract_keys() {
        let top = [summary('a', 2041, Some(("inventory", "UPDATE inventory.products", 2003))), summary('b', 3, None)];
        let value = slowest_json(&top);
        assert_eq!(value.as_object().unwrap().keys().collect::<Vec<_>>(), ["traces"]);
        let first = &value["traces"][0];
        let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["culprit", "duration_ms", "root", "trace_id"]);
        assert_eq!(first["duration_ms"], 2041.0);
        assert_eq!(first["root"], "POST /v1/orders");
        assert_eq!(
            first["culprit"],
            json!({"service": "inventory", "span": "UPDATE inventory.products", "self_ms": 2003.0})
        );
        assert_eq!(value["traces"][1]["culprit"], Value::Null);
        assert_eq!(slowest_json(&[]), json!({"traces": []}));
    }

    #[test]
    fn text_ranks_with_the_typical_checkout_and_points_to_explain() {
        let top = [summary('a', 2041, Some(("inventory", "UPDATE inventory.products\x1b[2J", 2003)))];
        let ms = 1_000_000;
        let text = slowest_text(&top, &[20 * ms, 22 * ms, 25 * ms, 2041 * ms], Some(Duration::from_secs(900)), 99);
        assert!(
            text.starts_with("the 1 slowest of 4 checkouts of the last 15m: median 22.0 ms, p99 2041 ms\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.contains(&"a".repeat(32))).unwrap();
        for cell in ["2041 ms", "201", "inventory", "UPDATE inventory.products", "2003 ms"] {
            assert!(row.contains(cell), "{cell:?} not in {row:?}");
        }
        assert!(!text.contains('\x1b'));
        assert!(text.ends_with(&format!("tracehop explain {}\n", "a".repeat(32))));
        assert!(slowest_text(&[], &[], None, 0).starts_with("no checkout traces in the span feed"));
    }
}
