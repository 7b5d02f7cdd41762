//! Turning spans read from the span feed into output: text for people and
//! JSON for scripts.
//!
//! - [`waterfall`]: one trace as a terminal waterfall (`tracehop trace`): a
//!   tree of spans with their service, kind, start offset, duration, status and
//!   a bar on a shared timeline.
//! - [`trace_json`]: the same trace for `--json`, as `{"spans": [...]}`.
//! - [`watch_line`]: one finished span as one line (`tracehop watch`).
//!
//! Everything here is a pure function of its input, so that what a user sees
//! is tested without NATS. Text taken from spans is stripped of control
//! characters before it reaches the terminal: a span name is data from another
//! process, not a string of escape sequences to obey.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use serde_json::{Value, json};
use tracehop_spanfeed::{SpanKind, SpanRecord, SpanStatus};

/// Used when the caller does not know the terminal's width (passes 0).
const DEFAULT_WIDTH: usize = 120;
/// Below this many columns a timeline says nothing: on a terminal too narrow
/// for it, lines run past the edge instead.
const MIN_TIMELINE: usize = 12;
/// Span names are cut to leave the timeline `MIN_TIMELINE` columns, but the
/// name column never gets narrower than this.
const MIN_NAME: usize = 16;
/// Longer names (with their tree guides) and service names are cut with `…`.
const MAX_NAME: usize = 48;
const MAX_SERVICE: usize = 14;

const FAILED: &str = "✗";
const LINK: &str = "↪";
/// Put before the name of a span whose parent is not among the spans shown.
const DETACHED: &str = "⋯";
const BAR: char = '█';

use crate::term::{BOLD, DIM, RED, RESET, YELLOW, sanitize};

/// Renders one trace as a waterfall for a terminal `width` columns wide (0
/// means 120); `color` adds ANSI colours (failures in red).
///
/// Spans are laid out as a tree: children under their parent, siblings by
/// start time. A span whose parent is not in `spans` (the parent has not
/// arrived yet, or it is a consumer whose producer is in another trace) is
/// shown as an extra root, marked `⋯`. A failed span is marked `✗` at the
/// start of its line, and its `error.type` and status message are written on
/// the timeline next to its bar; when they do not fit there, they are written
/// whole on the next line, under the span's name, so that no line is wider
/// than the terminal. An expected no that a span answered (a decline, out of
/// stock: `tracehop.outcome` `rejected`) is written plainly next to its bar
/// (`→ rejected: payment_declined`), as are its links (`↪` and the short id
/// of the linked span), when there is room.
pub fn waterfall(spans: &[SpanRecord], width: usize, color: bool) -> String {
    if spans.is_empty() {
        return "no spans for this trace yet\n".to_string();
    }
    let width = if width == 0 { DEFAULT_WIDTH } else { width };
    let first_start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let last_end = spans.iter().map(|s| s.end_unix_nano.max(s.start_unix_nano)).max().unwrap_or(0);
    let total = last_end - first_start;

    let rows: Vec<Cells> = tree_rows(spans).into_iter().map(|row| Cells::new(&row, first_start)).collect();

    let service_w = column_width(rows.iter().map(|r| &r.service), "service").min(MAX_SERVICE);
    let start_w = column_width(rows.iter().map(|r| &r.start), "start");
    let duration_w = column_width(rows.iter().map(|r| &r.duration), "duration");
    let status_w = column_width(rows.iter().map(|r| &r.status), "status");
    let kind_w = column_width(rows.iter().map(|r| &r.kind), "kind");
    // mark, service, name, kind, start, duration, status, timeline: one space
    // after the mark, two between the others.
    let fixed = 2 + service_w + 2 + 2 + kind_w + 2 + start_w + 2 + duration_w + 2 + status_w + 2;
    let free = width.saturating_sub(fixed);
    let natural_name = column_width(rows.iter().map(|r| &r.name), "span").min(MAX_NAME);
    let name_w = natural_name.min(free.saturating_sub(MIN_TIMELINE).max(MIN_NAME));
    let timeline_w = free.saturating_sub(name_w).max(MIN_TIMELINE);

    let mut out = String::new();
    write_header(&mut out, spans, total, width, color);
    let scale = scale_line(total, timeline_w);
    let columns = format!(
        "  {:<service_w$}  {:<name_w$}  {:<kind_w$}  {:>start_w$}  {:>duration_w$}  {:<status_w$}  {scale}",
        "service", "span", "kind", "start", "duration", "status",
    );
    push_line(&mut out, columns.trim_end(), color.then_some(DIM));

    for row in &rows {
        let (bar, cut) = timeline(
            row.offset,
            row.span.duration_nanos(),
            total,
            timeline_w,
            &row.failure,
            row.failure_keep,
            &row.links,
        );
        let mut line = format!(
            "{} {}  {}  {:<kind_w$}  {:>start_w$}  {:>duration_w$}  {:<status_w$}  {bar}",
            if row.failed { FAILED } else { " " },
            pad(&row.service, service_w),
            pad(&row.name, name_w),
            row.kind,
            row.start,
            row.duration,
            row.status,
        );
        let len = line.trim_end().len();
        line.truncate(len);
        let paint = if row.failed {
            Some(RED)
        } else if row.detached {
            Some(YELLOW)
        } else {
            None
        };
        push_line(&mut out, &line, paint.filter(|_| color));
        if cut {
            // The whole failure, under the span's name.
            let under_name = format!("{}{}", " ".repeat(2 + service_w + 2), row.continued);
            push_line(&mut out, &format!("{under_name}{}", row.failure), color.then_some(RED));
        }
    }

    if rows.iter().any(|r| r.detached) {
        push_line(
            &mut out,
            &format!("{DETACHED} parent not in this trace yet, or in another trace: shown as a root"),
            color.then_some(DIM),
        );
    }
    out
}

