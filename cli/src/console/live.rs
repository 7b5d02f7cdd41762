//! The parts of the pages that keep themselves current, and the tasks that
//! keep them so. Each part is held as rendered HTML under a name in
//! [`Sections`]; a page includes the current HTML when it is served, and
//! `/events` sends each part again, as a server-sent event, whenever it
//! changes.
//!
//! - checkouts: the gateway's checkout spans as they arrive on the span feed
//!   (the same feed and the same notion of a checkout as `slowest`), over
//!   the last minute; seeded from the feed at start.
//! - services, consumers and open alerts: [`crate::commands::status::gather`],
//!   what `tracehop status` shows, read every second.
//! - the alert log: the sentinel's alerts as they are published.
//! - scenarios: the scenario bucket, watched.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracehop_launcher::Launcher;
use tracehop_proto::v1::Alert;
use tracehop_spanfeed::{SpanRecord, SpanStatus};

use super::view::{self, Checkout};
use crate::analysis;
use crate::commands::status::{self, AlertStatus};

/// The window of the live checkout figures.
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// How often the status is read again, and a broken subscription retried.
const REFRESH: Duration = Duration::from_secs(1);
/// How often the checkout figures are drawn again.
const REDRAW: Duration = Duration::from_millis(500);
/// Alerts the log keeps.
const ALERT_LOG: usize = 50;

/// One part's HTML and how often it has changed.
#[derive(Clone, Debug, Default)]
pub(super) struct Part {
    pub(super) version: u64,
    pub(super) html: Arc<str>,
}

/// Every live part by name, shared by the tasks that write them and the
/// pages and event streams that read them.
#[derive(Clone)]
pub(super) struct Sections {
    parts: Arc<watch::Sender<BTreeMap<&'static str, Part>>>,
}

impl Default for Sections {
    fn default() -> Self {
        Self { parts: Arc::new(watch::Sender::new(BTreeMap::new())) }
    }
}

impl Sections {
    /// Sets a part; the event streams hear of it only if it changed.
    pub(super) fn set(&self, name: &'static str, html: String) {
        self.parts.send_if_modified(|parts| {
            let part = parts.entry(name).or_default();
            if *part.html == *html {
                return false;
            }
            *part = Part { version: part.version + 1, html: html.into() };
            true
        });
    }

    /// A part's HTML now; empty before its task first wrote it.
    pub(super) fn get(&self, name: &str) -> String {
        self.parts.borrow().get(name).map(|part| part.html.to_string()).unwrap_or_default()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<BTreeMap<&'static str, Part>> {
        self.parts.subscribe()
    }
}

/// Starts the tasks that keep the parts current; they end with `shutdown`.
pub(super) fn start(
    tasks: &mut JoinSet<()>,
    sections: &Sections,
    nats: &async_nats::Client,
    launcher: &Launcher,
    shutdown: &CancellationToken,
) {
    let js = jetstream::new(nats.clone());
    tasks.spawn(until(shutdown, checkouts(js.clone(), sections.clone())));
    tasks.spawn(until(shutdown, health(nats.clone(), launcher.clone(), sections.clone())));
    tasks.spawn(until(shutdown, alerts(nats.clone(), sections.clone())));
    tasks.spawn(until(shutdown, scenarios(js, sections.clone(), shutdown.clone())));
}

/// `task`, ended early by `shutdown`.
fn until(
    shutdown: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = shutdown.clone();
    async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = task => {}
        }
    }
}

/// The checkouts of the last minute, by the gateway's root spans.
#[derive(Default)]
struct Window {
    recent: VecDeque<Checkout>,
}

impl Window {
    fn add(&mut self, span: &SpanRecord) {
        let Some(summary) = analysis::summarize(std::slice::from_ref(span)) else { return };
        self.recent.push_back(Checkout {
            trace_id: summary.trace_id,
            end_unix_nano: span.end_unix_nano,
            duration_nanos: summary.duration_nanos,
            http_status: summary.http_status,
            failed: span.status == SpanStatus::Error || summary.http_status.is_some_and(|s| s >= 500),
        });
    }

    fn prune(&mut self, now_unix_nano: u64) {
        let oldest = now_unix_nano.saturating_sub(WINDOW.as_nanos() as u64);
        self.recent.retain(|c| c.end_unix_nano >= oldest);
    }
}

