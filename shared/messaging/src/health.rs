//! The one judgement of a durable consumer's health, used by the sentinel
//! for its incidents and by `tracehop status` for what it shows.
//!
//! [`read`] takes one [`Reading`] of a consumer from JetStream; [`judge`]
//! turns readings into a [`Health`], remembering what it needs between
//! them in a [`History`]. It judges by progress over time, never by one
//! reading: a live consumer busy with a fetched batch has no pull request
//! waiting (`num_waiting` is 0) until its next fetch, which under load
//! lasts seconds, while a killed one has none either. So a consumer is
//!
//! - **down** when nobody pulls *and* its position (deliveries made, ack
//!   floor) has not moved, both for [`Thresholds::down_after`];
//! - **lagging** when it moves but its oldest unprocessed event is older
//!   than [`Thresholds::deadline`];
//! - **failing** when dead letters of it wait, neither redriven nor
//!   discarded: a consumer that gives up on every event has no lag at all;
//! - **ok** otherwise.
//!
//! The state is the wire's [`ConsumerState`]; the worst applies (down,
//! failing, lagging, ok), and the flags say which others hold too.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream::Stream};

pub use tracehop_proto::v1::ConsumerState;

use crate::dead_letters;
use crate::topology::{ConsumerSpec, subject_counts};

/// An unprocessed event older than this is late (`SENTINEL_DEADLINE_MS`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Nobody pulling and no progress for this long is down
/// (`SENTINEL_DOWN_AFTER_MS`).
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_millis(1500);

/// The limits a judgement applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// An event not processed this long after it was published is late.
    pub deadline: Duration,
    /// How long a consumer may have nobody pulling and make no progress
    /// before it is down.
    pub down_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { deadline: DEFAULT_DEADLINE, down_after: DEFAULT_DOWN_AFTER }
    }
}

/// One reading of a durable consumer's state in JetStream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Pull requests waiting on the durable (`num_waiting`).
    pub pullers: u64,
    /// Events not yet delivered.
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Deliveries made so far, redeliveries included (the consumer
    /// sequence of the last one): moves with every delivery.
    pub delivered: u64,
    /// The stream sequence below which everything is acknowledged: moves
    /// with every ack.
    pub ack_floor: u64,
    /// Age of the oldest event not acknowledged; none when there is none.
    pub oldest_unprocessed_age: Option<Duration>,
    /// Deliveries beyond the first since the consumer was created.
    pub redeliveries: u64,
    /// Dead letters of this consumer waiting in the DEADLETTER stream.
    pub dead_letters: u64,
}

impl Reading {
    /// Events waiting for the consumer: undelivered plus unacknowledged.
    pub fn backlog(&self) -> u64 {
        self.pending + self.ack_pending
    }
}

/// What a judgement remembers of earlier readings of one consumer.
#[derive(Clone, Debug, Default)]
pub struct History {
    position: Option<(u64, u64)>,
    moved_at: Option<Instant>,
    no_pullers_since: Option<Instant>,
}

/// A consumer's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The worst state that holds.
    pub state: ConsumerState,
    /// Down: nobody pulls and nothing moved for the down-after period.
    pub down: bool,
    /// Lagging: its oldest unprocessed event is past the deadline.
    pub lagging: bool,
    /// Failing: dead letters wait.
    pub failing: bool,
    /// Why, in a few words, for people.
    pub reason: String,
}

impl Health {
    /// The health of a durable that does not exist.
    pub fn missing() -> Self {
        Self {
            state: ConsumerState::Missing,
            down: false,
            lagging: false,
            failing: false,
            reason: "the durable consumer does not exist".to_string(),
        }
    }

    /// The health of a consumer that could not be read, and why.
    pub fn unknown(reason: String) -> Self {
        Self { state: ConsumerState::Unspecified, down: false, lagging: false, failing: false, reason }
    }
}

/// `ok`, `lagging`, `down`, `failing`, `missing` (`unknown` for a value
/// this build does not know): the state's name for people and JSON.
pub fn state_name(state: i32) -> &'static str {
    match ConsumerState::try_from(state) {
        Ok(ConsumerState::Ok) => "ok",
        Ok(ConsumerState::Lagging) => "lagging",
        Ok(ConsumerState::Down) => "down",
        Ok(ConsumerState::Failing) => "failing",
        Ok(ConsumerState::Missing) => "missing",
        Ok(ConsumerState::Unspecified) | Err(_) => "unknown",
    }
}

