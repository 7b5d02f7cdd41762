//! `tracehop load` against a whole test system (its own NATS server and
//! database, every service as a process): its counts agree with the
//! database's, and when it says the consumers drained they have processed
//! every event (one of them down until after the load, so that the drain is
//! a real wait).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracehop_testkit::TestSystem;

use common::scalar;

#[tokio::test]
async fn load_counts_agree_with_the_database_and_drain_means_processed() {
    let mut system = TestSystem::start().await.unwrap();
    // Analytics is down while the load runs and for a while after it, so the
    // drain has something to wait for.
    system.stop_service("analytics").await.unwrap();
    let gateway = system.gateway_url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let load = Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["load", "--rate", "30", "--duration", "5s", "--premium-ratio", "0.2", "--decline-ratio", "0.2"])
        .args(["--json"])
        .envs(system.command_env())
        .env("TRACEHOP_GATEWAY", &gateway)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    system.start_service("analytics").unwrap();
    system.wait_ready(&["analytics"]).await.unwrap();
    let output = tokio::task::spawn_blocking(move || load.wait_with_output()).await.unwrap().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tracehop load failed:\n{stderr}\n{}", system.logs());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON object:\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("load --json is not JSON");

    let mut keys: Vec<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["achieved_rate", "answers", "drain_ms", "latency_ms", "sent"]);
    let mut latency_keys: Vec<&str> = report["latency_ms"].as_object().unwrap().keys().map(String::as_str).collect();
    latency_keys.sort_unstable();
    assert_eq!(latency_keys, ["max", "p50", "p90", "p99", "p999"]);
    let latency = |key: &str| report["latency_ms"][key].as_f64().unwrap_or_else(|| panic!("latency {key}: {report}"));
    assert!(latency("p50") > 0.0 && latency("p50") <= latency("p90"), "{report}");
    assert!(latency("p90") <= latency("p99") && latency("p99") <= latency("p999"), "{report}");
    assert!(latency("p999") <= latency("max"), "{report}");

    let answer = |kind: &str| report["answers"][kind].as_u64().unwrap_or_else(|| panic!("answers.{kind}: {report}"));
    let sent = report["sent"].as_u64().unwrap();
    assert_eq!(sent, 150, "30/s for 5 s: {report}");
    let sum: u64 = report["answers"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, sent, "every request is answered once: {report}");
    assert_eq!(answer("402"), 30, "a fifth of the cards are declined: {report}");
    assert_eq!(answer("201"), 120, "the rest are confirmed: {report}");
    let rate = report["achieved_rate"].as_f64().unwrap();
    assert!((rate - 30.0).abs() < 3.0, "achieved rate {rate}: {report}");
    assert!(took < Duration::from_secs(60), "bounded: {took:?}");

    // The database agrees.
    let confirmed = scalar(&system, "SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed'").await;
    let declined = scalar(
        &system,
        "SELECT COUNT(*) FROM ordering.orders WHERE status = 'failed' AND failure_code = 4", // PAYMENT_DECLINED
    )
    .await;
    assert_eq!((answer("201") as i64, answer("402") as i64), (confirmed, declined));
    let premium = scalar(
        &system,
        "SELECT COUNT(*) FROM ordering.orders o WHERE customer_id IN ('premium-pat', 'premium-sam')
           AND (SELECT COUNT(*) FROM ordering.order_items i WHERE i.order_id = o.order_id) > 1",
    )
    .await;
    assert_eq!(premium, 30, "a fifth are premium orders with several items");

    // drain_ms says every consumer had processed every event: their tables
    // are complete now, without waiting any longer, and the drain lasted
    // until analytics was back (restarted two seconds after the last answer).
    let drain_ms = report["drain_ms"].as_u64().unwrap_or_else(|| panic!("drain_ms must be measured: {report}"));
    assert!(drain_ms >= 1000, "drained before analytics was back: {report}");
    let decided = confirmed + declined;
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM loyalty.accruals").await, confirmed);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await, decided);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM notification.emails").await, decided);
}

/// The human summary, and a refusal of a rate that sends nothing.
#[tokio::test]
async fn load_prints_a_summary_and_refuses_nonsense() {
    // Nothing listens here: every request is a connection error, and the
    // command says the system is not up.
    let port = tracehop_testkit::free_port();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tracehop"))
            .args(args)
            .env("TRACEHOP_GATEWAY", format!("127.0.0.1:{port}"))
            .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
            .output()
            .unwrap()
    };
    let output = run(&["load", "--rate", "20", "--duration", "500ms"]);
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("connection error") && stdout.contains("p99.9"), "{stdout}");
    assert!(stdout.contains("drain: not measured"), "{stdout}");
    assert!(stderr.contains("is the system up?"), "{stderr}");

    let output = run(&["load", "--rate", "1", "--duration", "100ms"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("less than one request"));
    let output = run(&["load", "--rate", "5", "--duration", "soon"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a duration"));
}
