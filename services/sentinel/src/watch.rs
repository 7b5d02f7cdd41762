//! The per-consumer state machine.
//!
//! Every `interval` the sentinel reads each expected consumer's state from
//! JetStream (pull requests waiting, pending, ack pending, ack floor) and
//! the oldest event it has not acknowledged (a direct get from the stream).
//!
//! - nobody pulling for `down_after` → **down**; oldest unprocessed event
//!   older than `deadline` → **lagging**. Either opens an incident and
//!   raises an alert.
//! - while an incident is open, each event that becomes late gets a failure
//!   span `missed by <consumer>` in its own trace, as a child of its
//!   producer span (at most `max_missed_spans` per incident; the rest are
//!   counted).
//! - once the consumer pulls again and has nothing pending, the incident
//!   closes with a recovery alert and a span that say how long it lasted
//!   and how many events were processed late.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::{ConsumerSpec, headers};
use tracehop_proto::subjects;
use tracehop_proto::v1::{Alert, AlertKind, ConsumerHealth};
use tracehop_telemetry::record_failure;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::Config;
use crate::{SharedView, dead_letters};

/// Most producer links on a recovery span.
const MAX_RECOVERY_LINKS: usize = 32;
/// Most events examined per consumer and check.
const MAX_WALK: usize = 500;

/// Watches the expected consumers.
pub struct Watcher {
    js: jetstream::Context,
    nats: async_nats::Client,
    config: Config,
    specs: Vec<ConsumerSpec>,
}

/// What the sentinel remembers of one consumer between checks.
struct ConsumerWatch {
    spec: ConsumerSpec,
    no_pullers_since: Option<Instant>,
    incident: Option<Incident>,
    dead_letters: dead_letters::Tally,
}

/// An open incident: a consumer down or lagging.
struct Incident {
    alert: Alert,
    started: Instant,
    /// The last stream sequence examined for lateness.
    last_examined: u64,
    /// Events seen late during the incident (stream sequences).
    late: BTreeSet<u64>,
    reported: usize,
    unreported: u64,
    producers: Vec<SpanContext>,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn age_of(published: time::OffsetDateTime) -> Duration {
    let age = time::OffsetDateTime::now_utc() - published;
    Duration::try_from(age).unwrap_or_default()
}

impl Watcher {
    pub fn new(js: jetstream::Context, nats: async_nats::Client, config: Config, specs: Vec<ConsumerSpec>) -> Self {
        Self { js, nats, config, specs }
    }

