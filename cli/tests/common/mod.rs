//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub(crate) mod chaos;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tracehop_spanfeed::{SpanKind, SpanRecord, wait_for_settled_trace, wait_for_trace};
use tracehop_testkit::{TestNats, TestSystem};

pub(crate) const CARD_OK: &str = "4242424242424242";
pub(crate) const CARD_DECLINED: &str = "4000000000000002";
pub(crate) const EMAIL: &str = "carol.customer@example.com";

pub(crate) async fn post_order(
    system: &TestSystem<impl TestNats>,
    body: Value,
    traceparent: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new().post(format!("{}/v1/orders", system.gateway_url)).json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.expect("gateway unreachable");
    let status = response.status().as_u16();
    let traceresponse = response.headers().get("traceresponse").map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.unwrap_or(Value::Null), traceresponse)
}

pub(crate) fn order_body(customer: &str, items: &[(&str, i64)], card: &str) -> Value {
    json!({
        "customer_id": customer,
        "items": items.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "card": {"number": card, "expiry": "12/34", "cvv": "123"},
        "email": EMAIL,
    })
}

/// Polls `query` (one i64) until it equals `expected` or 20 s pass.
pub(crate) async fn eventually(
    system: &TestSystem<impl TestNats>,
    query: &str,
    order_id: uuid::Uuid,
    expected: i64,
) -> i64 {
    let mut value = -1;
    for _ in 0..200 {
        value = sqlx::query_scalar(query).bind(order_id).fetch_one(&system.db.pool).await.unwrap();
        if value == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    value
}

/// Waits until `done` holds for the trace, then until it has not grown for a
/// second (services export in batches, each on its own clock).
pub(crate) async fn read_trace(
    system: &TestSystem<impl TestNats>,
    trace_id: &str,
    done: impl FnMut(&[SpanRecord]) -> bool,
) -> Vec<SpanRecord> {
    wait_for_trace(&system.js, trace_id, Duration::from_secs(20), done).await.unwrap();
    wait_for_settled_trace(&system.js, trace_id, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap()
}

pub(crate) fn services(spans: &[SpanRecord]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

pub(crate) fn find<'a>(spans: &'a [SpanRecord], service: &str, kind: SpanKind, name: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| s.service == service && s.kind == kind && s.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} span {name:?} from {service} in:\n{}", names(spans)))
}

pub(crate) fn names(spans: &[SpanRecord]) -> String {
    spans.iter().map(|s| format!("{} {:?} {} {:?}\n", s.service, s.kind, s.name, s.status)).collect()
}

pub(crate) fn parent_of<'a>(spans: &'a [SpanRecord], span: &SpanRecord) -> &'a SpanRecord {
    let parent = span.parent_span_id.as_deref().unwrap_or_else(|| panic!("{} has no parent", span.name));
    spans.iter().find(|s| s.span_id == parent).unwrap_or_else(|| panic!("parent of {} is missing", span.name))
}

/// True when `ancestor` is on `span`'s parent chain.
pub(crate) fn descends_from(spans: &[SpanRecord], span: &SpanRecord, ancestor: &SpanRecord) -> bool {
    let mut current = span;
    while let Some(parent) = current.parent_span_id.as_deref() {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == parent) {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

pub(crate) fn assert_no_secrets(spans: &[SpanRecord]) {
    let text = serde_json::to_string(spans).unwrap();
    for secret in [CARD_OK, CARD_DECLINED, EMAIL, "carol.customer"] {
        assert!(!text.contains(secret), "a span carries {secret:?}");
    }
}

/// Polls `query` (no parameters, one i64) until `done` holds or 30 s pass;
/// returns the last value.
pub(crate) async fn eventually_value(
    system: &TestSystem<impl TestNats>,
    query: &str,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let mut value = i64::MIN;
    for _ in 0..300 {
        value = sqlx::query_scalar(query).fetch_one(&system.db.pool).await.unwrap();
        if done(value) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    value
}

/// Waits until every confirmed order's stock commit is recorded: a checkout
/// answers before its commit (order's `commit stock after the reply`).
pub(crate) async fn stock_committed(system: &TestSystem<impl TestNats>) {
    let uncommitted = "SELECT COUNT(*) FROM ordering.orders WHERE status = 'confirmed' AND NOT stock_committed";
    assert_eq!(eventually_value(system, uncommitted, |left| left == 0).await, 0, "stock commits still not recorded");
}

/// One i64 from `query` (no parameters).
pub(crate) async fn scalar(system: &TestSystem<impl TestNats>, query: &str) -> i64 {
    sqlx::query_scalar(query).fetch_one(&system.db.pool).await.unwrap()
}

/// Places an order for `sku` while a real row lock on its product is held
/// for `hold` (as a long batch job would), so that the checkout is slow in
/// PostgreSQL, not by a sleep; returns the gateway's answer.
pub(crate) async fn slow_checkout(system: &TestSystem<impl TestNats>, sku: &str, hold: Duration) -> Value {
    use sqlx::Connection as _;
    let mut batch_job = sqlx::PgConnection::connect(&system.db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut batch_job).await.unwrap();
    sqlx::query("SELECT 1 FROM inventory.products WHERE sku = $1 FOR UPDATE")
        .bind(sku)
        .execute(&mut batch_job)
        .await
        .unwrap();
    let order = tokio::spawn({
        let gateway = system.gateway_url.clone();
        let body = order_body("slow", &[(sku, 1)], CARD_OK);
        async move {
            let response =
                reqwest::Client::new().post(format!("{gateway}/v1/orders")).json(&body).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    });
    tokio::time::sleep(hold).await;
    sqlx::query("COMMIT").execute(&mut batch_job).await.unwrap();
    order.await.unwrap()
}
