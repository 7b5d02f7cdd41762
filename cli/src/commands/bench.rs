//! `tracehop bench`: runs every measurement of [`crate::bench`] on a
//! private system (its own NATS server and database; the user's running
//! system, if any, is left alone), prints a summary or JSON, and writes
//! `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracehop_launcher::SERVICES;
use tracehop_testkit::TestSystem;

use crate::bench::{self, BenchConfig, BenchReport, DrainTest, PartLimits, Search, Step};
use crate::commands::load::millis;
use crate::settings::Settings;

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub config: BenchConfig,
    /// Where the report goes; `None` writes none.
    pub out: Option<PathBuf>,
    pub max_steps: usize,
}

/// Tracing off, for the comparison run.
const TRACING_OFF: [(&str, &str); 2] = [("OTEL_TRACES_SAMPLER", "always_off"), ("TRACEHOP_SPAN_FEED", "false")];

pub async fn run(_settings: &Settings, args: BenchArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let config = args.config.clone();
    let say = |text: String| eprintln!("[{:>4.0}s] {text}", started.elapsed().as_secs_f64());
    let latency = config.payment_latency.as_millis().to_string();
    let traced_env = [("PAYMENT_LATENCY_MS", latency.as_str())];

    say("starting a private system (100% tracing)".to_string());
    let system = TestSystem::start_with(&traced_env).await?;
    let database = database_name(&system.db.url());

    say(format!("pgbench, 8 clients, {}", humantime::format_duration(config.part_time)));
    let pgbench_tps = bench::pgbench(&system.db.url(), config.part_time).await;
    // NATS's own limits are measured on a bare server of the same binary
    // and fsync setting: the system's server admits only its users, each to
    // its own subjects.
    let bare = BareNats::start().await?;
    let nats = async_nats::connect(bare.url()).await?;
    say(format!("NATS request/reply, 16 in flight, {}", humantime::format_duration(config.part_time / 2)));
    let nats_request_reply_per_s = bench::nats_request_reply(&nats, config.part_time / 2).await?;
    say(format!("JetStream publish with ack, 16 in flight, {}", humantime::format_duration(config.part_time / 2)));
    let jetstream_publish_per_s =
        bench::jetstream_publish(&async_nats::jetstream::new(nats.clone()), config.part_time / 2).await?;
    drop(nats);
    drop(bare);
    let limits = PartLimits {
        pgbench_tps,
        nats_request_reply_per_s,
        jetstream_publish_per_s,
        nats_sync_always: tracehop_testkit::supports_sync_always(),
    };

    say("inject + extract of a W3C context over NATS headers".to_string());
    let propagation_ns = bench::propagation_ns();

    let traced = search(&system, &database, &config, args.max_steps, &say).await?;
    let half = traced.highest() / 2.0;
    let mut half_rate = None;
    let mut drain = Err("no sustained rate was found".to_string());
    if half >= 1.0 {
        say(format!("half the highest rate: {half:.0}/s for {}", humantime::format_duration(config.step)));
        let processes = processes(&system);
        half_rate = Some(
            bench::load_step(
                &system.gateway_url,
                &system.js,
                half,
                config.step,
                &processes,
                &database,
                config.p99_limit,
            )
            .await?,
        );
        drain = drain_test(system, half, config.stopped_for, &say).await;
    } else {
        drop(system);
    }

    say("starting a private system with tracing off".to_string());
    let system = TestSystem::start_with(&[traced_env[0], TRACING_OFF[0], TRACING_OFF[1]]).await?;
    let database = database_name(&system.db.url());
    let untraced = search(&system, &database, &config, args.max_steps, &say).await?;
    drop(system);

    let report = BenchReport {
        config,
        machine: bench::Machine::read(),
        limits,
        traced,
        untraced,
        half_rate,
        propagation_ns,
        drain,
        elapsed: started.elapsed(),
    };
    if let Some(out) = &args.out {
        let kept = std::fs::read_to_string(out).ok().and_then(|old| kept_tail(&old));
        bench::write_file(out, &(markdown(&report) + kept.as_deref().unwrap_or_default()))?;
        say(format!("wrote {}", out.display()));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report_json(&report))?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// A `nats-server -js` with no accounts, on a free port and a store of its
/// own, fsyncing as the system's server does; killed on drop.
struct BareNats {
    port: u16,
    child: std::process::Child,
    _store: tempfile::TempDir,
}

impl BareNats {
    async fn start() -> anyhow::Result<Self> {
        let store = tempfile::Builder::new().prefix("tracehop-bench-nats-").tempdir()?;
        let port = tracehop_testkit::free_port();
        let mut command = std::process::Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(store.path());
        if tracehop_testkit::supports_sync_always() {
            let config = store.path().join("sync.conf");
            std::fs::write(&config, "jetstream { sync_interval: always }\n")?;
            command.arg("-c").arg(config);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("failed to start nats-server (is it on the PATH?): {e}"))?;
        let bare = Self { port, child, _store: store };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the bare nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(bare)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for BareNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database's name, the last segment of its URL.
fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_string()
}

/// Every process whose CPU is counted: the services, the NATS server and
/// this command (the load generator).
fn processes(system: &TestSystem) -> Vec<(String, u32)> {
    let mut processes: Vec<(String, u32)> = SERVICES
        .iter()
        .filter_map(|service| Some((service.to_string(), system.launcher.running_pid(service)?)))
        .collect();
    if let Some(pid) = system.nats_server.pid() {
        processes.push(("nats-server".to_string(), pid));
    }
    processes.push(("load generator".to_string(), std::process::id()));
    processes
}

async fn search(
    system: &TestSystem,
    database: &str,
    config: &BenchConfig,
    max_steps: usize,
    say: &impl Fn(String),
) -> anyhow::Result<Search> {
    let mut search = Search::default();
    while let Some(rate) = bench::next_rate(&search, config.start_rate, max_steps) {
        let processes = processes(system);
        let step = bench::load_step(
            &system.gateway_url,
            &system.js,
            rate,
            config.step,
            &processes,
            database,
            config.p99_limit,
        )
        .await?;
        say(format!(
            "{rate:>6.0}/s offered: {:.0} confirmed/s, p50 {}, p99 {}, {} failed, {} -> {}",
            step.confirmed_per_s,
            millis(step.p50_ms),
            millis(step.p99_ms),
            step.failed,
            step.drained.map_or_else(|| "consumers behind".to_string(), |d| format!("drained in {d:.1?}")),
            if step.sustained { "sustained" } else { "not sustained" },
        ));
        search.steps.push(step);
    }
    Ok(search)
}

/// Stops analytics for `stopped_for` while orders keep arriving at `rate`,
/// starts it again and times its catching up.
async fn drain_test(
    mut system: TestSystem,
    rate: f64,
    stopped_for: Duration,
    say: &impl Fn(String),
) -> Result<DrainTest, String> {
    let (service, durable) = bench::drain_consumer();
    let run_for = stopped_for * 3;
    say(format!(
        "drain: {rate:.0}/s for {}, {service} stopped for the first {}",
        humantime::format_duration(run_for),
        humantime::format_duration(stopped_for)
    ));
    let config = crate::load::LoadConfig {
        drain_timeout: Duration::from_secs(30),
        ..crate::load::LoadConfig::new(system.gateway_url.clone(), rate, run_for)
    };
    let js = system.js.clone();
    let load = tokio::spawn(async move { crate::load::run(&config, Some(&js), |_| {}).await });
    let outcome = async {
        system.stop_service(service).await.map_err(|e| format!("failed to stop {service}: {e:#}"))?;
        tokio::time::sleep(stopped_for).await;
        let backlog = bench::backlog(&system.js, durable).await.map_err(|e| format!("{e:#}"))?;
        system.start_service(service).map_err(|e| format!("failed to start {service}: {e:#}"))?;
        let back = Instant::now();
        // Caught up: what waits is no more than a fifth of a second of
        // arrivals, on two readings in a row.
        let caught_up_at = (rate / 5.0).max(5.0) as u64;
        let mut below = 0;
        loop {
            let waiting = bench::backlog(&system.js, durable).await.map_err(|e| format!("{e:#}"))?;
            below = if waiting <= caught_up_at { below + 1 } else { 0 };
            if below == 2 {
                break;
            }
            if back.elapsed() > stopped_for * 2 {
                return Err(format!("{service} had not caught up {:.0?} after it came back", back.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drain_time = back.elapsed();
        Ok(DrainTest {
            consumer: durable.to_string(),
            arrival_rate: rate,
            stopped_for,
            backlog,
            drain_time,
            processing_rate: (backlog as f64 + rate * drain_time.as_secs_f64()) / drain_time.as_secs_f64(),
        })
    }
    .await;
    let _ = load.await;
    outcome
}

fn step_json(step: &Step) -> Value {
    json!({
        "offered_per_s": step.offered,
        "confirmed_per_s": step.confirmed_per_s,
        "failed": step.failed,
        "p50_ms": finite(step.p50_ms),
        "p99_ms": finite(step.p99_ms),
        "drained_s": step.drained.map(|d| d.as_secs_f64()),
        "sustained": step.sustained,
    })
}

fn finite(value: f64) -> Value {
    if value.is_finite() { json!(value) } else { Value::Null }
}

pub fn report_json(report: &BenchReport) -> Value {
    let search = |search: &Search| {
        json!({
            "highest_confirmed_per_s": search.highest(),
            "steps": search.steps.iter().map(step_json).collect::<Vec<_>>(),
        })
    };
    json!({
        "machine": {
            "cpus": report.machine.cpus,
            "cpu_model": report.machine.cpu_model,
            "memory_gib": report.machine.memory_gib,
            "kernel": report.machine.kernel,
            "nats_server": report.machine.nats_server,
            "pgbench": report.machine.postgres,
        },
        "limits": {
            "pgbench_tps": report.limits.pgbench_tps.as_ref().ok(),
            "pgbench_error": report.limits.pgbench_tps.as_ref().err(),
            "nats_request_reply_per_s": report.limits.nats_request_reply_per_s,
            "jetstream_publish_per_s": report.limits.jetstream_publish_per_s,
            "nats_sync_always": report.limits.nats_sync_always,
        },
        "traced": search(&report.traced),
        "untraced": search(&report.untraced),
        "tracing_ratio": report.tracing_ratio(),
        "orders_per_pgbench_tx": report.orders_per_pgbench_tx(),
        "half_rate": report.half_rate.as_ref().map(step_json),
        "half_rate_p99_target_ms": report.half_rate_p99_target_ms(),
        "propagation_ns_per_hop": report.propagation_ns,
        "drain": match &report.drain {
            Ok(drain) => json!({
                "consumer": drain.consumer,
                "arrival_per_s": drain.arrival_rate,
                "stopped_s": drain.stopped_for.as_secs_f64(),
                "backlog": drain.backlog,
                "drain_s": drain.drain_time.as_secs_f64(),
                "processing_per_s": drain.processing_rate,
                "multiple_of_arrival": drain.multiple(),
            }),
            Err(why) => json!({ "error": why }),
        },
        "cpu_rate_per_s": report.common_rate(),
        "cpu_ms_per_order": report.common_rate().map(|rate| BenchReport::cpu_ms_per_order(&report.traced, rate)),
        "cpu_ms_per_order_untraced":
            report.common_rate().map(|rate| BenchReport::cpu_ms_per_order(&report.untraced, rate)),
        "tracing_cpu_ratio": report.tracing_cpu_ratio(),
        "elapsed_s": report.elapsed.as_secs_f64(),
    })
}

/// The short form printed at the end of a run.
pub fn summary(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", figures_table(report));
    out
}

/// The headline figures, one row each, with their targets.
fn figures_table(report: &BenchReport) -> String {
    let mut table = super::load::table(&["figure", "value", "target"]);
    let rate = |r: f64| format!("{r:.0}/s");
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{:.0}%", r * 100.0));
    let pgbench = report.limits.pgbench_tps.as_ref().map_or_else(|e| format!("not measured: {e}"), |t| rate(*t));
    table.add_row(vec!["pgbench, 5-statement tx, 8 clients".to_string(), pgbench, String::new()]);
    table.add_row(vec![
        "NATS request/reply, 16 in flight".to_string(),
        rate(report.limits.nats_request_reply_per_s),
        String::new(),
    ]);
    table.add_row(vec![
        format!(
            "JetStream publish+ack, 16 in flight ({})",
            if report.limits.nats_sync_always { "sync always" } else { "fsync on timer" }
        ),
        rate(report.limits.jetstream_publish_per_s),
        String::new(),
    ]);
    table.add_row(vec![
        "highest sustained confirmed orders, 100% tracing".to_string(),
        rate(report.traced.highest()),
        "≥ 40% of pgbench".to_string(),
    ]);
    table.add_row(vec![
        "  as a share of pgbench's rate".to_string(),
        ratio(report.orders_per_pgbench_tx()),
        "≥ 40%".to_string(),
    ]);
    table.add_row(vec![
        "highest sustained confirmed orders, tracing off".to_string(),
        rate(report.untraced.highest()),
        String::new(),
    ]);
    table.add_row(vec!["  tracing on / off".to_string(), ratio(report.tracing_ratio()), "≥ 95%".to_string()]);
    table.add_row(vec![
        format!(
            "  CPU per order, tracing off / on{}",
            report.common_rate().map_or_else(String::new, |rate| format!(" (at {rate:.0}/s)"))
        ),
        ratio(report.tracing_cpu_ratio().map(|r| 1.0 / r)),
        "≥ 95%".to_string(),
    ]);
    let target = report.half_rate_p99_target_ms();
    match &report.half_rate {
        Some(half) => {
            table.add_row(vec![
                format!("gateway p50 / p99 at half that rate ({:.0}/s)", half.offered),
                format!("{} / {}", millis(half.p50_ms), millis(half.p99_ms)),
                format!("p99 ≤ {}", millis(target)),
            ]);
        }
        None => {
            table.add_row(vec!["gateway p50 / p99 at half that rate".to_string(), "-".to_string(), String::new()]);
        }
    }
    table.add_row(vec![
        "inject + extract per hop".to_string(),
        format!("{:.2} µs", report.propagation_ns / 1000.0),
        String::new(),
    ]);
    let drain = match &report.drain {
        Ok(drain) => format!("{:.1}x ({} events in {:.1?})", drain.multiple(), drain.backlog, drain.drain_time),
        Err(why) => format!("not measured: {why}"),
    };
    table.add_row(vec!["backlog drain, as a multiple of arrivals".to_string(), drain, "≥ 5x".to_string()]);
    super::load::right_align(&mut table, &[1]);
    super::load::table_text(&table)
}

/// The line after which `BENCHMARKS.md` holds measurements made by hand
/// (memory under a long load, say), which a new run keeps.
pub const KEPT_MARKER: &str = "<!-- measured by hand: tracehop bench keeps what follows -->";

/// What follows [`KEPT_MARKER`] in an earlier report, marker included.
fn kept_tail(old: &str) -> Option<String> {
    old.find(KEPT_MARKER).map(|at| format!("\n{}", &old[at..]))
}

/// `BENCHMARKS.md`: the machine, the command, every figure and the steps.
pub fn markdown(report: &BenchReport) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `tracehop bench` (see the README) in {:.0?}. Every figure comes from this one run on this \
         machine; ratios compare figures of the same run. The machine is shared and noisy: compare runs by \
         their ratios, not their absolute numbers.\n",
        report.elapsed
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "- {} CPUs ({}), {:.1} GiB memory, Linux {}", m.cpus, m.cpu_model, m.memory_gib, m.kernel);
    let _ = writeln!(out, "- {}; {}", m.nats_server, m.postgres);
    let _ = writeln!(
        out,
        "- every service, NATS, PostgreSQL and the load generator on this one machine; payment's simulated \
         latency {} ms\n",
        millis(report.config.payment_latency.as_secs_f64() * 1000.0)
    );
    let _ = writeln!(out, "## Figures\n\n```\n{}```\n", figures_table(report));
    let _ = writeln!(
        out,
        "A rate is *sustained* when the generator kept it (an open model: orders are sent on schedule, \
         whatever the answers), every order was confirmed, the gateway's p99 stayed within {} ms and every \
         consumer of ORDERS had caught up within 15 s of the last answer. Each step sends for {}.\n",
        millis(report.config.p99_limit.as_secs_f64() * 1000.0),
        humantime::format_duration(report.config.step)
    );
    for (title, search) in [("100% tracing", &report.traced), ("tracing off", &report.untraced)] {
        let _ = writeln!(out, "### The rate search, {title}\n\n```\n{}```\n", steps_table(search));
    }
    if let Some(rate) = report.common_rate() {
        let traced = BenchReport::cpu_ms_per_order(&report.traced, rate);
        let untraced = BenchReport::cpu_ms_per_order(&report.untraced, rate);
        let _ = writeln!(
            out,
            "## CPU per order\n\nCPU milliseconds per confirmed order at {rate:.0}/s, the highest rate both \
             searches sustained (so that fixed costs spread alike), from `/proc/<pid>/stat` (PostgreSQL: the \
             server's own processes and this database's backends). The last column is what 100% tracing \
             adds.\n\n```\n{}```\n",
            cpu_table(&traced, &untraced)
        );
    }
    out
}

fn steps_table(search: &Search) -> String {
    let mut table =
        super::load::table(&["offered", "confirmed", "p50", "p99", "failed", "caught up", "sustained", "CPU ms/order"]);
    for step in &search.steps {
        let cpu_ms = step.cpu_seconds.values().sum::<f64>() * 1000.0 / step.confirmed.max(1) as f64;
        table.add_row(vec![
            format!("{:.0}/s", step.offered),
            format!("{:.0}/s", step.confirmed_per_s),
            millis(step.p50_ms),
            millis(step.p99_ms),
            step.failed.to_string(),
            step.drained.map_or_else(|| "no".to_string(), |d| format!("{:.1}s", d.as_secs_f64())),
            if step.sustained { "yes" } else { "no" }.to_string(),
            format!("{cpu_ms:.2}"),
        ]);
    }
    super::load::right_align(&mut table, &[0, 1, 2, 3, 4, 5, 7]);
    super::load::table_text(&table)
}

fn cpu_table(traced: &BTreeMap<String, f64>, untraced: &BTreeMap<String, f64>) -> String {
    let total = |cpu: &BTreeMap<String, f64>| cpu.values().sum::<f64>();
    let (traced_total, untraced_total) = (total(traced), total(untraced));
    let mut rows: Vec<(&String, &f64)> = traced.iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(a.1));
    let mut table = super::load::table(&["process", "traced ms/order", "share", "untraced ms/order", "tracing adds"]);
    let untraced_cell = |ms: Option<f64>| ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.2}"));
    for (process, ms) in rows {
        let off = untraced.get(process).copied();
        table.add_row(vec![
            process.clone(),
            format!("{ms:.2}"),
            format!("{:.0}%", if traced_total > 0.0 { ms / traced_total * 100.0 } else { 0.0 }),
            untraced_cell(off),
            off.map_or_else(|| "-".to_string(), |off| format!("{:+.2}", ms - off)),
        ]);
    }
    let off_total = (untraced_total > 0.0).then_some(untraced_total);
    table.add_row(vec![
        "total".to_string(),
        format!("{traced_total:.2}"),
        "100%".to_string(),
        untraced_cell(off_total),
        off_total.map_or_else(|| "-".to_string(), |off| format!("{:+.2}", traced_total - off)),
    ]);
    super::load::right_align(&mut table, &[1, 2, 3, 4]);
    super::load::table_text(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_report_keeps_what_was_measured_by_hand() {
        let old = format!("# Benchmarks\nold figures\n{KEPT_MARKER}\n## Memory\nnats 300 MB\n");
        let tail = kept_tail(&old).expect("the marker is there");
        assert!(tail.starts_with(&format!("\n{KEPT_MARKER}")), "{tail}");
        assert!(tail.ends_with("## Memory\nnats 300 MB\n"), "{tail}");
        assert!(!tail.contains("old figures"));
        assert_eq!(kept_tail("# Benchmarks\nno marker\n"), None);
    }
}