/// The trace for scripts: exactly `{"spans": [...]}`, the spans in the order
/// given ([`tracehop_spanfeed::fetch_trace`] sorts them by start time).
///
/// Each span has `trace_id`, `span_id`, `parent_span_id` (null for a root),
/// `name`, `kind` (`server`, `client`, `producer`, `consumer`, `internal`),
/// `service`, `start_unix_nano`, `end_unix_nano`, `status` (`ok`, `error`,
/// `unset`), `status_message`, `attributes` (an object), `links` (a list of
/// `{trace_id, span_id}`) and `events`. The keys are written out here rather
/// than left to `SpanRecord`'s serde so that this contract cannot drift.
pub fn trace_json(spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            json!({
                "trace_id": span.trace_id,
                "span_id": span.span_id,
                "parent_span_id": span.parent_span_id,
                "name": span.name,
                "kind": kind_name(span.kind),
                "service": span.service,
                "instance": span.instance,
                "start_unix_nano": span.start_unix_nano,
                "end_unix_nano": span.end_unix_nano,
                "status": status_name(span.status),
                "status_message": span.status_message,
                "attributes": span.attributes,
                "links": span
                    .links
                    .iter()
                    .map(|link| json!({ "trace_id": link.trace_id, "span_id": link.span_id }))
                    .collect::<Vec<_>>(),
                "events": span
                    .events
                    .iter()
                    .map(|event| json!({
                        "name": event.name,
                        "time_unix_nano": event.time_unix_nano,
                        "attributes": event.attributes,
                    }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "spans": spans })
}

/// One finished span as one line of `tracehop watch`: end time (UTC), service,
/// kind, name, duration, status and short trace id; a failure starts with `✗`
/// and ends with its `error.type` and status message (in red with `color`).
pub fn watch_line(span: &SpanRecord, color: bool) -> String {
    let failed = span.status == SpanStatus::Error;
    let mut line = format!(
        "{} {}  {:<12}  {:<4}  {:<32}  {:>10}  {:<5}  {}",
        if failed { FAILED } else { " " },
        time_of_day(span.end_unix_nano),
        sanitize(&span.service),
        kind_short(span.kind),
        sanitize(&span.name),
        format!("{} ms", ms(span.duration_nanos())),
        status_short(span.status),
        short_id(&span.trace_id),
    );
    if failed {
        line.push_str("  ");
        line.push_str(&failure_text(span));
    } else {
        let outcome = outcome_text(span);
        if !outcome.is_empty() {
            line.push_str("  ");
            line.push_str(&outcome);
        }
    }
    if color && failed { format!("{RED}{line}{RESET}") } else { line }
}

/// One span placed in the tree.
pub struct Row<'a> {
    pub span: &'a SpanRecord,
    /// Tree guides drawn before the name (`│ ├ `); empty for a root.
    pub guides: String,
    /// The guides of the lines under this one (`│ │ `), before its children.
    pub continued: String,
    /// The span has a parent that is not among the spans shown.
    pub detached: bool,
}

impl Row<'_> {
    /// How deep in the tree: 0 for a root.
    pub fn depth(&self) -> usize {
        self.guides.chars().count() / 2
    }
}

/// The spans in tree order: each root (a span without a parent, or whose
/// parent is missing), by start time, followed by its subtree, depth first,
/// siblings by start time. The terminal waterfall and the console's both
/// lay a trace out with this.
pub fn tree_rows(spans: &[SpanRecord]) -> Vec<Row<'_>> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&spans[a], &spans[b]);
        (a.start_unix_nano, a.end_unix_nano, &a.span_id).cmp(&(b.start_unix_nano, b.end_unix_nano, &b.span_id))
    });
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in &order {
        match spans[i].parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) => children.entry(parent).or_default().push(i),
            parent => roots.push((i, parent.is_some())),
        }
    }

    let mut rows = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    for (root, detached) in roots {
        walk(spans, &children, root, detached, &mut seen, &mut rows);
    }
    // What is left hangs off a cycle of parents (bad data, but it must not
    // vanish): each such span becomes a detached root.
    for &i in &order {
        if !seen[i] {
            walk(spans, &children, i, true, &mut seen, &mut rows);
        }
    }
    rows
}

