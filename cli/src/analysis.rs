//! Trace analysis: where a trace's time went, what failed in it, and how it
//! compares with the typical trace. Pure functions of spans read from the
//! feed, shared by `tracehop slowest`, `tracehop explain` and whatever else
//! (a console, the demo) needs to say why a checkout was slow.
//!
//! - [`checkout_root`]: the gateway's HTTP server span of `POST /v1/orders`,
//!   the root of a checkout trace; [`trace_root`] falls back to any root.
//! - [`critical_path`]: from the root down, at each step the child that
//!   ends last, with the self time each span holds on the path.
//! - [`failures`]: the trace's failed spans, the sentinel's `missed by`
//!   spans and dead letters told apart.
//! - [`Typical`]: median durations of each (service, span name) across
//!   other traces.
//! - [`summarize`] / [`slowest`] and [`explain`]: the above put together.
//!
//! **The critical path** is the chain of spans that the root's end waited
//! for. Walking back from a span's end, the child that ends last is on the
//! path; before that child started, the child that ended last before then;
//! and so on. Time of a span not covered by the children on the path is its
//! *self time*; the self times of the path add up to the root's duration.
//! Children are clipped to their parent's window: work that outlives its
//! parent (a consumer still running when the producer's span ended, an
//! event processed after the gateway answered) is not what the parent
//! waited for, so it does not lengthen the parent's path. Such asynchronous
//! work is reported on its own: [`Explanation::after_answer`].
//!
//! **A wait that is a link.** A span that links to another span of the same
//! trace that is not its ancestor waited for that span's work (a retried
//! request that joined the attempt still running): for the path, the linked
//! span counts as one more child, clipped to the waiting span's window. So
//! a rare slow statement that three retries waited for is seen through all
//! of them, and its self times add up in [`culprit`].

use std::collections::{HashMap, HashSet};

use tracehop_spanfeed::{Scan, SpanKind, SpanRecord, SpanStatus};

/// The route whose server span is a checkout's root.
pub const CHECKOUT_ROUTE: &str = "/v1/orders";
/// The service whose server span is a checkout's root.
pub const GATEWAY: &str = "gateway";
/// Deeper than this the walk stops: a real trace is never this deep, bad
/// data (a cycle of parents) must not hang or overflow the stack.
const MAX_DEPTH: usize = 256;

/// The checkout's root: the gateway's `POST /v1/orders` server span whose
/// parent is not in the trace (it has none, or the caller sent a
/// `traceparent`). The earliest, should there be several.
pub fn checkout_root(spans: &[SpanRecord]) -> Option<usize> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| is_checkout_server_span(s))
        .filter(|(_, s)| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
        .min_by_key(|(_, s)| (s.start_unix_nano, std::cmp::Reverse(s.end_unix_nano)))
        .map(|(i, _)| i)
}

fn is_checkout_server_span(span: &SpanRecord) -> bool {
    span.service == GATEWAY
        && span.kind == SpanKind::Server
        && span.attr_str("http.route") == Some(CHECKOUT_ROUTE)
        && span.attr_str("http.request.method").is_none_or(|m| m == "POST")
}

/// The checkout's root if there is one, else the longest span whose parent
/// is not in the trace (a replay, a sentinel's trace).
pub fn trace_root(spans: &[SpanRecord]) -> Option<usize> {
    checkout_root(spans).or_else(|| {
        let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
            .max_by_key(|(_, s)| (s.duration_nanos(), std::cmp::Reverse(s.start_unix_nano)))
            .map(|(i, _)| i)
    })
}

/// One span on the critical path.
#[derive(Clone, Debug, PartialEq)]
pub struct PathStep {
    /// Index of the span in the slice given to [`critical_path`].
    pub index: usize,
    /// Depth below the root (the root is 0).
    pub depth: usize,
    /// The part of the span's time that is on the path (clipped to its
    /// parent's window).
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Time on the path spent in this span itself, not in a child on the path.
    pub self_nanos: u64,
}

/// The critical path from `root` (an index into `spans`), in walk order: a
/// span, then the spans on the path below it, earliest first. See the
/// module's documentation for the rules.
pub fn critical_path(spans: &[SpanRecord], root: usize) -> Vec<PathStep> {
    let children = children_of(spans);
    let mut visited = vec![false; spans.len()];
    let mut path = Vec::new();
    let span = &spans[root];
    walk(
        spans,
        &children,
        root,
        span.start_unix_nano,
        span.end_unix_nano.max(span.start_unix_nano),
        0,
        &mut visited,
        &mut path,
    );
    path
}

/// Indices of each span's children, by the parent's index: its children,
/// and the spans of the same trace it links to that are not its ancestors
/// (what it waited for).
fn children_of(spans: &[SpanRecord]) -> Vec<Vec<usize>> {
    let by_id: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
    let parent_of = |i: usize| spans[i].parent_span_id.as_deref().and_then(|p| by_id.get(p)).copied();
    let mut children = vec![Vec::new(); spans.len()];
    for i in 0..spans.len() {
        if let Some(parent) = parent_of(i)
            && parent != i
        {
            children[parent].push(i);
        }
    }
    for (i, span) in spans.iter().enumerate() {
        for link in &span.links {
            let Some(&target) = (link.trace_id == span.trace_id).then(|| by_id.get(link.span_id.as_str())).flatten()
            else {
                continue;
            };
            let mut ancestor = Some(i);
            let mut hops = 0;
            while let Some(a) = ancestor {
                if a == target || hops > MAX_DEPTH {
                    break;
                }
                ancestor = parent_of(a);
                hops += 1;
            }
            if ancestor.is_none() && !children[i].contains(&target) {
                children[i].push(target);
            }
        }
    }
    children
}

