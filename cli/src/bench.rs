//! The benchmark behind `tracehop bench`: one run on the user's machine that
//! measures, on a private system of its own (its own NATS server and
//! database, every service as its own process, as the tests start it):
//!
//! 1. the parts' limits: pgbench's rate for a 5-statement transaction (3
//!    inserts, 1 update, 1 select), NATS request/reply with 16 in flight,
//!    JetStream publish-with-ack with 16 in flight;
//! 2. the highest sustained rate of confirmed orders (an open-model search
//!    with the load engine of [`crate::load`]), at 100% sampling and with
//!    tracing off, and their ratio;
//! 3. the gateway's p50/p99 at half that rate;
//! 4. the cost of W3C context propagation per hop (inject plus extract over
//!    NATS headers);
//! 5. how fast a consumer that was stopped for a while under load drains its
//!    backlog, as a multiple of the arrival rate;
//! 6. CPU seconds per order for each process, from `/proc`.
//!
//! "Sustained" is judged per step of the search: the generator kept the
//! offered rate, every order was confirmed, the gateway's p99 stayed within
//! the limit, and every consumer had caught up shortly after the step.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use tracehop_messaging::topology::Service;

use crate::load::{self, Answer, LoadConfig, LoadReport};

/// What to measure and how hard.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// How long each step of the rate search sends.
    pub step: Duration,
    /// The search's first rate, orders per second.
    pub start_rate: f64,
    /// The gateway's p99 above which a rate is not sustained.
    pub p99_limit: Duration,
    /// How long the drain test keeps its consumer stopped.
    pub stopped_for: Duration,
    /// How long to run pgbench and each NATS measurement.
    pub part_time: Duration,
    /// The simulated card processor's latency (`PAYMENT_LATENCY_MS`), which
    /// the half-rate p99 target adds 15 ms to.
    pub payment_latency: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(15),
            start_rate: 100.0,
            p99_limit: Duration::from_millis(250),
            stopped_for: Duration::from_secs(30),
            part_time: Duration::from_secs(10),
            payment_latency: Duration::from_millis(20),
        }
    }
}

/// The parts' own limits on this machine.
#[derive(Clone, Debug)]
pub struct PartLimits {
    /// pgbench transactions per second, or why it was not measured.
    pub pgbench_tps: Result<f64, String>,
    pub nats_request_reply_per_s: f64,
    pub jetstream_publish_per_s: f64,
    /// Whether the private NATS server fsyncs every write (`sync_interval:
    /// always`, nats-server 2.10 and later) or on its timer.
    pub nats_sync_always: bool,
}

/// One step of a rate search, or one fixed-rate run.
#[derive(Clone, Debug)]
pub struct Step {
    pub offered: f64,
    /// Orders confirmed per second of sending.
    pub confirmed_per_s: f64,
    pub confirmed: u64,
    /// Answers other than 201.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// How long after the last answer every consumer had caught up.
    pub drained: Option<Duration>,
    pub sustained: bool,
    /// CPU seconds each process used during the step.
    pub cpu_seconds: BTreeMap<String, f64>,
}

impl Step {
    fn of(report: &LoadReport, cpu_seconds: BTreeMap<String, f64>, p99_limit: Duration) -> Self {
        let confirmed = report.answers.get(Answer::Created);
        let failed = report.answers.total() - confirmed;
        let latency = report.latency;
        let p99_ms = latency.map_or(f64::INFINITY, |l| l.p99);
        let drained = report.drain.drained();
        let offered = report.config.rate;
        let sustained = report.achieved_rate >= 0.95 * offered
            && failed == 0
            && p99_ms <= p99_limit.as_secs_f64() * 1000.0
            && drained.is_some();
        Self {
            offered,
            confirmed_per_s: confirmed as f64 / report.send_time.max(report.config.duration).as_secs_f64(),
            confirmed,
            failed,
            p50_ms: latency.map_or(f64::INFINITY, |l| l.p50),
            p99_ms,
            drained,
            sustained,
            cpu_seconds,
        }
    }
}

/// A search for the highest sustained rate.
#[derive(Clone, Debug, Default)]
pub struct Search {
    pub steps: Vec<Step>,
}

