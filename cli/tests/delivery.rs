//! Nothing lost, nothing doubled: stock under contention, idempotent
//! checkout, poison messages and dead letters, redeliveries, a payment
//! outage (timeouts, then the circuit breaker), a republished event, and a
//! graceful shutdown with checkouts in flight.

mod common;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prost::Message as _;
use serde_json::Value;
use tracehop_spanfeed::{SpanKind, SpanStatus};
use tracehop_testkit::TestSystem;

fn signal(system: &TestSystem, service: &str, signal: Signal) {
    let pid = system.launcher.running_pid(service).unwrap_or_else(|| panic!("{service} is not running"));
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_confirm_exactly_that_many() {
    let system = TestSystem::start().await.expect("system start");
    // LTD-007 has 3 units; 12 customers want one each, all at once.
    let attempts = (0..12).map(|i| {
        let body = order_body(&format!("fan-{i}"), &[("LTD-007", 1)], CARD_OK);
        let system = &system;
        async move { post_order(system, body, None).await.0 }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
    stock_committed(&system).await;
    let stock = scalar(
        &system,
        "SELECT (on_hand * 1000000 + reserved * 1000 + sold)::bigint FROM inventory.products WHERE sku = 'LTD-007'",
    )
    .await;
    assert_eq!(stock, 3, "on_hand 0, reserved 0, sold 3");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed'").await, 3);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders").await, 3, "the rejected ones left nothing");
}

#[tokio::test]
async fn the_same_idempotency_key_yields_one_order() {
    let system = TestSystem::start().await.expect("system start");
    let body = order_body("grace", &[("HS-005", 2)], CARD_OK);
    let send = |key: &'static str, body: Value| {
        let url = format!("{}/v1/orders", system.gateway_url);
        async move {
            let response =
                reqwest::Client::new().post(url).header("Idempotency-Key", key).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let answers = futures::future::join_all((0..6).map(|_| send("checkout-42", body.clone()))).await;
    let ids: std::collections::BTreeSet<_> = answers.iter().map(|(_, b)| b["order_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(status, _)| *status == 201), "{answers:?}");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders").await, 1);
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM payment.payments").await, 1, "charged once");
    stock_committed(&system).await;
    assert_eq!(scalar(&system, "SELECT sold::bigint FROM inventory.products WHERE sku = 'HS-005'").await, 2);

    // A later retry gets the first answer back.
    let (status, again) = send("checkout-42", body.clone()).await;
    assert_eq!((status, &again["order_id"]), (201, &answers[0].1["order_id"]));
    // The same key for a different request is refused, and writes nothing.
    let (status, other) = send("checkout-42", order_body("grace", &[("HS-005", 3)], CARD_OK)).await;
    assert_eq!(status, 400, "{other}");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders").await, 1);
    // A rejected first answer is replayed too.
    let (first, _) = send("too-many", order_body("grace", &[("LTD-007", 4)], CARD_OK)).await;
    let (second, _) = send("too-many", order_body("grace", &[("LTD-007", 4)], CARD_OK)).await;
    assert_eq!((first, second), (409, 409));
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_consumers_go_on() {
    let system = TestSystem::start().await.expect("system start");
    let poison_trace = "0af7651916cd43dd8448eb211c80319c";
    let cases: [(&str, &[u8], Option<&str>); 3] = [
        ("not protobuf", b"\xff\xff\xff\xff not an event", None),
        ("wrong type", b"\x0a\x03abc", Some("tracehop.v1.ChargeRequest")),
        ("missing fields", b"", None),
    ];
    for (index, (_, payload, payload_type)) in cases.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("poison-{index}").as_str());
        headers.insert("traceparent", format!("00-{poison_trace}-b7ad6b7169203331-01").as_str());
        if let Some(payload_type) = payload_type {
            headers.insert("Tracehop-Payload-Type", *payload_type);
        }
        system
            .order_js
            .publish_with_headers("orders.confirmed", headers, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A good order after the poison is still processed by everyone.
    let (status, body, _) = post_order(&system, order_body("heidi", &[("CB-004", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}");
    let order_id: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    for table in ["loyalty.accruals", "notification.emails", "analytics.order_events"] {
        assert_eq!(
            eventually(&system, &format!("SELECT COUNT(*) FROM {table} WHERE order_id = $1"), order_id, 1).await,
            1
        );
    }

    // Each consumer of orders.confirmed dead-lettered each poison message once, with its reason.
    let mut stream = system.js.get_stream("DEADLETTER").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream.info().await.unwrap().state.messages < 9 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut dead = Vec::new();
    for sequence in 1..=stream.info().await.unwrap().state.messages {
        dead.push(stream.get_raw_message(sequence).await.unwrap());
    }
    let mut per_consumer = std::collections::BTreeMap::new();
    for message in &dead {
        *per_consumer.entry(message.subject.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        per_consumer,
        [("deadletter.analytics", 3), ("deadletter.loyalty", 3), ("deadletter.notification", 3)]
            .into_iter()
            .map(|(subject, n)| (subject.to_string(), n))
            .collect()
    );
    for message in &dead {
        let reason =
            message.headers.get("Tracehop-Dead-Letter-Reason").map(|v| v.as_str().to_string()).unwrap_or_default();
        let explained = ["payload is not a valid", "payload type tracehop.v1.ChargeRequest", "is not a UUID"];
        assert!(explained.iter().any(|why| reason.contains(why)), "reason: {reason:?}");
        let traceparent = message.headers.get("traceparent").map(|v| v.as_str().to_string()).unwrap_or_default();
        assert!(traceparent.contains(poison_trace), "original trace context kept");
        assert_eq!(message.headers.get("Tracehop-Original-Subject").map(|v| v.as_str()), Some("orders.confirmed"));
    }
    // The dead-letter spans are in the poison message's own trace: each a
    // send to its consumer's dead letters, linked to the original message,
    // not failed (storing it worked); the delivery that gave up is failed.
    let is_dead_letter = |s: &&tracehop_spanfeed::SpanRecord| s.name.starts_with("send deadletter.");
    let spans =
        read_trace(&system, poison_trace, |spans| spans.iter().filter(|s| is_dead_letter(s)).count() >= 9).await;
    let dead_spans: Vec<_> = spans.iter().filter(is_dead_letter).collect();
    assert_eq!(dead_spans.len(), 9, "{}", names(&spans));
    assert!(dead_spans.iter().all(|s| s.status == SpanStatus::Unset && s.kind == SpanKind::Client));
    assert!(dead_spans.iter().all(|s| s.links.iter().any(|l| l.trace_id == poison_trace)));
    for dead in &dead_spans {
        let gave_up = parent_of(&spans, dead);
        assert_eq!(gave_up.kind, SpanKind::Consumer);
        assert_eq!(gave_up.status, SpanStatus::Error);
        assert_eq!(gave_up.attributes["tracehop.dead_lettered"], serde_json::json!(true));
    }
    // No consumer retried a poison message.
    assert!(spans.iter().all(|s| s.attributes.get("messaging.nats.message.delivery_count").is_none_or(|c| c == 1)));
}

#[tokio::test]
async fn failed_deliveries_are_retried_as_new_spans_then_dead_lettered() {
    // Notification's SMTP server does not exist: every send fails.
    let closed_port = tracehop_testkit::free_port();
    let smtp = format!("smtp://127.0.0.1:{closed_port}");
    let system = TestSystem::start_with(&[("SMTP_URL", smtp.as_str())]).await.expect("system start");
    let (status, body, _) = post_order(&system, order_body("ivan", &[("CB-004", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}");
    let trace_id = body["trace_id"].as_str().unwrap().to_string();
    let spans =
        read_trace(&system, &trace_id, |spans| spans.iter().any(|s| s.name == "send deadletter.notification")).await;
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "notification" && s.kind == SpanKind::Consumer)
        .map(|s| (s.attributes["messaging.nats.message.delivery_count"].as_i64().unwrap(), s.status))
        .collect();
    let counts: Vec<i64> = attempts.iter().map(|(count, _)| *count).collect();
    assert_eq!(counts, vec![1, 2, 3, 4, 5], "one span per delivery:\n{}", names(&spans));
    assert!(attempts.iter().all(|(_, status)| *status == SpanStatus::Error));
    let dead = find(&spans, "notification", SpanKind::Client, "send deadletter.notification");
    assert_eq!(dead.status, SpanStatus::Unset, "the dead letter was stored");
    assert_eq!(dead.attr_str("messaging.destination.name"), Some("deadletter.notification"));
    // The others were not held up.
    let order_id: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        eventually(&system, "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1", order_id, 1).await,
        1
    );
    assert_eq!(
        scalar(&system, "SELECT COUNT(*) FROM notification.emails").await,
        0,
        "nothing recorded for a failed send"
    );
}

#[tokio::test]
async fn payment_outage_fails_orders_after_the_timeout_then_fast_and_settles_late_charges() {
    let system = TestSystem::start_with(&[
        ("ORDER_BREAKER_FAILURES", "2"),
        ("ORDER_BREAKER_OPEN_MS", "1500"),
        ("ORDER_PAYMENT_TIMEOUT_MS", "3000"),
    ])
    .await
    .expect("system start");
    // Payment hangs (the process is stopped, its subscriptions stay): calls time out.
    signal(&system, "payment", Signal::SIGSTOP);
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let started = Instant::now();
        let (status, body, _) =
            post_order(&system, order_body(&format!("judy-{i}"), &[("MN-003", 1)], CARD_OK), None).await;
        let reason = body["order"]["failure_reason"].as_str().unwrap_or_default().to_string();
        outcomes.push((status, reason, started.elapsed(), body["trace_id"].as_str().unwrap_or_default().to_string()));
    }
    for (status, reason, elapsed, _) in &outcomes {
        println!("payment down: HTTP {status} after {elapsed:?}: {reason}");
    }
    assert!(outcomes.iter().all(|(status, ..)| *status == 503), "{outcomes:?}");
    assert!(
        outcomes[0].1.contains("did not answer within 3s") && outcomes[1].1.contains("did not answer"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[2].1.contains("circuit breaker open") && outcomes[3].1.contains("circuit breaker open"),
        "{outcomes:?}"
    );
    assert_eq!(
        scalar(&system, "SELECT (on_hand + reserved * 1000000)::bigint FROM inventory.products WHERE sku = 'MN-003'")
            .await,
        20_000,
        "stock came back"
    );

    // Payment comes back: the breaker's trial call succeeds and checkouts work again.
    signal(&system, "payment", Signal::SIGCONT);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body, _) = post_order(&system, order_body("judy-back", &[("MN-003", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}");
    // The two charges that timed out were processed late; payment refunds them
    // (or voided them first): no failed order stays charged.
    let charged_failures = eventually_value(
        &system,
        "SELECT COUNT(*) FROM payment.payments p JOIN ordering.orders o USING (order_id)
         WHERE o.status = 'failed' AND p.status = 'approved'",
        |n| n == 0,
    )
    .await;
    assert_eq!(charged_failures, 0);
    let settled = eventually_value(
        &system,
        "SELECT COUNT(*) FROM payment.payments WHERE status IN ('refunded', 'voided')",
        |n| n == 4,
    )
    .await;
    assert_eq!(settled, 4, "every failed order's payment is refunded or voided");
    // The traces say what happened: a timeout, then the open breaker.
    let timed_out = read_trace(&system, &outcomes[0].3, |spans| spans.iter().any(|s| s.name == "call payment")).await;
    // The timeout is recorded once, on the request that timed out; the
    // breaker's span above it is not failed again.
    let request = find(&timed_out, "order", SpanKind::Client, "send svc.payment.charge");
    assert_eq!((request.status, request.attr_str("error.type")), (SpanStatus::Error, Some("timeout")));
    assert_eq!(request.events.iter().filter(|e| e.name == "exception").count(), 1);
    let call = find(&timed_out, "order", SpanKind::Internal, "call payment");
    assert_eq!(parent_of(&timed_out, request).span_id, call.span_id);
    assert_eq!(call.status, SpanStatus::Unset);
    let fast = read_trace(&system, &outcomes[3].3, |spans| spans.iter().any(|s| s.name == "call payment")).await;
    let call = find(&fast, "order", SpanKind::Internal, "call payment");
    assert_eq!(call.attr_str("payment.circuit_breaker.state"), Some("open"));
    assert_eq!(call.attr_str("error.type"), Some("circuit_open"));
    assert!(!fast.iter().any(|s| s.name == "send svc.payment.charge"), "no call was made while open");
}

#[tokio::test]
async fn a_republished_event_is_dropped_by_the_stream_and_applied_once() {
    let system = TestSystem::start().await.expect("system start");
    let (status, body, _) = post_order(&system, order_body("kim", &[("KB-001", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}");
    let order_id: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        eventually(&system, "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1", order_id, 1).await,
        1
    );
    // As if the relay crashed after the ack but before marking the row.
    sqlx::query("UPDATE ordering.outbox SET published_at = NULL").execute(&system.db.pool).await.unwrap();
    let republished =
        eventually_value(&system, "SELECT COUNT(*) FROM ordering.outbox WHERE published_at IS NULL", |n| n == 0).await;
    assert_eq!(republished, 0);
    let trace_id = body["trace_id"].as_str().unwrap();
    let spans =
        read_trace(&system, trace_id, |spans| spans.iter().filter(|s| s.kind == SpanKind::Producer).count() >= 2).await;
    let producers: Vec<_> = spans.iter().filter(|s| s.name == "publish orders.confirmed").collect();
    assert_eq!(producers.len(), 2, "{}", names(&spans));
    assert!(producers.iter().any(|s| s.attributes.get("messaging.nats.duplicate") == Some(&Value::Bool(true))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for table in ["loyalty.accruals", "notification.emails", "analytics.order_events"] {
        assert_eq!(scalar(&system, &format!("SELECT COUNT(*) FROM {table}")).await, 1, "{table}");
    }
    assert_eq!(system.js.get_stream("ORDERS").await.unwrap().info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn sigterm_drains_checkouts_in_flight() {
    let system = TestSystem::start_with(&[("PAYMENT_LATENCY_MS", "700")]).await.expect("system start");
    let orders = (0..4).map(|i| {
        let body = order_body(&format!("lee-{i}"), &[("MS-002", 1)], CARD_OK);
        let system = &system;
        async move { post_order(system, body, None).await.0 }
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&system, "order", Signal::SIGTERM);
    };
    let (statuses, ()) = tokio::join!(futures::future::join_all(orders), stop);
    assert_eq!(statuses, vec![201; 4], "every checkout in flight finished");
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed'").await, 4);
    assert_eq!(
        eventually_value(&system, "SELECT COUNT(*) FROM ordering.outbox WHERE published_at IS NULL", |n| n == 0).await,
        0,
        "the relay flushed before exit"
    );
}

#[tokio::test]
async fn malformed_and_oversized_requests_on_nats_get_a_typed_error() {
    let system = TestSystem::start().await.expect("system start");
    for subject in ["svc.order.place", "svc.inventory.reserve", "svc.payment.charge"] {
        for payload in [b"\xff\xfe garbage".to_vec(), vec![b'x'; 300 * 1024]] {
            let reply = system.nats.request(subject, payload.into()).await.unwrap();
            // Every reply carries its error in field 1, so any reply type reads it.
            let decoded = tracehop_proto::v1::CommitStockReply::decode(reply.payload.as_ref()).unwrap();
            assert_eq!(
                decoded.error.map(|e| e.kind()),
                Some(tracehop_proto::v1::ErrorCode::InvalidArgument),
                "{subject}"
            );
        }
    }
    assert_eq!(scalar(&system, "SELECT COUNT(*) FROM ordering.orders").await, 0);
}