/// Appends `root` and its subtree to `rows`. Iterative, so that a long chain
/// of spans cannot overflow the stack; `seen` guards against cycles and
/// duplicated span ids.
fn walk<'a>(
    spans: &'a [SpanRecord],
    children: &HashMap<&str, Vec<usize>>,
    root: usize,
    detached: bool,
    seen: &mut [bool],
    rows: &mut Vec<Row<'a>>,
) {
    // (span, guides before its name, guides its children continue with)
    let mut stack = vec![(root, String::new(), String::new(), detached)];
    while let Some((i, guides, continued, detached)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        rows.push(Row { span: &spans[i], guides, continued: continued.clone(), detached });
        let kids: Vec<usize> = children
            .get(spans[i].span_id.as_str())
            .map(|kids| kids.iter().copied().filter(|&k| !seen[k]).collect())
            .unwrap_or_default();
        let last = kids.len().saturating_sub(1);
        for (n, &kid) in kids.iter().enumerate().rev() {
            let (branch, next) = if n == last { ("└ ", "  ") } else { ("├ ", "│ ") };
            stack.push((kid, format!("{continued}{branch}"), format!("{continued}{next}"), false));
        }
    }
}

/// A row's text, cell by cell, before the columns are sized.
struct Cells<'a> {
    span: &'a SpanRecord,
    failed: bool,
    detached: bool,
    offset: u64,
    service: String,
    name: String,
    kind: &'static str,
    start: String,
    duration: String,
    status: &'static str,
    /// Written on the timeline next to the bar: the failure, if any.
    failure: String,
    /// How much of `failure` must not be cut.
    failure_keep: usize,
    /// The tree guides that continue through a line under this one.
    continued: String,
    /// Written on the timeline next to the bar when there is room: what the
    /// span answered when it was not a plain yes, and the links.
    links: String,
}

impl<'a> Cells<'a> {
    fn new(row: &Row<'a>, first_start: u64) -> Self {
        let span = row.span;
        let failed = span.status == SpanStatus::Error;
        let offset = span.start_unix_nano - first_start;
        let marker = if row.detached { format!("{DETACHED} ") } else { String::new() };
        let (failure, failure_keep) = if failed { failure_parts(span) } else { (String::new(), 0) };
        Cells {
            span,
            failed,
            detached: row.detached,
            offset,
            service: sanitize(&span.service),
            name: format!("{}{marker}{}", row.guides, sanitize(&span.name)),
            kind: kind_short(span.kind),
            start: format!("+{} ms", ms(offset)),
            duration: format!("{} ms", ms(span.duration_nanos())),
            status: status_short(span.status),
            failure,
            failure_keep,
            continued: row.continued.clone(),
            links: notes_text(span),
        }
    }
}

/// The trace id, and the counts and total duration on the same line if they
/// fit, else on the next.
fn write_header(out: &mut String, spans: &[SpanRecord], total: u64, width: usize, color: bool) {
    let trace_ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let errors = spans.iter().filter(|s| s.status == SpanStatus::Error).count();
    let mut title = format!("trace {}", sanitize(&spans[0].trace_id));
    if trace_ids.len() > 1 {
        let _ = write!(title, " (and {} other trace ids)", trace_ids.len() - 1);
    }
    let stats =
        format!("{}  ·  {}  ·  {} ms  ·  ", plural(spans.len(), "span"), plural(services.len(), "service"), ms(total),);
    let errors = plural(errors, "error");
    let one_line = title.chars().count() + 5 + stats.chars().count() + errors.len() <= width;
    let between = if one_line { "  ·  " } else { "\n" };
    if color {
        let paint = if errors.starts_with("0 ") { "" } else { RED };
        let _ = writeln!(out, "{BOLD}{title}{between}{stats}{paint}{errors}{RESET}");
    } else {
        let _ = writeln!(out, "{title}{between}{stats}{errors}");
    }
}

/// The timeline column's heading: `0 ms` at its left edge, the trace's total
/// duration at its right edge.
fn scale_line(total: u64, width: usize) -> String {
    let left = "0 ms";
    let right = format!("{} ms", ms(total));
    let gap = width.saturating_sub(left.len() + right.len()).max(1);
    format!("{left}{}{right}", " ".repeat(gap))
}