/// Judges `reading`, taken at `now`, against `thresholds` and what
/// `history` remembers, and updates `history`. The first reading of a
/// consumer counts as movement: what happened before it is unknown, so a
/// consumer is down at the earliest `down_after` after it was first read.
pub fn judge(reading: &Reading, history: &mut History, thresholds: &Thresholds, now: Instant) -> Health {
    let position = (reading.delivered, reading.ack_floor);
    if history.position != Some(position) {
        history.position = Some(position);
        history.moved_at = Some(now);
    }
    if reading.pullers > 0 {
        history.no_pullers_since = None;
    } else {
        history.no_pullers_since.get_or_insert(now);
    }
    let since = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
    let unpulled = since(history.no_pullers_since);
    let still = since(history.moved_at);
    let down = reading.pullers == 0 && unpulled >= thresholds.down_after && still >= thresholds.down_after;
    let oldest = reading.oldest_unprocessed_age.unwrap_or_default();
    let lagging = oldest >= thresholds.deadline && reading.backlog() > 0;
    let failing = reading.dead_letters > 0;
    let backlog = reading.backlog();
    let (state, reason) = if down {
        let reason = format!(
            "nobody is pulling and nothing moved for {:.1} s; {backlog} events waiting",
            still.min(unpulled).as_secs_f64()
        );
        (ConsumerState::Down, reason)
    } else if failing {
        (ConsumerState::Failing, format!("{} dead letters waiting for a redrive or a discard", reading.dead_letters))
    } else if lagging {
        let reason = format!(
            "its oldest unprocessed event is {:.1} s old (deadline {:.1} s); {backlog} events waiting",
            oldest.as_secs_f64(),
            thresholds.deadline.as_secs_f64()
        );
        (ConsumerState::Lagging, reason)
    } else {
        (ConsumerState::Ok, String::new())
    };
    Health { state, down, lagging, failing, reason }
}

/// Why a consumer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream {stream} is not available")]
    Stream {
        stream: &'static str,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("consumer {consumer} is not available")]
    Consumer {
        consumer: &'static str,
        #[source]
        source: jetstream::context::ConsumerInfoError,
    },
    #[error("dead letters of {consumer} cannot be counted")]
    DeadLetters {
        consumer: &'static str,
        #[source]
        source: dead_letters::DeadLetterError,
    },
}

impl ReadError {
    /// True when the durable (or its stream) does not exist, rather than
    /// JetStream being unreachable.
    pub fn is_missing(&self) -> bool {
        use async_nats::jetstream::ErrorCode;
        use jetstream::context::ConsumerInfoErrorKind as Kind;
        match self {
            ReadError::Consumer { source, .. } => match source.kind() {
                Kind::NotFound | Kind::StreamNotFound => true,
                Kind::JetStream(error) => {
                    [ErrorCode::CONSUMER_NOT_FOUND, ErrorCode::STREAM_NOT_FOUND].contains(&error.error_code())
                }
                _ => false,
            },
            ReadError::Stream { .. } | ReadError::DeadLetters { .. } => false,
        }
    }
}

/// Reads `spec`'s consumer: its info, the age of its oldest unacknowledged
/// event (a direct get past the ack floor, per filter subject), its
/// redeliveries and its dead-letter count.
pub async fn read(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<Reading, ReadError> {
    let stream =
        js.get_stream_no_info(spec.stream).await.map_err(|source| ReadError::Stream { stream: spec.stream, source })?;
    let info = stream
        .consumer_info(spec.durable)
        .await
        .map_err(|source| ReadError::Consumer { consumer: spec.durable, source })?;
    let filters = filters_of(spec, &info.config);
    let mut reading = Reading {
        pullers: info.num_waiting as u64,
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        delivered: info.delivered.consumer_sequence,
        ack_floor: info.ack_floor.stream_sequence,
        ..Reading::default()
    };
    if reading.backlog() > 0 {
        reading.oldest_unprocessed_age = oldest_unprocessed(&stream, &filters, info.ack_floor.stream_sequence).await;
    }
    reading.redeliveries = redeliveries(&stream, &filters, &info).await;
    reading.dead_letters = dead_letters::count(js, spec.durable)
        .await
        .map_err(|source| ReadError::DeadLetters { consumer: spec.durable, source })?;
    Ok(reading)
}

/// The subjects the durable takes: the server's view, or the spec's.
fn filters_of(spec: &ConsumerSpec, config: &consumer::Config) -> Vec<String> {
    let mut filters: Vec<String> = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        filters.push(config.filter_subject.clone());
    }
    if filters.is_empty() {
        filters = spec.filter_subjects.clone();
    }
    if filters.is_empty() {
        filters.push(">".to_string());
    }
    filters
}

