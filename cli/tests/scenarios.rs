//! The live scenarios, each switched on while orders flow and then fixed:
//! the trace shows the cause, and the fix changes the outcome.
//!
//! - slow-inventory: a checkout that files a restock request waits in
//!   PostgreSQL for the batch job's lock (the SQL span holds the time, and
//!   says what it waited for); fixed, it defers the request and is fast.
//! - payment-down: charges get no reply; unfixed the gateway times out while
//!   order still waits; fixed, orders fail in about 3 s, then in
//!   milliseconds once the breaker opens, and recover when it is off.
//! - loyalty-n-plus-one: a premium order's items priced with one request
//!   each; fixed, with one.
//! - analytics-down: analytics stops consuming; the sentinel's alert and its
//!   missed-by spans show it; fixed, it catches up and nothing is lost.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::Value;
use tracehop_order::checkout;
use tracehop_proto::v1::{Alert, AlertKind};
use tracehop_scenarios::{Change, Scenario};
use tracehop_spanfeed::{SpanKind, SpanRecord, SpanStatus, fetch_trace};
use tracehop_testkit::TestSystem;

async fn flip(system: &TestSystem, scenario: Scenario, change: Change) {
    tracehop_scenarios::apply(&system.js, scenario, change, "scenario test").await.unwrap();
    // Services see a flip within a second (they watch the bucket).
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

/// Places an order; its status, body and how long it took.
async fn timed_order(system: &TestSystem, customer: &str, items: &[(&str, i64)]) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body, _) = post_order(system, order_body(customer, items, CARD_OK), None).await;
    (status, body, started.elapsed())
}

/// One round of 16 concurrent one-item orders (customers `prefix-n`). A
/// reservation files a restock request by its order id's random bits, so
/// whether a round files any is chance: at a rate of 1/8, a round files
/// none about one time in eight, and [`MAX_ROUNDS`] rounds all file none
/// about three times in a million. The tests place rounds until one has.
async fn round_of_orders(system: &TestSystem, prefix: &str) -> Vec<(u16, Value, Duration)> {
    futures::stream::iter(0..16)
        .map(|n| async move { timed_order(system, &format!("{prefix}-{n}"), &[("KB-001", 1)]).await })
        .buffer_unordered(16)
        .collect()
        .await
}

/// The most rounds of orders a test places while waiting for one to file
/// a restock request.
const MAX_ROUNDS: usize = 6;

/// The trace once `done` holds for it (20 s at most).
async fn trace_where(system: &TestSystem, trace_id: &str, done: impl Fn(&[SpanRecord]) -> bool) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = fetch_trace(&system.js, trace_id).await.unwrap();
        if done(&spans) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("trace {trace_id} never got there:\n{}", names(&spans));
}

/// The trace once it has stopped growing.
async fn settled(system: &TestSystem, trace_id: &str) -> Vec<SpanRecord> {
    tracehop_spanfeed::wait_for_settled_trace(&system.js, trace_id, Duration::from_secs(1), Duration::from_secs(15))
        .await
        .unwrap()
}

