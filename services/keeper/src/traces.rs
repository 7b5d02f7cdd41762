//! [`Traces`]: the traces being assembled, the decisions already made, and
//! the counters. Owned by one task; nothing here waits on I/O.
//!
//! A trace is decided once it has been quiet for the quiet period and looks
//! whole ([`Summary::closed`]), or once the longest wait has passed since
//! its first span, whatever arrived (and then it says so). A span that
//! arrives after its trace was decided follows the decision: exported with
//! a kept trace; for a dropped trace, dropped too, unless it is itself a
//! failure (an error, a sentinel span), which turns the decision into a
//! keep: the caller then fetches the whole trace back from the feed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use tracehop_proto::v1::KeeperStatsReply;

use crate::policy::{Policy, Reason, Summary};

/// How long a decision is remembered, for spans that come late.
pub const REMEMBER_DECISIONS: Duration = Duration::from_secs(600);

/// The attributes that the root span of a kept trace gets.
pub const DECISION_ATTRIBUTE: &str = "tracehop.sampling.decision";
pub const REASON_ATTRIBUTE: &str = "tracehop.sampling.reason";
pub const COMPLETE_ATTRIBUTE: &str = "tracehop.sampling.complete";

/// When a trace is decided.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Quiet this long after its last span (and looking whole).
    pub quiet: Duration,
    /// Or this long after its first span, whatever arrived.
    pub max_wait: Duration,
    /// Most traces held at once; past it the oldest is decided early.
    pub max_pending: usize,
}

struct Pending {
    parts: Vec<ResourceSpans>,
    summary: Summary,
    first_seen: Instant,
    last_seen: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Kept,
    Dropped,
}

/// The spans of one kept trace, to export and store.
#[derive(Clone, Debug)]
pub struct Kept {
    pub trace_id: String,
    pub parts: Vec<ResourceSpans>,
}

/// What to do after taking in one feed message.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Late spans of kept traces: export them as they are.
    pub late_kept: Vec<Kept>,
    /// Dropped traces that a late failure span turned into keeps: fetch
    /// each whole from the feed (up to the message's sequence) and export it.
    pub upgrades: Vec<(String, Reason)>,
}

/// The keeper's state.
pub struct Traces {
    policy: Policy,
    timing: Timing,
    pending: HashMap<String, Pending>,
    decided: HashMap<String, Fate>,
    decided_order: VecDeque<(Instant, String)>,
    pub stats: KeeperStatsReply,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

/// Splits one feed message by trace (the exporter sends one trace per
/// message; this does not rely on it).
pub fn split_by_trace(request: ExportTraceServiceRequest) -> Vec<(String, ResourceSpans)> {
    let mut parts: Vec<(String, ResourceSpans)> = Vec::new();
    for resource_spans in request.resource_spans {
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let trace_id = hex(&span.trace_id);
                let part = match parts.iter_mut().position(|(id, _)| *id == trace_id) {
                    Some(index) => &mut parts[index].1,
                    None => {
                        parts.push((
                            trace_id,
                            ResourceSpans {
                                resource: resource_spans.resource.clone(),
                                scope_spans: Vec::new(),
                                schema_url: resource_spans.schema_url.clone(),
                            },
                        ));
                        &mut parts.last_mut().expect("just pushed").1
                    }
                };
                let scope = match part.scope_spans.iter_mut().position(|s| s.scope == scope_spans.scope) {
                    Some(index) => &mut part.scope_spans[index],
                    None => {
                        part.scope_spans.push(ScopeSpans {
                            scope: scope_spans.scope.clone(),
                            spans: Vec::new(),
                            schema_url: scope_spans.schema_url.clone(),
                        });
                        part.scope_spans.last_mut().expect("just pushed")
                    }
                };
                scope.spans.push(span);
            }
        }
    }
    parts
}

/// Marks the root span of a kept trace (its earliest span when the root did
/// not arrive) with the decision, its reason and whether the trace was whole.
pub fn mark_decision(parts: &mut [ResourceSpans], reason: Reason, complete: bool) {
    let spans = parts.iter_mut().flat_map(|r| r.scope_spans.iter_mut()).flat_map(|s| s.spans.iter_mut());
    let root = spans.min_by_key(|span| (!span.parent_span_id.is_empty(), span.start_time_unix_nano));
    if let Some(root) = root {
        let text = |key: &str, value: &str| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
            ..Default::default()
        };
        root.attributes.push(text(DECISION_ATTRIBUTE, "kept"));
        root.attributes.push(text(REASON_ATTRIBUTE, reason.as_str()));
        root.attributes.push(KeyValue {
            key: COMPLETE_ATTRIBUTE.to_string(),
            value: Some(AnyValue { value: Some(any_value::Value::BoolValue(complete)) }),
            ..Default::default()
        });
    }
}