#[allow(clippy::too_many_arguments)]
fn walk(
    spans: &[SpanRecord],
    children: &[Vec<usize>],
    index: usize,
    lo: u64,
    hi: u64,
    depth: usize,
    visited: &mut [bool],
    path: &mut Vec<PathStep>,
) {
    // On the current branch only: a span that is waited for through a link
    // is walked again in each window that waited for it.
    visited[index] = true;
    let at = path.len();
    path.push(PathStep { index, depth, start_unix_nano: lo, end_unix_nano: hi, self_nanos: 0 });
    let mut kids: Vec<usize> = children[index].iter().copied().filter(|&k| !visited[k]).collect();
    kids.sort_by(|&a, &b| {
        let (a, b) = (&spans[a], &spans[b]);
        (b.end_unix_nano, a.start_unix_nano, &a.span_id).cmp(&(a.end_unix_nano, b.start_unix_nano, &b.span_id))
    });
    let mut cursor = hi;
    let mut self_nanos = 0;
    let mut on_path = Vec::new();
    for kid in kids {
        if cursor <= lo {
            break;
        }
        let span = &spans[kid];
        if span.start_unix_nano >= cursor || depth + 1 >= MAX_DEPTH {
            continue;
        }
        let (start, end) = (span.start_unix_nano.max(lo), span.end_unix_nano.min(cursor));
        if end <= start {
            continue;
        }
        self_nanos += cursor - end;
        on_path.push((kid, start, end));
        cursor = start;
    }
    self_nanos += cursor - lo;
    path[at].self_nanos = self_nanos;
    for (kid, start, end) in on_path.into_iter().rev() {
        if !visited[kid] {
            walk(spans, children, kid, start, end, depth + 1, visited, path);
        }
    }
    visited[index] = false;
}

/// The span holding the most self time on the path (summed over its steps,
/// when it is on the path more than once: waited for by several retries),
/// as a step carrying that sum; of equals, the deepest (the most specific),
/// then the latest.
pub fn culprit(path: &[PathStep]) -> Option<PathStep> {
    let mut totals: HashMap<usize, u64> = HashMap::new();
    for step in path {
        *totals.entry(step.index).or_default() += step.self_nanos;
    }
    path.iter()
        .max_by_key(|step| (totals[&step.index], step.depth, step.start_unix_nano))
        .map(|step| PathStep { self_nanos: totals[&step.index], ..step.clone() })
}

/// What kind of failure a failed span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A span that ended with status ERROR.
    Error,
    /// The sentinel's `missed by <consumer>`: a consumer did not process
    /// this trace's event in time.
    Missed,
    /// A delivery that gave its message up to the dead letters (its
    /// CONSUMER span carries `tracehop.dead_lettered`).
    DeadLetter,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Missed => "missed",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// One failed span.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub index: usize,
    pub kind: FailureKind,
    pub service: String,
    pub span: String,
    /// `error.type`, empty when the span has none.
    pub error_type: String,
    /// The status message.
    pub message: String,
}

/// The trace's failed spans, earliest first.
pub fn failures(spans: &[SpanRecord]) -> Vec<Failure> {
    let mut failed: Vec<Failure> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == SpanStatus::Error)
        .map(|(index, s)| Failure {
            index,
            kind: if s.name.starts_with("missed by ") {
                FailureKind::Missed
            } else if s.attributes.get(tracehop_messaging::consume::DEAD_LETTERED)
                == Some(&serde_json::Value::Bool(true))
            {
                FailureKind::DeadLetter
            } else {
                FailureKind::Error
            },
            service: s.service.clone(),
            span: s.name.clone(),
            error_type: s.attr_str("error.type").unwrap_or_default().to_string(),
            message: s.status_message.clone(),
        })
        .collect();
    failed.sort_by_key(|f| (spans[f.index].start_unix_nano, f.index));
    failed
}

/// Median durations of spans by (service, span name), and of whole
/// checkouts, across a set of traces.
#[derive(Clone, Debug, Default)]
pub struct Typical {
    durations: HashMap<(String, String), Vec<u64>>,
    checkouts: Vec<u64>,
}

impl Typical {
    /// Learns from `traces`, leaving out the trace `except` (the one being
    /// explained must not make itself look typical).
    pub fn learn<'a>(traces: impl IntoIterator<Item = &'a [SpanRecord]>, except: Option<&str>) -> Self {
        let mut typical = Self::default();
        for spans in traces {
            if spans.first().is_some_and(|s| Some(s.trace_id.as_str()) == except) {
                continue;
            }
            if let Some(root) = checkout_root(spans) {
                typical.checkouts.push(spans[root].duration_nanos());
            }
            for span in spans {
                typical
                    .durations
                    .entry((span.service.clone(), span.name.clone()))
                    .or_default()
                    .push(span.duration_nanos());
            }
        }
        for samples in typical.durations.values_mut() {
            samples.sort_unstable();
        }
        typical.checkouts.sort_unstable();
        typical
    }

    /// Like [`Typical::learn`], from checkout traces only: a statement that
    /// a background job also runs (a restock worker's UPDATE) must be
    /// compared with its runs in other checkouts, not with the job's.
    pub fn learn_checkouts<'a>(traces: impl IntoIterator<Item = &'a [SpanRecord]>, except: Option<&str>) -> Self {
        Self::learn(traces.into_iter().filter(|spans| checkout_root(spans).is_some()), except)
    }

    /// The median duration of `service`'s spans called `span`, and how many
    /// there were; `None` when there were none.
    pub fn median(&self, service: &str, span: &str) -> Option<(u64, usize)> {
        let samples = self.durations.get(&(service.to_string(), span.to_string()))?;
        median(samples).map(|m| (m, samples.len()))
    }

    /// The median checkout (root) duration, and how many checkouts there were.
    pub fn checkout(&self) -> Option<(u64, usize)> {
        median(&self.checkouts).map(|m| (m, self.checkouts.len()))
    }
}

