//! `tracehop load`: checkouts at a constant arrival rate against the gateway,
//! with a live progress line and a summary. The engine is [`crate::load`];
//! this module only prints.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use comfy_table::{CellAlignment, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::load::{self, Answer, Drain, LoadConfig, LoadReport, Phase, Progress};
use crate::settings::Settings;

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub rate: f64,
    pub duration: Duration,
    pub concurrency_limit: Option<usize>,
    pub premium_ratio: f64,
    pub decline_ratio: f64,
    pub timeout: Duration,
}

/// `humantime` durations: `30s`, `2m`, `1m30s`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?} is not a duration ({error}); try 30s, 2m or 1m30s"))
}

pub async fn run(settings: &Settings, args: LoadArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = LoadConfig {
        concurrency_limit: args.concurrency_limit,
        premium_ratio: args.premium_ratio,
        decline_ratio: args.decline_ratio,
        request_timeout: args.timeout,
        ..LoadConfig::new(settings.gateway_url(), args.rate, args.duration)
    };
    // Without NATS the load still runs; only the drain goes unmeasured.
    let js = match super::connect_nats(settings).await {
        Ok(nats) => Some(jetstream::new(nats)),
        Err(error) => {
            eprintln!("warning: the drain will not be measured: {error:#}");
            None
        }
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
    let report = load::run(&config, js.as_ref(), |progress| {
        bar.set_message(progress_line(progress));
        bar.tick();
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if as_json {
        println!("{}", serde_json::to_string(&report_json(&report))?);
    } else {
        print!("{}", summary(&report));
    }
    let answered = report.sent - report.answers.get(Answer::Limited);
    if answered > 0 && report.answers.get(Answer::ConnectionError) == answered {
        eprintln!(
            "error: no request reached the gateway at {} (is the system up? try `tracehop up`)",
            config.gateway_url
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The live line: where the run is, the achieved rate, answers by kind and
/// the current p99.
pub fn progress_line(progress: &Progress) -> String {
    let phase = match progress.phase {
        Phase::Sending => "sending",
        Phase::Answering => "waiting for answers",
        Phase::Draining => "draining",
    };
    let mut line = format!(
        "{:>5.1}s  {phase}  {}/{} sent  {:.1}/s  {} in flight ",
        progress.elapsed.as_secs_f64(),
        progress.sent,
        progress.planned,
        progress.achieved_rate,
        progress.in_flight,
    );
    for (answer, count) in progress.answers.iter() {
        if count > 0 || answer == Answer::Created {
            let _ = write!(line, " {}:{count}", answer.key());
        }
    }
    match progress.recent_p99_ms {
        Some(p99) => {
            let _ = write!(line, "  p99 {} ms", millis(p99));
        }
        None => line.push_str("  p99 -"),
    }
    line
}

/// The report for scripts: exactly `{"sent", "achieved_rate", "answers",
/// "latency_ms", "drain_ms"}`. `answers` has every kind, zeros included
/// (`limited` only with a concurrency limit); a latency is null when nothing
/// answered, `drain_ms` when the drain was not measured or did not finish.
pub fn report_json(report: &LoadReport) -> Value {
    let mut answers = Map::new();
    for (answer, count) in report.answers.iter() {
        if answer != Answer::Limited || report.config.concurrency_limit.is_some() {
            answers.insert(answer.key().to_string(), json!(count));
        }
    }
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    let latency = report.latency.map_or_else(
        || json!({"p50": null, "p90": null, "p99": null, "p999": null, "max": null}),
        |l| json!({"p50": round(l.p50), "p90": round(l.p90), "p99": round(l.p99), "p999": round(l.p999), "max": round(l.max)}),
    );
    json!({
        "sent": report.sent,
        "achieved_rate": (report.achieved_rate * 100.0).round() / 100.0,
        "answers": answers,
        "latency_ms": latency,
        "drain_ms": report.drain.drained().map(|d| d.as_millis() as u64),
    })
}

/// The summary for people.
pub fn summary(report: &LoadReport) -> String {
    let config = &report.config;
    let mut out = String::new();
    let mut mix = Vec::new();
    if config.premium_ratio > 0.0 {
        mix.push(format!("{:.0}% premium", config.premium_ratio * 100.0));
    }
    if config.decline_ratio > 0.0 {
        mix.push(format!("{:.0}% declined cards", config.decline_ratio * 100.0));
    }
    if let Some(limit) = config.concurrency_limit {
        mix.push(format!("at most {limit} in flight"));
    }
    let mix = if mix.is_empty() { String::new() } else { format!(" ({})", mix.join(", ")) };
    let _ = writeln!(
        out,
        "load: {} checkouts at {}/s for {} against {}{mix}",
        report.sent,
        config.rate,
        humantime::format_duration(config.duration),
        config.gateway_url,
    );

    let mut answers = table(&["answer", "count", "share"]);
    for (answer, count) in report.answers.iter() {
        if answer == Answer::Limited && config.concurrency_limit.is_none() {
            continue;
        }
        let share = if report.sent == 0 { 0.0 } else { count as f64 * 100.0 / report.sent as f64 };
        answers.add_row(vec![describe(answer).to_string(), count.to_string(), format!("{share:.1}%")]);
    }
    right_align(&mut answers, &[1, 2]);
    out.push_str(&table_text(&answers));

    if report.stopped {
        let _ = writeln!(out, "stopped early: {} of {} planned requests were due", report.sent, config.planned());
    }
    let _ = writeln!(
        out,
        "sent {}, achieved {:.1}/s (asked {}/s); last answer after {:.1} s; at most {} in flight",
        report.sent,
        report.achieved_rate,
        config.rate,
        report.answer_time.as_secs_f64(),
        report.max_in_flight,
    );
    match report.latency {
        Some(latency) => {
            let mut table = table(&["latency (ms)", "p50", "p90", "p99", "p99.9", "max"]);
            table.add_row(vec![
                "from each request's due time".to_string(),
                millis(latency.p50),
                millis(latency.p90),
                millis(latency.p99),
                millis(latency.p999),
                millis(latency.max),
            ]);
            right_align(&mut table, &[1, 2, 3, 4, 5]);
            out.push_str(&table_text(&table));
        }
        None => out.push_str("latency: nothing answered\n"),
    }
    let _ = match &report.drain {
        Drain::Drained(after) => writeln!(
            out,
            "drain: {} ms after the last answer, every consumer of the order events had processed them all",
            after.as_millis()
        ),
        Drain::TimedOut(after) => writeln!(
            out,
            "drain: consumers still had events pending {:.1} s after the last answer (see `tracehop status`)",
            after.as_secs_f64()
        ),
        Drain::NotMeasured(why) => writeln!(out, "drain: not measured ({why})"),
    };
    out
}

fn describe(answer: Answer) -> &'static str {
    match answer {
        Answer::Created => "201 confirmed",
        Answer::Declined => "402 declined",
        Answer::Conflict => "409 out of stock",
        Answer::Unavailable => "503 unavailable",
        Answer::Timeout => "timeout (504 or none)",
        Answer::ConnectionError => "connection error",
        Answer::Other => "other status",
        Answer::Limited => "not sent (limit)",
    }
}

/// A borderless table in the style of the command's other tables.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    table
}

pub(crate) fn right_align(table: &mut Table, columns: &[usize]) {
    for &index in columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// The table's lines without the padding at their ends, each ending in a newline.
pub(crate) fn table_text(table: &Table) -> String {
    table.lines().map(|line| format!("{}\n", line.trim_end())).collect()
}

/// Milliseconds for people: two decimals below 10, one below 1000, none above.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 1000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;
    use crate::load::{Answers, Latency};

    fn report(limit: Option<usize>, drain: Drain) -> LoadReport {
        let mut config = LoadConfig::new("http://127.0.0.1:8080", 30.0, Duration::from_secs(5));
        config.concurrency_limit = limit;
        config.decline_ratio = 0.1;
        let mut answers = Answers::default();
        let mut histogram = Histogram::new(3).unwrap();
        for n in 0..150u64 {
            let answer = match n % 10 {
                0 => Answer::Declined,
                9 if limit.is_some() => Answer::Limited,
                _ => Answer::Created,
            };
            answers.add(answer);
            histogram.record(1000 + n * 100).unwrap();
        }
        LoadReport {
            config,
            stopped: false,
            sent: 150,
            answers,
            achieved_rate: 29.987,
            latency: Some(Latency { p50: 8.5, p90: 14.2, p99: 16.0, p999: 16.4, max: 16.4 }),
            histogram,
            drain,
            send_time: Duration::from_millis(4970),
            answer_time: Duration::from_millis(5020),
            max_in_flight: 3,
        }
    }

    #[test]
    fn json_has_exactly_the_contract_keys() {
        let value = report_json(&report(None, Drain::Drained(Duration::from_millis(48))));
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["achieved_rate", "answers", "drain_ms", "latency_ms", "sent"]);
        assert_eq!(value["sent"], 150);
        assert_eq!(value["achieved_rate"], 29.99);
        assert_eq!(value["drain_ms"], 48);
        assert_eq!(
            value["answers"],
            json!({"201": 135, "402": 15, "409": 0, "503": 0, "timeout": 0, "connection_error": 0, "other": 0})
        );
        assert_eq!(value["latency_ms"], json!({"p50": 8.5, "p90": 14.2, "p99": 16.0, "p999": 16.4, "max": 16.4}));
        let sum: u64 = value["answers"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, 150);

        let limited = report_json(&report(Some(4), Drain::TimedOut(Duration::from_secs(60))));
        assert_eq!(limited["answers"]["limited"], 15);
        assert_eq!(limited["drain_ms"], Value::Null);
    }

    #[test]
    fn the_summary_has_answers_rate_percentiles_and_drain() {
        let text = summary(&report(Some(4), Drain::Drained(Duration::from_millis(48))));
        for needle in [
            "load: 150 checkouts at 30/s for 5s against http://127.0.0.1:8080 (10% declined cards, at most 4 in flight)",
            "201 confirmed",
            "402 declined",
            "not sent (limit)",
            "achieved 30.0/s",
            "p99.9",
            "16.4",
            "drain: 48 ms after the last answer",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        let row = text.lines().find(|l| l.contains("402 declined")).unwrap();
        assert!(row.contains("15") && row.trim_end().ends_with("10.0%"), "{row}");
        assert!(!summary(&report(None, Drain::NotMeasured("no NATS".into()))).contains("limit"));
    }

    #[test]
    fn the_progress_line_shows_rate_kinds_and_p99() {
        let mut answers = Answers::default();
        for answer in [Answer::Created, Answer::Created, Answer::Unavailable] {
            answers.add(answer);
        }
        let progress = Progress {
            phase: Phase::Sending,
            elapsed: Duration::from_millis(2500),
            planned: 100,
            sent: 50,
            in_flight: 47,
            answers,
            achieved_rate: 20.0,
            recent_p99_ms: Some(1234.5),
        };
        let line = progress_line(&progress);
        assert_eq!(line, "  2.5s  sending  50/100 sent  20.0/s  47 in flight  201:2 503:1  p99 1234 ms");
    }

    #[test]
    fn durations_parse_as_humantime() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }
}