fn span_count(parts: &[ResourceSpans]) -> usize {
    parts.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
}

impl Traces {
    pub fn new(policy: Policy, timing: Timing) -> Self {
        Self {
            policy,
            timing,
            pending: HashMap::new(),
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
            stats: KeeperStatsReply::default(),
        }
    }

    /// Takes in the spans of one feed message.
    pub fn ingest(&mut self, request: ExportTraceServiceRequest, now: Instant) -> Ingested {
        let mut ingested = Ingested::default();
        for (trace_id, part) in split_by_trace(request) {
            let spans = part.scope_spans.iter().flat_map(|s| &s.spans);
            self.stats.spans_received += spans.clone().count() as u64;
            match self.decided.get(&trace_id) {
                Some(Fate::Kept) => ingested.late_kept.push(Kept { trace_id, parts: vec![part] }),
                Some(Fate::Dropped) => {
                    let mut late = Summary::default();
                    spans.for_each(|span| late.add(span));
                    if let Some(reason) = late.decide(&unhex(&trace_id), &self.policy).filter(|r| r.is_failure()) {
                        self.decided.insert(trace_id.clone(), Fate::Kept);
                        self.stats.upgraded += 1;
                        ingested.upgrades.push((trace_id, reason));
                    }
                }
                None => {
                    let pending = self.pending.entry(trace_id).or_insert_with(|| Pending {
                        parts: Vec::new(),
                        summary: Summary::default(),
                        first_seen: now,
                        last_seen: now,
                    });
                    spans.for_each(|span| pending.summary.add(span));
                    pending.parts.push(part);
                    pending.last_seen = now;
                }
            }
        }
        self.stats.traces_pending = self.pending.len() as u64;
        ingested
    }

    /// Decides every trace that is due, and forgets old decisions; returns
    /// the kept traces' spans, marked, to export.
    pub fn decide_due(&mut self, now: Instant) -> Vec<Kept> {
        let Timing { quiet, max_wait, max_pending } = self.timing;
        let mut due: Vec<(String, bool)> = self
            .pending
            .iter()
            .filter_map(|(id, p)| {
                let closed = p.summary.closed();
                let ready = (closed && now.duration_since(p.last_seen) >= quiet)
                    || now.duration_since(p.first_seen) >= max_wait;
                ready.then(|| (id.clone(), closed))
            })
            .collect();
        if self.pending.len() - due.len() > max_pending {
            // Over the bound: the oldest go now, on what they have.
            let mut rest: Vec<(&String, Instant)> = self
                .pending
                .iter()
                .filter(|(id, _)| !due.iter().any(|(d, _)| d == *id))
                .map(|(id, p)| (id, p.first_seen))
                .collect();
            rest.sort_by_key(|(_, first)| *first);
            let excess = self.pending.len() - due.len() - max_pending;
            let early: Vec<(String, bool)> = rest.into_iter().take(excess).map(|(id, _)| (id.clone(), false)).collect();
            due.extend(early);
        }
        let mut export = Vec::new();
        for (trace_id, closed) in due {
            if let Some(pending) = self.pending.remove(&trace_id) {
                export.extend(self.decide(trace_id, pending, closed, now));
            }
        }
        while let Some((at, _)) = self.decided_order.front() {
            if now.duration_since(*at) < REMEMBER_DECISIONS {
                break;
            }
            if let Some((_, id)) = self.decided_order.pop_front() {
                self.decided.remove(&id);
            }
        }
        self.stats.traces_pending = self.pending.len() as u64;
        export
    }

    /// Decides everything still pending (at shutdown).
    pub fn decide_all(&mut self, now: Instant) -> Vec<Kept> {
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        let mut export = Vec::new();
        for trace_id in ids {
            if let Some(pending) = self.pending.remove(&trace_id) {
                let closed = pending.summary.closed();
                export.extend(self.decide(trace_id, pending, closed, now));
            }
        }
        export
    }

