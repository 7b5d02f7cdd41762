//! No card number, CVV or e-mail address leaves a service in telemetry:
//! after checkouts with known cards and addresses (in the body, in
//! baggage, in an event that gets dead-lettered), every span on the span
//! feed, every log line, every dead letter and every event header is
//! scanned for them.

mod common;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use serde_json::json;
use tracehop_launcher::SERVICES;
use tracehop_proto::v1::{OrderEvent, OrderStatus, PricedItem};
use tracehop_testkit::TestSystem;
use tracehop_testkit::otlp::OtlpReceiver;

const EMAILS: [&str; 2] = ["carol.customer@example.com", "dave+shop@example.org"];
const CVV: &str = "731";
const POISON_TRACE: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75e";

/// Every form in which a secret could be written: as given, and
/// percent-encoded (baggage) with or without the spacing a person types.
fn forms() -> Vec<String> {
    let mut forms = vec![CARD_OK.to_string(), CARD_DECLINED.to_string(), "4242 4242 4242 4242".to_string()];
    for email in EMAILS {
        forms.push(email.to_string());
        forms.push(email.replace('@', "%40"));
        forms.push(email.split('@').next().unwrap().to_string() + "@");
    }
    forms
}

fn find_in(what: &str, haystack: &[u8], found: &mut Vec<String>) {
    for form in forms() {
        if haystack.windows(form.len()).any(|window| window == form.as_bytes()) {
            found.push(format!("{what} holds {form:?}"));
        }
    }
    // A CVV is three digits: it counts only beside its label.
    let text = String::from_utf8_lossy(haystack).to_ascii_lowercase();
    for (at, _) in text.match_indices("cvv") {
        let after: String = text[at..].chars().take(12).collect();
        if after.contains(CVV) {
            found.push(format!("{what} holds the CVV: {after:?}"));
        }
    }
}