/// One row's timeline: a bar from `offset` lasting `duration`, on a scale where
/// `width` columns are `total` nanoseconds; and whether `must` had to be cut.
///
/// `must` (a failure) and then `optional` (links) are written to the right of
/// the bar, or to its left if they fit only there. When both do not fit,
/// `optional` is dropped; when `must` still does not fit, only its first `keep`
/// characters (the marker and `error.type`) are written, followed by `…`, or
/// nothing if even they do not fit, and the caller writes `must` whole on a
/// line of its own.
fn timeline(
    offset: u64,
    duration: u64,
    total: u64,
    width: usize,
    must: &str,
    keep: usize,
    optional: &str,
) -> (String, bool) {
    let width = width.max(1);
    let total = u128::from(total.max(1));
    let columns = width as u128;
    let to_column = |nanos: u64, round_up: bool| {
        let scaled = u128::from(nanos) * columns;
        let column = if round_up { scaled.div_ceil(total) } else { scaled / total };
        column.min(columns) as usize
    };
    let from = to_column(offset, false).min(width.saturating_sub(1));
    let to = to_column(offset.saturating_add(duration), true).clamp(from + 1, width);

    let mut cells: Vec<char> = vec![' '; width];
    for cell in &mut cells[from..to] {
        *cell = BAR;
    }
    let candidates = match (must.is_empty(), optional.is_empty()) {
        (true, _) => vec![optional.to_string()],
        (false, true) => vec![must.to_string()],
        (false, false) => vec![format!("{must}  {optional}"), must.to_string()],
    };
    for label in candidates.iter().filter(|l| !l.is_empty()) {
        let label: Vec<char> = label.chars().collect();
        if to + 1 + label.len() <= width {
            cells[to + 1..to + 1 + label.len()].copy_from_slice(&label);
            return (cells.into_iter().collect(), false);
        }
        if from > label.len() {
            cells[from - 1 - label.len()..from - 1].copy_from_slice(&label);
            return (cells.into_iter().collect(), false);
        }
    }
    if must.is_empty() {
        return (cells.into_iter().collect(), false);
    }
    let (right, left) = (width.saturating_sub(to + 1), from.saturating_sub(1));
    if right.max(left) > keep {
        let mut label: Vec<char> = must.chars().take(keep).collect();
        label.push('…');
        if right > keep {
            cells[to + 1..to + 1 + label.len()].copy_from_slice(&label);
        } else {
            cells[from - 1 - label.len()..from - 1].copy_from_slice(&label);
        }
    }
    (cells.into_iter().collect(), true)
}

/// `✗ <error.type>: <status message>`, leaving out what the span lacks.
pub fn failure_text(span: &SpanRecord) -> String {
    failure_parts(span).0
}

/// The failure text, and how many of its first characters say what failed
/// (`✗ <error.type>`): those are never cut.
fn failure_parts(span: &SpanRecord) -> (String, usize) {
    let error_type = match span.attributes.get("error.type") {
        Some(Value::String(s)) => sanitize(s),
        Some(Value::Null) | None => String::new(),
        Some(other) => sanitize(&other.to_string()),
    };
    let message = sanitize(&span.status_message);
    let text = match (error_type.is_empty(), message.is_empty()) {
        (false, false) => format!("{FAILED} {error_type}: {message}"),
        (false, true) => format!("{FAILED} {error_type}"),
        (true, false) => format!("{FAILED} {message}"),
        (true, true) => format!("{FAILED} error"),
    };
    let keep = if error_type.is_empty() { 2 } else { 2 + error_type.chars().count() };
    (text, keep)
}

/// What the span answered when it was an expected no (`tracehop.outcome`
/// `rejected`): `→ rejected: <code>`, as a fact, not as a failure.
pub fn outcome_text(span: &SpanRecord) -> String {
    if span.status == SpanStatus::Error || span.attr_str("tracehop.outcome") != Some("rejected") {
        return String::new();
    }
    match span.attr_str("tracehop.error.code") {
        Some(code) => format!("→ rejected: {}", sanitize(code)),
        None => "→ rejected".to_string(),
    }
}

/// The outcome, then the links, whichever the span has.
fn notes_text(span: &SpanRecord) -> String {
    let links = if span.links.is_empty() { String::new() } else { links_text(span) };
    [outcome_text(span), links].into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>().join("  ")
}

/// `↪ <span id>` for each link (at most two, then a count); a link into
/// another trace also names that trace.
fn links_text(span: &SpanRecord) -> String {
    let mut parts: Vec<String> = span
        .links
        .iter()
        .take(2)
        .map(|link| {
            if link.trace_id == span.trace_id {
                short_id(&link.span_id)
            } else {
                format!("{} (trace {})", short_id(&link.span_id), short_id(&link.trace_id))
            }
        })
        .collect();
    if span.links.len() > 2 {
        parts.push(format!("+{}", span.links.len() - 2));
    }
    format!("{LINK} {}", parts.join(", "))
}