    fn decide(&mut self, trace_id: String, mut pending: Pending, complete: bool, now: Instant) -> Option<Kept> {
        self.stats.traces_decided += 1;
        if !complete {
            self.stats.incomplete += 1;
        }
        let reason = pending.summary.decide(&unhex(&trace_id), &self.policy);
        let fate = if reason.is_some() { Fate::Kept } else { Fate::Dropped };
        self.decided.insert(trace_id.clone(), fate);
        self.decided_order.push_back((now, trace_id.clone()));
        let Some(reason) = reason else {
            self.stats.dropped += 1;
            return None;
        };
        match reason {
            Reason::Sentinel => self.stats.kept_sentinel += 1,
            Reason::Error => self.stats.kept_error += 1,
            Reason::Slow => self.stats.kept_slow += 1,
            Reason::Ratio => self.stats.kept_ratio += 1,
        }
        mark_decision(&mut pending.parts, reason, complete);
        Some(Kept { trace_id, parts: pending.parts })
    }
}

/// Spans in `parts`, for the counters.
pub fn count_spans(parts: &[ResourceSpans]) -> usize {
    span_count(parts)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};

    use super::*;

    const POLICY: Policy = Policy { slower_than: Duration::from_secs(1), ratio: 0.0 };
    const TIMING: Timing =
        Timing { quiet: Duration::from_secs(2), max_wait: Duration::from_secs(30), max_pending: 1000 };

    fn message(trace: u8, id: u8, parent: Option<u8>, error: bool) -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            start_time_unix_nano: 1_000_000,
            end_time_unix_nano: 2_000_000,
            status: error.then(|| Status { code: status::StatusCode::Error as i32, ..Default::default() }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_trace_waits_for_quiet_then_is_kept_whole_with_its_reason() {
        let mut traces = Traces::new(POLICY, TIMING);
        let start = Instant::now();
        traces.ingest(message(1, 1, None, false), start);
        traces.ingest(message(1, 2, Some(1), true), start);
        assert!(traces.decide_due(start + Duration::from_secs(1)).is_empty(), "not quiet yet");
        let kept = traces.decide_due(start + Duration::from_secs(3));
        assert_eq!(kept.len(), 1);
        let kept = &kept[0].parts;
        assert_eq!(count_spans(kept), 2);
        let root =
            kept.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).find(|s| s.parent_span_id.is_empty());
        let keys: Vec<&str> = root.unwrap().attributes.iter().map(|a| a.key.as_str()).collect();
        assert!(keys.contains(&REASON_ATTRIBUTE) && keys.contains(&COMPLETE_ATTRIBUTE));
        assert_eq!(traces.stats.kept_error, 1);
        // A late span of a kept trace is exported on its own, once.
        let late = traces.ingest(message(1, 3, Some(1), false), start + Duration::from_secs(4));
        assert_eq!(late.late_kept.len(), 1);
    }

    #[test]
    fn a_trace_missing_its_root_is_decided_at_the_longest_wait_and_says_so() {
        let mut traces = Traces::new(POLICY, TIMING);
        let start = Instant::now();
        traces.ingest(message(2, 2, Some(1), true), start);
        assert!(traces.decide_due(start + Duration::from_secs(10)).is_empty());
        let kept = traces.decide_due(start + Duration::from_secs(31));
        assert_eq!(count_spans(&kept[0].parts), 1);
        assert_eq!(traces.stats.incomplete, 1);
    }

    #[test]
    fn a_late_failure_turns_a_dropped_trace_into_a_keep() {
        let mut traces = Traces::new(POLICY, TIMING);
        let start = Instant::now();
        traces.ingest(message(3, 1, None, false), start);
        assert!(traces.decide_due(start + Duration::from_secs(3)).is_empty());
        assert_eq!(traces.stats.dropped, 1);
        let quiet_late = traces.ingest(message(3, 2, Some(1), false), start + Duration::from_secs(4));
        assert!(quiet_late.upgrades.is_empty() && quiet_late.late_kept.is_empty());
        let failing_late = traces.ingest(message(3, 3, Some(1), true), start + Duration::from_secs(5));
        assert_eq!(failing_late.upgrades.len(), 1);
        assert_eq!(traces.stats.upgraded, 1);
    }
}