impl Search {
    /// The sustained step with the most confirmed orders per second.
    pub fn best(&self) -> Option<&Step> {
        self.steps.iter().filter(|s| s.sustained).max_by(|a, b| a.confirmed_per_s.total_cmp(&b.confirmed_per_s))
    }

    /// Its rate, 0 when no step was sustained.
    pub fn highest(&self) -> f64 {
        self.best().map_or(0.0, |s| s.confirmed_per_s)
    }
}

/// The drain test's outcome.
#[derive(Clone, Debug)]
pub struct DrainTest {
    pub consumer: String,
    pub arrival_rate: f64,
    pub stopped_for: Duration,
    /// Events waiting for the consumer when it came back.
    pub backlog: u64,
    /// From its return until it had caught up.
    pub drain_time: Duration,
    /// Events it processed per second while draining (its backlog plus what
    /// kept arriving).
    pub processing_rate: f64,
}

impl DrainTest {
    /// The processing rate as a multiple of the arrival rate.
    pub fn multiple(&self) -> f64 {
        self.processing_rate / self.arrival_rate
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub config: BenchConfig,
    pub machine: Machine,
    pub limits: PartLimits,
    pub traced: Search,
    pub untraced: Search,
    pub half_rate: Option<Step>,
    /// Inject plus extract of a W3C context over NATS headers, nanoseconds
    /// (median of several rounds).
    pub propagation_ns: f64,
    pub drain: Result<DrainTest, String>,
    pub elapsed: Duration,
}

impl BenchReport {
    /// Confirmed orders per second with tracing on, over pgbench's rate.
    pub fn orders_per_pgbench_tx(&self) -> Option<f64> {
        self.limits.pgbench_tps.as_ref().ok().map(|tps| self.traced.highest() / tps)
    }

    /// Throughput with 100% tracing over throughput without.
    pub fn tracing_ratio(&self) -> Option<f64> {
        (self.untraced.highest() > 0.0).then(|| self.traced.highest() / self.untraced.highest())
    }

    /// The half-rate p99 target: payment's latency plus 15 ms.
    pub fn half_rate_p99_target_ms(&self) -> f64 {
        self.config.payment_latency.as_secs_f64() * 1000.0 + 15.0
    }

    /// The highest rate both searches sustained, offered alike: where the
    /// two systems' CPU per order compare like for like (at another rate,
    /// fixed costs such as polling spread over a different number of
    /// orders).
    pub fn common_rate(&self) -> Option<f64> {
        self.traced
            .steps
            .iter()
            .filter(|t| t.sustained)
            .filter(|t| self.untraced.steps.iter().any(|u| u.sustained && u.offered == t.offered))
            .map(|t| t.offered)
            .max_by(f64::total_cmp)
    }

    /// CPU milliseconds per confirmed order for each process, in the step of
    /// `search` at `rate`.
    pub fn cpu_ms_per_order(search: &Search, rate: f64) -> BTreeMap<String, f64> {
        let Some(step) = search.steps.iter().find(|s| s.offered == rate) else { return BTreeMap::new() };
        let orders = step.confirmed.max(1) as f64;
        step.cpu_seconds.iter().map(|(process, seconds)| (process.clone(), seconds * 1000.0 / orders)).collect()
    }

    /// Total CPU per order with 100% tracing over the same without, at the
    /// common rate: the cost of tracing in CPU rather than in throughput.
    pub fn tracing_cpu_ratio(&self) -> Option<f64> {
        let rate = self.common_rate()?;
        let total = |search: &Search| Self::cpu_ms_per_order(search, rate).values().sum::<f64>();
        let untraced = total(&self.untraced);
        (untraced > 0.0).then(|| total(&self.traced) / untraced)
    }
}

/// The machine the run was on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub nats_server: String,
    pub postgres: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
            .map_or_else(|| "unknown".to_string(), |(_, model)| model.trim().to_string());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            nats_server: command_version("nats-server", &["--version"]),
            postgres: command_version("pgbench", &["--version"]),
        }
    }
}

fn command_version(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| format!("{program} not found"))
}

/// CPU time used so far by a set of processes, read from `/proc`.
#[derive(Clone, Debug, Default)]
pub struct CpuSample(BTreeMap<String, f64>);