fn push_line(out: &mut String, line: &str, paint: Option<&str>) {
    match paint {
        Some(paint) => {
            let _ = writeln!(out, "{paint}{line}{RESET}");
        }
        None => {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// The widest cell of a column, counting its heading.
fn column_width<S: AsRef<str>>(cells: impl Iterator<Item = S>, heading: &str) -> usize {
    cells.map(|c| c.as_ref().chars().count()).chain([heading.len()]).max().unwrap_or(0)
}

/// `text` cut or padded to exactly `width` characters.
fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        format!("{text}{}", " ".repeat(width - len))
    } else if width == 0 {
        String::new()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// Milliseconds with as many decimals as the magnitude deserves.
pub fn ms(nanos: u64) -> String {
    let ms = nanos as f64 / 1_000_000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 1000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// `HH:MM:SS.mmm` in UTC, marked `Z`.
pub fn time_of_day(unix_nanos: u64) -> String {
    let millis = unix_nanos / 1_000_000;
    let seconds = millis / 1000;
    format!("{:02}:{:02}:{:02}.{:03}Z", seconds / 3600 % 24, seconds / 60 % 60, seconds % 60, millis % 1000)
}

/// The first eight hex digits of a trace or span id: enough to tell ids of one
/// trace apart, short enough for a column.
fn short_id(id: &str) -> String {
    sanitize(&id.chars().take(8).collect::<String>())
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// `server`, `client`, `producer`, `consumer` or `internal`.
pub fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn kind_short(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "srv",
        SpanKind::Client => "cli",
        SpanKind::Producer => "prod",
        SpanKind::Consumer => "cons",
        SpanKind::Internal => "int",
    }
}

fn status_name(status: SpanStatus) -> &'static str {
    match status {
        SpanStatus::Ok => "ok",
        SpanStatus::Error => "error",
        SpanStatus::Unset => "unset",
    }
}

fn status_short(status: SpanStatus) -> &'static str {
    match status {
        SpanStatus::Ok => "ok",
        SpanStatus::Error => "ERROR",
        SpanStatus::Unset => "-",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;
    use tracehop_spanfeed::SpanLink;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    /// 2023-11-14T22:13:20Z
    const BASE: u64 = 1_700_000_000_000_000_000;
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
            span_id: id.to_string(),
            parent_span_id: parent.map(str::to_string),
            name: name.to_string(),
            kind,
            service: service.to_string(),
            instance: String::new(),
            start_unix_nano: BASE + start_ms * MS,
            end_unix_nano: BASE + end_ms * MS,
            status: SpanStatus::Unset,
            status_message: String::new(),
            attributes: Map::new(),
            links: Vec::new(),
            events: Vec::new(),
        }
    }

    fn consumer(id: &str, service: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut span = span(
            id,
            Some("0400000000000004"),
            service,
            "process orders.confirmed",
            SpanKind::Consumer,
            start_ms,
            end_ms,
        );
        span.links.push(SpanLink { trace_id: TRACE.to_string(), span_id: "0400000000000004".to_string() });
        span.attributes.insert("messaging.system".to_string(), "nats".into());
        span
    }

    /// gateway server -> client -> order server -> producer -> three consumers,
    /// the notification one failed; shuffled, as the feed may deliver them.
    fn checkout() -> Vec<SpanRecord> {
        let mut failed = consumer("0600000000000006", "notification", 23, 40);
        failed.status = SpanStatus::Error;
        failed.status_message = "mail server refused the connection".to_string();
        failed.attributes.insert("error.type".to_string(), "SmtpError".into());
        let mut root = span("0100000000000001", None, "gateway", "POST /checkout", SpanKind::Server, 0, 40);
        root.status = SpanStatus::Ok;
        vec![
            consumer("0700000000000007", "analytics", 24, 26),
            span(
                "0300000000000003",
                Some("0200000000000002"),
                "order",
                "process order.checkout",
                SpanKind::Server,
                2,
                29,
            ),
            failed,
            root,
            span(
                "0400000000000004",
                Some("0300000000000003"),
                "order",
                "publish orders.confirmed",
                SpanKind::Producer,
                20,
                21,
            ),
            consumer("0500000000000005", "loyalty", 22, 30),
            span(
                "0200000000000002",
                Some("0100000000000001"),
                "gateway",
                "send order.checkout",
                SpanKind::Client,
                1,
                30,
            ),
        ]
    }

    /// The span lines of a rendered waterfall (those with a bar): no header,
    /// no legend, no failure written out under its span.
    fn span_lines(out: &str) -> Vec<&str> {
        out.lines().filter(|l| l.contains(BAR)).collect()
    }

    fn line_of<'a>(out: &'a str, needle: &str) -> &'a str {
        out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{out}"))
    }

    #[test]
    fn empty_trace_says_so() {
        assert_eq!(waterfall(&[], 120, true), "no spans for this trace yet\n");
    }

    #[test]
    fn spans_are_a_tree_in_start_order_with_guides() {
        let out = waterfall(&checkout(), 160, false);
        let lines = span_lines(&out);
        assert_eq!(lines.len(), 7, "{out}");
        let expected = [
            ("gateway", "POST /checkout"),
            ("gateway", "└ send order.checkout"),
            ("order", "  └ process order.checkout"),
            ("order", "    └ publish orders.confirmed"),
            ("loyalty", "      ├ process orders.confirmed"),
            ("notification", "      ├ process orders.confirmed"),
            ("analytics", "      └ process orders.confirmed"),
        ];
        // The name column starts at the same place on every line: just after
        // the padded service column.
        let name_at = 2 + MAX_SERVICE.min("notification".len()) + 2;
        for (line, (service, name)) in lines.iter().zip(expected) {
            let chars: Vec<char> = line.chars().collect();
            let service_cell: String = chars[2..name_at].iter().collect();
            let name_cell: String = chars[name_at..].iter().collect();
            assert_eq!(service_cell.trim_end(), service, "{line}");
            assert!(name_cell.starts_with(&format!("{name}  ")), "{name:?} not at column {name_at} in {line:?}");
        }
        assert!(!out.contains(DETACHED), "nothing is detached in a complete trace:\n{out}");
    }

    #[test]
    fn header_counts_spans_services_duration_and_errors() {
        let out = waterfall(&checkout(), 120, false);
        let header = out.lines().next().unwrap();
        assert_eq!(header, format!("trace {TRACE}  ·  7 spans  ·  5 services  ·  40.0 ms  ·  1 error"));
        let narrow = waterfall(&checkout(), 80, false);
        let header: Vec<&str> = narrow.lines().take(2).collect();
        assert_eq!(header, [format!("trace {TRACE}"), "7 spans  ·  5 services  ·  40.0 ms  ·  1 error".to_string()]);
    }

    #[test]
    fn failed_span_is_marked_with_its_error_type_and_message() {
        // Where it fits, the whole failure is on the span's line, by its bar.
        let mut spans = checkout();
        spans[2].status_message = "refused".to_string();
        let out = waterfall(&spans, 160, false);
        let failed = line_of(&out, "notification");
        assert!(failed.starts_with(FAILED), "{failed}");
        assert!(failed.contains("  ERROR  "), "{failed}");
        assert!(failed.contains("✗ SmtpError: refused"), "{failed}");
        for line in span_lines(&out).into_iter().filter(|l| !l.contains("notification")) {
            assert!(line.starts_with(' ') && !line.contains(FAILED) && !line.contains("ERROR"), "{line}");
        }
        assert_eq!(out.lines().filter(|l| l.contains("SmtpError")).count(), 1, "{out}");
        // Where it does not fit, the span's line keeps the error type if it
        // can, and the next line, under the span's name, has the whole failure.
        for (width, on_the_line) in [(160, "✗ SmtpError…"), (120, "✗ SmtpError…"), (100, "ERROR"), (40, "ERROR")]
        {
            let narrow = waterfall(&checkout(), width, false);
            let lines: Vec<&str> = narrow.lines().collect();
            let at = lines.iter().position(|l| l.contains("notification")).unwrap();
            assert!(lines[at].starts_with(FAILED) && lines[at].contains(on_the_line), "{width}:\n{narrow}");
            // The tree guide goes on down to the next sibling.
            let branch_at = lines[at].chars().position(|c| c == '├').unwrap();
            assert_eq!(
                lines[at + 1],
                format!("{}│ ✗ SmtpError: mail server refused the connection", " ".repeat(branch_at)),
                "{width}:\n{narrow}"
            );
            assert!(lines[at + 2].contains("analytics"), "{narrow}");
        }
    }

    #[test]
    fn offsets_and_durations_are_in_milliseconds_from_the_first_start() {
        let out = waterfall(&checkout(), 120, false);
        let cells = |needle: &str| -> Vec<String> {
            line_of(&out, needle).split("  ").map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
        };
        let root = cells("POST /checkout");
        assert!(root.windows(2).any(|w| w == ["+0.00 ms", "40.0 ms"]), "{root:?}");
        let producer = cells("publish orders.confirmed");
        assert!(producer.windows(3).any(|w| w == ["+20.0 ms", "1.00 ms", "-"]), "{producer:?}");
        let failed = cells("notification");
        assert!(failed.windows(3).any(|w| w == ["+23.0 ms", "17.0 ms", "ERROR"]), "{failed:?}");
        let root_kind = cells("POST /checkout");
        assert!(root_kind.windows(2).any(|w| w == ["srv", "+0.00 ms"]) && root_kind.contains(&"ok".to_string()));
        assert!(line_of(&out, "analytics").contains("  cons  "));
        assert!(line_of(&out, "send order.checkout").contains("  cli  "));
        assert!(line_of(&out, "publish orders.confirmed").contains("  prod  "));
    }

    #[test]
    fn bars_are_placed_in_proportion_on_one_timeline() {
        let out = waterfall(&checkout(), 120, false);
        let bar_of = |needle: &str| {
            let chars: Vec<char> = line_of(&out, needle).chars().collect();
            let from = chars.iter().position(|&c| c == BAR).unwrap();
            let len = chars[from..].iter().take_while(|&&c| c == BAR).count();
            (from, len)
        };
        // The root spans the whole trace, so its bar is the whole timeline,
        // which starts under the `0 ms` of the column heading.
        let (start, width) = bar_of("POST /checkout");
        let heading: Vec<char> = out.lines().nth(1).unwrap().chars().collect();
        let zero = heading.windows(4).position(|w| w.iter().collect::<String>() == "0 ms").unwrap();
        assert_eq!(start, zero, "{out}");
        assert!(heading.iter().collect::<String>().ends_with("40.0 ms"));
        assert!(width >= MIN_TIMELINE);
        let line_len = line_of(&out, "POST /checkout").chars().count();
        assert_eq!(line_len, 120, "the widest bar reaches the terminal's edge:\n{out}");
        // The producer starts half-way and lasts 1/40 of the trace.
        let (from, len) = bar_of("publish orders.confirmed");
        assert_eq!(from - start, width * 20 / 40);
        assert_eq!(len, 1);
        // The failed consumer runs from 23 ms to the end.
        let (from, len) = bar_of("notification");
        assert_eq!(from - start, width * 23 / 40);
        assert_eq!(from - start + len, width);
    }

    #[test]
    fn lines_fit_the_terminal() {
        for width in [80, 90, 100, 120, 160] {
            let out = waterfall(&checkout(), width, false);
            for line in out.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}\n{out}");
            }
        }
    }

    #[test]
    fn an_expected_no_is_shown_plainly_and_not_as_a_failure() {
        let mut spans = checkout();
        let answered = spans.iter().position(|s| s.name == "publish orders.confirmed").unwrap();
        spans[answered].attributes.insert("tracehop.outcome".to_string(), "rejected".into());
        spans[answered].attributes.insert("tracehop.error.code".to_string(), "payment_declined".into());
        let out = waterfall(&spans, 160, false);
        let line = line_of(&out, "publish orders.confirmed");
        assert!(line.contains("→ rejected: payment_declined"), "{out}");
        assert!(!line.starts_with(FAILED), "{line:?}");
        assert!(watch_line(&spans[answered], false).ends_with("→ rejected: payment_declined"));
    }

    #[test]
    fn links_are_shown_by_short_span_id_when_there_is_room() {
        let out = waterfall(&checkout(), 160, false);
        assert!(line_of(&out, "loyalty").contains("↪ 04000000"), "{out}");
        assert!(!line_of(&out, "POST /checkout").contains(LINK));
        let mut spans = checkout();
        spans[0].links[0].trace_id = "ffffffffffffffffffffffffffffffff".to_string();
        let out = waterfall(&spans, 160, false);
        assert!(line_of(&out, "analytics").contains("↪ 04000000 (trace ffffffff)"), "{out}");
    }

    #[test]
    fn spans_whose_parent_is_missing_are_extra_marked_roots() {
        // Without the producer the three consumers hang off nothing.
        let spans: Vec<SpanRecord> = checkout().into_iter().filter(|s| s.span_id != "0400000000000004").collect();
        let out = waterfall(&spans, 120, false);
        let lines = span_lines(&out);
        assert_eq!(lines.len(), 6, "{out}");
        assert!(lines[2].contains("  └ process order.checkout"), "{out}");
        for (line, service) in lines[3..].iter().zip(["loyalty", "notification", "analytics"]) {
            assert!(line.contains(service), "{line}");
            assert!(line.contains(&format!("  {DETACHED} process orders.confirmed")), "{line}");
        }
        assert!(out.lines().last().unwrap().starts_with(&format!("{DETACHED} parent not in this trace")), "{out}");
    }

    #[test]
    fn a_cycle_of_parents_neither_hangs_nor_hides_spans() {
        let a = span("aa00000000000000", Some("bb00000000000000"), "x", "a", SpanKind::Internal, 0, 2);
        let b = span("bb00000000000000", Some("aa00000000000000"), "x", "b", SpanKind::Internal, 1, 2);
        let c = span("cc00000000000000", Some("cc00000000000000"), "x", "c", SpanKind::Internal, 1, 3);
        let out = waterfall(&[a, b, c], 120, false);
        let lines = span_lines(&out);
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains(&format!("{DETACHED} a")), "{out}");
        assert!(lines[1].contains("└ b"), "{out}");
        assert!(lines[2].contains(&format!("{DETACHED} c")), "{out}");
    }

    #[test]
    fn color_paints_failures_red_and_nothing_without_it() {
        let plain = waterfall(&checkout(), 120, false);
        assert!(!plain.contains('\x1b'), "{plain}");
        let colored = waterfall(&checkout(), 120, true);
        let failed = line_of(&colored, "notification");
        assert!(failed.starts_with(&format!("{RED}{FAILED}")) && failed.ends_with(RESET), "{failed:?}");
        assert!(!line_of(&colored, "loyalty").contains(RED));
    }

    #[test]
    fn control_characters_from_spans_do_not_reach_the_terminal() {
        let mut spans = checkout();
        spans[3].name = "POST /checkout\x1b[2J\nevil".to_string();
        spans[2].status_message = "bad\x1b]0;title\x07".to_string();
        let out = waterfall(&spans, 120, false);
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
        assert_eq!(span_lines(&out).len(), 7, "{out}");
        assert!(!watch_line(&spans[2], false).contains('\x1b'));
    }

    #[test]
    fn tiny_and_unknown_widths_still_render_every_span() {
        for width in [0, 1, 30] {
            let out = waterfall(&checkout(), width, false);
            assert_eq!(span_lines(&out).len(), 7, "{width}:\n{out}");
            assert!(out.contains("SmtpError"));
        }
        assert_eq!(waterfall(&checkout(), 0, false), waterfall(&checkout(), DEFAULT_WIDTH, false));
        // A trace of one instant span has no duration to divide by.
        let instant = span("0100000000000001", None, "gateway", "tick", SpanKind::Internal, 5, 5);
        let out = waterfall(&[instant], 120, false);
        let line = line_of(&out, "tick");
        assert!(line.contains("+0.00 ms   0.00 ms") && line.contains(BAR), "{out}");
        assert!(
            out.starts_with(&format!("trace {TRACE}  ·  1 span  ·  1 service  ·  0.00 ms  ·  0 errors\n")),
            "{out}"
        );
    }

    #[test]
    fn json_has_exactly_the_contract_keys() {
        let spans = checkout();
        let value = trace_json(&spans);
        let top: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(top, ["spans"]);
        let list = value["spans"].as_array().unwrap();
        assert_eq!(list.len(), 7);
        let mut keys: Vec<&str> = list[0].as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attributes",
                "end_unix_nano",
                "events",
                "instance",
                "kind",
                "links",
                "name",
                "parent_span_id",
                "service",
                "span_id",
                "start_unix_nano",
                "status",
                "status_message",
                "trace_id",
            ]
        );
        let root = list.iter().find(|s| s["name"] == "POST /checkout").unwrap();
        assert_eq!(root["parent_span_id"], Value::Null);
        assert_eq!(root["kind"], "server");
        assert_eq!(root["status"], "ok");
        assert_eq!(root["start_unix_nano"], BASE);
        let failed = list.iter().find(|s| s["service"] == "notification").unwrap();
        assert_eq!(failed["parent_span_id"], "0400000000000004");
        assert_eq!(failed["kind"], "consumer");
        assert_eq!(failed["status"], "error");
        assert_eq!(failed["attributes"]["error.type"], "SmtpError");
        assert_eq!(failed["links"], json!([{ "trace_id": TRACE, "span_id": "0400000000000004" }]));
        let producer = list.iter().find(|s| s["service"] == "order" && s["kind"] == "producer").unwrap();
        assert_eq!(producer["status"], "unset");
        // The same shape SpanRecord's own serde gives, so the two never disagree.
        for (ours, span) in list.iter().zip(&spans) {
            assert_eq!(*ours, serde_json::to_value(span).unwrap());
        }
        assert_eq!(trace_json(&[]), json!({ "spans": [] }));
    }

    #[test]
    fn watch_lines_carry_time_service_kind_name_duration_status_and_trace() {
        let spans = checkout();
        let failed = spans.iter().find(|s| s.status == SpanStatus::Error).unwrap();
        let line = watch_line(failed, false);
        assert!(line.starts_with("✗ 22:13:20.040Z  notification  cons  process orders.confirmed"), "{line}");
        assert!(
            line.contains("   17.0 ms  ERROR  4bf92f35  ✗ SmtpError: mail server refused the connection"),
            "{line}"
        );
        let ok = watch_line(spans.iter().find(|s| s.service == "loyalty").unwrap(), false);
        assert!(ok.starts_with("  22:13:20.030Z  loyalty       cons  process orders.confirmed"), "{ok}");
        assert!(ok.trim_end().ends_with("8.00 ms  -      4bf92f35"), "{ok}");
        assert!(!ok.contains(FAILED));
        // Columns line up from one line to the next.
        let column = |line: &str| line.chars().collect::<String>().split("4bf92f35").next().unwrap().chars().count();
        assert_eq!(column(&line), column(&ok));
        assert_eq!(watch_line(failed, true), format!("{RED}{line}{RESET}"));
        assert!(!watch_line(&spans[5], true).contains('\x1b'));
    }
}
