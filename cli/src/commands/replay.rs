//! `tracehop replay`: a consumer's events again through its own handler.
//!
//! - `--consumer NAME --from-seq N` or `--since DURATION`: replays the
//!   ORDERS stream from there; events already applied are skipped by the
//!   handler's idempotency.
//! - `--rebuild`: resets the consumer's projection, then replays the whole
//!   stream into it (refused by notification: its mails are sent).
//! - `--dead-letters`: redrives the consumer's dead letters after a fix;
//!   each one that succeeds leaves the DEADLETTER stream.
//!
//! The work runs inside the consumer's own service (it owns the handler and
//! the database), which answers `svc.<consumer>.replay`; this command sends
//! the request, shows the service's progress on stderr (a bar on a terminal,
//! a line every few seconds otherwise) and prints the final count. Each
//! replayed event gets a CONSUMER span in a new trace rooted at `replay
//! <consumer>`, whose id is printed; a redriven one lands in its original
//! trace.
//!
//! [`execute`] does the I/O (the tests call it directly); [`describe`] and
//! [`to_json`] are pure functions of the reply.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracehop_messaging::replay::{self, Mode, ReplayProgress, ReplayReply};
use tracehop_messaging::{RequestError, Service};

use crate::settings::Settings;

/// How long the command waits for the service's answer: a replay of a long
/// stream takes a while, and progress arrives on the way.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);

/// The consumers whose services answer replay requests, from the catalog.
pub fn replayable() -> Vec<&'static str> {
    Service::replayable_names()
}

/// What to replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayArgs {
    /// The durable consumer whose handler runs.
    pub consumer: String,
    /// Start at this stream sequence.
    pub from_seq: Option<u64>,
    /// Or at the events stored within this long.
    pub since: Option<Duration>,
    /// Reset the projection first, then replay the whole stream.
    pub rebuild: bool,
    /// Redrive the consumer's dead letters instead.
    pub dead_letters: bool,
}

impl ReplayArgs {
    /// What the command's flags ask for, or why they do not go together.
    pub fn mode(&self) -> Result<Mode, String> {
        if self.consumer.trim().is_empty() {
            return Err("--consumer is empty".to_string());
        }
        if let Some(reason) = Service::from_name(&self.consumer).and_then(Service::not_replayable_because) {
            return Err(format!(
                "{} is not replayable: {reason}; the replayable consumers are {}",
                self.consumer,
                replayable().join(", ")
            ));
        }
        if self.from_seq == Some(0) {
            return Err("--from-seq starts at 1".to_string());
        }
        if self.since == Some(Duration::ZERO) {
            return Err("--since must be longer than 0".to_string());
        }
        if self.dead_letters {
            if self.rebuild || self.from_seq.is_some() || self.since.is_some() {
                return Err(
                    "--dead-letters redrives every dead letter of the consumer: leave out --rebuild, --from-seq and \
                     --since"
                        .to_string(),
                );
            }
            return Ok(Mode::Redrive);
        }
        if self.rebuild {
            if self.since.is_some() {
                return Err("--rebuild replays the whole stream: leave out --since".to_string());
            }
            if self.from_seq.is_some_and(|seq| seq > 1) {
                return Err("--rebuild replays the whole stream: leave out --from-seq, or use --from-seq 1".to_string());
            }
            return Ok(Mode::Rebuild);
        }
        match (self.from_seq, self.since) {
            (Some(sequence), None) => Ok(Mode::FromSequence(sequence)),
            (None, Some(since)) => Ok(Mode::Since(since)),
            (None, None) => Err("say where to start: --from-seq N or --since DURATION".to_string()),
            (Some(_), Some(_)) => Err("give --from-seq or --since, not both".to_string()),
        }
    }

    /// What the command's flags mean, or why they do not go together.
    pub fn check(&self) -> Result<(), String> {
        self.mode().map(drop)
    }

    fn mode_name(&self) -> &'static str {
        match (self.dead_letters, self.rebuild) {
            (true, _) => "redrive",
            (false, true) => "rebuild",
            (false, false) => "replay",
        }
    }
}

/// Parses a duration such as `90s`, `15m`, `2h`, `1d`, `500ms` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad =
        || format!("{text:?} is not a duration: expected a number and a unit (ms, s, m, h, d), e.g. 15m or 1h30m");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis_per = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        let millis = number.checked_mul(millis_per).ok_or_else(bad)?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Sends the replay to the consumer's service and waits for its final