/// Of a sorted slice; the lower middle of an even count.
fn median(sorted: &[u64]) -> Option<u64> {
    (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2])
}

/// One trace in brief: what `tracehop slowest` lists.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's name (`POST /v1/orders`).
    pub root: String,
    pub start_unix_nano: u64,
    /// The root's duration: what the caller waited.
    pub duration_nanos: u64,
    /// The HTTP status the gateway answered, when the root says.
    pub http_status: Option<i64>,
    pub culprit: Option<Culprit>,
    /// Failed spans in the trace.
    pub errors: usize,
}

/// The span on the critical path with the most self time.
#[derive(Clone, Debug, PartialEq)]
pub struct Culprit {
    pub service: String,
    pub span: String,
    pub kind: SpanKind,
    pub self_nanos: u64,
    /// The span's whole duration.
    pub duration_nanos: u64,
    /// `db.system.name`, `error.type`, `messaging.destination.name`: what a
    /// hint about the culprit is based on.
    pub db_system: Option<String>,
    pub error_type: Option<String>,
    pub destination: Option<String>,
    /// Whether the span has children (a leaf's self time is its own work or
    /// waiting; a client span without a server child never got an answer).
    pub has_children: bool,
}

impl Culprit {
    fn of(spans: &[SpanRecord], step: &PathStep) -> Self {
        let span = &spans[step.index];
        Self {
            service: span.service.clone(),
            span: span.name.clone(),
            kind: span.kind,
            self_nanos: step.self_nanos,
            duration_nanos: span.duration_nanos(),
            db_system: span.attr_str("db.system.name").map(str::to_string),
            error_type: span.attr_str("error.type").map(str::to_string),
            destination: span.attr_str("messaging.destination.name").map(str::to_string),
            has_children: spans.iter().any(|s| s.parent_span_id.as_deref() == Some(span.span_id.as_str())),
        }
    }
}

/// A checkout trace in brief, or `None` when `spans` hold no checkout root.
pub fn summarize(spans: &[SpanRecord]) -> Option<TraceSummary> {
    let root = checkout_root(spans)?;
    let path = critical_path(spans, root);
    let span = &spans[root];
    Some(TraceSummary {
        trace_id: span.trace_id.clone(),
        root: span.name.clone(),
        start_unix_nano: span.start_unix_nano,
        duration_nanos: span.duration_nanos(),
        http_status: span.attributes.get("http.response.status_code").and_then(serde_json::Value::as_i64),
        culprit: culprit(&path).map(|step| Culprit::of(spans, &step)),
        errors: spans.iter().filter(|s| s.status == SpanStatus::Error).count(),
    })
}

/// The `limit` slowest checkouts among `traces` whose root started at or
/// after `since_unix_nano`, slowest first. Only those are analysed in full,
/// so that a feed of many thousand traces is cheap to rank.
pub fn slowest<'a>(
    traces: impl IntoIterator<Item = &'a [SpanRecord]>,
    since_unix_nano: u64,
    limit: usize,
) -> Vec<TraceSummary> {
    let mut ranked: Vec<(u64, &[SpanRecord])> = traces
        .into_iter()
        .filter_map(|spans| {
            let root = &spans[checkout_root(spans)?];
            (root.start_unix_nano >= since_unix_nano).then_some((root.duration_nanos(), spans))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1[0].trace_id.cmp(&b.1[0].trace_id)));
    ranked.into_iter().take(limit).filter_map(|(_, spans)| summarize(spans)).collect()
}

/// Every checkout in `scan` whose root started at or after
/// `since_unix_nano`, as (root duration, trace id), slowest first. Only the
/// gateway's batches are decoded: ranking a feed of many thousand traces
/// must not cost decoding every span in it. Analyse the few that matter with
/// [`summarize`] on [`Scan::decode`].
pub fn checkouts_in(scan: &Scan, since_unix_nano: u64) -> Vec<(u64, &str)> {
    let mut ranked: Vec<(u64, &str)> = scan
        .traces
        .keys()
        .filter_map(|trace_id| {
            let gateway = scan.decode_service(trace_id, GATEWAY);
            let root = &gateway[checkout_root(&gateway)?];
            (root.start_unix_nano >= since_unix_nano).then_some((root.duration_nanos(), trace_id.as_str()))
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked
}

/// One span on the critical path, for people and scripts.
#[derive(Clone, Debug, PartialEq)]
pub struct PathEntry {
    pub service: String,
    pub span: String,
    pub kind: SpanKind,
    pub depth: usize,
    pub self_nanos: u64,
    pub duration_nanos: u64,
    /// Median duration of the same span in other traces.
    pub typical_nanos: Option<u64>,
    pub failed: bool,
}

/// Work that went on after the root ended (events consumed after the
/// gateway answered, the sentinel's spans).
#[derive(Clone, Debug, PartialEq)]
pub struct AfterAnswer {
    pub spans: usize,
    /// How long after the root's end the last of them ended.
    pub last_end_nanos: u64,
    /// The longest of them: service, name, duration.
    pub longest: (String, String, u64),
}

/// Why a trace took as long as it did.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub trace_id: String,
    pub root: String,
    /// True when the root is a checkout's (`POST /v1/orders` at the gateway).
    pub is_checkout: bool,
    pub duration_nanos: u64,
    pub http_status: Option<i64>,
    pub critical_path: Vec<PathEntry>,
    pub culprit: Option<Culprit>,
    /// The culprit's median duration elsewhere, and from how many spans.
    pub culprit_typical: Option<(u64, usize)>,
    pub errors: Vec<Failure>,
    /// The median checkout elsewhere, and from how many checkouts.
    pub typical_checkout: Option<(u64, usize)>,
    pub after_answer: Option<AfterAnswer>,
    /// Slower-than-usual requests and statements (not the culprit's
    /// ancestors) that ran while the culprit held its time: what it waited
    /// for is often one of them.
    pub meanwhile: Vec<Concurrent>,
    pub span_count: usize,
}

/// A span that ran during the culprit's time (see [`Explanation::meanwhile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Concurrent {
    pub service: String,
    pub span: String,
    pub duration_nanos: u64,
    pub typical_nanos: Option<u64>,
}

