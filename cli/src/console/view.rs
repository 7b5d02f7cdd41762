//! The console's HTML: pure functions from what the command's own modules
//! return (a trace's spans and its [`Explanation`], a [`Status`], the
//! scenario switches, a load run's [`Progress`] or [`LoadReport`], the
//! slowest checkouts) to markup, so that what a user sees is tested without
//! a browser. Every text that comes from outside goes through
//! [`html::text`]; numbers are formatted by the command's own helpers.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use tracehop_scenarios::{Scenario, Switch};
use tracehop_spanfeed::{SpanRecord, SpanStatus};

use super::html::{self, escape, text};
use crate::analysis::{self, Explanation, FailureKind, TraceSummary};
use crate::client::{CATALOG, OrderOutcome, TestCard, dollars};
use crate::commands::explain::{grouped_failures, on_more_spans};
use crate::commands::load::{millis, progress_line, summary};
use crate::commands::scenario::state_of;
use crate::commands::slowest::ms as ms_f64;
use crate::commands::status::{AlertStatus, Status, age};
use crate::load::{LoadReport, Progress};
use crate::render;

/// The pages, in the order the navigation lists them: path and title.
pub const PAGES: [(&str, &str); 5] = [
    ("/", "Live"),
    ("/order", "Place an order"),
    ("/scenarios", "Scenarios"),
    ("/slowest", "Slowest"),
    ("/load", "Load"),
];

/// A whole page: navigation, `body`, and the script that keeps the live
/// parts current.
pub fn page(title: &str, current: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in PAGES {
        let class = if path == current { " class=\"current\"" } else { "" };
        let _ = write!(nav, "<a href=\"{path}\"{class}>{name}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tracehop console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/\">tracehop</a><nav>{nav}</nav>\
         <form class=\"find\" action=\"/trace\" method=\"get\"><input name=\"id\" placeholder=\"trace id\" \
         aria-label=\"trace id\" size=\"34\" maxlength=\"64\"></form>\
         <span id=\"live-alert-count\" class=\"badge-slot\"></span>\
         <span id=\"connection\" class=\"connection\" title=\"live updates\">○ offline</span></header>\
         <main>{body}</main></body></html>\n",
        title = escape(title),
    )
}

/// A section that the server keeps current over server-sent events: its
/// `id` is what the events name.
pub fn live_section(id: &str, html: &str) -> String {
    format!("<div id=\"live-{id}\" class=\"live\">{html}</div>")
}

/// The colour class of a service: its place in the topology, so that each
/// service keeps its colour on every page.
pub fn service_class(service: &str) -> String {
    match tracehop_messaging::Service::ALL.iter().position(|s| s.name() == service) {
        Some(index) => format!("svc svc-{index}"),
        None => "svc svc-other".to_string(),
    }
}

fn service_tag(service: &str) -> String {
    format!("<span class=\"{}\">{}</span>", service_class(service), text(service))
}

fn trace_link(trace_id: &str, label: &str) -> String {
    let id: String = trace_id.chars().filter(char::is_ascii_hexdigit).collect();
    format!("<a class=\"trace-link\" href=\"/trace/{id}\">{}</a>", text(label))
}

// ---------------------------------------------------------------- live page

/// One finished checkout, as the live view counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkout {
    pub trace_id: String,
    pub end_unix_nano: u64,
    pub duration_nanos: u64,
    pub http_status: Option<i64>,
    /// The gateway's span failed (a 5xx, a timeout): an error, not an
    /// expected no such as a decline.
    pub failed: bool,
}