/// count, calling `on_progress` with each progress message. An answer that
/// carries an error (a refused rebuild, an interrupted replay) comes back as
/// it is, counts included; only no answer at all is an `Err`.
pub async fn execute(
    nats: &async_nats::Client,
    args: &ReplayArgs,
    on_progress: impl FnMut(&ReplayProgress),
) -> anyhow::Result<ReplayReply> {
    let mode = args.mode().map_err(anyhow::Error::msg)?;
    replay::call(nats, mode.request(&args.consumer), REPLAY_TIMEOUT, on_progress).await.map_err(|error| match error {
        RequestError::NoResponders { subject } => {
            let hint = if replayable().contains(&args.consumer.as_str()) {
                format!("is {} running? try `tracehop start {}`", args.consumer, args.consumer)
            } else {
                format!("replay is served by {}", replayable().join(", "))
            };
            anyhow::anyhow!("no service answers on {subject} ({hint})")
        }
        RequestError::TimedOut { subject, timeout } => anyhow::anyhow!(
            "{subject} did not answer within {} s; the replay may still be running in the service (see its log)",
            timeout.as_secs()
        ),
        other => anyhow::Error::new(other),
    })
}

pub async fn run(settings: &Settings, args: ReplayArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    args.check().map_err(anyhow::Error::msg)?;
    let nats = super::connect_nats(settings).await?;
    if let Some(from) = args.from_seq {
        // Past the end is a mistake to say, not an empty success.
        let js = async_nats::jetstream::new(nats.clone());
        let mut stream = js.get_stream(tracehop_messaging::topology::ORDERS_STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        if from > last {
            anyhow::bail!(
                "the {} stream ends at sequence {last}: there is nothing to replay from {from}",
                tracehop_messaging::topology::ORDERS_STREAM
            );
        }
    }
    let mut bar = ProgressView::new(args.mode_name(), &args.consumer);
    let reply = execute(&nats, &args, |progress| bar.show(progress)).await;
    bar.finish();
    let reply = reply?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&args, &reply))?);
    } else {
        print!("{}", describe(&args, &reply));
    }
    Ok(if succeeded(&args, &reply) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Whether the replay did all it was asked: no error, no failed event, and
/// for a redrive no dead letter left behind.
pub fn succeeded(args: &ReplayArgs, reply: &ReplayReply) -> bool {
    reply.error.is_none() && reply.failed == 0 && !(args.dead_letters && reply.rejected > 0)
}

/// Messages per second, from the service's own clock.
fn rate(reply: &ReplayReply) -> f64 {
    if reply.elapsed_ms == 0 { 0.0 } else { reply.scanned as f64 * 1000.0 / reply.elapsed_ms as f64 }
}

/// The final count for people.
pub fn describe(args: &ReplayArgs, reply: &ReplayReply) -> String {
    let consumer = &args.consumer;
    let seconds = reply.elapsed_ms as f64 / 1000.0;
    let mut text = String::new();
    if let Some(error) = &reply.error {
        text.push_str(&format!("{} of {consumer} failed: {}\n", args.mode_name(), error.message));
        if reply.scanned == 0 {
            return text;
        }
    }
    let what = if args.dead_letters { plural(reply.scanned, "dead letter") } else { plural(reply.scanned, "event") };
    let head = match args.mode_name() {
        "redrive" => format!("redrove {what} of {consumer}"),
        "rebuild" => format!("rebuilt {consumer}: reset, then replayed {what}"),
        _ => format!("replayed {what} through {consumer}"),
    };
    let range = if reply.scanned > 0 && !args.dead_letters {
        format!(" (stream sequence {}-{})", reply.first_seq, reply.last_seq)
    } else {
        String::new()
    };
    text.push_str(&format!("{head}{range} in {seconds:.2} s ({:.0}/s)\n", rate(reply)));
    text.push_str(&format!(
        "  applied {}  skipped {}  rejected {}  failed {}\n",
        reply.applied, reply.skipped, reply.rejected, reply.failed
    ));
    if args.dead_letters && reply.failed + reply.rejected > 0 {
        text.push_str(&format!(
            "  {} stay in the DEADLETTER stream; fix the cause and redrive again\n",
            plural(reply.failed + reply.rejected, "dead letter")
        ));
    } else if reply.failed > 0 {
        text.push_str("  the failed events can be replayed again once the cause is fixed\n");
    }
    if !reply.trace_id.is_empty() && reply.trace_id.bytes().any(|b| b != b'0') {
        let trace = &reply.trace_id;
        let note = if args.dead_letters { "; each redriven event also appears in its own trace" } else { "" };
        text.push_str(&format!("  trace {trace}   (tracehop trace {trace} --wait 5){note}\n"));
    }
    text
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

/// The final count for scripts.
pub fn to_json(args: &ReplayArgs, reply: &ReplayReply) -> Value {
    json!({
        "consumer": args.consumer,
        "mode": args.mode_name(),
        "ok": succeeded(args, reply),
        "scanned": reply.scanned,
        "applied": reply.applied,
        "skipped": reply.skipped,
        "rejected": reply.rejected,
        "failed": reply.failed,
        "rebuilt": reply.rebuilt,
        "first_seq": reply.first_seq,
        "last_seq": reply.last_seq,
        "elapsed_ms": reply.elapsed_ms,
        "per_second": (rate(reply) * 10.0).round() / 10.0,
        "trace_id": (!reply.trace_id.is_empty()).then_some(&reply.trace_id),
        "error": reply.error.as_ref().map(|e| json!({"code": e.kind().short_name(), "message": e.message})),
    })
}

/// A progress bar on a terminal's stderr, or a line every few seconds when
/// stderr is not a terminal; nothing for a replay that ends at once.
struct ProgressView {
    label: String,
    tty: bool,
    started: Instant,
    last_line: Option<Instant>,
    drawn: bool,
}

/// How often the line form is written.
const LINE_EVERY: Duration = Duration::from_secs(3);
/// No progress is shown for a replay that ends sooner than this.
const QUIET_FOR: Duration = Duration::from_millis(500);
const BAR_WIDTH: usize = 30;

impl ProgressView {
    fn new(mode: &str, consumer: &str) -> Self {
        Self {
            label: format!("{mode} {consumer}"),
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_line: None,
            drawn: false,
        }
    }

    fn show(&mut self, progress: &ReplayProgress) {
        if progress.done || self.started.elapsed() < QUIET_FOR {
            return;
        }
        let line = progress_line(&self.label, progress);
        let mut stderr = std::io::stderr().lock();
        if self.tty {
            let _ = write!(stderr, "{}{line}", crate::term::CLEAR_LINE);
            self.drawn = true;
        } else if self.last_line.is_none_or(|at| at.elapsed() >= LINE_EVERY) {
            let _ = writeln!(stderr, "{line}");
            self.last_line = Some(Instant::now());
        }
        let _ = stderr.flush();
    }

    fn finish(&mut self) {
        if self.drawn {
            eprint!("{}", crate::term::CLEAR_LINE);
            self.drawn = false;
        }
    }
}

/// `replay analytics [#########.....]  1200/2000 events  applied 3  failed 0`.
pub fn progress_line(label: &str, progress: &ReplayProgress) -> String {
    let total = progress.total.max(progress.scanned);
    let filled = if total == 0 { BAR_WIDTH } else { (progress.scanned as usize * BAR_WIDTH) / total as usize };
    let bar: String = "#".repeat(filled.min(BAR_WIDTH)) + &".".repeat(BAR_WIDTH - filled.min(BAR_WIDTH));
    format!(
        "{label} [{bar}] {}/{total}  applied {}  skipped {}  failed {}",
        progress.scanned,
        progress.applied,
        progress.skipped,
        progress.failed + progress.rejected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(consumer: &str) -> ReplayArgs {
        ReplayArgs { consumer: consumer.to_string(), ..Default::default() }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "15", "m", "1.5h", "10 minutes", "-1s", "1y", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_start_is_required_except_for_a_rebuild_or_a_redrive() {
        assert!(args("analytics").check().is_err());
        assert!(ReplayArgs { from_seq: Some(1), ..args("analytics") }.check().is_ok());
        assert!(ReplayArgs { since: Some(Duration::from_secs(60)), ..args("analytics") }.check().is_ok());
        assert!(ReplayArgs { from_seq: Some(0), ..args("analytics") }.check().is_err());
        assert!(
            ReplayArgs { from_seq: Some(3), since: Some(Duration::from_secs(1)), ..args("analytics") }.check().is_err()
        );
        assert!(ReplayArgs { rebuild: true, ..args("analytics") }.check().is_ok());
        assert!(ReplayArgs { rebuild: true, from_seq: Some(1), ..args("analytics") }.check().is_ok());
        assert!(ReplayArgs { rebuild: true, from_seq: Some(5), ..args("analytics") }.check().is_err());
        assert!(ReplayArgs { dead_letters: true, ..args("notification") }.check().is_ok());
        assert!(ReplayArgs { dead_letters: true, rebuild: true, ..args("notification") }.check().is_err());
    }

    #[test]
    fn flags_become_one_validated_mode() {
        assert_eq!(ReplayArgs { rebuild: true, ..args("loyalty") }.mode(), Ok(Mode::Rebuild));
        assert_eq!(ReplayArgs { rebuild: true, from_seq: Some(1), ..args("loyalty") }.mode(), Ok(Mode::Rebuild));
        let since = ReplayArgs { since: Some(Duration::from_secs(2)), ..args("loyalty") };
        assert_eq!(since.mode(), Ok(Mode::Since(Duration::from_secs(2))));
        let request = since.mode().unwrap().request("loyalty");
        assert_eq!(Mode::of(&request), Ok(Mode::Since(Duration::from_secs(2))));
        let error = ReplayArgs { rebuild: true, from_seq: Some(5), ..args("loyalty") }.mode().unwrap_err();
        assert!(error.contains("--from-seq") && !error.contains("--since"), "{error}");
        assert_eq!(replayable(), ["loyalty", "notification", "analytics"]);
    }

    #[test]
    fn the_final_count_says_what_happened_and_where_the_trace_is() {
        let reply = ReplayReply {
            scanned: 10,
            applied: 2,
            skipped: 8,
            first_seq: 1,
            last_seq: 10,
            elapsed_ms: 500,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
            ..Default::default()
        };
        let replay = ReplayArgs { from_seq: Some(1), ..args("analytics") };
        let text = describe(&replay, &reply);
        assert!(text.starts_with("replayed 10 events through analytics (stream sequence 1-10) in 0.50 s (20/s)"));
        assert!(text.contains("applied 2  skipped 8  rejected 0  failed 0"), "{text}");
        assert!(text.contains("tracehop trace 4bf92f3577b34da6a3ce929d0e0e4736"), "{text}");
        assert!(succeeded(&replay, &reply));
        let value = to_json(&replay, &reply);
        assert_eq!((value["mode"].as_str(), value["skipped"].as_u64()), (Some("replay"), Some(8)));
        assert_eq!(value["per_second"].as_f64(), Some(20.0));

        let redrive = ReplayArgs { dead_letters: true, ..args("notification") };
        let left = ReplayReply { scanned: 3, applied: 1, failed: 2, ..Default::default() };
        let text = describe(&redrive, &left);
        assert!(text.starts_with("redrove 3 dead letters of notification"), "{text}");
        assert!(text.contains("2 dead letters stay in the DEADLETTER stream"), "{text}");
        assert!(!succeeded(&redrive, &left));
    }

    #[test]
    fn a_refusal_is_shown_with_its_reason() {
        let reply = ReplayReply {
            error: Some(tracehop_proto::v1::Error::new(
                tracehop_proto::v1::ErrorCode::InvalidArgument,
                "notification cannot be rebuilt",
            )),
            ..Default::default()
        };
        let rebuild = ReplayArgs { rebuild: true, ..args("notification") };
        assert_eq!(describe(&rebuild, &reply), "rebuild of notification failed: notification cannot be rebuilt\n");
        assert_eq!(to_json(&rebuild, &reply)["error"]["code"].as_str(), Some("invalid_argument"));
        assert!(!succeeded(&rebuild, &reply));
    }

    #[test]
    fn the_progress_line_fills_its_bar() {
        let progress = ReplayProgress { scanned: 50, total: 100, applied: 5, skipped: 45, ..Default::default() };
        let line = progress_line("replay analytics", &progress);
        assert_eq!(
            line,
            format!("replay analytics [{}{}] 50/100  applied 5  skipped 45  failed 0", "#".repeat(15), ".".repeat(15))
        );
    }
}