/// The first event past the ack floor that a filter takes is the oldest one
/// not acknowledged: were it acknowledged, the floor would be past it.
async fn oldest_unprocessed(stream: &Stream<()>, filters: &[String], ack_floor: u64) -> Option<Duration> {
    let mut oldest: Option<time::OffsetDateTime> = None;
    for filter in filters {
        if let Ok(message) = stream.direct_get_next_for_subject(filter.clone(), Some(ack_floor + 1)).await {
            oldest = Some(oldest.map_or(message.time, |o| o.min(message.time)));
        }
    }
    oldest.map(|published| Duration::try_from(time::OffsetDateTime::now_utc() - published).unwrap_or_default())
}

/// Every delivery advances the consumer sequence, and every event the
/// filter takes that is no longer pending was delivered at least once.
async fn redeliveries(stream: &Stream<()>, filters: &[String], info: &consumer::Info) -> u64 {
    let mut matching = 0u64;
    for filter in filters {
        matching += subject_counts(stream, filter).await.values().sum::<u64>();
    }
    let delivered_once = matching.saturating_sub(info.num_pending);
    info.delivered.consumer_sequence.saturating_sub(delivered_once)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { deadline: Duration::from_secs(5), down_after: Duration::from_millis(1500) };

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_busy_consumer_with_nobody_pulling_is_not_down_while_it_moves() {
        let start = Instant::now();
        let mut history = History::default();
        // Under load: no pull request waiting at any reading, 400 waiting,
        // but the ack floor moves between readings.
        for step in 0..20u64 {
            let reading =
                Reading { pending: 400, ack_pending: 100, delivered: 500, ack_floor: step * 10, ..Default::default() };
            let health = judge(&reading, &mut history, &T, at(start, step * 500));
            assert_eq!(health.state, ConsumerState::Ok, "step {step}: {health:?}");
        }
    }

    #[test]
    fn nobody_pulling_and_nothing_moving_is_down_after_the_period_not_before() {
        let start = Instant::now();
        let mut history = History::default();
        let reading = Reading { pending: 3, ack_pending: 1, delivered: 10, ack_floor: 9, ..Default::default() };
        assert_eq!(judge(&reading, &mut history, &T, start).state, ConsumerState::Ok);
        assert_eq!(judge(&reading, &mut history, &T, at(start, 1000)).state, ConsumerState::Ok);
        let health = judge(&reading, &mut history, &T, at(start, 1500));
        assert_eq!(health.state, ConsumerState::Down, "{health:?}");
        assert!(health.reason.contains("4 events waiting"), "{}", health.reason);
        // A pull request again: not down, whatever the position.
        let pulling = Reading { pullers: 1, ..reading.clone() };
        assert_eq!(judge(&pulling, &mut history, &T, at(start, 2000)).state, ConsumerState::Ok);
    }

    #[test]
    fn moving_with_an_old_event_is_lagging_and_dead_letters_are_failing() {
        let start = Instant::now();
        let mut history = History::default();
        let late = Reading {
            pullers: 1,
            pending: 50,
            oldest_unprocessed_age: Some(Duration::from_secs(6)),
            ..Default::default()
        };
        let health = judge(&late, &mut history, &T, start);
        assert_eq!((health.state, health.lagging), (ConsumerState::Lagging, true));
        let failing = Reading { pullers: 1, dead_letters: 6, ..Default::default() };
        let health = judge(&failing, &mut history, &T, at(start, 100));
        assert_eq!((health.state, health.failing, health.lagging), (ConsumerState::Failing, true, false));
        assert!(health.reason.starts_with("6 dead letters"), "{}", health.reason);
        // Down and failing: down shows, failing is still flagged.
        let dead = Reading { dead_letters: 6, ..Default::default() };
        judge(&dead, &mut history, &T, at(start, 200));
        let health = judge(&dead, &mut history, &T, at(start, 2000));
        assert_eq!((health.state, health.failing, health.down), (ConsumerState::Down, true, true));
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(ConsumerState::Failing as i32), "failing");
        assert_eq!(state_name(99), "unknown");
    }
}
