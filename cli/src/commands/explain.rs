//! `tracehop explain TRACE_ID`: why one trace took as long as it did: its
//! critical path, the span that held the time, its failures, and how the same
//! spans usually do in the recent traces on the feed. The analysis is
//! [`crate::analysis`]; this module fetches and prints.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use tracehop_spanfeed::{SpanRecord, normalize_trace_id, scan_feed};

use super::load::millis;
use super::slowest::{clean, ms};
use crate::analysis::{self, Explanation, Typical};
use crate::settings::Settings;

/// How far back "typical" looks.
pub const TYPICAL_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Of the traces in that window, how many of the latest make "typical": a
/// median needs hundreds, not every trace of a busy quarter of an hour.
pub const TYPICAL_TRACES: usize = 1000;
/// Path steps holding less than this share of the trace are summed up, not listed.
const LIST_SHARE: f64 = 0.02;
/// A span this many times slower than its typical duration is called out.
const SLOWER: f64 = 3.0;
/// Most path steps listed.
const MAX_LISTED: usize = 8;

pub async fn run(settings: &Settings, trace_id: &str, wait: Option<f64>, as_json: bool) -> anyhow::Result<ExitCode> {
    let trace_id = normalize_trace_id(trace_id)?;
    let nats = super::connect_nats(settings).await?;
    let js = jetstream::new(nats);
    let wait = wait.filter(|seconds| *seconds > 0.0).map(Duration::from_secs_f64);
    // Once the feed has moved past it, a kept trace is read from the store.
    let spans = super::trace::find(&js, &trace_id, wait).await?.spans;
    let Some(explanation) = explanation(&js, &trace_id, &spans).await? else {
        anyhow::bail!(
            "trace {trace_id} is neither on the span feed nor among the kept traces (`tracehop trace {trace_id}` says how far back the feed reaches)"
        );
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&explain_json(&explanation))?);
    } else {
        print!("{}", explain_text(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}

/// Why `spans` (the trace `trace_id`) took its time, against how the same
/// spans did in the latest traces of the feed; `None` for no spans.
pub async fn explanation(
    js: &jetstream::Context,
    trace_id: &str,
    spans: &[SpanRecord],
) -> anyhow::Result<Option<Explanation>> {
    if spans.is_empty() {
        return Ok(None);
    }
    let scan = scan_feed(js, Some(TYPICAL_WINDOW)).await?;
    let recent: Vec<Vec<_>> = scan.latest(TYPICAL_TRACES).into_iter().map(|id| scan.decode(id)).collect();
    // A checkout is compared with other checkouts; anything else with all traces.
    let typical = if analysis::checkout_root(spans).is_some() {
        Typical::learn_checkouts(recent.iter().map(Vec::as_slice), Some(trace_id))
    } else {
        Typical::learn(recent.iter().map(Vec::as_slice), Some(trace_id))
    };
    Ok(analysis::explain(spans, &typical))
}

/// `{"trace_id", "duration_ms", "critical_path": [{"service", "span",
/// "self_ms"}], "culprit": {"service", "span", "self_ms", "typical_ms"},
/// "errors": [{"service", "span", "kind", "error_type", "message"}]}`;
/// `kind` is `error`, `missed` (the sentinel's) or `dead_letter`;
/// `typical_ms` is null when no other trace had the span.
pub fn explain_json(explanation: &Explanation) -> Value {
    json!({
        "trace_id": explanation.trace_id,
        "duration_ms": ms(explanation.duration_nanos),
        "critical_path": explanation
            .critical_path
            .iter()
            .map(|step| json!({"service": step.service, "span": step.span, "self_ms": ms(step.self_nanos)}))
            .collect::<Vec<_>>(),
        "culprit": explanation.culprit.as_ref().map(|c| json!({
            "service": c.service,
            "span": c.span,
            "self_ms": ms(c.self_nanos),
            "typical_ms": explanation.culprit_typical.map(|(median, _)| ms(median)),
        })),
        "errors": explanation
            .errors
            .iter()
            .map(|f| json!({
                "service": f.service,
                "span": f.span,
                "kind": f.kind.as_str(),
                "error_type": f.error_type,
                "message": f.message,
            }))
            .collect::<Vec<_>>(),
    })
}

/// A few lines a person can act on.
pub fn explain_text(e: &Explanation) -> String {
    let mut out = String::new();
    let total = e.duration_nanos.max(1);
    let status = e.http_status.map_or(String::new(), |s| format!(", answered {s}"));
    let _ = write!(out, "trace {}: {} took {} ms{status}", clean(&e.trace_id), clean(&e.root), millis(ms(total)));
    match e.typical_checkout.filter(|_| e.is_checkout) {
        Some((median, count)) => {
            let _ = writeln!(out, " (a typical checkout: {} ms, the median of {count})", millis(ms(median)));
        }
        None => out.push('\n'),
    }

    if let Some(c) = &e.culprit {
        let share = c.self_nanos as f64 * 100.0 / total as f64;
        let _ = write!(
            out,
            "culprit: {}'s {:?} held {} ms of it ({share:.0}%)",
            clean(&c.service),
            clean(&c.span),
            millis(ms(c.self_nanos))
        );
        let took = if c.duration_nanos > c.self_nanos {
            format!("; the span took {} ms", millis(ms(c.duration_nanos)))
        } else {
            String::new()
        };
        match e.culprit_typical {
            Some((median, count)) => {
                let _ = write!(out, "{took}; it usually takes {} ms (median of {count} recent)", millis(ms(median)));
                if median > 0 && c.duration_nanos as f64 >= SLOWER * median as f64 {
                    let _ = write!(out, ", {:.0}x slower here", c.duration_nanos as f64 / median as f64);
                }
                out.push('\n');
            }
            None => {
                let _ = writeln!(out, "{took}; no other recent trace has this span to compare");
            }
        }
        let _ = writeln!(out, "  {}", analysis::hint(c));
        for other in &e.meanwhile {
            let usually = other.typical_nanos.map_or(String::new(), |t| format!(" (usually {} ms)", millis(ms(t))));
            let _ = writeln!(
                out,
                "  meanwhile {}'s {:?} ran {} ms{usually}: what it waited for may be what held this up",
                clean(&other.service),
                clean(&other.span),
                millis(ms(other.duration_nanos)),
            );
        }
    }

    // The steps holding the most time, in path order; the rest summed up.
    let mut by_time: Vec<usize> = (0..e.critical_path.len()).collect();
    by_time.sort_by_key(|&i| std::cmp::Reverse(e.critical_path[i].self_nanos));
    let shown: Vec<usize> = by_time
        .iter()
        .copied()
        .filter(|&i| {
            let step = &e.critical_path[i];
            step.failed || step.self_nanos as f64 >= LIST_SHARE * total as f64
        })
        .take(MAX_LISTED)
        .collect();
    let mut table = super::load::table(&["", "service", "span on the critical path", "self", "took", "usually", ""]);
    let mut hidden = (0usize, 0u64);
    for (i, step) in e.critical_path.iter().enumerate() {
        if !shown.contains(&i) {
            hidden.0 += 1;
            hidden.1 += step.self_nanos;
            continue;
        }
        let slower = step.typical_nanos.filter(|&t| t > 0).map(|t| step.duration_nanos as f64 / t as f64);
        table.add_row(vec![
            if step.failed { "✗" } else { "" }.to_string(),
            clean(&step.service),
            clean(&step.span),
            format!("{} ms", millis(ms(step.self_nanos))),
            format!("{} ms", millis(ms(step.duration_nanos))),
            step.typical_nanos.map_or("-".to_string(), |t| format!("{} ms", millis(ms(t)))),
            match slower {
                Some(x) if x >= SLOWER && step.duration_nanos > 1_000_000 => format!("{x:.0}x"),
                _ => String::new(),
            },
        ]);
    }
    super::load::right_align(&mut table, &[3, 4, 5, 6]);
    out.push_str(&super::load::table_text(&table));
    if hidden.0 > 0 {
        let _ = writeln!(out, "  … and {} more spans on the path, {} ms together", hidden.0, millis(ms(hidden.1)));
    }

    if e.errors.is_empty() {
        out.push_str("errors: none\n");
    } else {
        let _ = writeln!(out, "errors ({} failed spans):", e.errors.len());
        for (f, count) in grouped_failures(&e.errors) {
            let kind = match f.kind {
                analysis::FailureKind::Error => String::new(),
                analysis::FailureKind::Missed => " [consumer missed the event]".to_string(),
                analysis::FailureKind::DeadLetter => " [dead letter]".to_string(),
            };
            let error_type =
                if f.error_type.is_empty() { String::new() } else { format!("{}: ", clean(&f.error_type)) };
            let also = on_more_spans(count).map_or(String::new(), |more| format!(" ({more})"));
            let _ = writeln!(
                out,
                "  ✗ {} {:?}{kind}: {error_type}{}{also}",
                clean(&f.service),
                clean(&f.span),
                clean(&f.message)
            );
        }
    }
    if let Some(after) = &e.after_answer {
        let (service, span, longest) = &after.longest;
        let _ = writeln!(
            out,
            "after the answer: {} spans ran on, the last ending {} ms later (the longest: {}'s {:?}, {} ms)",
            after.spans,
            millis(ms(after.last_end_nanos)),
            clean(service),
            clean(span),
            millis(ms(*longest)),
        );
    }
    out
}

/// One failure is often marked on every span it passed through on its way
/// back: each failure once, at the innermost span (the latest to start),
/// with how many spans carry it.
pub fn grouped_failures(errors: &[analysis::Failure]) -> Vec<(&analysis::Failure, usize)> {
    let mut groups: Vec<(&analysis::Failure, usize)> = Vec::new();
    for f in errors {
        match groups
            .iter_mut()
            .find(|(g, _)| (g.kind, &g.error_type, &g.message) == (f.kind, &f.error_type, &f.message))
        {
            Some(group) => *group = (f, group.1 + 1),
            None => groups.push((f, 1)),
        }
    }
    groups
}

/// `and on 1 more span`, `and on 2 more spans`: where else a failure of
/// `count` spans is marked; none for one span.
pub fn on_more_spans(count: usize) -> Option<String> {
    match count {
        0 | 1 => None,
        2 => Some("and on 1 more span".to_string()),
        n => Some(format!("and on {} more spans", n - 1)),
    }
}

#[cfg(test)]
mod tests {
    use tracehop_spanfeed::SpanKind;

    use super::*;
    use crate::analysis::{AfterAnswer, Culprit, Failure, FailureKind, PathEntry};

    const MS: u64 = 1_000_000;

    fn entry(service: &str, span: &str, self_ms: u64, typical_ms: Option<u64>) -> PathEntry {
        PathEntry {
            service: service.into(),
            span: span.into(),
            kind: SpanKind::Internal,
            depth: 0,
            self_nanos: self_ms * MS,
            duration_nanos: self_ms * MS,
            typical_nanos: typical_ms.map(|t| t * MS),
            failed: false,
        }
    }

    fn explanation() -> Explanation {
        Explanation {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            root: "POST /v1/orders".into(),
            is_checkout: true,
            duration_nanos: 2041 * MS,
            http_status: Some(201),
            critical_path: vec![
                entry("gateway", "POST /v1/orders", 1, Some(1)),
                entry("order", "process svc.order.place", 6, Some(5)),
                entry("inventory", "UPDATE inventory.products", 2003, Some(2)),
                entry("payment", "charge card", 31, Some(20)),
            ],
            culprit: Some(Culprit {
                service: "inventory".into(),
                span: "UPDATE inventory.products".into(),
                kind: SpanKind::Client,
                self_nanos: 2003 * MS,
                duration_nanos: 2003 * MS,
                db_system: Some("postgresql".into()),
                error_type: None,
                destination: None,
                has_children: false,
            }),
            culprit_typical: Some((2 * MS, 57)),
            errors: vec![Failure {
                index: 9,
                kind: FailureKind::Missed,
                service: "sentinel".into(),
                span: "missed by analytics".into(),
                error_type: "consumer_down".into(),
                message: "analytics has not processed this event".into(),
            }],
            typical_checkout: Some((23 * MS, 57)),
            after_answer: Some(AfterAnswer {
                spans: 3,
                last_end_nanos: 48 * MS,
                longest: ("notification".into(), "process orders.confirmed".into(), 30 * MS),
            }),
            meanwhile: Vec::new(),
            span_count: 14,
        }
    }

    #[test]
    fn what_ran_meanwhile_follows_the_hint() {
        let mut e = explanation();
        e.meanwhile = vec![analysis::Concurrent {
            service: "inventory".into(),
            span: "UPDATE inventory.restock_requests".into(),
            duration_nanos: 10_310 * MS,
            typical_nanos: Some(2 * MS),
        }];
        let text = explain_text(&e);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            "  meanwhile inventory's \"UPDATE inventory.restock_requests\" ran 10310 ms (usually 2.00 ms): what it \
             waited for may be what held this up",
            "{text}"
        );
    }

    #[test]
    fn one_failure_on_many_spans_is_one_line_at_the_innermost() {
        let mut e = explanation();
        let declined = |index, service: &str, span: &str| Failure {
            index,
            kind: FailureKind::Error,
            service: service.into(),
            span: span.into(),
            error_type: "payment_declined".into(),
            message: "card declined".into(),
        };
        e.errors = vec![
            declined(1, "order", "place order"),
            declined(2, "order", "send svc.payment.charge"),
            declined(3, "payment", "charge card"),
        ];
        let text = explain_text(&e);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("✗ ")).collect();
        assert_eq!(
            lines,
            ["  ✗ payment \"charge card\": payment_declined: card declined (and on 2 more spans)"],
            "{text}"
        );
        assert_eq!(explain_json(&e)["errors"].as_array().unwrap().len(), 3, "scripts get every failed span");
    }

    #[test]
    fn json_has_the_contract_keys() {
        let value = explain_json(&explanation());
        let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["critical_path", "culprit", "duration_ms", "errors", "trace_id"]);
        assert_eq!(value["duration_ms"], 2041.0);
        assert_eq!(
            value["critical_path"][2],
            json!({"service": "inventory", "span": "UPDATE inventory.products", "self_ms": 2003.0})
        );
        assert_eq!(
            value["culprit"],
            json!({"service": "inventory", "span": "UPDATE inventory.products", "self_ms": 2003.0, "typical_ms": 2.0})
        );
        assert_eq!(value["errors"][0]["kind"], "missed");
        assert_eq!(value["errors"][0]["error_type"], "consumer_down");
        let mut alone = explanation();
        alone.culprit_typical = None;
        assert_eq!(explain_json(&alone)["culprit"]["typical_ms"], Value::Null);
    }

    #[test]
    fn text_names_the_culprit_against_typical_and_lists_what_matters() {
        let text = explain_text(&explanation());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "trace 4bf92f3577b34da6a3ce929d0e0e4736: POST /v1/orders took 2041 ms, answered 201 \
             (a typical checkout: 23.0 ms, the median of 57)"
        );
        assert_eq!(
            lines[1],
            "culprit: inventory's \"UPDATE inventory.products\" held 2003 ms of it (98%); it usually takes 2.00 ms \
             (median of 57 recent), 1002x slower here"
        );
        assert!(lines[2].contains("lock"), "{text}");
        let row = lines.iter().find(|l| l.contains("inventory  UPDATE")).unwrap();
        assert!(row.trim_end().ends_with("2003 ms  2003 ms  2.00 ms  1002x"), "{text}");
        assert!(lines.iter().any(|l| l.contains("span on the critical path") && l.contains("usually")), "{text}");
        // 1, 6 and 31 ms are each under 2% of 2041 ms: summed up.
        assert!(text.contains("… and 3 more spans on the path, 38.0 ms together"), "{text}");
        assert!(
            text.contains("✗ sentinel \"missed by analytics\" [consumer missed the event]: consumer_down:"),
            "{text}"
        );
        assert!(text.contains("after the answer: 3 spans ran on, the last ending 48.0 ms later"), "{text}");
        assert!(lines.len() <= 12, "a few lines:\n{text}");
    }
}