fn scenarios_of(span: &SpanRecord) -> Vec<String> {
    span.attributes
        .get(tracehop_scenarios::SPAN_ATTRIBUTE)
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn ms(span: &SpanRecord) -> u64 {
    span.duration_nanos() / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_inventory_is_a_lock_wait_in_postgres_and_the_fix_defers_it() {
    let system = TestSystem::start().await.unwrap();
    tracehop_scenarios::apply(&system.js, Scenario::SlowInventory, Change::On { rate: Some(0.125) }, "test")
        .await
        .unwrap();
    // The batch job holds the queue: its transaction is open, idle.
    let holding = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'tracehop restock batch job'
                   AND state = 'idle in transaction' AND datname = current_database()";
    assert_eq!(eventually_value(&system, holding, |n| n == 1).await, 1, "the batch job holds the queue");

    // Orders under the batch job: one in eight files a restock request and
    // waits for the batch job's lock; rounds go on until one has.
    let mut placed = Vec::new();
    for round in 0..MAX_ROUNDS {
        placed.extend(round_of_orders(&system, &format!("slow-{round}")).await);
        if placed.iter().any(|(.., took)| *took > Duration::from_secs(3)) {
            break;
        }
    }
    assert!(placed.iter().all(|(status, ..)| *status == 201), "{:?}", placed.iter().map(|p| p.0).collect::<Vec<_>>());
    let mut took: Vec<Duration> = placed.iter().map(|(.., took)| *took).collect();
    took.sort();
    let slowest = placed.iter().max_by_key(|(.., took)| *took).unwrap();
    println!("slow-inventory unfixed: median {:?}, slowest {:?}", took[took.len() / 2], slowest.2);
    assert!(took[took.len() / 2] < Duration::from_secs(2), "the median stays fast: {took:?}");
    assert!(slowest.2 > Duration::from_secs(3), "some checkout waited for the lock: {took:?}");

    // Its trace: the reservation filed a restock request, and the SQL span
    // holds the time, waiting on a lock held by the batch job.
    let trace_id = slowest.1["trace_id"].as_str().unwrap();
    let spans = trace_where(&system, trace_id, |spans| {
        spans
            .iter()
            .any(|s| s.name == "UPDATE inventory.restock_requests" && s.attributes.contains_key("db.system.name"))
            && spans.iter().any(|s| s.name == "reserve stock" && s.attributes.contains_key("inventory.restock"))
    })
    .await;
    let reserve = spans
        .iter()
        .find(|s| s.name == "reserve stock" && s.attr_str("inventory.restock") == Some("queued"))
        .unwrap_or_else(|| panic!("no reserve that filed a request:\n{}", names(&spans)));
    assert!(scenarios_of(reserve).contains(&"slow-inventory".to_string()), "{:?}", reserve.attributes);
    assert!(reserve.attr_str("db.wait_event").is_some_and(|w| w.starts_with("Lock")), "{:?}", reserve.attributes);
    assert!(
        reserve.attr_str("db.blocked_by").is_some_and(|b| b.contains("restock batch job")),
        "{:?}",
        reserve.attributes
    );
    let sql = spans
        .iter()
        .filter(|s| s.name == "UPDATE inventory.restock_requests" && s.kind == SpanKind::Client)
        .max_by_key(|s| s.duration_nanos())
        .unwrap();
    assert!(ms(sql) > 1000, "the statement waited: {} ms", ms(sql));
    // slowest and explain name that statement, through the retries that
    // joined the attempt running it.
    let whole = settled(&system, trace_id).await;
    let culprit = tracehop::analysis::summarize(&whole).and_then(|s| s.culprit).expect("a culprit");
    assert_eq!((culprit.service.as_str(), culprit.span.as_str()), ("inventory", "UPDATE inventory.restock_requests"));

    // The fix: the same fault, no wait. A request that cannot have its lock
    // in 3 x 100 ms is deferred.
    flip(&system, Scenario::SlowInventory, Change::Fix).await;
    assert_eq!(eventually_value(&system, holding, |n| n == 1).await, 1);
    // Rounds go on until one order's request was deferred, as above.
    let deferred_orders = "SELECT COUNT(DISTINCT order_id) FROM inventory.restock_deferred";
    let mut placed = Vec::new();
    for round in 0..MAX_ROUNDS {
        placed.extend(round_of_orders(&system, &format!("fixed-{round}")).await);
        if scalar(&system, deferred_orders).await >= 1 {
            break;
        }
    }
    let slowest_fixed = placed.iter().map(|(.., took)| *took).max().unwrap();
    println!("slow-inventory fixed: slowest {slowest_fixed:?}");
    assert!(placed.iter().all(|(status, ..)| *status == 201));
    assert!(slowest_fixed < Duration::from_secs(2), "fixed, nothing waits: {slowest_fixed:?}");
    let deferred = scalar(&system, deferred_orders).await;
    assert!(deferred >= 1, "the fix deferred the requests it could not file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_down_cascades_unfixed_and_fails_fast_fixed() {
    let system = TestSystem::start_with(&[
        ("GATEWAY_ORDER_TIMEOUT_MS", "5000"),
        ("ORDER_BREAKER_FAILURES", "2"),
        ("ORDER_BREAKER_OPEN_MS", "1500"),
    ])
    .await
    .unwrap();
    flip(&system, Scenario::PaymentDown, Change::On { rate: None }).await;

    // Unfixed: order waits for a reply that never comes; the gateway gives up.
    let (status, body, took) = timed_order(&system, "cascade", &[("CB-004", 1)]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("did not answer in time"), "{body}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    let trace_id = body["trace_id"].as_str().unwrap();
    let spans = trace_where(&system, trace_id, |spans| {
        spans.iter().any(|s| s.service == "payment" && s.kind == SpanKind::Server)
    })
    .await;
    let withheld = spans.iter().find(|s| s.service == "payment" && s.kind == SpanKind::Server).unwrap();
    assert_eq!(withheld.attributes.get("tracehop.reply.withheld"), Some(&Value::Bool(true)));
    assert!(scenarios_of(withheld).contains(&"payment-down".to_string()));
    let cascade = trace_id.to_string();
    let placed = Instant::now();

    // Fixed: 3 s timeouts until the breaker opens, then milliseconds.
    flip(&system, Scenario::PaymentDown, Change::Fix).await;
    let mut answers = Vec::new();
    for n in 0..4 {
        let (status, body, took) = timed_order(&system, &format!("fixed-{n}"), &[("CB-004", 1)]).await;
        answers.push((status, took, body["error"]["message"].as_str().unwrap_or_default().to_string()));
    }
    println!("payment-down fixed: {answers:?}");
    assert!(answers.iter().all(|(status, ..)| *status == 503), "{answers:?}");
    assert!(answers[0].1 >= Duration::from_millis(2900) && answers[0].1 < Duration::from_secs(5), "{answers:?}");
    let fast = &answers[3];
    assert!(fast.1 < Duration::from_millis(500) && fast.2.contains("circuit breaker open"), "{answers:?}");

    // Payment answers again: the breaker's trial goes through, orders succeed.
    flip(&system, Scenario::PaymentDown, Change::Off).await;
    let mut recovered = None;
    for n in 0..20 {
        let (status, ..) = timed_order(&system, &format!("after-{n}"), &[("CB-004", 1)]).await;
        if status == 201 {
            recovered = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(recovered.is_some(), "orders succeed again once payment answers");

    // Once order's 30 s wait for payment has ended, the cascade's trace is
    // whole: its time went to waiting for payment's reply.
    tokio::time::sleep(checkout::UNFIXED_PAYMENT_TIMEOUT.saturating_sub(placed.elapsed())).await;
    let spans = trace_where(&system, &cascade, |spans| {
        spans.iter().any(|s| s.service == "order" && s.name == "send svc.payment.charge")
    })
    .await;
    let charge = spans.iter().find(|s| s.service == "order" && s.name == "send svc.payment.charge").unwrap();
    assert_eq!((charge.status, charge.attr_str("error.type")), (SpanStatus::Error, Some("timeout")));
    let culprit = tracehop::analysis::summarize(&settled(&system, &cascade).await).and_then(|s| s.culprit).unwrap();
    assert_eq!((culprit.service.as_str(), culprit.span.as_str()), ("order", "send svc.payment.charge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_n_plus_one_prices_per_item_and_the_fix_batches() {
    let system = TestSystem::start().await.unwrap();
    let items = [("KB-001", 1), ("MS-002", 1), ("CB-004", 2), ("HS-005", 1)];
    let price_requests = async |trace_id: &str| {
        let spans = trace_where(&system, trace_id, |spans| spans.iter().any(|s| s.name == "accrue points")).await;
        let accrue = spans.iter().find(|s| s.name == "accrue points").unwrap().clone();
        let requests =
            spans.iter().filter(|s| s.kind == SpanKind::Client && s.name == "send svc.inventory.prices").count();
        (accrue, requests)
    };

    flip(&system, Scenario::LoyaltyNPlusOne, Change::On { rate: None }).await;
    let (status, body, _) = timed_order(&system, "premium-pat", &items).await;
    assert_eq!(status, 201, "{body}");
    let (accrue, requests) = price_requests(body["trace_id"].as_str().unwrap()).await;
    assert_eq!(requests, items.len(), "one price request per item");
    assert_eq!(accrue.attr_str("loyalty.pricing"), Some("per-item"));
    assert!(scenarios_of(&accrue).contains(&"loyalty-n-plus-one".to_string()));

    flip(&system, Scenario::LoyaltyNPlusOne, Change::Fix).await;
    let (status, body, _) = timed_order(&system, "premium-pat", &items).await;
    assert_eq!(status, 201, "{body}");
    let (accrue, requests) = price_requests(body["trace_id"].as_str().unwrap()).await;
    assert_eq!(requests, 1, "one batch request");
    assert_eq!(accrue.attr_str("loyalty.pricing"), Some("batch"));
    assert!(scenarios_of(&accrue).contains(&"loyalty-n-plus-one (fixed)".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_down_is_silent_but_for_the_sentinel_and_the_fix_catches_up() {
    let system = TestSystem::start_with(&[("SENTINEL_DEADLINE_MS", "2000")]).await.unwrap();
    let mut alerts =
        system.nats.subscribe(format!("{}.analytics", tracehop_proto::subjects::ALERTS_PREFIX)).await.unwrap();
    system.nats.flush().await.unwrap();
    flip(&system, Scenario::AnalyticsDown, Change::On { rate: None }).await;

    let mut traces = Vec::new();
    for n in 0..3 {
        let (status, body, _) = timed_order(&system, &format!("quiet-{n}"), &[("CB-004", 1)]).await;
        assert_eq!(status, 201, "{body}");
        traces.push(body["trace_id"].as_str().unwrap().to_string());
    }
    // The process lives and nothing fails: only the sentinel speaks.
    let alert = loop {
        let message = tokio::time::timeout(Duration::from_secs(15), alerts.next())
            .await
            .expect("an alert for analytics within 15 s")
            .unwrap();
        let alert = Alert::decode(message.payload.as_ref()).unwrap();
        if alert.kind != AlertKind::ConsumerRecovered as i32 {
            break alert;
        }
    };
    assert!(alert.message.contains("analytics"), "{}", alert.message);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM analytics.order_events").await, 0, "analytics consumed nothing");
    let emails = "SELECT COUNT(*) FROM notification.emails";
    assert_eq!(eventually_value(&system, emails, |n| n == 3).await, 3, "the other consumers carry on");
    let missed = trace_where(&system, &traces[0], |spans| spans.iter().any(|s| s.name == "missed by analytics")).await;
    let span = missed.iter().find(|s| s.name == "missed by analytics").unwrap();
    assert_eq!(span.status, SpanStatus::Error);

    // The fix: it resumes and catches up; nothing was lost.
    flip(&system, Scenario::AnalyticsDown, Change::Fix).await;
    let events = "SELECT COUNT(*) FROM analytics.order_events";
    assert_eq!(eventually_value(&system, events, |n| n == 3).await, 3, "caught up");
}
