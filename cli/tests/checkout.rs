//! End to end: every service as its own process against a private NATS
//! server and a fresh database; orders through the gateway's HTTP API; the
//! effects read back by SQL and the traces read back from the span feed.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};
use tracehop_spanfeed::{SpanKind, SpanStatus};
use tracehop_testkit::TestSystem;

#[tokio::test]
async fn a_confirmed_order_is_one_trace_across_all_seven_services() {
    let system = TestSystem::start().await.expect("system start");
    let (status, body, traceresponse) =
        post_order(&system, order_body("alice", &[("KB-001", 2), ("MS-002", 1)], CARD_OK), None).await;
    assert_eq!(status, 201, "{body}\n{}", system.logs());
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["total_cents"], 2 * 8900 + 2900);
    let trace_id = body["trace_id"].as_str().unwrap().to_string();
    assert!(traceresponse.unwrap().contains(&trace_id));
    let order_id: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();

    // The order reads back through the API.
    let fetched: Value =
        reqwest::get(format!("{}/v1/orders/{order_id}", system.gateway_url)).await.unwrap().json().await.unwrap();
    assert_eq!(fetched["status"], "confirmed");

    // Each schema holds its effect; the stock commit follows the answer.
    stock_committed(&system).await;
    let pool = &system.db.pool;
    let (on_hand, reserved, sold): (i32, i32, i32) =
        sqlx::query_as("SELECT on_hand, reserved, sold FROM inventory.products WHERE sku = 'KB-001'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved, sold), (100_000 - 2, 0, 2));
    let (last4, payment_status): (String, String) =
        sqlx::query_as("SELECT card_last4, status FROM payment.payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((last4.as_str(), payment_status.as_str()), ("4242", "approved"));
    let stored = sqlx::query_scalar::<_, String>("SELECT row_to_json(p)::text FROM payment.payments p")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|row| !row.contains(CARD_OK)));
    assert_eq!(
        eventually(
            &system,
            "SELECT COALESCE(SUM(points), 0)::bigint FROM loyalty.accruals WHERE order_id = $1",
            order_id,
            207
        )
        .await,
        207
    );
    assert_eq!(
        eventually(&system, "SELECT COUNT(*) FROM notification.emails WHERE order_id = $1 AND kind = 'confirmation' AND status = 'sent'", order_id, 1).await,
        1
    );
    assert_eq!(
        eventually(
            &system,
            "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1 AND kind = 'confirmed'",
            order_id,
            1
        )
        .await,
        1
    );
    let mails: Vec<_> = std::fs::read_dir(&system.mail_dir).unwrap().flatten().collect();
    assert_eq!(mails.len(), 1, "one .eml file");
    let mail = std::fs::read_to_string(mails[0].path()).unwrap();
    assert!(mail.contains(EMAIL) && mail.contains(&order_id.to_string()));

    // The trace, read back from the span feed.
    let spans = read_trace(&system, &trace_id, |spans| {
        spans.iter().filter(|s| s.kind == SpanKind::Consumer).count() >= 3 && services(spans).len() == 7
    })
    .await;
    assert_eq!(
        services(&spans),
        BTreeSet::from(["analytics", "gateway", "inventory", "loyalty", "notification", "order", "payment"]),
        "{}",
        names(&spans)
    );
    assert!(spans.iter().all(|s| s.trace_id == trace_id));
    assert_no_secrets(&spans);

    let root = find(&spans, "gateway", SpanKind::Server, "POST /v1/orders");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.attributes["http.response.status_code"], json!(201));
    let place_client = find(&spans, "gateway", SpanKind::Client, "send svc.order.place");
    assert_eq!(parent_of(&spans, place_client).span_id, root.span_id);
    let place_server = find(&spans, "order", SpanKind::Server, "process svc.order.place");
    assert_eq!(parent_of(&spans, place_server).span_id, place_client.span_id);
    for (subject, service) in [
        ("svc.inventory.reserve", "inventory"),
        ("svc.payment.charge", "payment"),
        ("svc.inventory.commit", "inventory"),
    ] {
        let client = find(&spans, "order", SpanKind::Client, &format!("send {subject}"));
        assert!(descends_from(&spans, client, place_server));
        let server = find(&spans, service, SpanKind::Server, &format!("process {subject}"));
        assert_eq!(parent_of(&spans, server).span_id, client.span_id);
        assert_eq!(server.attributes["messaging.system"], "nats");
    }
    let producer = find(&spans, "order", SpanKind::Producer, "publish orders.confirmed");
    assert!(descends_from(&spans, producer, place_server), "the producer belongs to the order's trace");
    let event_id = producer.attr_str("messaging.message.id").unwrap_or_else(|| panic!("{producer:?}")).to_string();
    for consumer_service in ["loyalty", "notification", "analytics"] {
        let consumer = find(&spans, consumer_service, SpanKind::Consumer, "process orders.confirmed");
        assert_eq!(consumer.parent_span_id.as_deref(), Some(producer.span_id.as_str()));
        assert!(consumer.links.iter().any(|l| l.span_id == producer.span_id && l.trace_id == trace_id));
        assert_eq!(consumer.attr_str("messaging.consumer.group.name"), Some(consumer_service));
        assert_eq!(consumer.attr_str("messaging.message.id"), Some(event_id.as_str()));
        assert_eq!(consumer.attributes["messaging.nats.message.delivery_count"], json!(1));
        assert!(consumer.attributes["messaging.message.body.size"].as_i64().unwrap() > 0);
        assert_eq!(consumer.status, SpanStatus::Unset, "{consumer:?}");
    }
    for sql_service in ["inventory", "order", "payment", "loyalty", "notification", "analytics"] {
        assert!(
            spans.iter().any(|s| s.service == sql_service
                && s.kind == SpanKind::Client
                && s.attr_str("db.system.name") == Some("postgresql")),
            "no SQL span from {sql_service}"
        );
    }
    assert!(spans.iter().all(|s| s.status != SpanStatus::Error), "{}", names(&spans));
}