fn now_unix_nano() -> u64 {
    tracehop_telemetry::now_unix_ms().max(0) as u64 * 1_000_000
}

async fn checkouts(js: jetstream::Context, sections: Sections) {
    let window = Arc::new(Mutex::new(Window::default()));
    // What the feed already holds of the last minute.
    if let Ok(scan) = tracehop_spanfeed::scan_feed(&js, Some(WINDOW)).await {
        let mut window = window.lock().expect("window lock");
        for (_, trace_id) in analysis::checkouts_in(&scan, 0) {
            for span in scan.decode_service(trace_id, analysis::GATEWAY) {
                window.add(&span);
            }
        }
    }
    let render = {
        let window = window.clone();
        let sections = sections.clone();
        move || {
            let now = now_unix_nano();
            let mut window = window.lock().expect("window lock");
            window.prune(now);
            let recent: Vec<Checkout> = window.recent.iter().cloned().collect();
            drop(window);
            sections.set("checkouts", view::checkouts(&recent, now, WINDOW.as_secs()));
        }
    };
    render();
    let ticker = async move {
        loop {
            tokio::time::sleep(REDRAW).await;
            render();
        }
    };
    let follow = async {
        loop {
            match tracehop_spanfeed::watch(&js, Some(analysis::GATEWAY)).await {
                Ok(spans) => {
                    futures::pin_mut!(spans);
                    // Drawn by the ticker: under load, once per span would
                    // sort the whole minute hundreds of times a second.
                    while let Some(span) = spans.next().await {
                        if let Ok(span) = span {
                            window.lock().expect("window lock").add(&span);
                        }
                    }
                }
                Err(error) => tracing_note("span feed", &error.to_string()),
            }
            tokio::time::sleep(REFRESH).await;
        }
    };
    tokio::join!(ticker, follow);
}

/// Services, consumers and open alerts, as `tracehop status` reads them.
async fn health(nats: async_nats::Client, launcher: Launcher, sections: Sections) {
    loop {
        let status = status::gather(&launcher, &nats).await;
        let now = tracehop_telemetry::now_unix_ms();
        sections.set("consumers", view::consumers(&status));
        sections.set("alerts", view::open_alerts(&status, now));
        sections.set("alert-count", view::alert_count(&status));
        tokio::time::sleep(REFRESH).await;
    }
}

/// The sentinel's alerts as they are published, raised and recovered.
async fn alerts(nats: async_nats::Client, sections: Sections) {
    let mut log: VecDeque<AlertStatus> = VecDeque::new();
    sections.set("alert-log", view::alert_log(&[]));
    loop {
        match nats.subscribe(format!("{}.>", tracehop_proto::subjects::ALERTS_PREFIX)).await {
            Ok(mut subscriber) => {
                while let Some(message) = subscriber.next().await {
                    let Ok(alert) = Alert::decode(message.payload.as_ref()) else { continue };
                    log.push_back(AlertStatus::from(&alert));
                    while log.len() > ALERT_LOG {
                        log.pop_front();
                    }
                    let all: Vec<AlertStatus> = log.iter().cloned().collect();
                    sections.set("alert-log", view::alert_log(&all));
                }
            }
            Err(error) => tracing_note("alerts", &error.to_string()),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// The scenario switches, as the services see them.
async fn scenarios(js: jetstream::Context, sections: Sections, shutdown: CancellationToken) {
    loop {
        match tracehop_scenarios::watch(&js, shutdown.child_token()).await {
            Ok(mut switches) => loop {
                let all: Vec<_> = tracehop_scenarios::Scenario::ALL.into_iter().map(|s| (s, switches.get(s))).collect();
                sections.set("scenarios", view::scenarios(&all));
                if !switches.changed().await {
                    break;
                }
            },
            Err(error) => {
                tracing_note("scenarios", &error.to_string());
                sections
                    .set("scenarios", view::message_fragment(&format!("the scenario bucket cannot be read: {error}")));
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// A live part that cannot be read says so on the console's standard error;
/// the page keeps its last good state.
fn tracing_note(what: &str, error: &str) {
    eprintln!("console: {what}: {error}");
}
