//! Tail sampling: the keeper keeps every error trace, every slow trace and
//! exactly the ratio's share of the rest, and exports each kept trace whole,
//! once, over OTLP to a real receiver; the services export nothing there
//! themselves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tracehop_keeper::policy::sampled_by_ratio;
use tracehop_keeper::traces::{COMPLETE_ATTRIBUTE, REASON_ATTRIBUTE};
use tracehop_proto::subjects;
use tracehop_proto::v1::{KeeperStatsReply, KeeperStatsRequest};
use tracehop_spanfeed::fetch_trace;
use tracehop_testkit::{OtlpReceiver, TestSystem};

const RATIO: f64 = 0.3;
const PLAIN_ORDERS: usize = 30;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    })
}

async fn keeper_stats(system: &TestSystem) -> KeeperStatsReply {
    let reply =
        system.nats.request(subjects::KEEPER_STATS, KeeperStatsRequest {}.encode_to_vec().into()).await.unwrap();
    KeeperStatsReply::decode(reply.payload.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_keeps_errors_slow_traces_and_the_ratio_whole_and_once() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let ratio = RATIO.to_string();
    let system = TestSystem::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ("TRACEHOP_KEEP_RATIO", &ratio),
        ("TRACEHOP_KEEP_SLOWER_THAN_MS", "1000"),
        ("KEEPER_QUIET_MS", "1500"),
    ])
    .await
    .unwrap();

    let mut plain = Vec::new();
    for n in 0..PLAIN_ORDERS {
        let (status, body, _) =
            post_order(&system, order_body(&format!("plain-{n}"), &[("CB-004", 1)], CARD_OK), None).await;
        assert_eq!(status, 201, "{body}");
        plain.push(body["trace_id"].as_str().unwrap().to_string());
    }
    let mut declined = Vec::new();
    for n in 0..3 {
        let (status, body, _) =
            post_order(&system, order_body(&format!("declined-{n}"), &[("CB-004", 1)], CARD_DECLINED), None).await;
        assert_eq!(status, 402, "{body}");
        declined.push(body["trace_id"].as_str().unwrap().to_string());
    }
    // A slow checkout: a real row lock on its product, held 1.5 s.
    let slow =
        slow_checkout(&system, "HS-005", Duration::from_millis(1500)).await["trace_id"].as_str().unwrap().to_string();

    // Every trace decided, and the export queue drained.
    let all: Vec<&String> = plain.iter().chain(&declined).chain(std::iter::once(&slow)).collect();
    let started = Instant::now();
    let mut stats = keeper_stats(&system).await;
    while (stats.traces_decided < all.len() as u64 || stats.traces_pending > 0)
        && started.elapsed() < Duration::from_secs(40)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stats = keeper_stats(&system).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = keeper_stats(&system).await;
    println!("keeper: {stats:?}");

    // What the receiver got, by trace; and no span twice.
    let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    let mut span_ids = BTreeSet::new();
    for request in receiver.requests() {
        for span in request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans) {
            assert!(span_ids.insert(span.span_id.clone()), "span {} exported twice", hex(&span.span_id));
            by_trace.entry(hex(&span.trace_id)).or_default().push(span);
        }
    }
    let root_reason = |trace_id: &str| {
        let spans = by_trace.get(trace_id)?;
        spans.iter().find(|s| s.parent_span_id.is_empty()).and_then(|root| attribute(root, REASON_ATTRIBUTE))
    };

    // Every kept trace is whole: as many spans as the feed holds for it, and
    // its root says why it was kept and that it was complete.
    for (trace_id, spans) in &by_trace {
        let on_feed = fetch_trace(&system.js, trace_id).await.unwrap().len();
        assert_eq!(spans.len(), on_feed, "trace {trace_id} exported whole");
        let root = spans.iter().find(|s| s.parent_span_id.is_empty()).expect("the root was exported");
        assert_eq!(attribute(root, COMPLETE_ATTRIBUTE).as_deref(), Some("true"), "trace {trace_id}");
    }
    for trace_id in &declined {
        assert_eq!(root_reason(trace_id).as_deref(), Some("error"), "declined trace {trace_id} kept");
    }
    assert_eq!(root_reason(&slow).as_deref(), Some("slow"), "the slow trace was kept");
    let expected: BTreeSet<&String> = plain.iter().filter(|id| sampled_by_ratio(&unhex(id), RATIO)).collect();
    let kept: BTreeSet<&String> = plain.iter().filter(|id| by_trace.contains_key(*id)).collect();
    assert_eq!(kept, expected, "exactly the ratio's share of the plain traces");
    for trace_id in &kept {
        assert_eq!(root_reason(trace_id).as_deref(), Some("ratio"));
    }
    // Nothing else of ours reached the backend (the readiness probes' health
    // checks are traces too, sampled like any other).
    let ours: BTreeSet<&String> = all.iter().copied().collect();
    for (trace_id, spans) in &by_trace {
        let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
        assert!(
            ours.contains(trace_id) || root.name != "POST /v1/orders",
            "an unexpected checkout {trace_id} was kept"
        );
    }
    assert_eq!(stats.kept_error, declined.len() as u64);
    assert_eq!(stats.kept_slow, 1);
    assert!(stats.kept_ratio >= expected.len() as u64, "{stats:?}");
    // Ours, plus any other trace of the run (the readiness probes' health checks).
    assert!(stats.dropped >= (plain.len() - expected.len()) as u64, "{stats:?}");
    assert_eq!(stats.spans_exported, span_ids.len() as u64);
    assert_eq!(stats.export_failures, 0);
}
