//! The per-consumer state machine, built on the one health judgement,
//! [`tracehop_messaging::health::judge`].
//!
//! Every `interval` the sentinel reads each expected consumer from
//! JetStream ([`health::read`]) and judges it against its history:
//!
//! - **down** (nobody pulling and nothing moving for `down_after`) or
//!   **lagging** (moving, but its oldest unprocessed event older than
//!   `deadline`) opens an incident and raises an alert.
//! - while an incident is open, each event that becomes late gets a failure
//!   span `missed by <consumer>` in its own trace, as a child of its
//!   producer span (at most `max_missed_spans` per incident; the rest are
//!   counted).
//! - once it is neither and has nothing pending, the incident closes with a
//!   recovery alert and a span that say how long it lasted, how many of its
//!   late events were processed and how many were dead-lettered instead.
//! - dead letters waiting (**failing**) raise one alert per consumer that
//!   names the count and the reasons, and stays open until they are gone,
//!   redriven or discarded; then a `dead_letters_cleared` alert closes it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracehop_messaging::dead_letters::{self, Summary};
use tracehop_messaging::health::{self, History, Thresholds};
use tracehop_messaging::{ConsumerSpec, headers};
use tracehop_proto::subjects;
use tracehop_proto::v1::{Alert, AlertKind, ConsumerHealth};
use tracehop_telemetry::{now_unix_ms, record_failure};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::SharedView;
use crate::config::Config;

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
    history: History,
    incident: Option<Incident>,
    /// The open dead-letter alert, if any.
    dead_letter_alert: Option<Alert>,
    /// The dead letters as last read (re-read when their count changes).
    dead_letters: Summary,
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

