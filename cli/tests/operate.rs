//! Operating a running system as a user does: `tracehop status`, `kill` and
//! `start`, run as the real `tracehop` binary against a system that
//! `tracehop up --detach` started in a temporary `TRACEHOP_HOME`, on a
//! private NATS server and a fresh database; `tracehop down` stops it even
//! when an assertion fails. Also the status tables and JSON, rendered from
//! hand-made input without any system.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracehop::commands::status::{
    AlertStatus, ConsumerStatus, ServiceStatus, SpanPipelineStatus, Status, TraceStoreStatus, age, render_json,
    render_text,
};
use tracehop_launcher::{SERVICES, is_service_process};
use tracehop_messaging::topology;
use tracehop_proto::v1::{Alert, AlertKind, ConsumerHealth, ConsumerState};
use tracehop_testkit::{NatsServer, TestDatabase, free_port};

/// The `tracehop` binary with the test system's environment.
struct Cli {
    env: Vec<(&'static str, String)>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tracehop"))
            .args(args)
            // Only what the test gives: a NATS server of the caller's own
            // would stop `up` from starting the system's.
            .env_remove("NATS_URL")
            .env_remove("TRACEHOP_NATS_KEYS")
            .env_remove("NATS_NKEY")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("failed to run tracehop")
    }

    /// Runs `args`, which must succeed; returns standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "tracehop {} failed:\n{}", args.join(" "), describe(&output));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `args`, which must fail; returns standard error.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(!output.status.success(), "tracehop {} succeeded:\n{}", args.join(" "), describe(&output));
        String::from_utf8(output.stderr).unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is not JSON")
    }

    /// Polls `status --json` until `done` holds (30 s at most).
    fn status_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "status never showed {what}:\n{status:#}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `tracehop down` when dropped, so that no service outlives the test.
struct Down<'a>(&'a Cli);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["down"]);
    }
}

/// A fresh `TRACEHOP_HOME`, removed when dropped.
struct Home(PathBuf);

impl Home {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("tracehop-operate-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status:#}"))
}

fn consumer<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == name)
        .unwrap_or_else(|| panic!("no consumer {name} in {status:#}"))
}

fn is_up(status: &Value, name: &str) -> bool {
    service(status, name)["state"] == "up"
}

/// Pulling again, and seen so: the sentinel, when there is one, may look
/// only every so often.
fn is_pulling(status: &Value, name: &str) -> bool {
    let consumer = consumer(status, name);
    consumer["active_pullers"].as_u64().unwrap() > 0 && consumer["state"] == "ok"
}

fn pid_of(status: &Value, name: &str) -> u32 {
    service(status, name)["pid"].as_u64().unwrap_or_else(|| panic!("{name} has no pid in {status:#}")) as u32
}

