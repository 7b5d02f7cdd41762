//! `tracehop status`: every service, every expected consumer and the open
//! alerts.
//!
//! - Services: up or down from the pid files that `up` and `start` write (a
//!   pid file whose process is gone, or is another program, reads as down).
//! - Consumers and alerts: the sentinel is the source of truth and is asked
//!   on `svc.sentinel.status`. When it does not answer, each consumer is
//!   read from JetStream and judged here by the same function the sentinel
//!   uses ([`tracehop_messaging::health`], with its default thresholds);
//!   since that judges progress over time, a consumer that nobody pulls is
//!   read again after the down-after period before it is called down. There
//!   are no alerts then: only the sentinel raises them, and the output says
//!   so.
//!
//! [`gather`] does the I/O; [`render_text`] and [`render_json`] are pure
//! functions of a [`Status`], so that what a user sees is tested without NATS.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Serialize;
use serde_json::Value;
use tracehop_launcher::{Instances, Launcher, Service};
use tracehop_messaging::health::{self, History, Reading, Thresholds};
use tracehop_messaging::{RequestError, topology};
use tracehop_proto::subjects;
use tracehop_proto::v1::{AlertKind, ConsumerHealth, SentinelStatusReply, SentinelStatusRequest};

use crate::settings::Settings;
use crate::term::{DIM, RED, RESET, YELLOW, sanitize as clean};
use Align::{Left, Right};

/// How long the sentinel has to answer before status reads JetStream itself.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// What `tracehop status` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub consumers: Vec<ConsumerStatus>,
    pub alerts: Vec<AlertStatus>,
    /// Whether the sentinel answered; without it the consumers were read from
    /// JetStream and there are no alerts.
    pub sentinel: bool,
    /// Why the sentinel gave no answer when it seems to run but did not
    /// answer; none when nobody listens on its subject (it is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_error: Option<String>,
    /// The sentinel's deadline after which an unprocessed event is late.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Set when NATS could not be reached: consumers and alerts are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_error: Option<String>,
    /// How much the span feed and the kept-traces store hold, and how far
    /// back they reach at the rate they fill now.
    pub traces: Vec<TraceStoreStatus>,
    /// Each service's span pipelines: spans sent, lost and waiting, from
    /// the reports its running instances put in the telemetry bucket.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<SpanPipelineStatus>,
}

/// The span feed (`SPANS`, memory) or the kept-traces store (`KEPT`, disk).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TraceStoreStatus {
    pub stream: String,
    pub bytes: u64,
    pub max_bytes: i64,
    pub messages: u64,
    /// Age of its oldest message; none when it is empty.
    pub oldest_age_ms: Option<i64>,
    /// Messages (a service's batch of one trace, on the feed; a kept trace,
    /// in the store) per second, over what it holds.
    pub messages_per_second: f64,
    /// Bytes per second, over what it holds.
    pub bytes_per_second: f64,
    /// How far back it reaches at that rate: its age limit, or the time its
    /// byte limit fills in, whichever is less.
    pub reach_ms: Option<i64>,
}

impl TraceStoreStatus {
    fn of(window: &tracehop_spanfeed::kept::Window) -> Self {
        let per_message = if window.messages > 0 { window.bytes as f64 / window.messages as f64 } else { 0.0 };
        Self {
            stream: window.stream.clone(),
            bytes: window.bytes,
            max_bytes: window.max_bytes,
            messages: window.messages,
            oldest_age_ms: window.oldest_age.map(|a| a.as_millis() as i64),
            messages_per_second: window.messages_per_second,
            bytes_per_second: window.messages_per_second * per_message,
            reach_ms: window.reach().map(|r| r.as_millis() as i64),
        }
    }
}

/// The windows of the span feed and the kept-traces store, those that exist.
async fn trace_stores(js: &jetstream::Context) -> Vec<TraceStoreStatus> {
    let mut stores = Vec::new();
    for stream in [tracehop_spanfeed::STREAM, tracehop_spanfeed::kept::STREAM] {
        if let Ok(window) = tracehop_spanfeed::kept::window(js, stream).await {
            stores.push(TraceStoreStatus::of(&window));
        }
    }
    stores
}