/// `context` with its span marked sampled. A parent-based sampler follows
/// the parent's flag, and a producer whose trace was not sampled at the
/// head would take the sentinel's failure span down with it; the sentinel
/// decides to record a missed event on its own (the keeper keeps such
/// traces whole). Trace and span ids, and so the place in the trace, stay.
fn sampled(context: &opentelemetry::Context) -> opentelemetry::Context {
    let parent = context.span().span_context().clone();
    if !parent.is_valid() || parent.is_sampled() {
        return context.clone();
    }
    let forced = SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        parent.trace_flags().with_sampled(true),
        parent.is_remote(),
        parent.trace_state().clone(),
    );
    context.with_remote_span_context(forced)
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
                history: History::default(),
                incident: None,
                dead_letter_alert: None,
                dead_letters: Summary::default(),
            })
            .collect();
        loop {
            let mut consumers = Vec::with_capacity(watches.len());
            for watch in &mut watches {
                match self.check(watch).await {
                    Ok(health) => consumers.push(health),
                    Err(error) => {
                        tracing::warn!(consumer = watch.spec.durable, error = %format!("{error:#}"), "failed to check a consumer");
                        // Still listed, so that status shows every expected
                        // consumer: missing when the durable does not exist.
                        let missing =
                            error.downcast_ref::<health::ReadError>().is_some_and(health::ReadError::is_missing);
                        let judged = if missing {
                            health::Health::missing()
                        } else {
                            health::Health::unknown(format!("cannot be read: {error:#}"))
                        };
                        consumers.push(ConsumerHealth {
                            stream: watch.spec.stream.to_string(),
                            consumer: watch.spec.durable.to_string(),
                            health: judged.state as i32,
                            reason: judged.reason,
                            ..Default::default()
                        });
                    }
                }
            }
            {
                let mut view = view.lock().await;
                view.consumers = consumers;
                view.open_alerts = watches
                    .iter()
                    .flat_map(|w| {
                        w.incident.as_ref().map(|i| i.alert.clone()).into_iter().chain(w.dead_letter_alert.clone())
                    })
                    .collect();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds { deadline: self.config.deadline, down_after: self.config.down_after }
    }

    async fn check(&self, watch: &mut ConsumerWatch) -> anyhow::Result<ConsumerHealth> {
        let spec = watch.spec.clone();
        let reading = health::read(&self.js, &spec).await?;
        let judged = health::judge(&reading, &mut watch.history, &self.thresholds(), Instant::now());
        if reading.dead_letters != watch.dead_letters.count {
            match dead_letters::summarize(&self.js, spec.durable).await {
                Ok(summary) => watch.dead_letters = summary,
                Err(error) => tracing::warn!(consumer = spec.durable, error = %error, "failed to read dead letters"),
            }
        }
        let stream = self.js.get_stream_no_info(spec.stream).await?;
        let filter = spec.filter_subjects.first().cloned().unwrap_or_else(|| ">".to_string());
        let backlog = reading.backlog();
        let (down, lagging) = (judged.down, judged.lagging);
        let oldest_ms = reading.oldest_unprocessed_age.map_or(0, |age| age.as_millis() as i64);

        match (&mut watch.incident, down || lagging) {
            (None, true) => {
                let kind = if down { AlertKind::ConsumerDown } else { AlertKind::ConsumerLagging };
                let alert = Alert {
                    alert_id: uuid::Uuid::now_v7().to_string(),
                    kind: kind as i32,
                    stream: spec.stream.to_string(),
                    consumer: spec.durable.to_string(),
                    backlog,
                    oldest_unprocessed_age_ms: oldest_ms,
                    raised_at_unix_ms: now_unix_ms(),
                    message: format!(
                        "consumer {} is {}: {}",
                        spec.durable,
                        if down { "down" } else { "lagging" },
                        judged.reason
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
                    last_examined: reading.ack_floor,
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
                    self.recover(&spec, incident, &watch.dead_letters).await;
                }
            }
            _ => {}
        }
        if let Some(incident) = &mut watch.incident {
            let state = if down { "down" } else { "lagging" };
            self.report_late(&stream, &spec, &filter, reading.ack_floor, state, incident).await;
        }
        self.watch_dead_letters(&spec, &mut watch.dead_letter_alert, &watch.dead_letters).await;

        Ok(ConsumerHealth {
            stream: spec.stream.to_string(),
            consumer: spec.durable.to_string(),
            active_pullers: reading.pullers,
            pending: reading.pending,
            ack_pending: reading.ack_pending,
            oldest_unprocessed_age_ms: oldest_ms,
            redeliveries: reading.redeliveries,
            dead_letters: reading.dead_letters,
            dead_letter_reasons: watch.dead_letters.reasons.clone().into_iter().collect(),
            health: judged.state as i32,
            reason: judged.reason,
        })
    }

    /// Raises one alert when dead letters of a consumer wait, keeps it
    /// current while they do, and closes it once they are gone.
    async fn watch_dead_letters(&self, spec: &ConsumerSpec, open: &mut Option<Alert>, summary: &Summary) {
        let reasons =
            summary.reasons.iter().map(|(reason, n)| format!("{n} × {reason}")).collect::<Vec<_>>().join("; ");
        let message = format!(
            "consumer {} gave up on {} events: {reasons}; after a fix, redrive them with `tracehop replay \
             --dead-letters --consumer {}`, or drop them with `tracehop discard-dead-letters --consumer {}`",
            spec.durable, summary.count, spec.durable, spec.durable
        );
        match open {
            None if summary.count > 0 => {
                let alert = Alert {
                    alert_id: uuid::Uuid::now_v7().to_string(),
                    kind: AlertKind::ConsumerDeadLetters as i32,
                    stream: spec.stream.to_string(),
                    consumer: spec.durable.to_string(),
                    raised_at_unix_ms: now_unix_ms(),
                    dead_letters: summary.count,
                    dead_letter_reasons: summary.reasons.clone().into_iter().collect(),
                    message,
                    ..Default::default()
                };
                tracing::warn!(consumer = spec.durable, dead_letters = summary.count, "{}", alert.message);
                self.publish_alert(&alert).await;
                *open = Some(alert);
            }
            Some(alert) if summary.count > 0 => {
                // Grouped: one alert per consumer, kept current, not one per
                // dead letter.
                alert.dead_letters = summary.count;
                alert.dead_letter_reasons = summary.reasons.clone().into_iter().collect();
                alert.message = message;
            }
            Some(alert) => {
                let cleared = Alert {
                    alert_id: alert.alert_id.clone(),
                    kind: AlertKind::DeadLettersCleared as i32,
                    stream: spec.stream.to_string(),
                    consumer: spec.durable.to_string(),
                    raised_at_unix_ms: now_unix_ms(),
                    message: format!(
                        "consumer {} has no dead letters left (redriven or discarded); there were {}",
                        spec.durable, alert.dead_letters
                    ),
                    ..Default::default()
                };
                tracing::info!(consumer = spec.durable, "{}", cleared.message);
                self.publish_alert(&cleared).await;
                *open = None;
            }
            None => {}
        }
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
            let message_id = headers::get(Some(&message.headers), headers::MESSAGE_ID).filter(|id| !id.is_empty());
            let span = tracing::info_span!(
                "sentinel.missed",
                otel.name = %format!("missed by {}", spec.durable),
                otel.kind = "internal",
                messaging.system = "nats",
                messaging.destination.name = %message.subject,
                messaging.consumer.group.name = spec.durable,
                messaging.message.id = message_id,
                messaging.nats.stream.sequence = message.sequence as i64,
                tracehop.consumer.state = state,
                tracehop.delay_ms = age.as_millis() as i64,
                tracehop.incident.id = %incident.alert.alert_id,
            );
            let _ = span.set_parent(sampled(&producer));
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
    async fn recover(&self, spec: &ConsumerSpec, incident: Incident, dead_letters: &Summary) {
        let duration = incident.started.elapsed();
        // A late event was either processed or given up on: its dead letter
        // names its sequence.
        let dead_lettered = incident.late.intersection(&dead_letters.original_sequences).count() as u64;
        let processed_late = incident.late.len() as u64 - dead_lettered;
        let alert = Alert {
            alert_id: incident.alert.alert_id.clone(),
            kind: AlertKind::ConsumerRecovered as i32,
            stream: spec.stream.to_string(),
            consumer: spec.durable.to_string(),
            backlog: 0,
            raised_at_unix_ms: now_unix_ms(),
            incident_duration_ms: duration.as_millis() as i64,
            processed_late,
            dead_lettered,
            message: format!(
                "consumer {} recovered after {:.1} s; {processed_late} events were processed late, {dead_lettered} \
                 were dead-lettered",
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
            tracehop.incident.dead_lettered = dead_lettered as i64,
            tracehop.incident.unreported_missed = incident.unreported as i64,
        );
        for producer in incident.producers {
            span.add_link(producer);
        }
        let _guard = span.enter();
        tracing::info!(
            consumer = spec.durable,
            processed_late,
            dead_lettered,
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

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        Span as _, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    #[test]
    fn a_missed_by_span_is_recorded_under_a_producer_that_was_not_sampled() {
        let producer = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let unsampled = opentelemetry::Context::new().with_remote_span_context(producer.clone());
        // The SDK's default sampler follows the parent's flag.
        let tracer = SdkTracerProvider::builder().build().tracer("test");
        let inherited = tracer.start_with_context("missed by analytics", &unsampled);
        assert!(!inherited.span_context().is_sampled(), "the premise: a plain child is dropped");

        let parent = sampled(&unsampled);
        let span = tracer.start_with_context("missed by analytics", &parent);
        assert!(span.span_context().is_sampled());
        assert_eq!(span.span_context().trace_id(), producer.trace_id(), "in the producer's trace");
        assert_eq!(parent.span().span_context().span_id(), producer.span_id(), "under the producer's span");
    }
}