impl CpuSample {
    /// `processes`: a label and a pid each. PostgreSQL is summed over the
    /// server's background processes and the backends of `database`, so
    /// that other databases' work on a shared server is left out.
    pub fn take(processes: &[(String, u32)], database: &str) -> Self {
        let mut sample = BTreeMap::new();
        for (label, pid) in processes {
            if let Some(seconds) = cpu_seconds(*pid) {
                *sample.entry(label.clone()).or_insert(0.0) += seconds;
            }
        }
        let postgres: f64 = postgres_pids(database).into_iter().filter_map(cpu_seconds).sum();
        sample.insert("postgresql".to_string(), postgres);
        Self(sample)
    }

    /// What each process used between `earlier` and this sample.
    pub fn since(&self, earlier: &CpuSample) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(label, now)| (label.clone(), (now - earlier.0.get(label).copied().unwrap_or(0.0)).max(0.0)))
            .collect()
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields
    // after its closing one. utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |ticks| ticks as f64)
}

/// The PostgreSQL processes that work for `database`: its backends (whose
/// command line names it) and the server's own (which name no database).
fn postgres_pids(database: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "postgres" {
                return false;
            }
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_backend = cmdline.contains('(') || cmdline.contains(" idle") || cmdline.contains("tracehop");
            !is_backend || cmdline.contains(database)
        })
        .collect()
}

/// pgbench's rate for the 5-statement transaction, 8 clients, on a scratch
/// schema of `database_url`'s database.
pub async fn pgbench(database_url: &str, duration: Duration) -> Result<f64, String> {
    let pool = tracehop_db::connect(database_url, 1).await.map_err(|e| e.to_string())?;
    tracehop_db::sqlx::raw_sql(
        "DROP SCHEMA IF EXISTS bench CASCADE;
         CREATE SCHEMA bench;
         CREATE TABLE bench.accounts (id integer PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
         INSERT INTO bench.accounts (id) SELECT generate_series(1, 10000);
         CREATE TABLE bench.entries (id bigserial PRIMARY KEY, account_id integer NOT NULL, amount bigint NOT NULL);
         CREATE TABLE bench.log (id bigserial PRIMARY KEY, account_id integer NOT NULL, at timestamptz NOT NULL DEFAULT now());",
    )
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("order.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 10000)
BEGIN;
INSERT INTO bench.entries (account_id, amount) VALUES (:id, 1);
INSERT INTO bench.entries (account_id, amount) VALUES (:id, 2);
INSERT INTO bench.log (account_id) VALUES (:id);
UPDATE bench.accounts SET balance = balance + 3 WHERE id = :id;
SELECT balance FROM bench.accounts WHERE id = :id;
END;
",
    )
    .map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", "8", "-j", "2", "-T", &duration.as_secs().max(1).to_string(), "-f"])
        .arg(&script)
        .arg(database_url)
        .output()
        .await
        .map_err(|e| format!("pgbench could not be run ({e}); it comes with PostgreSQL's client tools"))?;
    let _ = tracehop_db::sqlx::raw_sql("DROP SCHEMA bench CASCADE").execute(&pool).await;
    pool.close().await;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_pgbench_tps(&text).ok_or_else(|| {
        format!("pgbench printed no rate: {}", String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or(""))
    })
}

/// The `tps = N (without initial connection time)` of pgbench's output.
pub fn parse_pgbench_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .filter(|line| line.starts_with("tps = "))
        .find(|line| line.contains("without") || !output.contains("without"))
        .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next()?.parse().ok())
}

/// Requests answered per second with 16 in flight, against a responder in
/// this process over the server at `nats`.
pub async fn nats_request_reply(nats: &async_nats::Client, duration: Duration) -> anyhow::Result<f64> {
    let subject = format!("bench.echo.{}", std::process::id());
    let mut responder = nats.subscribe(subject.clone()).await?;
    let replier = nats.clone();
    let echo = tokio::spawn(async move {
        while let Some(message) = responder.next().await {
            if let Some(reply) = message.reply {
                let _ = replier.publish(reply, message.payload).await;
            }
        }
    });
    let deadline = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (nats, subject) = (nats.clone(), subject.clone());
        workers.spawn(async move {
            let mut answered = 0u64;
            while Instant::now() < deadline {
                if nats.request(subject.clone(), "ping".into()).await.is_ok() {
                    answered += 1;
                }
            }
            answered
        });
    }
    let started = Instant::now();
    let mut answered = 0;
    while let Some(count) = workers.join_next().await {
        answered += count?;
    }
    let elapsed = started.elapsed();
    echo.abort();
    Ok(answered as f64 / elapsed.as_secs_f64())
}

