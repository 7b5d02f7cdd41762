//! The telemetry against the OpenTelemetry semantic conventions: one
//! checkout's trace scanned attribute by attribute, and the metrics and logs
//! that every service sends to a real OTLP receiver.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use prost::Message as _;
use serde_json::{Value, json};
use tracehop_spanfeed::{SpanKind, SpanRecord};
use tracehop_testkit::TestSystem;
use tracehop_testkit::otlp::{OtlpReceiver, data_point_attributes, string_attribute};

const USER_AGENT: &str = "tracehop-conventions-test/1.0";

async fn start(receiver: &OtlpReceiver) -> TestSystem {
    let endpoint = receiver.endpoint();
    TestSystem::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("TRACEHOP_ENVIRONMENT", "conventions-test"),
    ])
    .await
    .expect("system start")
}

/// Places one order with a user agent; its trace id.
async fn checkout(system: &TestSystem) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/orders", system.gateway_url))
        .header("user-agent", USER_AGENT)
        .json(&order_body("conventions", &[("KB-001", 1)], CARD_OK))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.unwrap();
    body["trace_id"].as_str().unwrap().to_string()
}

fn int(span: &SpanRecord, key: &str) -> Option<i64> {
    span.attributes.get(key).and_then(Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkouts_spans_carry_the_conventions_attributes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let system = start(&receiver).await;
    let trace_id = checkout(&system).await;
    let spans = read_trace(&system, &trace_id, |spans| {
        spans.iter().filter(|s| s.kind == SpanKind::Consumer).count() >= 3 && services(spans).len() == 7
    })
    .await;
    let nats_port = i64::from(system.nats_server.url().rsplit(':').next().unwrap().parse::<u16>().unwrap());

    for span in &spans {
        // No attribute is there only to be empty.
        for (key, value) in &span.attributes {
            assert_ne!(value, &json!(""), "{} has an empty {key}", span.name);
        }
    }

    let messaging: Vec<&SpanRecord> = spans.iter().filter(|s| s.attr_str("messaging.system") == Some("nats")).collect();
    let kinds: BTreeSet<String> = messaging.iter().map(|s| format!("{:?}", s.kind)).collect();
    assert_eq!(kinds, ["Client", "Consumer", "Producer", "Server"].map(String::from).into(), "{}", names(&spans));
    for span in &messaging {
        let operation = span.attr_str("messaging.operation.name").unwrap_or_else(|| panic!("{span:?}"));
        let destination = span.attr_str("messaging.destination.name").unwrap();
        assert_eq!(span.name, format!("{operation} {destination}"), "span name is {{operation}} {{destination}}");
        let operation_type = span.attr_str("messaging.operation.type").unwrap();
        let expected_type = match span.kind {
            SpanKind::Client | SpanKind::Producer => "send",
            SpanKind::Server | SpanKind::Consumer => "process",
            SpanKind::Internal => panic!("{span:?}"),
        };
        assert_eq!(operation_type, expected_type, "{}", span.name);
        assert_eq!(span.attr_str("server.address"), Some("127.0.0.1"), "{}", span.name);
        assert_eq!(int(span, "server.port"), Some(nats_port), "{}", span.name);
        let client_id = span.attr_str("messaging.client.id").unwrap_or_default();
        assert!(client_id.starts_with(&format!("tracehop-{}@", span.service)), "{}: {client_id:?}", span.name);
    }
    let consumer = find(&spans, "loyalty", SpanKind::Consumer, "process orders.confirmed");
    assert!(consumer.attr_str("messaging.message.id").is_some_and(|id| !id.is_empty()));
    for span in spans.iter().filter(|s| s.kind == SpanKind::Server && s.service != "gateway") {
        assert_eq!(span.attr_str("tracehop.outcome"), Some("ok"), "{}", span.name);
    }

    // SQL: where the database is, and the parameterised statement, never a
    // value; a transaction's BEGIN and COMMIT are spans of their own.
    let sql: Vec<&SpanRecord> = spans.iter().filter(|s| s.attr_str("db.system.name") == Some("postgresql")).collect();
    assert!(sql.len() >= 6, "{}", names(&spans));
    let database = system.db.url().rsplit('/').next().unwrap().to_string();
    for span in &sql {
        assert_eq!(span.kind, SpanKind::Client, "{}", span.name);
        assert_eq!(span.attr_str("db.namespace"), Some(database.as_str()), "{}", span.name);
        assert_eq!(span.attr_str("server.address"), Some("127.0.0.1"), "{}", span.name);
        assert_eq!(int(span, "server.port"), Some(5432), "{}", span.name);
        let operation = span.attr_str("db.operation.name").unwrap();
        match span.attr_str("db.collection.name") {
            Some(table) => {
                assert_eq!(span.name, format!("{operation} {table}"));
                let text = span.attr_str("db.query.text").unwrap_or_else(|| panic!("{span:?}"));
                assert!(text.contains('$') || !text.contains("WHERE"), "values are bound, not in the text: {text}");
                for value in [trace_id.as_str(), "conventions", "KB-001", "4242"] {
                    assert!(!text.contains(value), "{text}");
                }
            }
            None => assert!(["BEGIN", "COMMIT"].contains(&operation) && span.name == operation, "{span:?}"),
        }
    }
    let reserve = find(&spans, "inventory", SpanKind::Internal, "reserve stock");
    for operation in ["BEGIN", "COMMIT"] {
        assert!(
            sql.iter().any(|s| s.name == operation && s.parent_span_id.as_deref() == Some(reserve.span_id.as_str())),
            "reserve stock has no {operation} span:\n{}",
            names(&spans)
        );
    }

    let http = find(&spans, "gateway", SpanKind::Server, "POST /v1/orders");
    let gateway_port = i64::from(system.gateway_url.rsplit(':').next().unwrap().parse::<u16>().unwrap());
    assert_eq!(http.attr_str("http.request.method"), Some("POST"));
    assert_eq!(http.attr_str("http.route"), Some("/v1/orders"));
    assert_eq!(http.attr_str("network.protocol.version"), Some("1.1"));
    assert_eq!(http.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(http.attr_str("user_agent.original"), Some(USER_AGENT));
    assert_eq!(http.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(int(http, "server.port"), Some(gateway_port));
    assert_eq!(int(http, "http.response.status_code"), Some(201));

    // The resource names the environment; the scope names the code and its version.
    let raw = tracehop_spanfeed::fetch_trace_raw(&system.js, &trace_id).await.unwrap();
    assert!(!raw.is_empty());
    for (_, payload) in raw {
        for resource_spans in ExportTraceServiceRequest::decode(payload.as_ref()).unwrap().resource_spans {
            let resource = resource_spans.resource.unwrap();
            assert_eq!(
                string_attribute(&resource.attributes, "deployment.environment.name").as_deref(),
                Some("conventions-test")
            );
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.unwrap();
                assert_eq!(scope.name, "tracehop");
                assert!(!scope.version.is_empty(), "the instrumentation scope has a version");
            }
        }
    }

    // A method HTTP does not know is `_OTHER`, with the original beside it,
    // and the span is named `HTTP`; a path no route matches has no `http.route`.
    for (method, path) in [("FROB", "/v1/orders"), ("GET", "/nowhere")] {
        let response = reqwest::Client::new()
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", system.gateway_url))
            .send()
            .await
            .unwrap();
        let traceresponse = response.headers()["traceresponse"].to_str().unwrap().to_string();
        let trace_id = traceresponse.split('-').nth(1).unwrap().to_string();
        let spans = read_trace(&system, &trace_id, |spans| !spans.is_empty()).await;
        let span = spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        assert!(span.attributes.get("http.route").is_none_or(|route| route != ""), "{span:?}");
        if method == "FROB" {
            assert_eq!(span.attr_str("http.request.method"), Some("_OTHER"));
            assert_eq!(span.attr_str("http.request.method_original"), Some("FROB"));
            assert!(span.name.starts_with("HTTP"), "{}", span.name);
        } else {
            assert_eq!(span.attributes.get("http.route"), None, "{span:?}");
            assert_eq!(span.name, "GET");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_send_the_conventions_metrics_and_their_logs_over_otlp() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let system = start(&receiver).await;
    checkout(&system).await;

    // (service, metric) pairs that one checkout must produce.
    let expected = [
        ("gateway", "http.server.request.duration"),
        ("gateway", "messaging.client.operation.duration"),
        ("order", "messaging.process.duration"),
        ("order", "messaging.client.operation.duration"),
        ("order", "db.client.operation.duration"),
        ("inventory", "messaging.process.duration"),
        ("loyalty", "messaging.process.duration"),
        ("order", "otel.sdk.processor.span.processed"),
        ("order", "otel.sdk.processor.span.queue.size"),
        ("order", "otel.sdk.exporter.span.exported"),
        ("sentinel", "tracehop.consumer.pending"),
        ("sentinel", "tracehop.consumer.ack_pending"),
        ("sentinel", "tracehop.consumer.oldest_unprocessed.age"),
    ];
    // Every export is cumulative, so some export after the checkout has
    // each of these; the earliest ones may predate it.
    let checkout_recorded = |metrics: &[(String, Metric)]| {
        let has_point = |service: &str, name: &str, wanted: &[(&str, &str)]| {
            metrics.iter().filter(|(s, m)| s == service && m.name == name).any(|(_, metric)| {
                data_point_attributes(metric).iter().any(|attributes| {
                    wanted.iter().all(|(key, value)| string_attribute(attributes, key).as_deref() == Some(*value))
                })
            })
        };
        has_point(
            "gateway",
            "http.server.request.duration",
            &[("http.route", "/v1/orders"), ("http.request.method", "POST")],
        ) && has_point(
            "loyalty",
            "messaging.process.duration",
            &[("messaging.destination.name", "orders.confirmed"), ("messaging.consumer.group.name", "loyalty")],
        )
    };
    let mut missing = Vec::new();
    let mut recorded = false;
    for _ in 0..150 {
        let metrics = receiver.metrics();
        let received: BTreeSet<(String, String)> =
            metrics.iter().map(|(service, metric)| (service.clone(), metric.name.clone())).collect();
        missing = expected
            .iter()
            .filter(|(service, name)| !received.contains(&(service.to_string(), name.to_string())))
            .collect();
        recorded = checkout_recorded(&metrics);
        if missing.is_empty() && recorded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(missing.is_empty(), "not received: {missing:?}");
    assert!(recorded, "the checkout's request and its consumption are in the metrics");
    let metrics = receiver.metrics();
    assert!(metrics.iter().filter(|(_, m)| m.name.ends_with(".duration")).all(|(_, m)| m.unit == "s"));
    let process_points: Vec<_> = metrics
        .iter()
        .filter(|(service, metric)| service == "loyalty" && metric.name == "messaging.process.duration")
        .flat_map(|(_, metric)| data_point_attributes(metric))
        .collect();
    assert!(
        process_points.iter().all(|attributes| string_attribute(attributes, "error.type").is_none()),
        "a successful consumption has no error.type: {process_points:?}"
    );

    // Each service's span pipeline reports what it sent, for `tracehop status`.
    let mut pipelines = Vec::new();
    for _ in 0..100 {
        let reports = tracehop_telemetry::health::read_reports(&system.js).await.unwrap();
        pipelines = tracehop::commands::status::span_pipelines(&reports);
        let sent = |name: &str| pipelines.iter().any(|p| p.service == name && p.exported > 0);
        if ["gateway", "order", "inventory", "payment"].into_iter().all(sent) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["gateway", "order", "inventory", "payment"] {
        let pipeline = pipelines.iter().find(|p| p.service == name).unwrap_or_else(|| panic!("{pipelines:?}"));
        assert!(pipeline.exported > 0 && pipeline.lost() == 0, "{pipeline:?}");
    }

    // Log lines go over OTLP too, each with its service.
    let mut logging = BTreeSet::new();
    for _ in 0..100 {
        logging = receiver
            .log_requests()
            .iter()
            .flat_map(|request| request.resource_logs.iter())
            .filter_map(|logs| string_attribute(&logs.resource.as_ref()?.attributes, "service.name"))
            .collect();
        if logging.contains("gateway") && logging.contains("order") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(logging.contains("gateway") && logging.contains("order"), "{logging:?}");
}
