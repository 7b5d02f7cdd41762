//! `tracehop slowest` and `tracehop explain` against a whole test system. One
//! checkout is made slow for real: the test holds a PostgreSQL row lock on
//! the product it orders, so that inventory's UPDATE waits in PostgreSQL
//! until the test's transaction ends. The commands must find that checkout
//! among the others and name inventory's SQL span as the culprit, with its
//! typical duration from the other checkouts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracehop_spanfeed::SpanKind;
use tracehop_testkit::TestSystem;

use common::{CARD_DECLINED, CARD_OK, order_body, post_order, read_trace};

/// How long the test holds the row lock once inventory waits for it.
const HOLD: Duration = Duration::from_millis(1500);

fn tracehop(system: &TestSystem, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tracehop")).args(args).envs(system.command_env()).output().unwrap();
    assert!(
        output.status.success(),
        "tracehop {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(system: &TestSystem, args: &[&str]) -> Value {
    let stdout = tracehop(system, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tracehop {} is not JSON ({e}):\n{stdout}", args.join(" ")))
}

/// Places an order and returns its trace id once the trace is complete (the
/// event consumed by analytics, the last service to see it).
async fn checkout(system: &TestSystem, sku: &str, card: &str, status: u16) -> String {
    let (code, body, _) = post_order(system, order_body("lena", &[(sku, 1)], card), None).await;
    assert_eq!(code, status, "{body}");
    let trace_id = body["trace_id"].as_str().unwrap().to_string();
    read_trace(system, &trace_id, |spans| {
        spans.iter().any(|s| s.service == "gateway" && s.kind == SpanKind::Server)
            && spans.iter().any(|s| s.service == "analytics" && s.kind == SpanKind::Consumer)
    })
    .await;
    trace_id
}

/// Statements of the test's database waiting for a lock.
async fn lock_waiters(system: &TestSystem) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT left(query, 80) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_all(&system.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn slowest_finds_a_checkout_held_by_a_row_lock_and_explain_names_the_update() {
    let system = TestSystem::start().await.unwrap();

    // Ordinary checkouts: what "typical" is made of.
    for _ in 0..5 {
        checkout(&system, "KB-001", CARD_OK, 201).await;
    }
    let declined = checkout(&system, "MS-002", CARD_DECLINED, 402).await;

    // A batch job holds the headset's row; a checkout for it must wait.
    let mut batch = system.db.pool.begin().await.unwrap();
    sqlx::query("SELECT on_hand FROM inventory.products WHERE sku = 'HS-005' FOR UPDATE")
        .execute(&mut *batch)
        .await
        .unwrap();
    let slow = {
        let gateway = system.gateway_url.clone();
        tokio::spawn(async move {
            let body = order_body("lena", &[("HS-005", 1)], CARD_OK);
            let response =
                reqwest::Client::new().post(format!("{gateway}/v1/orders")).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiters = lock_waiters(&system).await;
        if waiters.iter().any(|q| q.contains("UPDATE inventory.products")) {
            break;
        }
        assert!(Instant::now() < deadline, "inventory never waited for the lock: {waiters:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(HOLD).await;
    batch.commit().await.unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 201, "{body}");
    let slow_id = body["trace_id"].as_str().unwrap().to_string();
    read_trace(&system, &slow_id, |spans| spans.iter().any(|s| s.service == "analytics")).await;

    // slowest: that checkout first, inventory's UPDATE as its culprit.
    let top = json(&system, &["slowest", "--json", "--limit", "3"]);
    let traces = top["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 3, "{top:#}");
    let first = &traces[0];
    assert_eq!(first["trace_id"], slow_id.as_str(), "{top:#}");
    assert_eq!(first["root"], "POST /v1/orders");
    let duration = first["duration_ms"].as_f64().unwrap();
    assert!(duration >= HOLD.as_millis() as f64, "{top:#}");
    assert_eq!(first["culprit"]["service"], "inventory", "{top:#}");
    assert_eq!(first["culprit"]["span"], "UPDATE inventory.products", "{top:#}");
    let held = first["culprit"]["self_ms"].as_f64().unwrap();
    assert!(held >= HOLD.as_millis() as f64 && held <= duration, "{top:#}");
    assert!(traces[1]["duration_ms"].as_f64().unwrap() < duration, "{top:#}");
    // --since bounds the window: nothing is older than a minute here, and
    // nothing started in the future.
    let recent = json(&system, &["slowest", "--json", "--since", "1m", "--limit", "1"]);
    assert_eq!(recent["traces"][0]["trace_id"], slow_id.as_str(), "{recent:#}");

    // explain: the path runs through the UPDATE, which held the time and
    // usually takes a few milliseconds.
    let explained = json(&system, &["explain", &slow_id, "--json"]);
    assert_eq!(explained["trace_id"], slow_id.as_str());
    assert_eq!(explained["duration_ms"].as_f64().unwrap(), duration);
    let path = explained["critical_path"].as_array().unwrap();
    let steps: Vec<String> =
        path.iter().map(|s| format!("{} {}", s["service"].as_str().unwrap(), s["span"].as_str().unwrap())).collect();
    assert_eq!(steps[0], "gateway POST /v1/orders", "{steps:#?}");
    for expected in [
        "order process svc.order.place",
        "inventory process svc.inventory.reserve",
        "inventory UPDATE inventory.products",
    ] {
        assert!(steps.iter().any(|s| s == expected), "{expected} not on the path: {steps:#?}");
    }
    let on_path: f64 = path.iter().map(|s| s["self_ms"].as_f64().unwrap()).sum();
    assert!((on_path - duration).abs() < 0.01 * duration, "self times add up to {on_path} of {duration}");
    let culprit = &explained["culprit"];
    assert_eq!(
        (culprit["service"].as_str(), culprit["span"].as_str()),
        (Some("inventory"), Some("UPDATE inventory.products"))
    );
    assert_eq!(culprit["self_ms"].as_f64().unwrap(), held);
    let typical = culprit["typical_ms"].as_f64().expect("typical_ms from the other checkouts");
    assert!(typical < 200.0 && typical * 5.0 < held, "typical {typical} ms against {held} ms");
    assert_eq!(explained["errors"], Value::Array(Vec::new()), "{explained:#}");

    let text = tracehop(&system, &["explain", &slow_id]);
    assert!(text.contains("culprit: inventory's \"UPDATE inventory.products\""), "{text}");
    assert!(text.contains("lock"), "{text}");

    // A declined checkout: the decline is an error of order's payment request.
    let explained = json(&system, &["explain", &declined, "--json"]);
    let errors = explained["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["service"] == "order"
            && e["span"] == "send svc.payment.charge"
            && e["kind"] == "error"
            && e["error_type"].as_str().unwrap().contains("declined")),
        "{explained:#}"
    );

    // An unknown trace is an error, not an empty explanation.
    let output = Command::new(env!("CARGO_BIN_EXE_tracehop"))
        .args(["explain", &format!("{}1", "0".repeat(31))])
        .envs(system.command_env())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("neither on the span feed nor among the kept traces"));
}