/// The pid in `tracehop <verb> ... service` output such as
/// `analytics killed (SIGKILL, pid 1234)`.
fn pid_in(text: &str) -> u32 {
    let rest = &text[text.find("pid ").unwrap_or_else(|| panic!("no pid in {text:?}")) + 4..];
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// With no `NATS_URL` and `nats-server` on the PATH, `up` runs the system's
/// own NATS server (its port, store and keys under the home, `GOMEMLIMIT`
/// from the span feed's size), which nobody reaches without a key, and
/// `down` stops it last.
#[tokio::test(flavor = "multi_thread")]
async fn up_runs_the_systems_own_nats_server_and_down_stops_it_last() {
    use std::os::unix::fs::PermissionsExt as _;
    let db = TestDatabase::create().await.unwrap();
    let home = Home::new();
    let port = free_port();
    let feed_bytes: u64 = 64 * 1024 * 1024;
    let cli = Cli {
        env: vec![
            ("DATABASE_URL", db.url()),
            ("TRACEHOP_GATEWAY", format!("127.0.0.1:{}", free_port())),
            ("TRACEHOP_HOME", home.0.to_string_lossy().into_owned()),
            ("TRACEHOP_NATS_PORT", port.to_string()),
            ("TRACEHOP_SPAN_FEED_BYTES", feed_bytes.to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", String::new()),
            ("RUST_LOG", "info".to_string()),
            ("NO_COLOR", "1".to_string()),
        ],
    };
    let down = Down(&cli);
    let up = cli.ok(&["up", "--detach"]);
    let said = |what: &str| up.lines().any(|line| line.split_whitespace().take(2).eq(["nats-server", what]));
    assert!(said("started"), "{up}");

    // A real nats-server process, pid-managed like the services.
    let pid: u32 = std::fs::read_to_string(home.0.join("run/nats-server.pid")).unwrap().trim().parse().unwrap();
    assert!(tracehop_launcher::runs_program(pid, "nats-server"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let expected = format!("GOMEMLIMIT={}", feed_bytes + feed_bytes / 2);
    assert!(environ.split(|b| *b == 0).any(|entry| entry == expected.as_bytes()), "no {expected}");
    assert!(home.0.join("nats/store/jetstream").is_dir(), "the store is not under the home");

    // Keys readable by their owner only; nobody gets in without one.
    let keys = home.0.join("nats/keys");
    assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&keys).unwrap() {
        assert_eq!(entry.unwrap().metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
    let anonymous = async_nats::ConnectOptions::new().connect(format!("nats://127.0.0.1:{port}")).await;
    assert!(anonymous.is_err(), "an anonymous client got in");

    // The system works on it: an order through, status read.
    let order: Value = serde_json::from_str(&cli.ok(&["order", "--json"])).unwrap();
    assert_eq!(order["status"], "confirmed", "{order:#}");
    cli.status_until("every service up", |status| SERVICES.iter().all(|name| is_up(status, name)));

    // Down stops it, last.
    let stopped = cli.ok(&["down"]);
    let last = stopped.lines().last().unwrap_or_default();
    assert!(last.contains("nats-server") && last.contains("stopped"), "{stopped}");
    assert!(!tracehop_launcher::runs_program(pid, "nats-server"), "nats-server outlived down");
    drop(down);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_kill_and_start_operate_single_services() {
    let nats = NatsServer::start().await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let home = Home::new();
    let cli = Cli {
        env: vec![
            ("NATS_URL", nats.url()),
            ("TRACEHOP_NATS_KEYS", nats.keys_dir().to_string_lossy().into_owned()),
            ("DATABASE_URL", db.url()),
            ("TRACEHOP_GATEWAY", format!("127.0.0.1:{}", free_port())),
            ("TRACEHOP_HOME", home.0.to_string_lossy().into_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", String::new()),
            ("RUST_LOG", "info".to_string()),
            ("NO_COLOR", "1".to_string()),
        ],
    };
    // Declared after the server, the database and the home: dropped first.
    let _down = Down(&cli);
    cli.ok(&["up", "--detach"]);

    // Everything up, with live pids and every expected consumer pulling.
    let expected: Vec<&str> = topology::expected_consumers().iter().map(|spec| spec.durable).collect();
    let status = cli.status_until("every consumer pulling", |s| expected.iter().all(|name| is_pulling(s, name)));
    assert_eq!(status["services"].as_array().unwrap().len(), SERVICES.len(), "{status:#}");
    for name in SERVICES {
        let entry = service(&status, name);
        assert_eq!(entry["state"], "up", "{status:#}");
        assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
        assert!(is_service_process(pid_of(&status, name), name), "{name}'s pid is not {name}");
    }
    for name in &expected {
        let entry = consumer(&status, name);
        assert_eq!(entry["stream"], topology::ORDERS_STREAM);
        for field in ["pending", "ack_pending", "redeliveries", "dead_letters", "oldest_unprocessed_age_ms"] {
            assert_eq!(entry[field], 0, "{name}.{field} on an idle system: {status:#}");
        }
    }
    let text = cli.ok(&["status"]);
    assert!(text.starts_with("services\n  service "), "{text}");
    for name in SERVICES {
        assert!(text.lines().any(|l| l.split_whitespace().take(2).eq([name, "up"])), "{name} not up in:\n{text}");
    }
    // With a sentinel in the system, it is the one that answers.
    let has_sentinel = SERVICES.contains(&"sentinel");
    assert_eq!(status["sentinel"], has_sentinel, "{status:#}");
    if !has_sentinel {
        assert!(text.contains("sentinel not running: no alerts"), "{text}");
    }

    // A crash: analytics is down and nobody pulls from its consumer; the
    // others carry on.
    let analytics_pid = pid_of(&status, "analytics");
    let out = cli.ok(&["kill", "analytics"]);
    assert!(out.contains("analytics killed (SIGKILL"), "{out}");
    assert_eq!(pid_in(&out), analytics_pid);
    assert!(!is_service_process(analytics_pid, "analytics"), "analytics still runs after kill");
    let status = cli.status_until("analytics down with no puller", |s| {
        consumer(s, "analytics")["active_pullers"] == 0 && consumer(s, "analytics")["state"] == "down"
    });
    assert_eq!(service(&status, "analytics")["state"], "down");
    assert_eq!(service(&status, "analytics")["pid"], Value::Null);
    for name in expected.iter().filter(|name| **name != "analytics") {
        assert!(is_pulling(&status, name), "{name} stopped pulling when analytics died: {status:#}");
    }
    let text = cli.ok(&["status"]);
    assert!(text.lines().any(|l| l.split_whitespace().take(3).eq(["analytics", "down", "-"])), "{text}");
    assert!(text.lines().any(|l| l.split_whitespace().take(4).eq(["analytics", "ORDERS", "down", "0"])), "{text}");

    // An order while analytics is down: its event waits for analytics alone.
    cli.ok(&["order"]);
    let status = cli.status_until("the order's event waiting for analytics", |s| {
        consumer(s, "analytics")["pending"] == 1 && consumer(s, "notification")["pending"] == 0
    });
    assert!(consumer(&status, "analytics")["oldest_unprocessed_age_ms"].as_i64().unwrap() > 0, "{status:#}");
    if has_sentinel {
        let down_alert = |s: &Value| {
            s["alerts"].as_array().unwrap().iter().any(|a| a["consumer"] == "analytics" && a["kind"] == "consumer_down")
        };
        cli.status_until("the sentinel's alert that analytics is down", down_alert);
        let text = cli.ok(&["status"]);
        assert!(text.lines().any(|l| l.trim_start().starts_with("consumer down      ORDERS/analytics")), "{text}");
    }

    // Without a sentinel, status reads JetStream itself (the same backlog,
    // and dead letters counted per consumer) and says there are no alerts.
    if SERVICES.contains(&"sentinel") {
        cli.ok(&["kill", "sentinel"]);
    }
    // Loyalty's own key: nobody else may file loyalty's dead letters.
    let js = async_nats::jetstream::new(nats.connect_service(tracehop_messaging::Service::Loyalty).await.unwrap());
    js.publish(topology::dead_letter_subject("loyalty"), "not a real event".into()).await.unwrap().await.unwrap();
    let status = cli.status();
    assert_eq!(status["sentinel"], false, "{status:#}");
    assert_eq!(status["alerts"], Value::Array(vec![]));
    let analytics = consumer(&status, "analytics");
    assert_eq!(
        (&analytics["state"], &analytics["active_pullers"], &analytics["pending"]),
        (&"down".into(), &0.into(), &1.into())
    );
    assert!(analytics["oldest_unprocessed_age_ms"].as_i64().unwrap() > 0, "{status:#}");
    assert_eq!(consumer(&status, "loyalty")["dead_letters"], 1, "{status:#}");
    assert_eq!(consumer(&status, "loyalty")["state"], "failing", "a dead letter waits: {status:#}");
    assert_eq!(consumer(&status, "analytics")["dead_letters"], 0, "{status:#}");
    for name in expected.iter().filter(|name| **name != "analytics") {
        let pulling = consumer(&status, name)["active_pullers"].as_u64().unwrap() > 0;
        assert!(pulling && (is_pulling(&status, name) || *name == "loyalty"), "{name} in {status:#}");
        assert_eq!(consumer(&status, name)["pending"], 0, "{name} in {status:#}");
    }
    let text = cli.ok(&["status"]);
    assert!(text.contains("consumers (read from JetStream)"), "{text}");
    assert!(text.trim_end().ends_with("sentinel not running: no alerts"), "{text}");

    // Mistakes are explained.
    let error = cli.fails(&["kill", "analytics"]);
    assert!(error.contains("analytics is not running"), "{error}");
    for args in [&["kill", "nosuch"][..], &["start", "nosuch"][..]] {
        let error = cli.fails(args);
        assert!(error.contains("unknown service \"nosuch\""), "{error}");
        for name in SERVICES {
            assert!(error.contains(name), "{name} is not among the valid names in: {error}");
        }
    }

    // Back again: a new process, answering, its consumer pulling.
    let out = cli.ok(&["start", "analytics"]);
    assert!(out.starts_with("analytics started (pid "), "{out}");
    let new_pid = pid_in(&out);
    assert_ne!(new_pid, analytics_pid);
    let status = cli.status_until("analytics caught up", |s| {
        is_pulling(s, "analytics")
            && consumer(s, "analytics")["pending"] == 0
            && consumer(s, "analytics")["ack_pending"] == 0
    });
    let analytics = consumer(&status, "analytics");
    assert_eq!(
        (&analytics["oldest_unprocessed_age_ms"], &analytics["redeliveries"]),
        (&0.into(), &0.into()),
        "{status:#}"
    );
    assert_eq!(service(&status, "analytics")["state"], "up");
    assert_eq!(pid_of(&status, "analytics"), new_pid);
    let error = cli.fails(&["start", "analytics"]);
    assert!(error.contains(&format!("analytics is already running (pid {new_pid})")), "{error}");

    // A graceful stop, and a start after it.
    let out = cli.ok(&["kill", "notification", "--term"]);
    assert!(out.contains("SIGTERM"), "{out}");
    let status = cli.status_until("notification down", |s| !is_up(s, "notification"));
    assert_eq!(service(&status, "notification")["pid"], Value::Null);
    cli.ok(&["start", "notification"]);
    cli.status_until("notification pulling again", |s| is_up(s, "notification") && is_pulling(s, "notification"));

    cli.ok(&["down"]);
    let status = cli.status();
    for name in SERVICES {
        assert_eq!(service(&status, name)["state"], "down", "{status:#}");
    }
}

fn up(name: &str, pid: u32) -> ServiceStatus {
    ServiceStatus {
        name: name.to_string(),
        service: name.split('-').next().unwrap_or(name).to_string(),
        role: None,
        state: "up".to_string(),
        pid: Some(pid),
        version: Some("0.1.0".to_string()),
    }
}

/// Copies of a service are rows of their own, and the copies of one that
/// elects a leader say which leads.
#[test]
fn status_lists_each_copy_and_which_leads() {
    let leader = ServiceStatus { role: Some("leader".into()), ..up("sentinel", 30) };
    let standby = ServiceStatus { role: Some("standby".into()), ..up("sentinel-2", 31) };
    let status = Status { services: vec![up("order", 10), up("order-2", 11), leader, standby], ..Status::default() };
    let text = render_text(&status, false, 0);
    let services: Vec<&str> = text.lines().skip(2).take(4).map(str::trim_end).collect();
    assert_eq!(
        services,
        [
            "  order       up             10  0.1.0",
            "  order-2     up             11  0.1.0",
            "  sentinel    up (leader)    30  0.1.0",
            "  sentinel-2  up (standby)   31  0.1.0",
        ],
        "{text}"
    );
    let json = render_json(&status);
    assert_eq!(json["services"][1]["service"], "order", "{json:#}");
    assert_eq!(json["services"][3]["role"], "standby", "{json:#}");
}

fn sample(sentinel: bool) -> Status {
    let down = |name: &str| ServiceStatus {
        name: name.to_string(),
        service: name.to_string(),
        role: None,
        state: "down".to_string(),
        pid: None,
        version: None,
    };
    Status {
        services: vec![up("inventory", 4242), up("notification", 17), down("analytics")],
        consumers: vec![
            ConsumerStatus {
                stream: "ORDERS".into(),
                consumer: "loyalty".into(),
                state: "ok".into(),
                active_pullers: 1,
                ..ConsumerStatus::default()
            },
            ConsumerStatus {
                stream: "ORDERS".into(),
                consumer: "analytics".into(),
                state: "down".into(),
                pending: 12,
                ack_pending: 1,
                oldest_unprocessed_age_ms: 125_000,
                redeliveries: 3,
                dead_letters: 2,
                ..ConsumerStatus::default()
            },
        ],
        alerts: Vec::new(),
        sentinel,
        traces: vec![TraceStoreStatus {
            stream: "SPANS".into(),
            bytes: 12 * 1024 * 1024,
            max_bytes: 256 * 1024 * 1024,
            messages: 12_000,
            oldest_age_ms: Some(30_000),
            messages_per_second: 400.0,
            bytes_per_second: 0.2 * 1024.0 * 1024.0,
            reach_ms: Some(640_000),
        }],
        ..Status::default()
    }
}

#[test]
fn status_tables_are_aligned_and_say_when_there_is_no_sentinel() {
    let text = render_text(&sample(false), false, 0);
    let expected = "\
services
  service       state   pid  version
  inventory     up     4242  0.1.0
  notification  up       17  0.1.0
  analytics     down      -  -

consumers (read from JetStream)
  consumer   stream  state  pull reqs  pending  ack pending  oldest  redelivered  dead letters
  loyalty    ORDERS  ok             1        0            0       -            0             0
  analytics  ORDERS  down           0       12            1   2m05s            3             2

traces
  store                       used of limit  oldest         coming in  reaches back
  span feed (memory)  12.0 MiB of 256.0 MiB   30.0s  400/s, 0.2 MiB/s        10m40s

sentinel not running: no alerts
";
    assert_eq!(text, expected, "got:\n{text}");
}

#[test]
fn status_shows_the_sentinels_alerts_and_deadline() {
    let mut status = sample(true);
    status.deadline_ms = Some(30_000);
    let now = 1_700_000_000_000;
    status.alerts.push(AlertStatus::from(&Alert {
        alert_id: "a1".into(),
        kind: AlertKind::ConsumerDown as i32,
        stream: "ORDERS".into(),
        consumer: "analytics".into(),
        backlog: 12,
        oldest_unprocessed_age_ms: 125_000,
        raised_at_unix_ms: now - 90_000,
        message: "nobody pulls\x1b[2J from analytics".into(),
        ..Alert::default()
    }));
    status.consumers[1].reason = "nobody is pulling\x1b[2J and nothing moved for 2.0 s".into();
    let text = render_text(&status, false, now);
    assert!(text.contains("consumers (from the sentinel; late after 30.0s)\n"), "{text}");
    assert!(text.contains("\n  analytics: nobody is pulling[2J and nothing moved for 2.0 s\n"), "{text}");
    let alerts = text.split_once("alerts (1)\n").unwrap_or_else(|| panic!("no alerts section in:\n{text}")).1;
    assert_eq!(
        alerts,
        "  consumer down      ORDERS/analytics  backlog 12, oldest 2m05s, raised 1m30s ago: nobody pulls[2J from analytics\n"
    );
    assert!(!text.contains('\x1b'), "a control character from the sentinel reached the terminal");

    status.alerts.clear();
    assert!(render_text(&status, false, now).ends_with("\nalerts: none\n"));
}

#[test]
fn status_colours_what_is_down() {
    let text = render_text(&sample(false), true, 0);
    let analytics = text.lines().find(|l| l.contains("analytics") && l.contains("down")).unwrap();
    assert!(analytics.starts_with("\x1b[31m") && analytics.ends_with("\x1b[0m"), "{analytics:?}");
    let inventory = text.lines().find(|l| l.contains("inventory")).unwrap();
    assert!(!inventory.contains('\x1b'), "{inventory:?}");
}

#[test]
fn status_shows_each_services_span_pipelines_and_says_when_spans_were_lost() {
    let mut status = sample(false);
    status.spans = vec![
        SpanPipelineStatus { service: "inventory".into(), instances: 1, exported: 1200, ..Default::default() },
        SpanPipelineStatus {
            service: "order".into(),
            instances: 2,
            exported: 900,
            dropped_queue_full: 3,
            failed_export: 1,
            queued: 40,
        },
    ];
    let text = render_text(&status, false, 0);
    assert!(text.contains("span pipelines"), "{text}");
    let order = text.lines().find(|l| l.trim_start().starts_with("order ")).unwrap();
    assert!(order.contains("900") && order.contains(" 4 ") && order.contains("40"), "{order:?}");
    assert!(
        text.contains("order: 4 spans lost (3 at a full queue, 1 refused by the destination): its traces have holes"),
        "{text}"
    );
    assert!(!text.contains("inventory: "), "nothing lost, nothing said: {text}");
    let colored = render_text(&status, true, 0);
    let line = colored.lines().find(|l| l.contains("order") && l.contains("900")).unwrap();
    assert!(line.starts_with("\x1b[31m"), "{line:?}");
    assert_eq!(render_json(&status)["spans"][1]["dropped_queue_full"], 3);
}

#[test]
fn status_without_nats_still_shows_the_services() {
    let mut status = sample(false);
    status.consumers.clear();
    status.nats_error = Some("failed to connect to NATS at nats://127.0.0.1:1".into());
    let text = render_text(&status, false, 0);
    assert!(text.contains("  analytics     down      -  -\n"), "{text}");
    assert!(
        text.ends_with("consumers: unknown, NATS is unreachable: failed to connect to NATS at nats://127.0.0.1:1\n")
    );
    assert_eq!(render_json(&status)["nats_error"], "failed to connect to NATS at nats://127.0.0.1:1");
}

#[test]
fn status_json_has_services_consumers_alerts_and_sentinel() {
    let json = render_json(&sample(false));
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["alerts", "consumers", "sentinel", "services", "traces"]);
    assert_eq!(json["sentinel"], false);
    assert_eq!(
        json["services"][2],
        serde_json::json!({"name": "analytics", "service": "analytics", "state": "down", "pid": null, "version": null})
    );
    assert_eq!(json["services"][0]["pid"], 4242);
    let analytics = &json["consumers"][1];
    assert_eq!(analytics["active_pullers"], 0);
    assert_eq!(analytics["pending"], 12);
    assert_eq!(analytics["ack_pending"], 1);
    assert_eq!(analytics["oldest_unprocessed_age_ms"], 125_000);
    assert_eq!(analytics["redeliveries"], 3);
    assert_eq!(analytics["dead_letters"], 2);
    assert_eq!(analytics["state"], "down");
}

#[test]
fn sentinel_replies_convert_field_by_field() {
    let health = ConsumerHealth {
        stream: "ORDERS".into(),
        consumer: "loyalty".into(),
        active_pullers: 2,
        pending: 3,
        ack_pending: 4,
        oldest_unprocessed_age_ms: 5,
        redeliveries: 6,
        dead_letters: 7,
        dead_letter_reasons: [("rejected".to_string(), 7)].into_iter().collect(),
        health: ConsumerState::Failing as i32,
        reason: "7 dead letters waiting for a redrive or a discard".into(),
    };
    let status = ConsumerStatus::from(&health);
    assert_eq!(
        status,
        ConsumerStatus {
            stream: "ORDERS".into(),
            consumer: "loyalty".into(),
            state: "failing".into(),
            reason: "7 dead letters waiting for a redrive or a discard".into(),
            active_pullers: 2,
            pending: 3,
            ack_pending: 4,
            oldest_unprocessed_age_ms: 5,
            redeliveries: 6,
            dead_letters: 7,
            dead_letter_reasons: BTreeMap::from([("rejected".to_string(), 7)]),
        }
    );
    let kind = |kind: i32| AlertStatus::from(&Alert { kind, ..Alert::default() }).kind;
    assert_eq!(kind(AlertKind::ConsumerDown as i32), "consumer_down");
    assert_eq!(kind(AlertKind::ConsumerLagging as i32), "consumer_lagging");
    assert_eq!(kind(AlertKind::ConsumerRecovered as i32), "consumer_recovered");
    assert_eq!(kind(AlertKind::ConsumerDeadLetters as i32), "consumer_dead_letters");
    assert_eq!(kind(99), "unknown");
}

#[test]
fn ages_read_like_durations() {
    let cases = [
        (0, "-"),
        (-5, "-"),
        (850, "850ms"),
        (12_345, "12.3s"),
        (245_000, "4m05s"),
        (7_800_000, "2h10m"),
        (3 * 86_400_000 + 4 * 3_600_000, "3d04h"),
    ];
    for (ms, text) in cases {
        assert_eq!(age(ms), text, "{ms} ms");
    }
}