#[tokio::test]
async fn a_declined_card_fails_the_order_releases_stock_and_tells_notification_and_analytics() {
    let system = TestSystem::start().await.expect("system start");
    let (status, body, _) = post_order(&system, order_body("bob", &[("LMP-006", 3)], CARD_DECLINED), None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "payment_declined");
    assert_eq!(body["order"]["status"], "failed");
    let order_id: uuid::Uuid = body["order"]["order_id"].as_str().unwrap().parse().unwrap();
    let trace_id = body["trace_id"].as_str().unwrap().to_string();

    let pool = &system.db.pool;
    let (on_hand, reserved, sold): (i32, i32, i32) =
        sqlx::query_as("SELECT on_hand, reserved, sold FROM inventory.products WHERE sku = 'LMP-006'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved, sold), (30_000, 0, 0), "stock released");
    let state: String = sqlx::query_scalar("SELECT state FROM inventory.reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(state, "released");
    let payment: String = sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(payment, "declined");
    assert_eq!(
        eventually(
            &system,
            "SELECT COUNT(*) FROM notification.emails WHERE order_id = $1 AND kind = 'failure'",
            order_id,
            1
        )
        .await,
        1
    );
    assert_eq!(
        eventually(
            &system,
            "SELECT COUNT(*) FROM analytics.order_events WHERE order_id = $1 AND kind = 'failed'",
            order_id,
            1
        )
        .await,
        1
    );
    let accruals: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM loyalty.accruals WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(accruals, 0, "loyalty only accrues for confirmed orders");

    let spans =
        read_trace(&system, &trace_id, |spans| spans.iter().filter(|s| s.kind == SpanKind::Consumer).count() >= 2)
            .await;
    assert_no_secrets(&spans);
    // A decline is an expected answer: only the callers' CLIENT spans, whose
    // calls did not succeed, are ERROR; each side that answered says what
    // the answer was, and nothing is an exception.
    let mut failed: Vec<(&str, SpanKind, &str)> = spans
        .iter()
        .filter(|s| s.status == SpanStatus::Error)
        .map(|s| (s.service.as_str(), s.kind, s.name.as_str()))
        .collect();
    failed.sort_by_key(|(service, _, name)| (*service, *name));
    assert_eq!(
        failed,
        vec![
            ("gateway", SpanKind::Client, "send svc.order.place"),
            ("order", SpanKind::Client, "send svc.payment.charge")
        ],
        "{}",
        names(&spans)
    );
    for client in &failed {
        let span = find(&spans, client.0, client.1, client.2);
        assert_eq!(span.attr_str("error.type"), Some("payment_declined"), "{span:?}");
        assert_eq!(span.attr_str("tracehop.error.code"), Some("payment_declined"));
    }
    for (service, kind, name) in [
        ("payment", SpanKind::Server, "process svc.payment.charge"),
        ("order", SpanKind::Server, "process svc.order.place"),
        ("gateway", SpanKind::Server, "POST /v1/orders"),
    ] {
        let span = find(&spans, service, kind, name);
        assert_eq!(span.status, SpanStatus::Unset, "{span:?}");
        assert_eq!(span.attr_str("error.type"), None, "{span:?}");
        assert_eq!(span.attr_str("tracehop.outcome"), Some("rejected"), "{span:?}");
        assert_eq!(span.attr_str("tracehop.error.code"), Some("payment_declined"), "{span:?}");
    }
    assert_eq!(
        find(&spans, "gateway", SpanKind::Server, "POST /v1/orders").attributes["http.response.status_code"],
        json!(402)
    );
    let exceptions: Vec<_> =
        spans.iter().filter(|s| s.events.iter().any(|e| e.name == "exception")).map(|s| s.name.as_str()).collect();
    assert!(exceptions.is_empty(), "a decline is no exception: {exceptions:?}");
    find(&spans, "order", SpanKind::Client, "send svc.inventory.release");
    let producer = find(&spans, "order", SpanKind::Producer, "publish orders.failed");
    for consumer_service in ["notification", "analytics"] {
        let consumer = find(&spans, consumer_service, SpanKind::Consumer, "process orders.failed");
        assert_eq!(consumer.parent_span_id.as_deref(), Some(producer.span_id.as_str()));
    }
    assert!(!spans.iter().any(|s| s.service == "loyalty"), "loyalty does not consume orders.failed");
}

#[tokio::test]
async fn out_of_stock_is_409_and_writes_nothing_while_traceparent_is_continued_or_ignored() {
    let system = TestSystem::start().await.expect("system start");
    let pool = &system.db.pool;

    let (status, body, _) = post_order(&system, order_body("dave", &[("LTD-007", 5)], CARD_OK), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "out_of_stock");
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ordering.orders").fetch_one(pool).await.unwrap();
    let on_hand: i32 = sqlx::query_scalar("SELECT on_hand FROM inventory.products WHERE sku = 'LTD-007'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((orders, on_hand), (0, 3), "nothing written");

    // A well-formed traceparent is continued.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let (status, body, _) = post_order(&system, order_body("erin", &[("CB-004", 1)], CARD_OK), Some(&caller)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["trace_id"], caller_trace);
    let spans = read_trace(&system, caller_trace, |spans| spans.iter().any(|s| s.service == "gateway")).await;
    let root = find(&spans, "gateway", SpanKind::Server, "POST /v1/orders");
    assert_eq!(root.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));

    // A garbage one is ignored: a new trace starts, and the order goes through.
    for garbage in ["garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzz-01", "00-1-2-01", &"0".repeat(5000)] {
        let (status, body, _) =
            post_order(&system, order_body("frank", &[("CB-004", 1)], CARD_OK), Some(garbage)).await;
        assert_eq!(status, 201, "{body}");
        let trace_id = body["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, caller_trace);
        assert_ne!(trace_id, "0".repeat(32));
    }
}

/// Baggage crosses the outbox: an allowed member of the client's baggage
/// reaches the event that the relay publishes later, and a disallowed one
/// never enters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_baggage_travels_through_the_outbox_to_the_event() {
    let system = TestSystem::start_with(&[("GATEWAY_BAGGAGE_ALLOW", "tenant")]).await.expect("system start");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/orders", system.gateway_url))
        .header("baggage", "tenant=acme,isAdmin=true")
        .json(&order_body("baggage", &[("CB-004", 1)], CARD_OK))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let stream = system.js.get_stream("ORDERS").await.unwrap();
    let mut event = None;
    for _ in 0..100 {
        if let Ok(message) = stream.direct_get_last_for_subject("orders.confirmed").await {
            event = Some(message);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let event = event.expect("the event was published");
    let baggage = event.headers.get("baggage").map(|v| v.to_string());
    assert_eq!(baggage.as_deref(), Some("tenant=acme"), "the allowed member, alone");
    assert!(event.headers.get("tracestate").is_none(), "no empty tracestate header");
}