fn headers_text(headers: &async_nats::HeaderMap) -> String {
    headers.iter().map(|(name, values)| format!("{name}: {values:?}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_card_number_cvv_or_email_reaches_spans_logs_headers_or_dead_letters() {
    // Logs, metrics and kept traces go over OTLP too, to a real receiver.
    let receiver = OtlpReceiver::start().await.unwrap();
    let endpoint = receiver.endpoint();
    let system = TestSystem::start_with(&[
        ("GATEWAY_BAGGAGE_ALLOW", "customer"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
    ])
    .await
    .expect("system start");
    let client = reqwest::Client::new();
    let mut traces = Vec::new();
    for (index, (email, card)) in
        [(EMAILS[0], CARD_OK), (EMAILS[1], CARD_OK), (EMAILS[0], CARD_DECLINED)].iter().enumerate()
    {
        let body = json!({
            "customer_id": format!("secret-keeper-{index}"),
            "items": [{"sku": "KB-001", "quantity": 1}],
            "card": {"number": card, "expiry": "12/34", "cvv": CVV},
            "email": email,
        });
        let response = client
            .post(format!("{}/v1/orders", system.gateway_url))
            .header("baggage", format!("customer={}", email.replace('@', "%40")))
            .json(&body)
            .send()
            .await
            .expect("gateway unreachable");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(matches!(status, 201 | 402), "{status} {body}");
        traces.push(body["trace_id"].as_str().unwrap().to_string());
    }
    // A card number where the customer id goes, and one that fails its
    // check digit (the client may get its own data back; telemetry may not).
    for body in [
        json!({"customer_id": CARD_OK, "items": [{"sku": "KB-001", "quantity": 1}],
               "card": {"number": CARD_OK, "expiry": "12/34", "cvv": CVV}, "email": EMAILS[0]}),
        json!({"customer_id": "x", "items": [{"sku": "KB-001", "quantity": 1}],
               "card": {"number": "4242 4242 4242 4241", "expiry": "12/34", "cvv": CVV}, "email": EMAILS[1]}),
    ] {
        let response = client.post(format!("{}/v1/orders", system.gateway_url)).json(&body).send().await.unwrap();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if let Some(trace) = body["trace_id"].as_str().filter(|_| body["order_id"].is_string()) {
            traces.push(trace.to_string());
        }
    }

    // An event with an address that every consumer gives up on (its order
    // id is no UUID), with the address in its baggage too.
    let event = OrderEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        order_id: "not-a-uuid".to_string(),
        customer_id: "secret-keeper".to_string(),
        status: OrderStatus::Confirmed as i32,
        items: vec![PricedItem { sku: "KB-001".to_string(), quantity: 1, unit_price_cents: 900 }],
        total_cents: 900,
        failure_reason: String::new(),
        email: EMAILS[0].to_string(),
        occurred_at_unix_ms: tracehop_telemetry::now_unix_ms(),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(tracehop_messaging::headers::MESSAGE_ID, event.event_id.as_str());
    headers.insert(tracehop_messaging::headers::PAYLOAD_TYPE, "tracehop.v1.OrderEvent");
    headers.insert("traceparent", format!("00-{POISON_TRACE}-b7ad6b7169203331-01").as_str());
    headers.insert("baggage", format!("customer={}", EMAILS[0].replace('@', "%40")).as_str());
    system
        .order_js
        .publish_with_headers(tracehop_proto::subjects::ORDER_CONFIRMED, headers, event.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Everything has happened: each checkout's trace holds its mail, and
    // the poison event's trace its three dead letters.
    for trace in &traces {
        read_trace(&system, trace, |spans| spans.iter().any(|s| s.service == "notification")).await;
    }
    read_trace(&system, POISON_TRACE, |spans| spans.iter().filter(|s| s.name.starts_with("dead-letter")).count() >= 3)
        .await;

    let mut found = Vec::new();
    // Every span on the feed, raw.
    let feed = tracehop_spanfeed::scan_feed(&system.js, None).await.unwrap();
    assert!(feed.messages > 0);
    for (trace, batches) in &feed.traces {
        for batch in batches {
            find_in(&format!("a span of {} in trace {trace}", batch.service), &batch.payload, &mut found);
        }
    }
    // Every log line.
    for service in SERVICES {
        let log = std::fs::read(system.launcher.log_path(service)).unwrap_or_default();
        assert!(!log.is_empty(), "{service} wrote no log");
        find_in(&format!("the log of {service}"), &log, &mut found);
    }
    // Every log record, metric and kept trace the services sent over OTLP.
    // Log records are sent in batches every second: wait until they stop
    // coming.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let now = receiver.log_requests().len();
        if (now > 0 && now == seen) || std::time::Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    let logs = receiver.log_requests();
    assert!(!logs.is_empty());
    for (index, request) in logs.iter().enumerate() {
        find_in(&format!("OTLP log request {index}"), &request.encode_to_vec(), &mut found);
    }
    for (index, request) in receiver.metric_requests().iter().enumerate() {
        find_in(&format!("OTLP metrics request {index}"), &request.encode_to_vec(), &mut found);
    }
    for (index, request) in receiver.requests().iter().enumerate() {
        find_in(&format!("OTLP trace request {index}"), &request.encode_to_vec(), &mut found);
    }
    // Every dead letter, headers and payload, and every event's headers.
    for (stream_name, with_payload) in [("DEADLETTER", true), ("ORDERS", false)] {
        let mut stream = system.js.get_stream(stream_name).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        if stream_name == "DEADLETTER" {
            assert!(last >= 3, "the poison event was not dead-lettered");
        }
        for sequence in 1..=last {
            let Ok(message) = stream.get_raw_message(sequence).await else { continue };
            let what = format!("{stream_name} message {sequence}");
            // The test itself forged the poison event's headers in ORDERS;
            // what matters is that its dead letters do not repeat them.
            if !with_payload && headers_text(&message.headers).contains(POISON_TRACE) {
                continue;
            }
            find_in(&format!("the headers of {what}"), headers_text(&message.headers).as_bytes(), &mut found);
            if with_payload {
                find_in(&what, &message.payload, &mut found);
            }
        }
    }
    assert!(found.is_empty(), "secrets left the services:\n{}", found.join("\n"));

    // The control: the secrets did go where they belong. The mail went to
    // its address, and the event in ORDERS carries it.
    let orders = jetstream::new(system.nats.clone()).get_stream("ORDERS").await.unwrap();
    let stored = orders.direct_get_last_for_subject(tracehop_proto::subjects::ORDER_CONFIRMED).await.unwrap();
    assert!(OrderEvent::decode(stored.payload.as_ref()).unwrap().email.contains('@'));
}