/// The checkouts of the last minute: rate, p50 and p99, errors, a chart of
/// each second, and the latest few with links to their traces.
pub fn checkouts(recent: &[Checkout], now_unix_nano: u64, window_secs: u64) -> String {
    let mut out = String::new();
    let count = recent.len();
    let mut durations: Vec<u64> = recent.iter().map(|c| c.duration_nanos).collect();
    durations.sort_unstable();
    let quantile = |q: f64| -> Option<u64> {
        (!durations.is_empty())
            .then(|| durations[((durations.len() as f64 * q).ceil() as usize).clamp(1, durations.len()) - 1])
    };
    let errors = recent.iter().filter(|c| c.failed).count();
    let declined =
        recent.iter().filter(|c| !c.failed && c.http_status.is_some_and(|s| (400..500).contains(&s))).count();
    let rate = count as f64 / window_secs.max(1) as f64;
    let stat = |value: String, label: &str, class: &str| {
        format!("<div class=\"stat {class}\"><b>{value}</b><span>{label}</span></div>")
    };
    let ms_or_dash = |nanos: Option<u64>| nanos.map_or("-".to_string(), |n| format!("{} ms", render::ms(n)));
    out.push_str("<div class=\"stats\">");
    out.push_str(&stat(format!("{rate:.1}/s"), &format!("checkouts ({count} in the last minute)"), ""));
    out.push_str(&stat(ms_or_dash(quantile(0.5)), "p50", ""));
    out.push_str(&stat(ms_or_dash(quantile(0.99)), "p99", ""));
    out.push_str(&stat(errors.to_string(), "errors", if errors > 0 { "bad" } else { "" }));
    out.push_str(&stat(declined.to_string(), "declined or refused", ""));
    out.push_str("</div>");
    out.push_str(&chart(recent, now_unix_nano, window_secs));

    let mut latest: Vec<&Checkout> = recent.iter().collect();
    latest.sort_by_key(|c| std::cmp::Reverse(c.end_unix_nano));
    if latest.is_empty() {
        out.push_str("<p class=\"quiet\">no checkout finished in the last minute</p>");
        return out;
    }
    out.push_str("<table class=\"latest\"><thead><tr><th>finished</th><th>answer</th><th>took</th><th>trace</th></tr></thead><tbody>");
    for c in latest.iter().take(8) {
        let status = c.http_status.map_or("-".to_string(), |s| s.to_string());
        let class = if c.failed { " class=\"bad\"" } else { "" };
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td>{status}</td><td class=\"num\">{} ms</td><td>{}</td></tr>",
            render::time_of_day(c.end_unix_nano),
            render::ms(c.duration_nanos),
            trace_link(&c.trace_id, &c.trace_id),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// Checkouts per second over the window as bars, errors stacked in red.
fn chart(recent: &[Checkout], now_unix_nano: u64, window_secs: u64) -> String {
    let window = window_secs.max(1) as usize;
    let mut ok = vec![0u32; window];
    let mut bad = vec![0u32; window];
    for c in recent {
        let ago = now_unix_nano.saturating_sub(c.end_unix_nano) / 1_000_000_000;
        if let Some(slot) = (window - 1).checked_sub(ago as usize) {
            if c.failed { bad[slot] += 1 } else { ok[slot] += 1 }
        }
    }
    let top = ok.iter().zip(&bad).map(|(a, b)| a + b).max().unwrap_or(0).max(1);
    let (width, height) = (600.0, 90.0);
    let bar = width / window as f64;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {height}\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"checkouts per second over the last minute\">"
    );
    for slot in 0..window {
        let x = slot as f64 * bar;
        let ok_h = f64::from(ok[slot]) / f64::from(top) * height;
        let bad_h = f64::from(bad[slot]) / f64::from(top) * height;
        if ok_h > 0.0 {
            let _ = write!(
                out,
                "<rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ok_h:.1}\"/>",
                height - ok_h,
                bar * 0.8
            );
        }
        if bad_h > 0.0 {
            let _ = write!(
                out,
                "<rect class=\"err\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bad_h:.1}\"/>",
                height - ok_h - bad_h,
                bar * 0.8
            );
        }
    }
    let _ = write!(
        out,
        "<line x1=\"0\" y1=\"{height}\" x2=\"{width}\" y2=\"{height}\"/></svg>\
         <div class=\"chart-axis\"><span>{window} s ago</span><span>checkouts per second, errors in red; \
         the highest bar: {top}</span><span>now</span></div>"
    );
    out
}

/// Services up or down, then every consumer's health.
pub fn consumers(status: &Status) -> String {
    let mut out = String::from("<h3>services</h3><div class=\"services\">");
    for s in &status.services {
        let class = if s.state == "up" { "up" } else { "down" };
        let pid = s.pid.map_or(String::new(), |p| format!(" · pid {p}"));
        let _ = write!(
            out,
            "<span class=\"service {class}\" data-service=\"{name}\">{tag} <b>{state}</b>{pid}</span>",
            name = text(&s.name),
            tag = service_tag(&s.name),
            state = text(&s.state),
        );
    }
    out.push_str("</div>");
    if let Some(error) = &status.nats_error {
        let _ = write!(out, "<p class=\"bad\">NATS is unreachable: {}</p>", text(error));
        return out;
    }
    let source = if status.sentinel {
        match status.deadline_ms {
            Some(deadline) if deadline > 0 => format!("from the sentinel; late after {}", age(deadline)),
            _ => "from the sentinel".to_string(),
        }
    } else {
        "read from JetStream: the sentinel is not answering".to_string()
    };
    let _ = write!(out, "<h3>consumers <small>{}</small></h3>", escape(&source));
    out.push_str(
        "<table class=\"consumers\"><thead><tr><th>consumer</th><th>stream</th><th>state</th><th>pullers</th>\
         <th>backlog</th><th>ack pending</th><th>oldest event</th><th>redelivered</th><th>dead letters</th></tr></thead><tbody>",
    );
    for c in &status.consumers {
        let class = match c.state.as_str() {
            "ok" => "ok",
            "lagging" => "late",
            _ => "bad",
        };
        let reason = if c.reason.is_empty() {
            String::new()
        } else {
            format!("<div class=\"reason\">{}</div>", text(&c.reason))
        };
        let _ = write!(
            out,
            "<tr class=\"{class}\" data-consumer=\"{name}\"><td>{name}</td><td>{stream}</td><td><b>{state}</b>{reason}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            c.active_pullers,
            c.pending,
            c.ack_pending,
            age(c.oldest_unprocessed_age_ms),
            c.redeliveries,
            c.dead_letters,
            name = text(&c.consumer),
            stream = text(&c.stream),
            state = text(&c.state),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The sentinel's open alerts (from the status).
pub fn open_alerts(status: &Status, now_unix_ms: i64) -> String {
    if status.nats_error.is_some() {
        return "<p class=\"quiet\">alerts unknown: NATS is unreachable</p>".to_string();
    }
    if !status.sentinel {
        return "<p class=\"quiet\">the sentinel is not running: no alerts are raised</p>".to_string();
    }
    if status.alerts.is_empty() {
        return "<p class=\"ok-text\">no open alerts</p>".to_string();
    }
    let mut out = String::from("<ul class=\"alerts\">");
    for alert in &status.alerts {
        out.push_str(&alert_item(alert, Some(now_unix_ms)));
    }
    out.push_str("</ul>");
    out
}

/// Whether an alert closes an incident rather than opening one.
pub fn is_recovery(alert: &AlertStatus) -> bool {
    matches!(alert.kind.as_str(), "consumer_recovered" | "dead_letters_cleared")
}

/// One alert; `now_unix_ms` for an open one, to say how long ago.
fn alert_item(alert: &AlertStatus, now_unix_ms: Option<i64>) -> String {
    let recovered = is_recovery(alert);
    let class = if recovered { "recovered" } else { "raised" };
    let what = if alert.kind == "consumer_dead_letters" {
        format!("{} dead letters", alert.dead_letters)
    } else if recovered {
        format!("after {}, {} processed late", age(alert.incident_duration_ms), alert.processed_late)
    } else {
        format!("backlog {}, oldest {}", alert.backlog, age(alert.oldest_unprocessed_age_ms))
    };
    // An open alert says how long ago it was raised; the log says when.
    let when = if alert.raised_at_unix_ms > 0 {
        let at = render::time_of_day(alert.raised_at_unix_ms as u64 * 1_000_000);
        let shown = match now_unix_ms {
            Some(now) => format!("raised {} ago", age((now - alert.raised_at_unix_ms).max(1))),
            None => at.clone(),
        };
        format!("<time title=\"{at}\">{shown}</time>")
    } else {
        String::new()
    };
    format!(
        "<li class=\"alert {class}\" data-kind=\"{kind}\" data-consumer=\"{consumer}\"><b>{label}</b> {stream}/{consumer} \
         <span>{what}</span> {when}<div class=\"message\">{message}</div></li>",
        kind = text(&alert.kind),
        label = text(&alert.kind.replace('_', " ")),
        stream = text(&alert.stream),
        consumer = text(&alert.consumer),
        message = text(&alert.message),
    )
}

/// The alerts heard since the console started, newest first.
pub fn alert_log(alerts: &[AlertStatus]) -> String {
    if alerts.is_empty() {
        return "<p class=\"quiet\">no alert raised or recovered since the console started</p>".to_string();
    }
    let mut out = String::from("<ul class=\"alerts log\">");
    for alert in alerts.iter().rev() {
        out.push_str(&alert_item(alert, None));
    }
    out.push_str("</ul>");
    out
}

/// Kill, stop or start a service, as `tracehop kill` and `start` do. Not a
/// live part: a button redrawn under the pointer can lose its click.
fn service_control() -> String {
    let mut out = String::from(
        "<form method=\"post\" action=\"/services\" class=\"inline services-control\">\
         <label>service <select name=\"name\" id=\"service-name\">",
    );
    for service in tracehop_launcher::SERVICES {
        let _ = write!(out, "<option value=\"{service}\">{service}</option>");
    }
    out.push_str(
        "</select></label><button type=\"submit\" name=\"action\" value=\"kill\" id=\"kill-service\" class=\"danger\" \
         title=\"SIGKILL: what a crash looks like\">kill</button>\
         <button type=\"submit\" name=\"action\" value=\"term\" class=\"secondary\" \
         title=\"SIGTERM: it drains first\">stop</button>\
         <button type=\"submit\" name=\"action\" value=\"start\" id=\"start-service\" class=\"secondary\">start</button>\
         <small>as <code>tracehop kill</code> and <code>tracehop start</code> do</small></form>",
    );
    out
}

/// What a kill, stop or start did, or is doing.
pub fn service_action(line: &str, ok: bool) -> String {
    let class = if ok { "quiet" } else { "bad" };
    format!("<p class=\"{class}\" data-service-action>{}</p>", text(line))
}

/// The count of open alerts, for the header of every page.
pub fn alert_count(status: &Status) -> String {
    match status.alerts.len() {
        0 => String::new(),
        n => format!("<a class=\"badge bad\" href=\"/\">{n} open alert{}</a>", if n == 1 { "" } else { "s" }),
    }
}

pub fn live_page(sections: &dyn Fn(&str) -> String) -> String {
    let body = format!(
        "<h1>Live</h1>\
         <section><h2>checkouts <small>last minute, from the gateway's spans on the feed</small></h2>{}</section>\
         <section><h2>open alerts</h2>{}</section>\
         <section><h2>consumer health</h2>{}{}{}</section>\
         <section><h2>alerts as they come <small>raised and recovered</small></h2>{}</section>",
        live_section("checkouts", &sections("checkouts")),
        live_section("alerts", &sections("alerts")),
        live_section("consumers", &sections("consumers")),
        service_control(),
        live_section("service-action", &sections("service-action")),
        live_section("alert-log", &sections("alert-log")),
    );
    page("Live", "/", &body)
}

// --------------------------------------------------------------- order page

/// What the order form holds: what was typed, to show again after an error.
#[derive(Clone, Debug, Default)]
pub struct OrderForm {
    pub customer: String,
    pub premium: bool,
    pub items: Vec<(String, String)>,
    pub card: String,
}

/// Lines in the order form.
pub const ORDER_LINES: usize = 4;

pub fn order_page(form: &OrderForm, result: &str) -> String {
    let mut body = String::from(
        "<h1>Place an order</h1><div class=\"columns\"><form method=\"post\" action=\"/order\" class=\"order card\">",
    );
    let customer = if form.customer.is_empty() { "alice" } else { form.customer.as_str() };
    let _ = write!(
        body,
        "<label>customer <input name=\"customer\" value=\"{}\" maxlength=\"64\" required></label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"premium\" value=\"on\"{}> premium customer \
         <small>(orders as {}: loyalty prices every item)</small></label>\
         <fieldset><legend>items</legend>",
        text(customer),
        if form.premium { " checked" } else { "" },
        crate::load::PREMIUM_CUSTOMERS[0],
    );
    for line in 0..ORDER_LINES {
        let (sku, quantity) = form.items.get(line).cloned().unwrap_or_else(|| {
            if line == 0 { ("KB-001".to_string(), "1".to_string()) } else { (String::new(), "1".to_string()) }
        });
        let _ = write!(
            body,
            "<div class=\"line\"><select name=\"sku\" aria-label=\"item {n}\"><option value=\"\">—</option>",
            n = line + 1
        );
        for (code, name) in CATALOG {
            let selected = if code == sku { " selected" } else { "" };
            let _ = write!(body, "<option value=\"{code}\"{selected}>{code} · {name}</option>");
        }
        let _ = write!(
            body,
            "</select><input type=\"number\" name=\"quantity\" min=\"1\" max=\"{}\" value=\"{}\" aria-label=\"quantity {}\"></div>",
            tracehop_proto::validate::MAX_QUANTITY,
            text(&quantity),
            line + 1
        );
    }
    body.push_str("</fieldset><label>card <select name=\"card\">");
    for card in TestCard::ALL {
        let selected = if card.key() == form.card { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{}\"{selected}>test card: {}</option>", card.key(), card.label());
    }
    body.push_str(
        "</select></label><label>e-mail <small>(optional; never shown)</small> \
         <input type=\"email\" name=\"email\" maxlength=\"254\" autocomplete=\"off\"></label>\
         <button type=\"submit\" id=\"place-order\">Place order</button></form>",
    );
    let _ = write!(body, "<div class=\"result\" id=\"order-result\">{result}</div></div>");
    page("Place an order", "/order", &body)
}

/// The form refused before anything was sent: which field, and why.
pub fn order_refused(field: &str, message: &str) -> String {
    format!(
        "<div class=\"card bad\" data-outcome=\"invalid\"><h2>not sent</h2><p><code>{}</code> {}</p></div>",
        text(field),
        text(message)
    )
}

/// What the gateway answered, with a link to the trace.
pub fn order_outcome(outcome: &OrderOutcome) -> String {
    let class = match outcome.http_status {
        201 => "good",
        400..=499 => "late",
        _ => "bad",
    };
    let mut out = format!(
        "<div class=\"card {class}\" data-outcome=\"{status}\"><h2>{status} <small>HTTP {http} · {elapsed:.0} ms</small></h2>",
        status = text(&outcome.status),
        http = outcome.http_status,
        elapsed = outcome.elapsed_ms,
    );
    if let Some(id) = &outcome.order_id {
        let _ = write!(out, "<p>order <code>{}</code></p>", text(id));
    }
    if let Some(total) = outcome.total_cents {
        let _ = write!(out, "<p>total {}</p>", dollars(total));
    }
    if let Some(error) = &outcome.error {
        let message = error["message"].as_str().unwrap_or("no reason given");
        let code = error["code"].as_str().map(|c| format!("<code>{}</code> ", text(c))).unwrap_or_default();
        let field = error["field"].as_str().map(|f| format!(" [{}]", text(f))).unwrap_or_default();
        let _ = write!(out, "<p>{code}{}{field}</p>", text(message));
    }
    match &outcome.trace_id {
        Some(trace_id) => {
            let _ = write!(out, "<p>{}</p>", trace_link(trace_id, "see its trace →"));
        }
        None => out.push_str("<p class=\"quiet\">no trace id came back</p>"),
    }
    out.push_str("</div>");
    out
}

// --------------------------------------------------------------- trace page

/// The scenarios that were on in a trace, from its spans' marks.
pub fn scenarios_in(spans: &[SpanRecord]) -> BTreeSet<String> {
    spans
        .iter()
        .filter_map(|s| s.attributes.get(tracehop_scenarios::SPAN_ATTRIBUTE).and_then(serde_json::Value::as_array))
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

pub fn trace_page(trace_id: &str, waterfall_html: &str, explain_html: &str) -> String {
    let body = format!(
        "<h1>Trace <code>{id}</code></h1>\
         <section class=\"explain\" id=\"explain\">{explain_html}</section>\
         <section id=\"trace\" data-trace-id=\"{id}\">{waterfall_html}</section>",
        id = escape(trace_id),
    );
    page("Trace", "", &body)
}

/// The trace's header line and its waterfall: services in colours, bars to
/// the trace's scale, failures and the sentinel's missed-by spans marked,
/// each span's attributes a click away, and the data the script needs to
/// draw the producer-to-consumer links.
pub fn waterfall(spans: &[SpanRecord], found_in: &str) -> String {
    if spans.is_empty() {
        return "<p class=\"quiet\" id=\"no-spans\">no span of this trace on the span feed or among the kept traces \
                yet. A trace just placed arrives in batches, and this page fills in as it does; an older one has left \
                the feed and was not kept (<code>tracehop trace</code> says how far back the feed reaches).</p>"
            .to_string();
    }
    let first = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.end_unix_nano.max(s.start_unix_nano)).max().unwrap_or(first);
    let total = (last - first).max(1);
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let failures = analysis::failures(spans);
    let failure_of: HashMap<usize, FailureKind> = failures.iter().map(|f| (f.index, f.kind)).collect();
    let index_of: HashMap<*const SpanRecord, usize> =
        spans.iter().enumerate().map(|(i, s)| (s as *const SpanRecord, i)).collect();

    let mut out = String::new();
    let _ = write!(
        out,
        "<div class=\"trace-head\"><span><b id=\"span-count\">{}</b> spans</span><span><b>{}</b> services</span>\
         <span><b>{} ms</b></span><span class=\"{}\"><b>{}</b> failed</span><span class=\"quiet\">from the {}</span>",
        spans.len(),
        services.len(),
        render::ms(total),
        if failures.is_empty() { "" } else { "bad" },
        failures.len(),
        escape(found_in),
    );
    let scenarios = scenarios_in(spans);
    if !scenarios.is_empty() {
        out.push_str("<span class=\"scenarios-on\">scenarios on:");
        for name in &scenarios {
            let _ = write!(out, " <span class=\"badge late\" data-scenario=\"{0}\">{0}</span>", text(name));
        }
        out.push_str("</span>");
    }
    out.push_str("</div><div class=\"legend\">");
    for service in &services {
        out.push_str(&service_tag(service));
    }
    out.push_str(
        "<span class=\"key\"><i class=\"mark-failed\">✗</i> failed <i class=\"mark-missed\">⚠</i> missed by a consumer \
         <i class=\"mark-link\">↪</i> consumer of a producer (line)</span></div>",
    );

    let _ = write!(
        out,
        "<div class=\"waterfall\" id=\"waterfall\"><div class=\"wf-row wf-head\"><span>service</span><span>span</span>\
         <span class=\"num\">took</span><span class=\"scale\"><span>0 ms</span><span>{} ms</span></span></div>",
        render::ms(total)
    );
    for row in render::tree_rows(spans) {
        let span = row.span;
        let index = index_of.get(&(span as *const SpanRecord)).copied().unwrap_or(usize::MAX);
        let failure = failure_of.get(&index).copied();
        let offset = span.start_unix_nano.saturating_sub(first);
        let left = offset as f64 * 100.0 / total as f64;
        let width = (span.duration_nanos() as f64 * 100.0 / total as f64).max(0.3).min(100.0 - left.min(99.7));
        let (class, mark) = match failure {
            Some(FailureKind::Missed) => (" missed", "<i class=\"mark-missed\" title=\"missed by a consumer\">⚠</i>"),
            Some(FailureKind::DeadLetter) => (" failed", "<i class=\"mark-failed\" title=\"dead letter\">✗</i>"),
            Some(FailureKind::Error) => (" failed", "<i class=\"mark-failed\" title=\"failed\">✗</i>"),
            None if span.status == SpanStatus::Error => (" failed", "<i class=\"mark-failed\">✗</i>"),
            None => ("", ""),
        };
        let links: Vec<&str> =
            span.links.iter().filter(|l| l.trace_id == span.trace_id).map(|l| l.span_id.as_str()).collect();
        let link_mark =
            if links.is_empty() { "" } else { "<i class=\"mark-link\" title=\"linked to its producer\">↪</i>" };
        let note = if failure.is_some() || span.status == SpanStatus::Error {
            text(&render::failure_text(span))
        } else {
            text(&render::outcome_text(span))
        };
        let detached = if row.detached { "<i class=\"quiet\" title=\"parent not in this trace\">⋯</i> " } else { "" };
        let _ = write!(
            out,
            "<details class=\"wf-span{class}\" data-span-id=\"{span_id}\" data-links=\"{links}\" data-service=\"{service}\">\
             <summary class=\"wf-row\"><span class=\"{svc_class}\">{service}</span>\
             <span class=\"name\" style=\"padding-left:{indent}em\">{mark}{link_mark}{detached}{name}</span>\
             <span class=\"num\">{took} ms</span>\
             <span class=\"track\"><span class=\"bar {svc_class}\" style=\"left:{left:.3}%;width:{width:.3}%\"></span>\
             <span class=\"note\" style=\"{note_at}\" title=\"{note}\">{note}</span></span></summary>",
            span_id = text(&span.span_id),
            links = text(&links.join(" ")),
            service = text(&span.service),
            svc_class = service_class(&span.service),
            indent = row.depth() as f64 * 0.9,
            name = text(&span.name),
            took = render::ms(span.duration_nanos()),
            // On the side of the bar with more room, cut to fit it.
            note_at = if left > 100.0 - left - width {
                format!("right:{:.3}%;max-width:{left:.3}%;padding-right:6px;text-align:right", 100.0 - left)
            } else {
                format!("left:{:.3}%;max-width:{:.3}%;padding-left:6px", left + width, 100.0 - left - width)
            },
        );
        out.push_str(&attributes_table(span, first));
        out.push_str("</details>");
    }
    out.push_str("<svg class=\"links\" id=\"links\" aria-hidden=\"true\"></svg></div>");
    out
}

/// A span's details: kind, timing, status, every attribute, its events and
/// links, each value scrubbed.
fn attributes_table(span: &SpanRecord, first: u64) -> String {
    let mut out = String::from("<div class=\"attrs\"><table>");
    let mut row = |key: &str, value: String| {
        let _ = write!(out, "<tr><th>{}</th><td>{value}</td></tr>", escape(key));
    };
    row("kind", render::kind_name(span.kind).to_string());
    row("start", format!("+{} ms", render::ms(span.start_unix_nano.saturating_sub(first))));
    row("duration", format!("{} ms", render::ms(span.duration_nanos())));
    row(
        "status",
        match span.status {
            SpanStatus::Error if span.status_message.is_empty() => "error".to_string(),
            SpanStatus::Error => format!("error: {}", text(&span.status_message)),
            SpanStatus::Ok => "ok".to_string(),
            SpanStatus::Unset => "unset".to_string(),
        },
    );
    row("span id", text(&span.span_id));
    for (key, value) in &span.attributes {
        row(key, html::attribute(key, value));
    }
    for event in &span.events {
        let attributes: Vec<String> =
            event.attributes.iter().map(|(k, v)| format!("{}={}", escape(k), html::attribute(k, v))).collect();
        row(&format!("event {}", event.name), attributes.join(", "));
    }
    for link in &span.links {
        let same = if link.trace_id == span.trace_id {
            String::new()
        } else {
            format!(" in trace {}", trace_link(&link.trace_id, &link.trace_id))
        };
        row("link", format!("span {}{same}", text(&link.span_id)));
    }
    out.push_str("</table></div>");
    out
}

/// The `explain` summary: how long, against a typical checkout; the
/// culprit and what such waiting means; the failures; what ran after the
/// answer.
pub fn explanation(e: &Explanation) -> String {
    let mut out = String::from("<div class=\"card\">");
    let status = e.http_status.map_or(String::new(), |s| format!(", answered {s}"));
    let _ = write!(
        out,
        "<p class=\"headline\"><b>{}</b> took <b>{} ms</b>{status}",
        text(&e.root),
        render::ms(e.duration_nanos)
    );
    if let Some((median, count)) = e.typical_checkout.filter(|_| e.is_checkout) {
        let _ = write!(
            out,
            " <span class=\"quiet\">(a typical checkout: {} ms, the median of {count})</span>",
            render::ms(median)
        );
    }
    out.push_str("</p>");
    if let Some(c) = &e.culprit {
        let share = c.self_nanos as f64 * 100.0 / e.duration_nanos.max(1) as f64;
        let _ = write!(
            out,
            "<p class=\"culprit\">culprit: {} <b>{}</b> held {} ms ({share:.0}%)",
            service_tag(&c.service),
            text(&c.span),
            millis(ms_f64(c.self_nanos)),
        );
        match e.culprit_typical {
            Some((median, count)) => {
                let _ = write!(out, "; it usually takes {} ms (median of {count} recent)", millis(ms_f64(median)));
            }
            None => out.push_str("; no other recent trace has this span to compare"),
        }
        let _ = write!(out, "</p><p class=\"hint\">{}</p>", text(&analysis::hint(c)));
        for other in &e.meanwhile {
            let usually = other.typical_nanos.map_or(String::new(), |t| format!(" (usually {} ms)", millis(ms_f64(t))));
            let _ = write!(
                out,
                "<p class=\"hint\">meanwhile {} <b>{}</b> ran {} ms{usually}: what it waited for may be what held this up</p>",
                service_tag(&other.service),
                text(&other.span),
                millis(ms_f64(other.duration_nanos)),
            );
        }
    }
    if e.errors.is_empty() {
        out.push_str("<p class=\"ok-text\">no failures</p>");
    } else {
        out.push_str("<ul class=\"failures\">");
        for (f, count) in grouped_failures(&e.errors) {
            let kind = match f.kind {
                FailureKind::Error => "failed",
                FailureKind::Missed => "missed by a consumer",
                FailureKind::DeadLetter => "dead letter",
            };
            let error_type =
                if f.error_type.is_empty() { String::new() } else { format!("<code>{}</code> ", text(&f.error_type)) };
            let also = on_more_spans(count).map_or(String::new(), |more| format!(" <small>({more})</small>"));
            let _ = write!(
                out,
                "<li class=\"{}\">{} <b>{}</b> {kind}: {error_type}{}{also}</li>",
                f.kind.as_str(),
                service_tag(&f.service),
                text(&f.span),
                text(&f.message)
            );
        }
        out.push_str("</ul>");
    }
    if let Some(after) = &e.after_answer {
        let (service, span, longest) = &after.longest;
        let _ = write!(
            out,
            "<p class=\"quiet\">after the answer: {} spans ran on, the last ending {} ms later (the longest: {} {}, {} ms)</p>",
            after.spans,
            millis(ms_f64(after.last_end_nanos)),
            text(service),
            text(span),
            millis(ms_f64(*longest)),
        );
    }
    out.push_str("</div>");
    out
}

// ----------------------------------------------------------- scenarios page

/// Every scenario with its switch, what the fault does and what the fix
/// does, and the buttons that flip it.
pub fn scenarios(all: &[(Scenario, Switch)]) -> String {
    let mut out = String::from("<div class=\"scenarios\">");
    for (scenario, switch) in all {
        let state = state_of(switch);
        let class = match (switch.on, switch.fixed) {
            (true, false) => "bad",
            (true, true) => "late",
            _ => "",
        };
        let rate = if *scenario == Scenario::SlowInventory && switch.on {
            format!(" <small>(rate {:.1}%)</small>", switch.rate_or_default() * 100.0)
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<article class=\"card scenario {class}\" data-scenario=\"{name}\" data-state=\"{state}\">\
             <h2>{name} <span class=\"state\">{state}</span>{rate}</h2><p class=\"quiet\">acts on {service}</p>\
             <p><b>fault:</b> {fault}</p><p><b>fix:</b> {fix}</p>",
            name = scenario.name(),
            service = service_tag(scenario.service()),
            fault = escape(scenario.description()),
            fix = escape(scenario.fix()),
        );
        if !switch.changed_by.is_empty() {
            let at = if switch.changed_at_unix_ms > 0 {
                format!(" at {}", render::time_of_day(switch.changed_at_unix_ms as u64 * 1_000_000))
            } else {
                String::new()
            };
            let _ = write!(out, "<p class=\"quiet\">last flipped by {}{at}</p>", text(&switch.changed_by));
        }
        out.push_str("<div class=\"buttons\">");
        let button = |change: &str, label: &str, extra: &str| {
            format!(
                "<form method=\"post\" action=\"/scenarios\"><input type=\"hidden\" name=\"name\" value=\"{}\">\
                 <input type=\"hidden\" name=\"change\" value=\"{change}\">{extra}\
                 <button type=\"submit\" data-change=\"{change}\">{label}</button></form>",
                scenario.name()
            )
        };
        if switch.on {
            out.push_str(&button("off", "switch off", ""));
        } else if *scenario == Scenario::SlowInventory {
            let rate = format!(
                "<input type=\"number\" name=\"rate\" min=\"0.001\" max=\"1\" step=\"0.001\" value=\"{}\" \
                 aria-label=\"share of reservations\" title=\"share of reservations that take the slow path\">",
                tracehop_scenarios::DEFAULT_SLOW_INVENTORY_RATE
            );
            out.push_str(&button("on", "switch on", &rate));
        } else {
            out.push_str(&button("on", "switch on", ""));
        }
        if switch.fixed {
            out.push_str(&button("unfix", "remove fix", ""));
        } else {
            out.push_str(&button("fix", "apply fix", ""));
        }
        out.push_str("</div></article>");
    }
    out.push_str("</div>");
    out
}

pub fn scenarios_page(list: &str, notice: &str) -> String {
    let body = format!(
        "<h1>Scenarios</h1><p class=\"quiet\">Live switches in the scenario bucket: every service watches them, a flip \
         acts within a second with no restart, and the bucket records who flipped what (as <code>tracehop scenario</code> \
         does). Spans a scenario acts on carry <code>tracehop.scenarios</code>.</p>{notice}{}",
        live_section("scenarios", list)
    );
    page("Scenarios", "/scenarios", &body)
}

// ------------------------------------------------------------- slowest page

pub fn slowest_page(
    top: &[TraceSummary],
    durations: &[u64],
    since_label: &str,
    since_key: &str,
    limit: usize,
) -> String {
    let mut body = String::from(
        "<h1>Slowest checkouts</h1><form class=\"inline\" method=\"get\" action=\"/slowest\"><label>started within <select name=\"since\">",
    );
    for (key, label) in SINCE_CHOICES {
        let selected = if key == since_key { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{key}\"{selected}>{label}</option>");
    }
    let _ = write!(
        body,
        "</select></label><label>show <input type=\"number\" name=\"limit\" min=\"1\" max=\"{MAX_SLOWEST}\" value=\"{limit}\"></label>\
         <button type=\"submit\">Find</button></form>"
    );
    if top.is_empty() {
        let _ = write!(body, "<p class=\"quiet\" id=\"slowest-empty\">no checkout traces {}</p>", escape(since_label));
        return page("Slowest", "/slowest", &body);
    }
    let median = durations.get(durations.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    let p99 = durations.get((durations.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0);
    let _ = write!(
        body,
        "<p>the {} slowest of {} checkouts {}: median {} ms, p99 {} ms</p>\
         <table class=\"slowest\"><thead><tr><th>trace</th><th>took</th><th>answer</th><th>failed spans</th>\
         <th>culprit</th><th>span</th><th>self time</th></tr></thead><tbody>",
        top.len(),
        durations.len(),
        escape(since_label),
        render::ms(median),
        render::ms(p99),
    );
    for trace in top {
        let (service, span, self_time) = match &trace.culprit {
            Some(c) => (service_tag(&c.service), text(&c.span), format!("{} ms", render::ms(c.self_nanos))),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{} ms</td><td>{}</td><td class=\"num\">{}</td><td>{service}</td><td>{span}</td>\
             <td class=\"num\">{self_time}</td></tr>",
            trace_link(&trace.trace_id, &trace.trace_id),
            render::ms(trace.duration_nanos),
            trace.http_status.map_or("-".to_string(), |s| s.to_string()),
            trace.errors,
        );
    }
    body.push_str("</tbody></table>");
    page("Slowest", "/slowest", &body)
}

/// The windows the slowest page offers: its query value and label.
pub const SINCE_CHOICES: [(&str, &str); 5] =
    [("5m", "5 minutes"), ("15m", "15 minutes"), ("1h", "1 hour"), ("1d", "1 day"), ("all", "all the feed holds")];
/// Most checkouts the slowest page lists.
pub const MAX_SLOWEST: usize = 100;

// ---------------------------------------------------------------- load page

/// A load run as it goes: a bar of requests due so far against those
/// planned, and the command's own progress line.
pub fn load_progress(progress: &Progress) -> String {
    let share = if progress.planned == 0 { 0.0 } else { progress.sent as f64 * 100.0 / progress.planned as f64 };
    format!(
        "<div class=\"card\" data-load=\"running\"><h2>running</h2><div class=\"progress\"><span style=\"width:{share:.1}%\"></span></div>\
         <pre class=\"line\">{}</pre></div>",
        escape(&progress_line(progress))
    )
}

/// A finished run: the command's own summary.
pub fn load_report(report: &LoadReport, started_by: &str) -> String {
    format!(
        "<div class=\"card\" data-load=\"finished\"><h2>{} <small>{}</small></h2><pre>{}</pre></div>",
        if report.stopped { "stopped" } else { "finished" },
        escape(started_by),
        escape(&summary(report))
    )
}

pub fn load_starting(what: &str) -> String {
    format!("<div class=\"card\" data-load=\"starting\"><h2>starting</h2><p>{}</p></div>", escape(what))
}

pub fn load_failed(message: &str) -> String {
    format!("<div class=\"card bad\" data-load=\"failed\"><h2>not started</h2><p>{}</p></div>", text(message))
}

/// Bounds the load form enforces: a console run is a demonstration, not a
/// benchmark (that is `tracehop bench`).
pub const MAX_LOAD_RATE: f64 = 500.0;
pub const MAX_LOAD_SECONDS: u64 = 600;

pub fn load_page(state: &str) -> String {
    let body = format!(
        "<h1>Load</h1><p class=\"quiet\">Checkouts at a constant arrival rate, an open model, by the engine of \
         <code>tracehop load</code>: request <i>i</i> is due at <i>i / rate</i> whether or not earlier ones answered.</p>\
         <div class=\"columns\"><form method=\"post\" action=\"/load/start\" class=\"card load\">\
         <label>rate <small>(checkouts per second, up to {MAX_LOAD_RATE})</small> <input type=\"number\" name=\"rate\" min=\"0.1\" max=\"{MAX_LOAD_RATE}\" step=\"0.1\" value=\"20\" required></label>\
         <label>for <small>(seconds, up to {MAX_LOAD_SECONDS})</small> <input type=\"number\" name=\"seconds\" min=\"1\" max=\"{MAX_LOAD_SECONDS}\" value=\"10\" required></label>\
         <label>premium share <small>(0 to 1)</small> <input type=\"number\" name=\"premium_ratio\" min=\"0\" max=\"1\" step=\"0.01\" value=\"0.1\"></label>\
         <label>declined share <small>(0 to 1)</small> <input type=\"number\" name=\"decline_ratio\" min=\"0\" max=\"1\" step=\"0.01\" value=\"0.05\"></label>\
         <label>at most in flight <small>(optional)</small> <input type=\"number\" name=\"concurrency_limit\" min=\"1\" max=\"10000\"></label>\
         <button type=\"submit\" id=\"start-load\">Start</button></form>\
         <div>{}<form method=\"post\" action=\"/load/stop\"><button type=\"submit\" id=\"stop-load\" class=\"secondary\">\
         Stop the run</button> <small>no request starts after this; those in flight are answered and counted</small></form></div></div>",
        live_section("load", state)
    );
    page("Load", "/load", &body)
}

/// A message in place of a part that cannot be shown.
pub fn message_fragment(message: &str) -> String {
    format!("<p class=\"bad\">{}</p>", text(message))
}

/// A plain message page (not found, refused).
pub fn message_page(title: &str, message: &str) -> String {
    page(title, "", &format!("<h1>{}</h1><p>{}</p>", escape(title), text(message)))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tracehop_spanfeed::{SpanKind, SpanLink};

    use super::*;

    fn span(id: &str, parent: Option<&str>, service: &str, name: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        SpanRecord {
            trace_id: "ab".repeat(16),
            span_id: id.to_string(),
            parent_span_id: parent.map(str::to_string),
            name: name.to_string(),
            kind: SpanKind::Internal,
            service: service.to_string(),
            instance: String::new(),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            status: SpanStatus::Unset,
            status_message: String::new(),
            attributes: serde_json::Map::new(),
            links: Vec::new(),
            events: Vec::new(),
        }
    }

    #[test]
    fn the_waterfall_scales_bars_marks_failures_and_keeps_links() {
        let mut root = span("r", None, "gateway", "POST /v1/orders", 0, 100);
        root.attributes.insert("card.number".into(), json!("4242424242424242"));
        let mut producer = span("p", Some("r"), "order", "publish orders.confirmed", 50, 60);
        producer.kind = SpanKind::Producer;
        let mut consumer = span("c", Some("p"), "loyalty", "process orders.confirmed", 60, 80);
        consumer.kind = SpanKind::Consumer;
        consumer.links.push(SpanLink { trace_id: "ab".repeat(16), span_id: "p".into() });
        let mut failed = span("f", Some("r"), "payment", "charge <card>", 10, 35);
        failed.status = SpanStatus::Error;
        failed.attributes.insert("error.type".into(), json!("timeout"));
        let html = waterfall(&[root, producer, consumer, failed], "span feed");
        assert!(html.contains("left:50.000%;width:10.000%"), "{html}");
        assert!(html.contains("data-span-id=\"c\" data-links=\"p\""), "{html}");
        assert!(html.contains("wf-span failed") && html.contains("✗ timeout"), "{html}");
        assert!(html.contains("charge &lt;card&gt;"), "{html}");
        assert!(!html.contains("4242424242424242"), "a card number reached the page");
        assert_eq!(html.matches("<details").count(), 4);
    }

    #[test]
    fn the_chart_and_stats_count_the_last_minute() {
        let now = 100 * 1_000_000_000u64;
        let checkout = |ago_s: u64, ms: u64, status: i64, failed| Checkout {
            trace_id: "cd".repeat(16),
            end_unix_nano: now - ago_s * 1_000_000_000,
            duration_nanos: ms * 1_000_000,
            http_status: Some(status),
            failed,
        };
        let recent = [
            checkout(1, 10, 201, false),
            checkout(2, 20, 201, false),
            checkout(3, 900, 504, true),
            checkout(3, 30, 402, false),
        ];
        let html = checkouts(&recent, now, 60);
        assert!(html.contains("<b>0.1/s</b>"), "{html}");
        assert!(html.contains("<b>20.0 ms</b><span>p50"), "{html}");
        assert!(html.contains("<b>900.0 ms</b><span>p99"), "{html}");
        assert!(html.contains("stat bad\"><b>1</b><span>errors"), "{html}");
        assert_eq!(html.matches("class=\"err\"").count(), 1);
    }

    #[test]
    fn an_answer_never_shows_a_card_number_or_an_address() {
        let outcome = OrderOutcome {
            http_status: 400,
            order_id: None,
            status: "rejected".into(),
            trace_id: Some("ef".repeat(16)),
            total_cents: None,
            error: Some(json!({"code": "invalid", "message": "4242 4242 4242 4242 for <b>bob@example.com</b>"})),
            body: Value::Null,
            elapsed_ms: 3.0,
        };
        let html = order_outcome(&outcome);
        assert!(!html.contains("4242") && !html.contains("bob@example.com") && !html.contains("<b>bob"), "{html}");
        assert!(html.contains(&format!("href=\"/trace/{}\"", "ef".repeat(16))), "{html}");
        let form = OrderForm { customer: "carol@example.com".into(), ..Default::default() };
        assert!(!order_page(&form, "").contains("carol@example.com"));
    }

    #[test]
    fn alerts_say_raised_or_recovered() {
        let raised = AlertStatus {
            kind: "consumer_down".into(),
            consumer: "analytics".into(),
            stream: "ORDERS".into(),
            ..Default::default()
        };
        let recovered = AlertStatus { kind: "consumer_recovered".into(), ..raised.clone() };
        let html = alert_log(&[raised, recovered]);
        let first_recovered = html.find("recovered\"").unwrap();
        let first_raised = html.find("alert raised").unwrap();
        assert!(first_recovered < first_raised, "newest first: {html}");
    }
}