/// One service process: a service, or one copy of it when several run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The process: the service's name for its first copy, `order-2` for
    /// its second.
    pub name: String,
    /// The service it is a copy of.
    pub service: String,
    /// For a service whose copies elect a leader (the sentinel): `leader`
    /// or `standby`, from the lease; none otherwise or when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `up` or `down`.
    pub state: String,
    pub pid: Option<u32>,
    /// Every service is built from this workspace, so a running service has
    /// the version of this command (`CARGO_PKG_VERSION`); none when down.
    pub version: Option<String>,
}

/// One service's span pipelines, summed over the last report of each of
/// its instances (see `tracehop_telemetry::health`). A lost span is a hole
/// in a trace.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SpanPipelineStatus {
    pub service: String,
    /// Instances that reported in the last minute.
    pub instances: u64,
    /// Spans delivered (to the span feed, or over OTLP).
    pub exported: u64,
    /// Spans dropped because a queue was full.
    pub dropped_queue_full: u64,
    /// Spans the destination did not take.
    pub failed_export: u64,
    /// Spans waiting for export now.
    pub queued: u64,
}

impl SpanPipelineStatus {
    /// Every span lost.
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full + self.failed_export
    }
}

/// The reports summed per service, in service order.
pub fn span_pipelines(reports: &[tracehop_telemetry::health::PipelineReport]) -> Vec<SpanPipelineStatus> {
    let mut by_service: BTreeMap<&str, SpanPipelineStatus> = BTreeMap::new();
    for report in reports {
        let status = by_service
            .entry(report.service.as_str())
            .or_insert_with(|| SpanPipelineStatus { service: report.service.clone(), ..Default::default() });
        status.instances += 1;
        for pipeline in &report.pipelines {
            status.exported += pipeline.exported;
            status.dropped_queue_full += pipeline.dropped_queue_full;
            status.failed_export += pipeline.failed_export;
            status.queued += pipeline.queued;
        }
    }
    by_service.into_values().collect()
}

/// One expected durable consumer, as the sentinel or JetStream sees it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub stream: String,
    pub consumer: String,
    /// `ok`, `lagging` (moving, but its oldest event is past the deadline),
    /// `down` (nobody pulling and nothing moving), `failing` (dead letters
    /// wait) or `missing` (the durable does not exist: the system was never
    /// set up), as [`tracehop_messaging::health::judge`] says; `unknown` when
    /// it could not be read (the reason says why).
    pub state: String,
    /// Why it is in that state; empty when it is ok.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Pull requests waiting on the durable (`num_waiting`): 0 means nobody
    /// is pulling. Not a count of processes: one consumer asks for more
    /// before its last request is used up, so one process may hold two, and
    /// a request of a process that just died lingers until it expires.
    pub active_pullers: u64,
    /// Events not yet delivered.
    pub pending: u64,
    /// Events delivered but not acknowledged.
    pub ack_pending: u64,
    /// Age of the oldest event not acknowledged; 0 when there is none.
    pub oldest_unprocessed_age_ms: i64,
    /// Deliveries beyond the first since the consumer was created.
    pub redeliveries: u64,
    pub dead_letters: u64,
    /// Dead letters by reason (known only to the sentinel).
    pub dead_letter_reasons: BTreeMap<String, u64>,
}

/// One open alert raised by the sentinel.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AlertStatus {
    pub alert_id: String,
    /// `consumer_down`, `consumer_lagging`, `consumer_recovered`,
    /// `consumer_dead_letters` or `dead_letters_cleared`.
    pub kind: String,
    pub stream: String,
    pub consumer: String,
    pub backlog: u64,
    pub oldest_unprocessed_age_ms: i64,
    pub raised_at_unix_ms: i64,
    pub incident_duration_ms: i64,
    pub processed_late: u64,
    /// Dead letters waiting (a dead-letter alert).
    pub dead_letters: u64,
    pub message: String,
}