/// Messages stored per second by a file-backed stream, publishing with 16
/// acks outstanding.
pub async fn jetstream_publish(js: &jetstream::Context, duration: Duration) -> anyhow::Result<f64> {
    let name = format!("BENCH_{}", std::process::id());
    let subject = format!("bench.js.{}", std::process::id());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(16);
    let mut stored = 0u64;
    while Instant::now() < deadline {
        if acks.len() == 16 {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("16 acks outstanding");
            ack.await?;
            stored += 1;
        }
        acks.push_back(js.publish(subject.clone(), payload.clone()).await?);
    }
    for ack in acks {
        ack.await?;
        stored += 1;
    }
    let elapsed = started.elapsed();
    js.delete_stream(&name).await?;
    Ok(stored as f64 / elapsed.as_secs_f64())
}

/// Nanoseconds per inject plus extract of a sampled W3C context over a NATS
/// `HeaderMap`: the median of 9 rounds of 20,000 pairs.
pub fn propagation_ns() -> f64 {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    let context = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("a valid trace id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("a valid span id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    tracehop_telemetry::install_propagator();
    const PAIRS: u32 = 20_000;
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PAIRS {
                let mut headers = async_nats::HeaderMap::new();
                tracehop_messaging::headers::inject(std::hint::black_box(&context), &mut headers);
                let extracted = tracehop_messaging::headers::extract(Some(&headers));
                std::hint::black_box(extracted);
            }
            started.elapsed().as_nanos() as f64 / f64::from(PAIRS)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

/// Runs the load engine at `rate` for `duration` against `gateway_url`,
/// sampling the CPU of `processes` around it.
pub async fn load_step(
    gateway_url: &str,
    js: &jetstream::Context,
    rate: f64,
    duration: Duration,
    processes: &[(String, u32)],
    database: &str,
    p99_limit: Duration,
) -> anyhow::Result<Step> {
    let config = LoadConfig {
        drain_timeout: Duration::from_secs(15),
        request_timeout: Duration::from_secs(10),
        ..LoadConfig::new(gateway_url, rate, duration)
    };
    let before = CpuSample::take(processes, database);
    let report = load::run(&config, Some(js), |_| {}).await?;
    let after = CpuSample::take(processes, database);
    Ok(Step::of(&report, after.since(&before), p99_limit))
}

/// The next rate to try: up by half while every step is sustained, then
/// halfway between the best sustained rate and the lowest that was not,
/// until they are within 10% of each other; `None` when the search is done.
pub fn next_rate(search: &Search, start_rate: f64, max_steps: usize) -> Option<f64> {
    if search.steps.len() >= max_steps {
        return None;
    }
    let Some(last) = search.steps.last() else { return Some(start_rate) };
    let good = search.steps.iter().filter(|s| s.sustained).map(|s| s.offered).fold(0.0, f64::max);
    let bad = search.steps.iter().filter(|s| !s.sustained).map(|s| s.offered).fold(f64::INFINITY, f64::min);
    if bad.is_infinite() {
        return Some(last.offered * 1.5);
    }
    if good == 0.0 {
        // Not even the first rate held: try lower, down to 10 orders/s.
        return (bad / 2.0 >= 10.0).then_some(bad / 2.0);
    }
    (bad / good > 1.1).then(|| ((good + bad) / 2.0).round())
}

/// The consumer the drain test stops: analytics, whose durable reads every
/// order event.
pub fn drain_consumer() -> (&'static str, &'static str) {
    let service = Service::Analytics;
    let spec = service.consumers().into_iter().next().expect("analytics owns a durable consumer");
    (service.name(), spec.durable)
}

/// Events waiting for `durable` of ORDERS: not yet delivered, plus
/// delivered and not yet acknowledged.
pub async fn backlog(js: &jetstream::Context, durable: &str) -> anyhow::Result<u64> {
    let stream = js.get_stream(tracehop_messaging::topology::ORDERS_STREAM).await?;
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.map_err(|e| anyhow::anyhow!("no durable consumer {durable}: {e}"))?;
    let info = consumer.info().await?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

/// Writes `text` to `path`, creating its folder.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, sustained: bool) -> Step {
        Step {
            offered,
            confirmed_per_s: offered,
            confirmed: offered as u64,
            failed: 0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            drained: Some(Duration::from_secs(1)),
            sustained,
            cpu_seconds: BTreeMap::new(),
        }
    }

    #[test]
    fn the_search_climbs_by_half_then_bisects_to_ten_percent() {
        let mut search = Search::default();
        assert_eq!(next_rate(&search, 100.0, 12), Some(100.0));
        search.steps.push(step(100.0, true));
        assert_eq!(next_rate(&search, 100.0, 12), Some(150.0));
        search.steps.push(step(150.0, true));
        search.steps.push(step(225.0, false));
        assert_eq!(next_rate(&search, 100.0, 12), Some(188.0));
        search.steps.push(step(188.0, true));
        assert_eq!(next_rate(&search, 100.0, 12), Some(207.0));
        search.steps.push(step(207.0, true));
        // 225 / 207 is within 10%: done, and the best is the highest held.
        assert_eq!(next_rate(&search, 100.0, 12), None);
        assert_eq!(search.highest(), 207.0);
        assert_eq!(next_rate(&search, 100.0, 5), None, "a step budget ends the search");
    }

    #[test]
    fn a_search_whose_first_rate_fails_goes_lower() {
        let mut search = Search::default();
        search.steps.push(step(100.0, false));
        assert_eq!(next_rate(&search, 100.0, 12), Some(50.0));
        search.steps.push(step(12.0, false));
        assert_eq!(next_rate(&search, 100.0, 12), None);
        assert_eq!(search.highest(), 0.0);
    }

    #[test]
    fn pgbench_output_gives_its_rate() {
        let output = "number of failed transactions: 0 (0.000%)\nlatency average = 3.1 ms\n\
                      initial connection time = 12.3 ms\ntps = 2563.123456 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(output), Some(2563.123456));
        assert_eq!(parse_pgbench_tps("tps = 99.5\n"), Some(99.5));
        assert_eq!(parse_pgbench_tps("pgbench: error: connection failed"), None);
    }

    #[test]
    fn cpu_time_of_this_process_is_read_and_grows() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("this process's /proc entry");
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_seconds(pid).expect("this process's /proc entry");
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn propagation_is_measured_in_nanoseconds() {
        let ns = propagation_ns();
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
    }

    #[test]
    fn cpu_compares_at_the_highest_rate_both_searches_held() {
        let with_cpu = |offered: f64, sustained: bool, cpu: f64| Step {
            cpu_seconds: [("order".to_string(), cpu)].into(),
            confirmed: 1000,
            ..step(offered, sustained)
        };
        let report = BenchReport {
            config: BenchConfig::default(),
            machine: Machine::read(),
            limits: PartLimits {
                pgbench_tps: Ok(1000.0),
                nats_request_reply_per_s: 1.0,
                jetstream_publish_per_s: 1.0,
                nats_sync_always: false,
            },
            traced: Search {
                steps: vec![with_cpu(100.0, true, 1.0), with_cpu(150.0, true, 1.1), with_cpu(225.0, false, 2.0)],
            },
            untraced: Search {
                steps: vec![with_cpu(100.0, true, 0.9), with_cpu(150.0, true, 1.0), with_cpu(225.0, true, 1.4)],
            },
            half_rate: None,
            propagation_ns: 1.0,
            drain: Err("not run".to_string()),
            elapsed: Duration::ZERO,
        };
        assert_eq!(report.common_rate(), Some(150.0));
        assert_eq!(BenchReport::cpu_ms_per_order(&report.traced, 150.0)["order"], 1.1);
        assert!((report.tracing_cpu_ratio().unwrap() - 1.1).abs() < 1e-9);
        assert!((report.orders_per_pgbench_tx().unwrap() - 0.15).abs() < 1e-9);
    }
}