    /// Checks every consumer each interval and publishes the view, until
    /// `shutdown`.
    pub async fn run(self, view: SharedView, shutdown: CancellationToken) {
        let mut watches: Vec<ConsumerWatch> = self
            .specs
            .iter()
            .map(|spec| ConsumerWatch {
                spec: spec.clone(),
                no_pullers_since: None,
                incident: None,
                dead_letters: dead_letters::Tally::default(),
            })
            .collect();
        loop {
            let mut consumers = Vec::with_capacity(watches.len());
            for watch in &mut watches {
                match self.check(watch).await {
                    Ok(health) => consumers.push(health),
                    Err(error) => {
                        tracing::warn!(consumer = watch.spec.durable, error = %error, "failed to check a consumer");
                    }
                }
            }
            {
                let mut view = view.lock().await;
                view.consumers = consumers;
                view.open_alerts =
                    watches.iter().filter_map(|w| w.incident.as_ref().map(|i| i.alert.clone())).collect();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    async fn check(&self, watch: &mut ConsumerWatch) -> anyhow::Result<ConsumerHealth> {
        let spec = watch.spec.clone();
        // The consumer's state is what is read each check; the stream's own
        // info is not needed, and get_consumer already fetched the consumer's.
        let stream = self.js.get_stream_no_info(spec.stream).await?;
        let consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(spec.durable).await.map_err(|e| anyhow::anyhow!("consumer {}: {e}", spec.durable))?;
        let info = consumer.cached_info().clone();
        let filter = spec.filter_subjects.first().cloned().unwrap_or_else(|| ">".to_string());
        let backlog = info.num_pending + info.num_ack_pending as u64;

        let oldest_age = if backlog == 0 {
            None
        } else {
            stream
                .direct_get_next_for_subject(filter.clone(), Some(info.ack_floor.stream_sequence + 1))
                .await
                .ok()
                .map(|message| age_of(message.time))
        };
        if info.num_waiting == 0 {
            watch.no_pullers_since.get_or_insert_with(Instant::now);
        } else {
            watch.no_pullers_since = None;
        }
        let down = watch.no_pullers_since.is_some_and(|since| since.elapsed() >= self.config.down_after);
        let lagging = oldest_age.is_some_and(|age| age >= self.config.deadline);
        let oldest_ms = oldest_age.map_or(0, |age| age.as_millis() as i64);

        match (&mut watch.incident, down || lagging) {
            (None, true) => {
                let kind = if down { AlertKind::ConsumerDown } else { AlertKind::ConsumerLagging };
                let why = if down { "nobody is pulling" } else { "its oldest unprocessed event is late" };
                let alert = Alert {
                    alert_id: uuid::Uuid::now_v7().to_string(),
                    kind: kind as i32,
                    stream: spec.stream.to_string(),
                    consumer: spec.durable.to_string(),
                    backlog,
                    oldest_unprocessed_age_ms: oldest_ms,
                    raised_at_unix_ms: now_unix_ms(),
                    message: format!(
                        "consumer {} is {}: {why}; {backlog} events waiting, oldest {:.1} s",
                        spec.durable,
                        if down { "down" } else { "lagging" },
                        oldest_ms as f64 / 1000.0
                    ),
                    ..Default::default()
                };
                tracing::warn!(
                    consumer = spec.durable,
                    backlog,
                    oldest_unprocessed_ms = oldest_ms,
                    alert.kind = kind.as_str_name(),
                    "{}",
                    alert.message
                );
                self.publish_alert(&alert).await;
                watch.incident = Some(Incident {
                    alert,
                    started: Instant::now(),
                    last_examined: info.ack_floor.stream_sequence,
                    late: BTreeSet::new(),
                    reported: 0,
                    unreported: 0,
                    producers: Vec::new(),
                });
            }
            (Some(incident), true) => {
                incident.alert.backlog = backlog;
                incident.alert.oldest_unprocessed_age_ms = oldest_ms;
                if down && incident.alert.kind != AlertKind::ConsumerDown as i32 {
                    incident.alert.kind = AlertKind::ConsumerDown as i32;
                }
            }
            (Some(_), false) if backlog == 0 => {
                if let Some(incident) = watch.incident.take() {
                    self.recover(&spec, incident).await;
                }
            }
            _ => {}
        }
        if let Some(incident) = &mut watch.incident {
            let state = if down { "down" } else { "lagging" };
            self.report_late(&stream, &spec, &filter, info.ack_floor.stream_sequence, state, incident).await;
        }

        watch.dead_letters.refresh(&self.js, spec.durable).await;
        Ok(ConsumerHealth {
            stream: spec.stream.to_string(),
            consumer: spec.durable.to_string(),
            active_pullers: info.num_waiting as u64,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            oldest_unprocessed_age_ms: oldest_ms,
            redeliveries: redeliveries(&stream, &filter, &info).await,
            dead_letters: watch.dead_letters.count,
            dead_letter_reasons: watch.dead_letters.reasons.clone(),
            state: if down {
                "down"
            } else if lagging {
                "lagging"
            } else {
                "ok"
            }
            .to_string(),
        })
    }

    /// Gives each event that became late since the last check its failure
    /// span, oldest first.
    async fn report_late(
        &self,
        stream: &Stream<()>,
        spec: &ConsumerSpec,
        filter: &str,
        ack_floor: u64,
        state: &str,
        incident: &mut Incident,
    ) {
        let mut next = incident.last_examined.max(ack_floor) + 1;
        for _ in 0..MAX_WALK {
            let Ok(message) = stream.direct_get_next_for_subject(filter.to_string(), Some(next)).await else { break };
            let age = age_of(message.time);
            if age < self.config.deadline {
                // Later events are younger still.
                break;
            }
            incident.last_examined = message.sequence;
            next = message.sequence + 1;
            incident.late.insert(message.sequence);
            let producer = headers::extract(Some(&message.headers));
            if incident.producers.len() < MAX_RECOVERY_LINKS {
                incident.producers.push(producer.span().span_context().clone());
            }
            if incident.reported >= self.config.max_missed_spans {
                incident.unreported += 1;
                continue;
            }
            incident.reported += 1;
            let message_id = headers::get(Some(&message.headers), headers::MESSAGE_ID).unwrap_or_default();
            let span = tracing::info_span!(
                "sentinel.missed",
                otel.name = %format!("missed by {}", spec.durable),
                otel.kind = "internal",
                messaging.system = "nats",
                messaging.destination.name = %message.subject,
                messaging.consumer.group.name = spec.durable,
                messaging.message.id = %message_id,
                messaging.nats.stream.sequence = message.sequence as i64,
                tracehop.consumer.state = state,
                tracehop.delay_ms = age.as_millis() as i64,
                tracehop.incident.id = %incident.alert.alert_id,
            );
            let _ = span.set_parent(producer);
            record_failure(
                &span,
                &format!("consumer_{state}"),
                &format!(
                    "{} has not processed this event {:.1} s after it was published ({state})",
                    spec.durable,
                    age.as_secs_f64()
                ),
            );
        }
    }

    /// Closes an incident: a recovery alert, and a span linked to the
    /// producers of (some of) the events it processed late.
    async fn recover(&self, spec: &ConsumerSpec, incident: Incident) {
        let duration = incident.started.elapsed();
        let processed_late = incident.late.len() as u64;
        let alert = Alert {
            alert_id: incident.alert.alert_id.clone(),
            kind: AlertKind::ConsumerRecovered as i32,
            stream: spec.stream.to_string(),
            consumer: spec.durable.to_string(),
            backlog: 0,
            raised_at_unix_ms: now_unix_ms(),
            incident_duration_ms: duration.as_millis() as i64,
            processed_late,
            message: format!(
                "consumer {} recovered after {:.1} s; {processed_late} events were processed late",
                spec.durable,
                duration.as_secs_f64()
            ),
            ..Default::default()
        };
        let span = tracing::info_span!(
            "sentinel.recovered",
            otel.name = %format!("{} recovered", spec.durable),
            otel.kind = "internal",
            messaging.consumer.group.name = spec.durable,
            tracehop.incident.id = %alert.alert_id,
            tracehop.incident.duration_ms = alert.incident_duration_ms,
            tracehop.incident.processed_late = processed_late as i64,
            tracehop.incident.unreported_missed = incident.unreported as i64,
        );
        for producer in incident.producers {
            span.add_link(producer);
        }
        let _guard = span.enter();
        tracing::info!(
            consumer = spec.durable,
            processed_late,
            duration_ms = alert.incident_duration_ms,
            "{}",
            alert.message
        );
        drop(_guard);
        self.publish_alert(&alert).await;
    }

    async fn publish_alert(&self, alert: &Alert) {
        let subject = format!("{}.{}", subjects::ALERTS_PREFIX, alert.consumer);
        if let Err(error) = self.nats.publish(subject, alert.encode_to_vec().into()).await {
            tracing::warn!(error = %error, "failed to publish an alert");
        }
    }
}

/// Deliveries beyond the first since the consumer was created: every
/// delivery advances the consumer sequence, and every event the filter takes
/// that is no longer pending was delivered at least once.
async fn redeliveries(stream: &Stream<()>, filter: &str, info: &jetstream::consumer::Info) -> u64 {
    use futures::StreamExt as _;
    let matching = match stream.info_with_subjects(filter.to_string()).await {
        Ok(subjects) => {
            subjects.map(|entry| entry.map(|(_, n)| n as u64).unwrap_or(0)).fold(0, |a, n| async move { a + n }).await
        }
        Err(_) => return 0,
    };
    let delivered_once = matching.saturating_sub(info.num_pending);
    info.delivered.consumer_sequence.saturating_sub(delivered_once)
}