/// Prints the status; fails (exit code 1) only when NATS is unreachable.
pub async fn run(settings: &Settings, as_json: bool) -> anyhow::Result<ExitCode> {
    let launcher = settings.launcher()?;
    let status = match super::connect_nats(settings).await {
        Ok(nats) => gather(&launcher, &nats).await,
        Err(error) => {
            Status { services: services(&launcher), nats_error: Some(format!("{error:#}")), ..Status::default() }
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&render_json(&status))?);
    } else {
        print!("{}", render_text(&status, super::is_terminal(), tracehop_telemetry::now_unix_ms()));
    }
    Ok(if status.nats_error.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Services from the pid files, consumers and alerts from the sentinel or,
/// when it does not answer, from JetStream.
pub async fn gather(launcher: &Launcher, nats: &async_nats::Client) -> Status {
    let mut status = gather_consumers(launcher, nats).await;
    let js = jetstream::new(nats.clone());
    mark_leaders(&mut status.services, &js).await;
    let reports = tracehop_telemetry::health::read_reports(&js).await.unwrap_or_default();
    Status { traces: trace_stores(&js).await, spans: span_pipelines(&reports), ..status }
}

async fn gather_consumers(launcher: &Launcher, nats: &async_nats::Client) -> Status {
    let services = services(launcher);
    let request = SentinelStatusRequest {};
    let answer: Result<SentinelStatusReply, RequestError> =
        tracehop_messaging::request(nats, subjects::SENTINEL_STATUS, &request, SENTINEL_TIMEOUT).await;
    match answer {
        Ok(reply) => Status {
            services,
            consumers: reply.consumers.iter().map(ConsumerStatus::from).collect(),
            alerts: reply.open_alerts.iter().map(AlertStatus::from).collect(),
            sentinel: true,
            deadline_ms: Some(reply.deadline_ms),
            ..Status::default()
        },
        Err(error) => {
            let js = jetstream::new(nats.clone());
            Status {
                services,
                consumers: consumers_from_jetstream(&js).await,
                sentinel_error: match error {
                    RequestError::NoResponders { .. } => None,
                    other => Some(other.to_string()),
                },
                ..Status::default()
            }
        }
    }
}

/// Every process the launcher runs (each copy of each service), plus any
/// other copy still running, up when its pid file names a live process of
/// that service; in start order.
pub fn services(launcher: &Launcher) -> Vec<ServiceStatus> {
    let mut processes = launcher.processes();
    processes.extend(launcher.running().into_iter().map(|(process, _)| process));
    processes.sort_by_key(|p| (Service::ALL.iter().position(|s| *s == p.service), p.number));
    processes.dedup();
    processes
        .into_iter()
        .map(|process| {
            let pid = launcher.running_pid(&process.name());
            ServiceStatus {
                name: process.name(),
                service: process.service.name().to_string(),
                role: None,
                state: if pid.is_some() { "up" } else { "down" }.to_string(),
                pid,
                version: pid.map(|_| env!("CARGO_PKG_VERSION").to_string()),
            }
        })
        .collect()
}

/// Marks the copies of each service that elects a leader as `leader` or
/// `standby`, from who holds its lease.
async fn mark_leaders(services: &mut [ServiceStatus], js: &jetstream::Context) {
    let Ok(store) = js.get_key_value(tracehop_messaging::lease::BUCKET).await else { return };
    for service in Service::ALL.into_iter().filter(|s| s.instances() == Instances::Leader) {
        let holder = tracehop_messaging::lease::holder(&store, service.name()).await;
        for status in services.iter_mut().filter(|s| s.service == service.name() && s.state == "up") {
            status.role = Some(if holder.as_deref() == Some(&status.name) { "leader" } else { "standby" }.to_string());
        }
    }
}

/// Every expected consumer, read from JetStream and judged by the same
/// function as the sentinel's: what the sentinel would say, minus
/// dead-letter reasons. A consumer that nobody pulls is read again after
/// the down-after period, since down means no progress over that time; a
/// durable that does not exist is `missing`, one that cannot be read
/// `unknown`.
pub async fn consumers_from_jetstream(js: &jetstream::Context) -> Vec<ConsumerStatus> {
    let thresholds = Thresholds::default();
    let specs = topology::expected_consumers();
    let mut histories: Vec<History> = vec![History::default(); specs.len()];
    let started = Instant::now();
    let mut readings = Vec::with_capacity(specs.len());
    for (spec, history) in specs.iter().zip(&mut histories) {
        let reading = health::read(js, spec).await;
        if let Ok(reading) = &reading {
            health::judge(reading, history, &thresholds, started);
        }
        readings.push(reading);
    }
    if readings.iter().any(|reading| reading.as_ref().is_ok_and(|r| r.pullers == 0)) {
        tokio::time::sleep(thresholds.down_after).await;
        for (spec, reading) in specs.iter().zip(&mut readings) {
            if reading.as_ref().is_ok_and(|r| r.pullers == 0) {
                *reading = health::read(js, spec).await;
            }
        }
    }
    let now = Instant::now();
    specs
        .iter()
        .zip(readings)
        .zip(&mut histories)
        .map(|((spec, reading), history)| {
            let mut status = ConsumerStatus {
                stream: spec.stream.to_string(),
                consumer: spec.durable.to_string(),
                ..ConsumerStatus::default()
            };
            let judged = match &reading {
                Ok(reading) => {
                    status.fill(reading);
                    health::judge(reading, history, &thresholds, now)
                }
                Err(error) if error.is_missing() => health::Health::missing(),
                Err(error) => health::Health::unknown(tracehop_telemetry::error_chain(error)),
            };
            status.state = health::state_name(judged.state as i32).to_string();
            status.reason = judged.reason;
            status
        })
        .collect()
}

impl ConsumerStatus {
    fn fill(&mut self, reading: &Reading) {
        self.active_pullers = reading.pullers;
        self.pending = reading.pending;
        self.ack_pending = reading.ack_pending;
        self.oldest_unprocessed_age_ms = reading.oldest_unprocessed_age.map_or(0, |age| age.as_millis() as i64);
        self.redeliveries = reading.redeliveries;
        self.dead_letters = reading.dead_letters;
    }
}

impl From<&ConsumerHealth> for ConsumerStatus {
    fn from(health: &ConsumerHealth) -> Self {
        Self {
            stream: health.stream.clone(),
            consumer: health.consumer.clone(),
            state: health::state_name(health.health).to_string(),
            reason: health.reason.clone(),
            active_pullers: health.active_pullers,
            pending: health.pending,
            ack_pending: health.ack_pending,
            oldest_unprocessed_age_ms: health.oldest_unprocessed_age_ms,
            redeliveries: health.redeliveries,
            dead_letters: health.dead_letters,
            dead_letter_reasons: health.dead_letter_reasons.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

impl From<&tracehop_proto::v1::Alert> for AlertStatus {
    fn from(alert: &tracehop_proto::v1::Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            kind: alert_kind_name(alert.kind),
            stream: alert.stream.clone(),
            consumer: alert.consumer.clone(),
            backlog: alert.backlog,
            oldest_unprocessed_age_ms: alert.oldest_unprocessed_age_ms,
            raised_at_unix_ms: alert.raised_at_unix_ms,
            incident_duration_ms: alert.incident_duration_ms,
            processed_late: alert.processed_late,
            dead_letters: alert.dead_letters,
            message: alert.message.clone(),
        }
    }
}

/// `consumer_down` for `ALERT_KIND_CONSUMER_DOWN`; `unknown` for a value
/// this build does not know.
fn alert_kind_name(kind: i32) -> String {
    match AlertKind::try_from(kind) {
        Ok(AlertKind::Unspecified) | Err(_) => "unknown".to_string(),
        Ok(kind) => kind.as_str_name().trim_start_matches("ALERT_KIND_").to_ascii_lowercase(),
    }
}

/// The status for `--json`: `{"services", "consumers", "alerts", "sentinel"}`
/// (plus `sentinel_error`, `deadline_ms` or `nats_error` when they apply).
pub fn render_json(status: &Status) -> Value {
    serde_json::to_value(status).unwrap_or(Value::Null)
}

/// The status for people: a table of services, a table of consumers, then
/// the open alerts (or why there are none). `now_unix_ms` dates the alerts;
/// `color` paints what is down red and what is late yellow.
pub fn render_text(status: &Status, color: bool, now_unix_ms: i64) -> String {
    let mut out = String::new();
    out.push_str("services\n");
    let rows: Vec<(Vec<String>, Option<&str>)> = status
        .services
        .iter()
        .map(|s| {
            let state = match &s.role {
                Some(role) => format!("{} ({})", clean(&s.state), clean(role)),
                None => clean(&s.state),
            };
            let cells = vec![
                clean(&s.name),
                state,
                s.pid.map_or("-".to_string(), |p| p.to_string()),
                s.version.as_deref().map_or("-".to_string(), clean),
            ];
            (cells, (s.state != "up").then_some(RED))
        })
        .collect();
    let columns = [("service", Left), ("state", Left), ("pid", Right), ("version", Left)];
    table(&mut out, &columns, &rows, color);

    if !status.spans.is_empty() {
        out.push('\n');
        out.push_str("span pipelines (last report of each instance)\n");
        let rows: Vec<(Vec<String>, Option<&str>)> = status
            .spans
            .iter()
            .map(|p| {
                let cells = vec![
                    clean(&p.service),
                    p.instances.to_string(),
                    p.exported.to_string(),
                    p.lost().to_string(),
                    p.queued.to_string(),
                ];
                (cells, (p.lost() > 0).then_some(RED))
            })
            .collect();
        let columns =
            [("service", Left), ("instances", Right), ("spans sent", Right), ("lost", Right), ("queued", Right)];
        table(&mut out, &columns, &rows, color);
        for p in status.spans.iter().filter(|p| p.lost() > 0) {
            let line = format!(
                "  {}: {} spans lost ({} at a full queue, {} refused by the destination): its traces have holes",
                clean(&p.service),
                p.lost(),
                p.dropped_queue_full,
                p.failed_export
            );
            push_line(&mut out, &line, color.then_some(RED));
        }
    }

    out.push('\n');
    if let Some(error) = &status.nats_error {
        let _ = writeln!(out, "consumers: unknown, NATS is unreachable: {}", clean(error));
        return out;
    }
    let source = match (status.sentinel, status.deadline_ms) {
        (true, Some(deadline)) if deadline > 0 => format!("from the sentinel; late after {}", age(deadline)),
        (true, _) => "from the sentinel".to_string(),
        (false, _) => "read from JetStream".to_string(),
    };
    let _ = writeln!(out, "consumers ({source})");
    let rows: Vec<(Vec<String>, Option<&str>)> = status
        .consumers
        .iter()
        .map(|c| {
            let cells = vec![
                clean(&c.consumer),
                clean(&c.stream),
                clean(&c.state),
                c.active_pullers.to_string(),
                c.pending.to_string(),
                c.ack_pending.to_string(),
                age(c.oldest_unprocessed_age_ms),
                c.redeliveries.to_string(),
                c.dead_letters.to_string(),
            ];
            let paint = match c.state.as_str() {
                "ok" => None,
                "lagging" => Some(YELLOW),
                _ => Some(RED),
            };
            (cells, paint)
        })
        .collect();
    let columns = [
        ("consumer", Left),
        ("stream", Left),
        ("state", Left),
        ("pull reqs", Right),
        ("pending", Right),
        ("ack pending", Right),
        ("oldest", Right),
        ("redelivered", Right),
        ("dead letters", Right),
    ];
    table(&mut out, &columns, &rows, color);
    // Why each consumer that is not ok is in its state.
    for c in status.consumers.iter().filter(|c| !c.reason.is_empty()) {
        let line = format!("  {}: {}", clean(&c.consumer), clean(&c.reason));
        push_line(&mut out, &line, color.then_some(DIM));
    }

    out.push('\n');
    if !status.traces.is_empty() {
        out.push_str("traces\n");
        let mib = |bytes: f64| format!("{:.1} MiB", bytes / (1024.0 * 1024.0));
        let rows: Vec<(Vec<String>, Option<&str>)> = status
            .traces
            .iter()
            .map(|t| {
                let cells = vec![
                    match t.stream.as_str() {
                        tracehop_spanfeed::STREAM => "span feed (memory)".to_string(),
                        _ => "kept traces (disk)".to_string(),
                    },
                    format!("{} of {}", mib(t.bytes as f64), mib(t.max_bytes.max(0) as f64)),
                    t.oldest_age_ms.map_or("-".to_string(), age),
                    format!("{:.0}/s, {}/s", t.messages_per_second, mib(t.bytes_per_second)),
                    t.reach_ms.map_or("-".to_string(), age),
                ];
                (cells, None)
            })
            .collect();
        let columns = [
            ("store", Left),
            ("used of limit", Right),
            ("oldest", Right),
            ("coming in", Right),
            ("reaches back", Right),
        ];
        table(&mut out, &columns, &rows, color);
        out.push('\n');
    }
    if !status.sentinel {
        match &status.sentinel_error {
            None => out.push_str("sentinel not running: no alerts\n"),
            Some(error) => {
                let _ = writeln!(out, "sentinel not answering ({}): no alerts", clean(error));
            }
        }
        return out;
    }
    if status.alerts.is_empty() {
        out.push_str("alerts: none\n");
        return out;
    }
    let _ = writeln!(out, "alerts ({})", status.alerts.len());
    for alert in &status.alerts {
        let what = if alert.kind == alert_kind_name(AlertKind::ConsumerDeadLetters as i32) {
            format!("{} dead letters", alert.dead_letters)
        } else {
            format!("backlog {}, oldest {}", alert.backlog, age(alert.oldest_unprocessed_age_ms))
        };
        let mut line = format!(
            "  {:<18} {}/{}  {what}",
            clean(&alert.kind).replace('_', " "),
            clean(&alert.stream),
            clean(&alert.consumer),
        );
        if alert.raised_at_unix_ms > 0 {
            let _ = write!(line, ", raised {} ago", age((now_unix_ms - alert.raised_at_unix_ms).max(1)));
        }
        if !alert.message.is_empty() {
            let _ = write!(line, ": {}", clean(&alert.message));
        }
        push_line(&mut out, &line, color.then_some(RED));
    }
    out
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Writes a table indented by two spaces, columns two spaces apart, each as
/// wide as its widest cell; a row's paint colours the whole row.
fn table(out: &mut String, columns: &[(&str, Align)], rows: &[(Vec<String>, Option<&str>)], color: bool) {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (heading, _))| {
            rows.iter().map(|(cells, _)| cells[i].chars().count()).chain([heading.chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(columns)
            .zip(&widths)
            .map(|((cell, (_, align)), width)| {
                let fill = " ".repeat(width.saturating_sub(cell.chars().count()));
                match align {
                    Left => format!("{cell}{fill}"),
                    Right => format!("{fill}{cell}"),
                }
            })
            .collect();
        format!("  {}", padded.join("  ")).trim_end().to_string()
    };
    push_line(out, &line(columns.iter().map(|(heading, _)| *heading).collect()), color.then_some(DIM));
    for (cells, paint) in rows {
        push_line(out, &line(cells.iter().map(String::as_str).collect()), paint.filter(|_| color));
    }
}

fn push_line(out: &mut String, line: &str, paint: Option<&str>) {
    match paint {
        Some(code) => {
            let _ = writeln!(out, "{code}{line}{RESET}");
        }
        None => {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// A duration in milliseconds for people: `-` for none, `850ms`, `12.3s`,
/// `4m05s`, `2h10m`, `3d04h`.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let secs = ms / 1000;
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600)
    }
}