/// Most [`Concurrent`] spans reported.
const MAX_MEANWHILE: usize = 2;
/// How many times its typical duration a concurrent span must take to count.
const MEANWHILE_SLOWER: f64 = 3.0;

/// CLIENT spans (SQL statements, requests: the spans that wait) other than
/// the culprit and its ancestors, whose whole run (not only their part on
/// the path) overlaps at least half of the culprit's self time, and slower
/// than usual by [`MEANWHILE_SLOWER`] (a database statement with no typical
/// duration counts too). Think of a retried request: the first attempt's
/// statement still waits for a lock, holding a row or a connection that the
/// attempt on the path then waits for without a span of its own.
fn meanwhile(spans: &[SpanRecord], culprit: &PathStep, typical: &Typical) -> Vec<Concurrent> {
    let by_id: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
    let mut excluded: HashSet<usize> = HashSet::from([culprit.index]);
    let mut current = culprit.index;
    while let Some(&parent) = spans[current].parent_span_id.as_deref().and_then(|p| by_id.get(p)) {
        if !excluded.insert(parent) {
            break;
        }
        current = parent;
    }
    let (lo, hi) = (culprit.start_unix_nano, culprit.end_unix_nano);
    let mut found: Vec<Concurrent> = spans
        .iter()
        .enumerate()
        .filter(|(i, s)| !excluded.contains(i) && s.kind == SpanKind::Client)
        .filter(|(_, s)| {
            let overlap = s.end_unix_nano.min(hi).saturating_sub(s.start_unix_nano.max(lo));
            overlap > 0 && overlap * 2 >= culprit.self_nanos
        })
        .filter_map(|(_, s)| {
            let typical_nanos = typical.median(&s.service, &s.name).map(|(median, _)| median);
            let slow = match typical_nanos {
                Some(median) => s.duration_nanos() as f64 >= MEANWHILE_SLOWER * median.max(1) as f64,
                None => s.attr_str("db.system.name").is_some(),
            };
            slow.then(|| Concurrent {
                service: s.service.clone(),
                span: s.name.clone(),
                duration_nanos: s.duration_nanos(),
                typical_nanos,
            })
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.duration_nanos));
    found.truncate(MAX_MEANWHILE);
    found
}

/// Explains one trace against `typical` (learnt from other traces); `None`
/// when `spans` is empty.
pub fn explain(spans: &[SpanRecord], typical: &Typical) -> Option<Explanation> {
    let root_index = trace_root(spans)?;
    let root = &spans[root_index];
    let path = critical_path(spans, root_index);
    let culprit_step = culprit(&path);
    let culprit = culprit_step.as_ref().map(|step| Culprit::of(spans, step));
    let culprit_typical = culprit.as_ref().and_then(|c| typical.median(&c.service, &c.span));
    let critical_path = path
        .iter()
        .map(|step| {
            let span = &spans[step.index];
            PathEntry {
                service: span.service.clone(),
                span: span.name.clone(),
                kind: span.kind,
                depth: step.depth,
                self_nanos: step.self_nanos,
                duration_nanos: span.duration_nanos(),
                typical_nanos: typical.median(&span.service, &span.name).map(|(m, _)| m),
                failed: span.status == SpanStatus::Error,
            }
        })
        .collect();
    let root_end = root.end_unix_nano;
    let late: Vec<&SpanRecord> = spans.iter().filter(|s| s.end_unix_nano > root_end).collect();
    let after_answer =
        late.iter().max_by_key(|s| (s.duration_nanos(), std::cmp::Reverse(s.start_unix_nano))).map(|longest| {
            AfterAnswer {
                spans: late.len(),
                last_end_nanos: late.iter().map(|s| s.end_unix_nano - root_end).max().unwrap_or(0),
                longest: (longest.service.clone(), longest.name.clone(), longest.duration_nanos()),
            }
        });
    Some(Explanation {
        trace_id: root.trace_id.clone(),
        root: root.name.clone(),
        is_checkout: is_checkout_server_span(root),
        duration_nanos: root.duration_nanos(),
        http_status: root.attributes.get("http.response.status_code").and_then(serde_json::Value::as_i64),
        critical_path,
        culprit,
        culprit_typical,
        errors: failures(spans),
        typical_checkout: typical.checkout(),
        after_answer,
        meanwhile: culprit_step.as_ref().map_or_else(Vec::new, |step| meanwhile(spans, step, typical)),
        span_count: spans.len(),
    })
}

/// One line saying what usually causes a culprit like this, and where to look.
pub fn hint(culprit: &Culprit) -> String {
    if let Some(system) = &culprit.db_system {
        return format!(
            "a {system} statement: time spent inside the database, usually waiting for a row lock held by another \
             transaction or scanning more rows than it needs (look at pg_stat_activity / pg_locks while it happens, \
             and EXPLAIN ANALYZE the statement)"
        );
    }
    let error = culprit.error_type.as_deref().unwrap_or_default();
    let target = culprit.destination.as_deref().unwrap_or("the service");
    match culprit.kind {
        SpanKind::Client if error == "timeout" => format!(
            "a request to {target} that got no answer before its timeout: is its service up and answering? \
             (tracehop status)"
        ),
        SpanKind::Client if !culprit.has_children => format!(
            "a request to {target} that waited with no span from the other side: the service was down, busy, or \
             slow to pick the request up"
        ),
        SpanKind::Client => {
            format!("a request to {target} whose time is not covered by the server's own spans: the network or a queue")
        }
        _ if culprit.has_children => format!(
            "time in {}'s {:?} between the calls it makes: its own code, or a wait that has no span (a connection \
             from its pool, a lock in the process, the CPU)",
            culprit.service, culprit.span
        ),
        _ => format!(
            "time in {}'s {:?} itself: its own code, or a wait that has no span (a connection from its pool, the CPU)",
            culprit.service, culprit.span
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};
    use tracehop_spanfeed::SpanLink;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const MS: u64 = 1_000_000;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        kind: SpanKind,
        start_ms: u64,
        end_ms: u64,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: TRACE.to_string(),
            span_id: format!("{id:0<16}"),
            parent_span_id: parent.map(|p| format!("{p:0<16}")),
            name: name.to_string(),
            kind,
            service: service.to_string(),
            instance: String::new(),
            start_unix_nano: 1_000_000 * MS + start_ms * MS,
            end_unix_nano: 1_000_000 * MS + end_ms * MS,
            status: SpanStatus::Unset,
            status_message: String::new(),
            attributes: Map::new(),
            links: Vec::new(),
            events: Vec::new(),
        }
    }

    fn with(mut span: SpanRecord, attributes: Value) -> SpanRecord {
        for (key, value) in attributes.as_object().unwrap() {
            span.attributes.insert(key.clone(), value.clone());
        }
        span
    }

    fn failed(mut span: SpanRecord, error_type: &str, message: &str) -> SpanRecord {
        span.status = SpanStatus::Error;
        span.status_message = message.to_string();
        span.attributes.insert("error.type".into(), json!(error_type));
        span
    }

    fn root(end_ms: u64) -> SpanRecord {
        with(
            span("01", None, "gateway", "POST /v1/orders", SpanKind::Server, 0, end_ms),
            json!({"http.route": "/v1/orders", "http.request.method": "POST", "http.response.status_code": 201}),
        )
    }

    /// A checkout: gateway → order → inventory (whose UPDATE waits on a lock
    /// when `lock_ms` > 0) → payment, then an event consumed after the answer.
    fn checkout(lock_ms: u64) -> Vec<SpanRecord> {
        let l = lock_ms;
        vec![
            root(40 + l),
            span("02", Some("01"), "gateway", "send svc.order.place", SpanKind::Client, 1, 39 + l),
            span("03", Some("02"), "order", "process svc.order.place", SpanKind::Server, 2, 38 + l),
            span("04", Some("03"), "order", "INSERT ordering.orders", SpanKind::Client, 3, 5),
            span("05", Some("03"), "order", "send svc.inventory.reserve", SpanKind::Client, 6, 16 + l),
            span("06", Some("05"), "inventory", "process svc.inventory.reserve", SpanKind::Server, 7, 15 + l),
            with(
                span("07", Some("06"), "inventory", "UPDATE inventory.products", SpanKind::Client, 8, 10 + l),
                json!({"db.system.name": "postgresql"}),
            ),
            span("08", Some("06"), "inventory", "INSERT inventory.reservations", SpanKind::Client, 11 + l, 13 + l),
            span("09", Some("03"), "order", "send svc.payment.charge", SpanKind::Client, 17 + l, 35 + l),
            span("0a", Some("09"), "payment", "process svc.payment.charge", SpanKind::Server, 18 + l, 34 + l),
            span("0b", Some("0a"), "payment", "charge card", SpanKind::Internal, 19 + l, 33 + l),
            // The outbox relay publishes after the answer; consumers run later still.
            span("0c", Some("03"), "order", "publish orders.confirmed", SpanKind::Producer, 45 + l, 47 + l),
            span("0d", Some("0c"), "loyalty", "process orders.confirmed", SpanKind::Consumer, 48 + l, 60 + l),
            span("0e", Some("0c"), "notification", "process orders.confirmed", SpanKind::Consumer, 48 + l, 90 + l),
        ]
    }

    fn names(spans: &[SpanRecord], path: &[PathStep]) -> Vec<String> {
        path.iter().map(|step| format!("{}:{}", spans[step.index].service, spans[step.index].name)).collect()
    }

    fn self_ms(spans: &[SpanRecord], path: &[PathStep], name: &str) -> f64 {
        let step =
            path.iter().find(|s| spans[s.index].name == name).unwrap_or_else(|| panic!("{name} not on the path"));
        step.self_nanos as f64 / MS as f64
    }

    #[test]
    fn the_root_is_the_gateways_checkout_span_even_with_a_foreign_parent() {
        let mut spans = checkout(0);
        spans.reverse();
        assert_eq!(spans[checkout_root(&spans).unwrap()].name, "POST /v1/orders");
        // A caller's traceparent: the root's parent is not in the trace.
        let last = spans.len() - 1;
        spans[last].parent_span_id = Some("ffffffffffffffff".into());
        assert_eq!(spans[checkout_root(&spans).unwrap()].span_id, "0100000000000000");
        // No gateway span: no checkout, but a root all the same.
        let rest: Vec<SpanRecord> = spans.into_iter().filter(|s| s.service != "gateway").collect();
        assert_eq!(checkout_root(&rest), None);
        assert_eq!(rest[trace_root(&rest).unwrap()].name, "process svc.order.place");
        assert_eq!(trace_root(&[]), None);
    }

    #[test]
    fn the_path_follows_the_child_that_ends_last_and_self_times_add_up() {
        let spans = checkout(0);
        let path = critical_path(&spans, 0);
        assert_eq!(
            names(&spans, &path),
            [
                "gateway:POST /v1/orders",
                "gateway:send svc.order.place",
                "order:process svc.order.place",
                "order:INSERT ordering.orders",
                "order:send svc.inventory.reserve",
                "inventory:process svc.inventory.reserve",
                "inventory:UPDATE inventory.products",
                "inventory:INSERT inventory.reservations",
                "order:send svc.payment.charge",
                "payment:process svc.payment.charge",
                "payment:charge card",
            ]
        );
        let total: u64 = path.iter().map(|s| s.self_nanos).sum();
        assert_eq!(total, 40 * MS, "self times add up to the root's duration");
        // The server span of order waits 3 ms before the INSERT, 1 between
        // the calls each time, and 3 after payment.
        assert_eq!(self_ms(&spans, &path, "process svc.order.place"), 1.0 + 1.0 + 1.0 + 3.0);
        assert_eq!(self_ms(&spans, &path, "charge card"), 14.0);
        assert_eq!(spans[culprit(&path).unwrap().index].name, "charge card");
        let depths: Vec<usize> = path.iter().map(|s| s.depth).collect();
        assert_eq!(depths, [0, 1, 2, 3, 3, 4, 5, 5, 3, 4, 5]);
    }

    #[test]
    fn a_lock_wait_in_one_statement_is_the_culprit() {
        let spans = checkout(2000);
        let path = critical_path(&spans, 0);
        let culprit = Culprit::of(&spans, &culprit(&path).unwrap());
        assert_eq!((culprit.service.as_str(), culprit.span.as_str()), ("inventory", "UPDATE inventory.products"));
        assert_eq!(culprit.self_nanos, 2002 * MS);
        assert!(hint(&culprit).contains("lock"), "{}", hint(&culprit));
    }

    #[test]
    fn async_work_after_the_answer_is_not_on_the_path_but_is_reported() {
        let spans = checkout(0);
        let path = critical_path(&spans, 0);
        let on_path = names(&spans, &path).join(" ");
        assert!(!on_path.contains("publish") && !on_path.contains("loyalty"), "{on_path}");
        let explanation = explain(&spans, &Typical::default()).unwrap();
        let after = explanation.after_answer.unwrap();
        assert_eq!(after.spans, 3, "the producer and both consumers end after the answer");
        assert_eq!(after.last_end_nanos, 50 * MS);
        assert_eq!(after.longest, ("notification".into(), "process orders.confirmed".into(), 42 * MS));
    }

    #[test]
    fn children_that_outlive_their_parent_are_clipped_to_it() {
        // The producer's span ends at 20 while its consumer runs until 30;
        // the root waits on the producer only.
        let spans = vec![
            span("01", None, "x", "root", SpanKind::Internal, 0, 22),
            span("02", Some("01"), "x", "publish", SpanKind::Producer, 10, 20),
            span("03", Some("02"), "y", "consume", SpanKind::Consumer, 15, 30),
        ];
        let path = critical_path(&spans, 0);
        assert_eq!(names(&spans, &path), ["x:root", "x:publish", "y:consume"]);
        assert_eq!(self_ms(&spans, &path, "root"), 12.0);
        assert_eq!(self_ms(&spans, &path, "publish"), 5.0);
        assert_eq!(self_ms(&spans, &path, "consume"), 5.0, "only its part inside the producer's window");
        assert_eq!(path[2].end_unix_nano, spans[1].end_unix_nano);
    }

    #[test]
    fn parallel_children_the_one_ending_last_wins_and_earlier_ones_are_clipped() {
        // a: 0-10, b: 5-15, c: 12-14 under a root 0-20.
        let spans = vec![
            span("01", None, "x", "root", SpanKind::Internal, 0, 20),
            span("02", Some("01"), "x", "a", SpanKind::Internal, 0, 10),
            span("03", Some("01"), "x", "b", SpanKind::Internal, 5, 15),
            span("04", Some("01"), "x", "c", SpanKind::Internal, 12, 14),
        ];
        let path = critical_path(&spans, 0);
        assert_eq!(names(&spans, &path), ["x:root", "x:a", "x:b"]);
        assert_eq!(self_ms(&spans, &path, "root"), 5.0);
        assert_eq!(self_ms(&spans, &path, "b"), 10.0);
        assert_eq!(self_ms(&spans, &path, "a"), 5.0, "a is on the path until b started");
    }

    #[test]
    fn a_timed_out_request_without_an_answer_holds_its_own_time() {
        let spans = vec![
            root(3010),
            span("02", Some("01"), "gateway", "send svc.order.place", SpanKind::Client, 1, 3009),
            span("03", Some("02"), "order", "process svc.order.place", SpanKind::Server, 2, 3008),
            failed(
                with(
                    span("04", Some("03"), "order", "send svc.payment.charge", SpanKind::Client, 5, 3005),
                    json!({"messaging.destination.name": "svc.payment.charge"}),
                ),
                "timeout",
                "no reply from svc.payment.charge within 3s",
            ),
        ];
        let explanation = explain(&spans, &Typical::default()).unwrap();
        let culprit = explanation.culprit.unwrap();
        assert_eq!((culprit.service.as_str(), culprit.span.as_str()), ("order", "send svc.payment.charge"));
        assert_eq!(culprit.self_nanos, 3000 * MS);
        assert!(hint(&culprit).contains("no answer before its timeout"), "{}", hint(&culprit));
        assert_eq!(explanation.errors.len(), 1);
        assert_eq!(explanation.errors[0].kind, FailureKind::Error);
        assert_eq!(explanation.errors[0].error_type, "timeout");
    }

    /// A retried reservation: the first attempt's statement waits for a lock
    /// for 10 s and is abandoned by its caller at 4 s; the second attempt
    /// waits 4 s with no span (for a connection the first one holds) and is
    /// the culprit; the first statement is named as what ran meanwhile.
    #[test]
    fn a_slow_statement_off_the_path_during_the_culprits_wait_is_reported() {
        let db = json!({"db.system.name": "postgresql"});
        let spans = vec![
            root(8100),
            span("03", Some("01"), "order", "process svc.order.place", SpanKind::Server, 1, 8099),
            failed(
                span("05", Some("03"), "order", "send svc.inventory.reserve", SpanKind::Client, 2, 4002),
                "timeout",
                "no answer",
            ),
            span("06", Some("05"), "inventory", "reserve stock", SpanKind::Internal, 3, 10_500),
            with(
                span("07", Some("06"), "inventory", "UPDATE inventory.restock", SpanKind::Client, 4, 10_400),
                db.clone(),
            ),
            span("08", Some("03"), "order", "send svc.inventory.reserve", SpanKind::Client, 4003, 8090),
            span("09", Some("08"), "inventory", "reserve stock", SpanKind::Internal, 4004, 8080),
            with(span("0a", Some("09"), "inventory", "UPDATE inventory.products", SpanKind::Client, 8070, 8075), db),
        ];
        let mut typical_traces = vec![checkout(0)];
        typical_traces[0].push(with(
            span("0f", Some("06"), "inventory", "UPDATE inventory.restock", SpanKind::Client, 8, 9),
            json!({"db.system.name": "postgresql"}),
        ));
        for trace in &mut typical_traces {
            for span in trace.iter_mut() {
                span.trace_id = "f".repeat(32);
            }
        }
        let typical = Typical::learn(typical_traces.iter().map(Vec::as_slice), Some(TRACE));
        let explanation = explain(&spans, &typical).unwrap();
        let culprit = explanation.culprit.unwrap();
        assert_eq!((culprit.span.as_str(), culprit.self_nanos), ("reserve stock", 4071 * MS));
        assert_eq!(
            explanation.meanwhile,
            [Concurrent {
                service: "inventory".into(),
                span: "UPDATE inventory.restock".into(),
                duration_nanos: 10_396 * MS,
                typical_nanos: Some(MS),
            }]
        );
        // Only checkouts make a checkout's typical.
        let mut job = vec![span("01", None, "inventory", "restock", SpanKind::Internal, 0, 1)];
        job.push(with(
            span("02", Some("01"), "inventory", "UPDATE inventory.restock", SpanKind::Client, 0, 1),
            json!({}),
        ));
        let mut traces = typical_traces.clone();
        traces.extend([job.clone(), job.clone(), job]);
        for (n, trace) in traces.iter_mut().enumerate() {
            trace.iter_mut().for_each(|s| s.trace_id = format!("{n:032x}"));
        }
        let all = Typical::learn(traces.iter().map(Vec::as_slice), None);
        assert_eq!(all.median("inventory", "UPDATE inventory.restock"), Some((MS, 4)));
        let checkouts = Typical::learn_checkouts(traces.iter().map(Vec::as_slice), None);
        assert_eq!(checkouts.median("inventory", "UPDATE inventory.restock"), Some((MS, 1)));
        assert_eq!(checkouts.median("inventory", "restock"), None);
        // A normal checkout has nothing of the kind.
        assert!(explain(&checkout(0), &typical).unwrap().meanwhile.is_empty());
    }

    #[test]
    fn failures_tell_missed_events_and_dead_letters_apart() {
        let mut spans = checkout(0);
        spans.push(failed(
            span("0f", Some("0c"), "sentinel", "missed by analytics", SpanKind::Internal, 5000, 5000),
            "consumer_down",
            "analytics has not processed this event 5.0 s after it was published (down)",
        ));
        spans.push(with(
            failed(
                span("10", Some("0e"), "notification", "process orders.confirmed", SpanKind::Consumer, 95, 96),
                "max_deliveries",
                "gave up after 5 deliveries: mail server refused the connection",
            ),
            json!({"tracehop.dead_lettered": true}),
        ));
        spans.push(failed(
            span("11", Some("0e"), "notification", "process orders.confirmed", SpanKind::Consumer, 91, 94),
            "SmtpError",
            "mail server refused the connection",
        ));
        let failed = failures(&spans);
        let found: Vec<(FailureKind, &str)> = failed.iter().map(|f| (f.kind, f.service.as_str())).collect();
        assert_eq!(
            found,
            [
                (FailureKind::Error, "notification"),
                (FailureKind::DeadLetter, "notification"),
                (FailureKind::Missed, "sentinel"),
            ]
        );
    }

    #[test]
    fn typical_durations_are_medians_of_other_traces() {
        let mut traces: Vec<Vec<SpanRecord>> = Vec::new();
        for (n, lock) in [0u64, 1, 2, 2000].into_iter().enumerate() {
            let trace_id = format!("{n:032x}");
            traces.push(checkout(lock).into_iter().map(|s| SpanRecord { trace_id: trace_id.clone(), ..s }).collect());
        }
        let slow_id = format!("{:032x}", 3);
        let typical = Typical::learn(traces.iter().map(Vec::as_slice), Some(&slow_id));
        assert_eq!(typical.median("inventory", "UPDATE inventory.products"), Some((3 * MS, 3)));
        assert_eq!(typical.checkout(), Some((41 * MS, 3)));
        assert_eq!(typical.median("inventory", "nothing"), None);
        let explanation = explain(&traces[3], &typical).unwrap();
        assert_eq!(explanation.culprit_typical, Some((3 * MS, 3)));
        assert_eq!(explanation.duration_nanos, 2040 * MS);
        assert_eq!(explanation.http_status, Some(201));
        assert!(explanation.is_checkout);
        let update = explanation.critical_path.iter().find(|e| e.span == "UPDATE inventory.products").unwrap();
        assert_eq!(update.typical_nanos, Some(3 * MS));
    }

    #[test]
    fn slowest_ranks_checkouts_by_their_roots_and_skips_other_traces() {
        let mut traces: Vec<Vec<SpanRecord>> = Vec::new();
        for (n, lock) in [5u64, 700, 0, 30].into_iter().enumerate() {
            let trace_id = format!("{n:032x}");
            traces.push(checkout(lock).into_iter().map(|s| SpanRecord { trace_id: trace_id.clone(), ..s }).collect());
        }
        // A replay's trace has no checkout root and a long span.
        traces.push(vec![span("01", None, "loyalty", "replay loyalty", SpanKind::Internal, 0, 99_999)]);
        let top = slowest(traces.iter().map(Vec::as_slice), 0, 2);
        let ids: Vec<&str> = top.iter().map(|t| t.trace_id.as_str()).collect();
        assert_eq!(ids, [format!("{:032x}", 1), format!("{:032x}", 3)]);
        assert_eq!(top[0].root, "POST /v1/orders");
        assert_eq!(top[0].duration_nanos, 740 * MS);
        assert_eq!(top[0].culprit.as_ref().unwrap().span, "UPDATE inventory.products");
        assert_eq!(top[1].culprit.as_ref().unwrap().span, "UPDATE inventory.products");
        // `since` leaves out checkouts that started before it.
        let later = traces[0][0].start_unix_nano + 1;
        assert!(slowest(traces.iter().map(Vec::as_slice), later, 10).is_empty());
    }

    #[test]
    fn retries_that_joined_a_slow_attempt_are_seen_through_to_its_statement() {
        // The first attempt (a, 0-40 ms, timed out) runs a statement that
        // waits 90 ms (s); the retry (b, 40-100 ms) joined that attempt's
        // work (l), linking to it, and has no child of its own.
        let root = span("01", None, "gateway", "POST /v1/orders", SpanKind::Server, 0, 100);
        let first = span("02", Some("01"), "order", "send reserve", SpanKind::Client, 0, 40);
        let leader = span("03", Some("02"), "inventory", "reserve stock", SpanKind::Server, 2, 95);
        let statement = span("04", Some("03"), "inventory", "UPDATE restock", SpanKind::Client, 4, 94);
        let retry = span("05", Some("01"), "order", "send reserve", SpanKind::Client, 40, 100);
        let mut joined = span("06", Some("05"), "inventory", "reserve stock", SpanKind::Server, 41, 99);
        joined.links.push(SpanLink { trace_id: TRACE.into(), span_id: "0300000000000000".into() });
        let spans = vec![root, first, leader, statement, retry, joined];
        let path = critical_path(&spans, 0);
        let top = culprit(&path).unwrap();
        assert_eq!(spans[top.index].name, "UPDATE restock");
        // Its self time in both windows: 4-40 ms, then 41-94 ms.
        assert_eq!(top.self_nanos, (36 + 53) * MS);
    }

    #[test]
    fn cycles_and_self_parents_neither_hang_nor_repeat_spans() {
        let mut a = span("01", None, "x", "a", SpanKind::Internal, 0, 10);
        a.links.push(SpanLink { trace_id: TRACE.into(), span_id: "0200000000000000".into() });
        let spans = vec![
            a,
            span("02", Some("03"), "x", "b", SpanKind::Internal, 1, 9),
            span("03", Some("02"), "x", "c", SpanKind::Internal, 2, 8),
            span("04", Some("04"), "x", "d", SpanKind::Internal, 2, 8),
        ];
        // b and c are a cycle hanging off nothing; d is its own parent. a
        // links to b, so it waited for b: b and c are on its path, once.
        let path = critical_path(&spans, 0);
        assert_eq!(names(&spans, &path), ["x:a", "x:b", "x:c"]);
        let path = critical_path(&spans, 1);
        assert_eq!(names(&spans, &path), ["x:b", "x:c"]);
        assert_eq!(path.iter().map(|s| s.self_nanos).sum::<u64>(), 8 * MS);
    }
}
